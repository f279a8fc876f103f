"""Pure-torch stand-in for vLLM's Triton slot-mapping kernel (no Triton on CPU or here).

Registered with ``vllm.triton_utils.dispatcher.register_kernels`` under
``vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel``; the parameter
names mirror the Triton kernel's so the launcher can bind them by name.
"""

from __future__ import annotations

import torch

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
    qsl = query_start_loc_ptr.to(torch.long)
    num_reqs = qsl.numel() - 1
    req_lens = qsl[1:] - qsl[:-1]
    req_of_token = torch.repeat_interleave(
        torch.arange(num_reqs, device=qsl.device), req_lens, output_size=num_tokens
    )
    pos = positions_ptr[:num_tokens].to(torch.long)
    table = block_table_ptr.reshape(-1, block_table_stride)
    blocks = table[req_of_token, pos // KV_CACHE_BLOCK_SIZE].to(torch.long)
    slot_mapping_ptr[:num_tokens] = blocks * KV_CACHE_BLOCK_SIZE + pos % KV_CACHE_BLOCK_SIZE
    slot_mapping_ptr[num_tokens:max_num_tokens] = PAD_ID
