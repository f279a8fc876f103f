"""Our paged attention backend for vLLM's V1 engine.

Pooling models (a reranker) only prefill, but prefill in pieces: prefix caching
reuses the shared system prompt / query blocks and chunked prefill splits long
prompts, so a step's queries are the tail of sequences whose head is already in
the paged cache. The metadata carries per-request lengths as Python ints (built
once per step on the host, shared by every layer); the implementation chosen by
``VLLM_ASCEND_RERANK_ATTN_IMPL`` does the math (see ``attention/impls.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm.config import VllmConfig
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionLayer,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
)
from vllm.v1.kv_cache_interface import AttentionSpec
from vllm.v1.kv_cache_layout import KVCacheLayout

from vllm_ascend_rerank.attention.impls import AttentionKernels, select_kernels

# vLLM resolves backends through AttentionBackendEnum; an out-of-tree backend
# registers itself under the CUSTOM member (see registration.py).
from vllm_ascend_rerank.platform import BACKEND_NAME  # noqa: E402


class RerankAttentionBackend(AttentionBackend):
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ]
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "float16", "bfloat16"]

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[RerankAttentionImpl]:
        return RerankAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[RerankAttentionMetadataBuilder]:
        return RerankAttentionMetadataBuilder

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        # Token-major blocks: a slot's K/V for all heads is one contiguous row,
        # so the cache write is a single indexed copy.
        return (KVCacheLayout.LBNHC,)

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        # vLLM sets an unspecified block size to this after loading the model: keep the
        # plugin's (128 for the NPU kernels, 16 on a CPU for fine-grained prefix reuse).
        from vllm_ascend_rerank import config, device

        return config.NPU_BLOCK_SIZE if device.is_npu() else config.CPU_BLOCK_SIZE

    @classmethod
    def supports_non_causal(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type in (AttentionType.DECODER, AttentionType.ENCODER_ONLY)


@dataclass
class RerankAttentionMetadata:
    num_actual_tokens: int
    query_start_loc: list[int]  # host ints, len num_reqs + 1
    seq_lens: list[int]  # host ints: cached context + this step's tokens
    max_query_len: int
    max_seq_len: int
    block_table: torch.Tensor  # [num_reqs, max_blocks] on the device
    slot_mapping: torch.Tensor  # [num_tokens], -1 = padding
    causal: bool
    # Device copies for kernels that take lengths as tensors (NPU, native ops).
    query_start_loc_tensor: torch.Tensor
    seq_lens_tensor: torch.Tensor

    @property
    def has_cached_context(self) -> bool:
        return any(
            s != self.query_start_loc[i + 1] - self.query_start_loc[i]
            for i, s in enumerate(self.seq_lens)
        )


class RerankAttentionMetadataBuilder(AttentionMetadataBuilder[RerankAttentionMetadata]):
    def __init__(
        self,
        kv_cache_spec: AttentionSpec,
        layer_names: list[str],
        vllm_config: VllmConfig,
        device: torch.device,
    ) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> RerankAttentionMetadata:
        cm = common_attn_metadata
        seq_lens_cpu = cm.seq_lens_cpu_upper_bound
        if seq_lens_cpu is None:
            seq_lens_cpu = cm.seq_lens.cpu()
        num_reqs = cm.num_reqs
        causal = cm.causal
        if isinstance(causal, torch.Tensor):
            raise NotImplementedError("per-request causal masks are not supported")
        return RerankAttentionMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            query_start_loc=cm.query_start_loc_cpu[: num_reqs + 1].tolist(),
            seq_lens=seq_lens_cpu[:num_reqs].tolist(),
            max_query_len=cm.max_query_len,
            max_seq_len=cm.max_seq_len,
            block_table=cm.block_table_tensor[:num_reqs],
            slot_mapping=cm.slot_mapping[: cm.num_actual_tokens],
            causal=bool(causal),
            query_start_loc_tensor=cm.query_start_loc[: num_reqs + 1],
            seq_lens_tensor=cm.seq_lens[:num_reqs],
        )


class RerankAttentionImpl(AttentionImpl[RerankAttentionMetadata]):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        unsupported = {
            "alibi_slopes": alibi_slopes,
            "sliding_window": sliding_window,
            "logits_soft_cap": logits_soft_cap or None,
            "sinks": sinks,
        }
        for name, val in unsupported.items():
            if val is not None:
                raise NotImplementedError(f"{BACKEND_NAME} attention: {name} is not supported")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.kernels: AttentionKernels = select_kernels()

    def do_kv_cache_update(
        self,
        layer: torch.nn.Module,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        if self.attn_type == AttentionType.ENCODER_ONLY or kv_cache.numel() == 0:
            return
        self.kernels.write_kv(key, value, kv_cache, slot_mapping)

    def forward(
        self,
        layer: AttentionLayer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: RerankAttentionMetadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported")
        if attn_metadata is None:  # profiling / dummy run
            return output
        n = attn_metadata.num_actual_tokens
        if self.attn_type == AttentionType.ENCODER_ONLY:
            self.kernels.varlen_attention(
                query[:n], key[:n], value[:n], attn_metadata, self.scale, output[:n]
            )
            return output
        self.kernels.paged_attention(
            query[:n], key[:n], value[:n], kv_cache, attn_metadata, self.scale, output[:n]
        )
        return output
