"""Attention kernel sets behind one interface, chosen by VLLM_ASCEND_RERANK_ATTN_IMPL.

- ``TorchKernels``: the pure-torch reference (``reference.py``), always available.
- ``NativeKernels``: the C++ op library built from ``csrc/`` (``vllm_ascend_rerank._C``).
- ``NpuKernels``: torch_npu fused ops (``npu.py``), on an Ascend NPU (or the test emulation).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Protocol

import torch
from vllm.logger import init_logger

from vllm_ascend_rerank import envs
from vllm_ascend_rerank.attention import reference

if TYPE_CHECKING:
    from vllm_ascend_rerank.attention.backend import RerankAttentionMetadata

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"


class AttentionKernels(Protocol):
    name: str

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None: ...

    def paged_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        md: RerankAttentionMetadata,
        scale: float,
        output: torch.Tensor,
    ) -> None: ...

    def varlen_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        md: RerankAttentionMetadata,
        scale: float,
        output: torch.Tensor,
    ) -> None: ...


class TorchKernels:
    name = "torch"

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        reference.write_kv(key, value, kv_cache, slot_mapping)

    def paged_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        md: RerankAttentionMetadata,
        scale: float,
        output: torch.Tensor,
    ) -> None:
        reference.paged_attention(
            query,
            kv_cache,
            md.block_table,
            md.query_start_loc,
            md.seq_lens,
            scale,
            md.causal,
            output,
            key=key,
            value=value,
        )

    def varlen_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        md: RerankAttentionMetadata,
        scale: float,
        output: torch.Tensor,
    ) -> None:
        qsl = md.query_start_loc
        for r in range(len(qsl) - 1):
            s, e = qsl[r], qsl[r + 1]
            if e > s:
                out = reference.attend(query[s:e], key[s:e], value[s:e], scale, md.causal)
                output[s:e] = out.to(output.dtype)


@functools.cache
def select_kernels() -> AttentionKernels:
    """The kernel set for this process (logged once)."""
    from vllm_ascend_rerank import device

    wanted = envs.VLLM_ASCEND_RERANK_ATTN_IMPL
    if wanted not in ("auto", "torch", "native", "npu"):
        raise ValueError(
            f"VLLM_ASCEND_RERANK_ATTN_IMPL must be one of auto, torch, native, npu; got {wanted!r}"
        )
    kernels: AttentionKernels
    if wanted == "npu" or (wanted == "auto" and device.is_npu()):
        from vllm_ascend_rerank.attention.npu import NpuKernels

        kernels = NpuKernels()
    elif wanted in ("native", "auto") and _native_available(required=wanted == "native"):
        from vllm_ascend_rerank.attention.native import NativeKernels

        kernels = NativeKernels()
    else:
        kernels = TorchKernels()
    logger.info_once("vllm-ascend-rerank attention kernels: %s", kernels.name)
    return kernels


def _native_available(required: bool) -> bool:
    from vllm_ascend_rerank import native_ops

    ok = native_ops.available()
    if required and not ok:
        raise RuntimeError(
            "VLLM_ASCEND_RERANK_ATTN_IMPL=native but the C++ op library "
            f"vllm_ascend_rerank._C is not built: {native_ops.load_error()}"
        )
    return ok
