"""CPU reference mode: RMSNorm through the C++ library, as a provider of vLLM's IR ops.

vLLM 0.32 routes every ``RMSNorm`` layer through its IR ops ``rms_norm`` and
``fused_add_rms_norm`` (``vllm/ir/ops/layernorm.py``), whose implementations are chosen per
platform by priority (``Platform.get_default_ir_op_priority``). The native implementation is
a chain of elementwise torch ops, each a pass over the activations; the C++ kernels
(``csrc/cpu/norm_ops.cpp``) make one pass per row with the native arithmetic and roundings.
Registered in every vLLM process by the general plugin; chosen by the platform in the CPU
reference mode when the library is built and ``VLLM_ASCEND_RERANK_OPS`` is ``auto``.
"""

from __future__ import annotations

import functools

import torch

PROVIDER = "vllm_ascend_rerank_cpp"
_DTYPES = (torch.float32, torch.bfloat16)


def _rows_ok(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    return (
        weight is not None
        and x.device.type == "cpu"
        and x.dtype in _DTYPES
        and weight.dtype == x.dtype
        and x.dim() >= 1
        and x.stride(-1) == 1
        and weight.is_contiguous()
    )


def _rms_norm_args(
    x: torch.Tensor, weight: torch.Tensor | None, epsilon: float, variance_size: int | None = None
) -> bool:
    return variance_size is None and _rows_ok(x, weight)


def _fused_add_args(
    x: torch.Tensor,
    x_residual: torch.Tensor,
    weight: torch.Tensor | None,
    epsilon: float,
    variance_size: int | None = None,
) -> bool:
    return (
        variance_size is None
        and _rows_ok(x, weight)
        and x_residual.shape == x.shape
        and x_residual.dtype == x.dtype
        and x_residual.stride(-1) == 1
    )


@functools.cache
def register() -> None:
    """Register the provider with vLLM's IR ops (idempotent)."""
    from vllm import ir

    from vllm_ascend_rerank import native_ops

    # A library built before these kernels existed has no such ops: native it is.
    supported = native_ops.available() and hasattr(torch.ops.vllm_ascend_rerank, "rms_norm")
    if supported:
        _register_fakes()

    @ir.ops.rms_norm.register_impl(PROVIDER, supported=supported, supports_args=_rms_norm_args)
    def rms_norm(
        x: torch.Tensor,
        weight: torch.Tensor | None,
        epsilon: float,
        variance_size: int | None = None,
    ) -> torch.Tensor:
        return torch.ops.vllm_ascend_rerank.rms_norm(x, weight, epsilon)

    @ir.ops.fused_add_rms_norm.register_impl(
        PROVIDER, supported=supported, supports_args=_fused_add_args, inplace=True
    )
    def fused_add_rms_norm(
        x: torch.Tensor,
        x_residual: torch.Tensor,
        weight: torch.Tensor | None,
        epsilon: float,
        variance_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        torch.ops.vllm_ascend_rerank.fused_add_rms_norm(x, x_residual, weight, epsilon)
        return x, x_residual


def _register_fakes() -> None:
    # Shapes only, so FakeTensor / torch.compile can trace the ops.
    @torch.library.register_fake("vllm_ascend_rerank::rms_norm")
    def _rms_norm_fake(x: torch.Tensor, weight: torch.Tensor, epsilon: float) -> torch.Tensor:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)

    @torch.library.register_fake("vllm_ascend_rerank::fused_add_rms_norm")
    def _fused_add_rms_norm_fake(
        x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, epsilon: float
    ) -> None:
        return None


def wanted() -> bool:
    """Whether the CPU reference mode should put this provider first."""
    from vllm_ascend_rerank import device, envs, native_ops

    if envs.VLLM_ASCEND_RERANK_OPS != "auto" or device.is_npu() or not native_ops.available():
        return False
    return hasattr(torch.ops.vllm_ascend_rerank, "rms_norm")
