"""Pure-torch stand-in for vLLM's Triton slot-mapping kernel (no Triton on CPU or here).

Runs the C++ op (csrc/) when the native kernels are selected. Registered with
``vllm.triton_utils.dispatcher.register_kernels`` under
``vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel``; the parameter
names mirror the Triton kernel's so the launcher can bind them by name.
"""

from __future__ import annotations

import torch

from vllm_ascend_rerank.attention.impls import select_kernels

KERNEL_NAME = "vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel"


def compute_slot_mapping(
    num_tokens: int,
    max_num_tokens: int,
    query_start_loc_ptr: torch.Tensor,
    positions_ptr: torch.Tensor,
    block_table_ptr: torch.Tensor,
    block_table_stride: int,
    slot_mapping_ptr: torch.Tensor,
    KV_CACHE_BLOCK_SIZE: int,  # noqa: N803 - kernel's constexpr name
    TOTAL_CP_WORLD_SIZE: int = 1,  # noqa: N803
    TOTAL_CP_RANK: int = 0,  # noqa: N803
    CP_KV_CACHE_INTERLEAVE_SIZE: int = 1,  # noqa: N803
    PAD_ID: int = -1,  # noqa: N803
    BLOCK_SIZE: int = 1024,  # noqa: N803
) -> None:
    """slot[t] = block_table[req(t), pos(t) // bs] * bs + pos(t) % bs; PAD_ID past num_tokens."""
    if TOTAL_CP_WORLD_SIZE != 1:
        raise NotImplementedError("context parallelism is not supported by vllm-ascend-rerank")
    table = block_table_ptr.reshape(-1, block_table_stride)
    if PAD_ID == -1 and select_kernels().name == "native":  # the C++ op pads with -1
        torch.ops.vllm_ascend_rerank.compute_slot_mapping(
            query_start_loc_ptr, positions_ptr, table, KV_CACHE_BLOCK_SIZE,
            slot_mapping_ptr[:max_num_tokens],
        )  # fmt: skip
        return
    slot_mapping_ptr[:num_tokens] = torch_slot_mapping(
        query_start_loc_ptr, positions_ptr[:num_tokens], table, KV_CACHE_BLOCK_SIZE
    )
    slot_mapping_ptr[num_tokens:max_num_tokens] = PAD_ID


def torch_slot_mapping(
    query_start_loc: torch.Tensor, positions: torch.Tensor, block_table: torch.Tensor,
    block_size: int,
) -> torch.Tensor:  # fmt: skip
    """The pure-torch reference: the slot of each of ``positions`` (one per token)."""
    qsl = query_start_loc.to(torch.long)
    num_reqs = qsl.numel() - 1
    req_of_token = torch.repeat_interleave(
        torch.arange(num_reqs, device=qsl.device), qsl[1:] - qsl[:-1],
        output_size=positions.shape[0],
    )  # fmt: skip
    pos = positions.to(torch.long)
    blocks = block_table[req_of_token, pos // block_size].to(torch.long)
    return blocks * block_size + pos % block_size
