"""torch_npu kernels for vLLM layers, swapped in with ``CustomOp.register_oot``.

vLLM instantiates an out-of-tree replacement wherever a model builds the in-tree class of
the same name, and calls its ``forward_oot`` on an out-of-tree platform. Each subclass
below calls one fused torch_npu op when the call fits the op's documented limits and falls
back to vLLM's own ``forward_native`` otherwise, so a model never breaks on an odd shape.

One section per op. Signatures and limits follow the torch_npu wheel we pin (2.14.0: its
``_op_plugin_docs.py``, registered schemas and meta functions, which
tests/test_torch_npu_conformance.py checks the emulation and these call sites against).
torch_npu is imported through ``device.torch_npu()`` by ``register()`` (or a layer's first
eager call), never at import: under torch.compile the layers then only read module globals,
which Dynamo traces (it cannot trace an import).
"""

from __future__ import annotations

from types import ModuleType

import torch
from vllm.logger import init_logger
from vllm.model_executor import custom_op
from vllm.model_executor.custom_op import CustomOp
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention.mm_encoder_attention import MMEncoderAttention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding.mrope import MRotaryEmbedding

from vllm_ascend_rerank import device

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# npu_mrope's cache_mode='interleave' (Qwen3-VL's interleaved M-RoPE) runs the aclnn kernel
# RopeWithSinCosCacheV2, first shipped with this CANN; on an older one the op raises.
MROPE_INTERLEAVE_CANN = "8.5.0"
_torch_npu: ModuleType | None = None
_mrope_interleave_ok = False


def _npu() -> ModuleType:
    global _torch_npu, _mrope_interleave_ok
    if _torch_npu is None:
        _torch_npu = device.torch_npu()
        _mrope_interleave_ok = device.cann_at_least(MROPE_INTERLEAVE_CANN)
    return _torch_npu


# ---- RMSNorm: npu_rms_norm / npu_add_rms_norm --------------------------------------------------


