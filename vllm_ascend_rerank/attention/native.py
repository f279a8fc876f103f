"""Attention kernels from the C++ op library (``vllm_ascend_rerank._C``, built from csrc/).

``torch.ops.vllm_ascend_rerank.*`` run on the CPU (csrc/cpu/: flash-style paged attention
read straight from the cache, AVX-512 / AVX2 / baseline chosen at run time) and, in a CANN
build, on the NPU (csrc/ascend/). Importing this module requires the library: callers check
``native_ops.available()`` first (``impls.select_kernels`` does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

from vllm_ascend_rerank.attention.impls import TorchKernels

if TYPE_CHECKING:
    from vllm_ascend_rerank.attention.backend import RerankAttentionMetadata

_C = importlib.import_module("vllm_ascend_rerank._C")  # registers the ops
ops = torch.ops.vllm_ascend_rerank


# Fake (meta) implementations: shapes only, so FakeTensor / torch.compile can trace the ops.
# All three only mutate their (a!) argument and return nothing.
@torch.library.register_fake("vllm_ascend_rerank::write_kv")
def _write_kv_fake(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    return None


@torch.library.register_fake("vllm_ascend_rerank::paged_prefill_attention")
def _paged_prefill_attention_fake(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    causal: bool,
    output: torch.Tensor,
) -> None:
    return None


def cpu_isa() -> str:
    """Instruction set the CPU attention kernel runs with ("avx512", "avx2" or "generic")."""
    return _C.cpu_isa()


def cpu_isas() -> list[str]:
    """Instruction sets this build and CPU support, best first."""
    return _C.cpu_isas()


def set_cpu_isa(name: str) -> None:
    """Force the CPU kernel's instruction set (tests, benchmarks); ValueError if unsupported."""
    _C.set_cpu_isa(name)


class NativeKernels(TorchKernels):
    """C++ cache write and paged attention; encoder-only (cache-less) attention, not on
    the reranker's path, stays the pure-torch one."""

    name = "native"

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        ops.write_kv(key, value, kv_cache, slot_mapping)

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
        # K/V of this step are already in the cache (do_kv_cache_update ran first).
        ops.paged_prefill_attention(
            query,
            kv_cache,
            md.block_table,
            md.query_start_loc_tensor,
            md.seq_lens_tensor,
            scale,
            md.causal,
            output,
        )