class NpuRMSNorm(RMSNorm):
    """RMSNorm, with the residual add fused when a residual is given.

    Constraints: a learned weight (the weightless variant keeps a host tensor); no
    ``var_hidden_size`` override; ``npu_rms_norm`` takes 2-8 dim inputs with the weight in the
    input's float dtype (2.14.0 has no mixed pair); ``npu_add_rms_norm`` wants x, residual and
    weight in one float dtype and non-empty tensors of equal shape. Returns
    ``(normed, x + residual)`` like vLLM's fused op.
    """

    def forward_oot(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self._npu_fits(x, residual):
            return self.forward_native(x, residual)
        ops = _npu()
        weight = self.weight.data
        if residual is None:
            return ops.npu_rms_norm(x, weight, epsilon=self.variance_epsilon)[0]
        out, _, added = ops.npu_add_rms_norm(x, residual, weight, epsilon=self.variance_epsilon)
        return out, added

    def _npu_fits(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        if not self.has_weight or self.variance_size_override is not None:
            return False
        weight = self.weight.data
        if residual is None:
            return 2 <= x.dim() <= 8 and x.dtype in _FLOATS and weight.dtype == x.dtype
        return (
            1 <= x.dim() <= 8
            and x.numel() > 0
            and x.shape == residual.shape
            and x.dtype in _FLOATS
            and residual.dtype == x.dtype
            and weight.dtype == x.dtype
        )


# ---- SiluAndMul: npu_swiglu -------------------------------------------------------------------
class NpuSiluAndMul(SiluAndMul):
    """silu(x[..., :d]) * x[..., d:] through ``npu_swiglu(x, dim=-1)``.

    Constraints: contiguous, non-empty input of 1-8 dims in float32/float16/bfloat16 with an
    even last dimension.
    """

    def forward_oot(self, x: torch.Tensor) -> torch.Tensor:
        fits = (
            x.is_contiguous()
            and x.numel() > 0
            and 1 <= x.dim() <= 8
            and x.dtype in _FLOATS
            and x.shape[-1] % 2 == 0
        )
        if not fits:
            return self.forward_native(x)
        return _npu().npu_swiglu(x, dim=-1)


# ---- MRotaryEmbedding: npu_mrope -----------------------------------------------------------------
# 3-part mrope_section values the CANN kernels take (Qwen3-VL uses [24, 20, 20], interleaved).
NPU_MROPE_SECTIONS = ([16, 24, 24], [24, 20, 20], [8, 12, 12])


class NpuMRotaryEmbedding(MRotaryEmbedding):
    """Multimodal RoPE (T/H/W sections, chunked or interleaved) through ``npu_mrope``.

    Constraints: query and key given as 2D ``[tokens, heads * head_size]``, no per-token
    ``offsets``; float32/float16/bfloat16; rotary_dim a multiple of 16 (float32) or 32 (half
    types). 2D positions need a 3-part section the kernel lists; interleaved sections map to
    ``cache_mode='interleave'``, which needs CANN >= ``MROPE_INTERLEAVE_CANN`` (older CANN:
    vLLM's native code, said once at registration) and whose H/W channel bound is
    ``3 * section[1]`` for both axes (vLLM's too when section[1] == section[2], true for every
    listed section). 1D positions (text only) use plain RoPE mode. NeoX style is
    ``rotary_mode='half'``, GPT-J style ``'interleave'``. The cos/sin cache is the layer's own
    (YaRN scaling already folded in).
    """

    def forward_oot(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key is None or offsets is not None or not self._npu_fits(positions, query, key):
            return self.forward_native(positions, query, key, offsets)
        mrope = positions.dim() == 2
        return _npu().npu_mrope(
            positions,
            query,
            key,
            self._match_cos_sin_cache_dtype(query),
            self.head_size,
            mrope_section=list(self.mrope_section) if mrope else [0, 0, 0],
            rotary_mode="half" if self.is_neox_style else "interleave",
            cache_mode="interleave" if mrope and self.mrope_interleaved else "default",
        )

    def _npu_fits(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> bool:
        _npu()  # sets _mrope_interleave_ok on first use
        align = 16 if query.dtype == torch.float32 else 32
        if not (
            query.dim() == 2
            and key.dim() == 2
            and query.dtype in _FLOATS
            and key.dtype == query.dtype
            and self.rotary_dim % align == 0
        ):
            return False
        if positions.dim() == 1:
            return True
        if self.mrope_interleaved and not _mrope_interleave_ok:
            return False
        section = list(self.mrope_section or [])
        return section in NPU_MROPE_SECTIONS and positions.shape[0] == len(section)


# ---- MMEncoderAttention (vision tower): npu_fusion_attention ----------------------------------
class NpuMMEncoderAttention(MMEncoderAttention):
    """Bidirectional attention of the vision tower through ``npu_fusion_attention`` (TND).

    The images of a batch are concatenated; ``cu_seqlens`` (cumulative, leading 0) marks
    where each one starts, and becomes the op's cumulative ``actual_seq_qlen`` /
    ``actual_seq_kvlen`` (host lists: one device-to-host copy per encoder call, as vLLM's own
    SDPA path does). Without ``cu_seqlens`` every batch row is one sequence.
    Constraints: self-attention (same query and key length), float32/float16/bfloat16,
    head size <= 768, query heads a multiple of KV heads, at most 1024 sequences, no FP8.
    """

    def forward_oot(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: torch.Tensor | None = None,
        sequence_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        bsz, q_len = query.shape[:2]
        if cu_seqlens is not None:
            cum = cu_seqlens[1:].tolist()
        else:
            cum = [q_len * (b + 1) for b in range(bsz)]
        fits = (
            not self.fp8_enabled
            and key.shape[1] == q_len
            and query.dtype in _FLOATS
            and self.head_size <= 768
            and self.num_heads % self.num_kv_heads == 0
            and len(cum) <= 1024
        )
        if not fits:
            return self.forward_native(query, key, value, cu_seqlens, max_seqlen, sequence_lengths)
        tokens = bsz * q_len
        out = _npu().npu_fusion_attention(
            query.reshape(tokens, self.num_heads, self.head_size).contiguous(),
            key.reshape(tokens, self.num_kv_heads, self.head_size).contiguous(),
            value.reshape(tokens, self.num_kv_heads, self.head_size).contiguous(),
            self.num_heads,
            "TND",
            scale=float(self.scale),
            actual_seq_qlen=cum,
            actual_seq_kvlen=cum,
        )[0]
        if query.dim() == 4:
            return out.view(bsz, q_len, self.num_heads, self.head_size)
        return out.view(bsz, q_len, -1)


# ---- registration -----------------------------------------------------------------------------
REPLACEMENTS: dict[str, type[CustomOp]] = {
    "RMSNorm": NpuRMSNorm,
    "SiluAndMul": NpuSiluAndMul,
    "MRotaryEmbedding": NpuMRotaryEmbedding,
    "MMEncoderAttention": NpuMMEncoderAttention,
}


def register() -> None:
    """Register the replacements (idempotent; refuses to displace someone else's)."""
    _npu()
    if not _mrope_interleave_ok:
        logger.warning_once(
            "vllm-ascend-rerank: CANN %s predates %s, whose aclnnRopeWithSinCosCacheV2 "
            "npu_mrope needs for interleaved M-RoPE (Qwen3-VL): those layers run vLLM's "
            "native M-RoPE.",
            device.cann_version(),
            MROPE_INTERLEAVE_CANN,
        )
    for in_tree_name, cls in REPLACEMENTS.items():
        current = custom_op.op_registry_oot.get(in_tree_name)
        if current is cls:
            continue
        if current is not None:
            raise RuntimeError(f"{in_tree_name} is already replaced by {current.__qualname__}")
        op_name = cls.name  # the in-tree op name, e.g. "rms_norm"
        CustomOp.register_oot(cls, name=in_tree_name)
        # register_oot renames the class after the registry key; keep the op's own name so
        # that --compilation-config custom_ops ("-rms_norm", ...) still applies to it.
        cls.name = op_name
