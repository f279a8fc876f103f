"""``npu_rms_norm`` and ``npu_add_rms_norm`` (plain functions; see ``opaque``)."""

from __future__ import annotations

import torch

from ._common import _FLOATS, _check, _count


def _rms(x: torch.Tensor, gamma_dims: int, epsilon: float) -> torch.Tensor:
    dims = tuple(range(x.dim() - gamma_dims, x.dim()))
    return torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + epsilon)


def npu_rms_norm(
    self: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch_npu.npu_rms_norm(self, gamma, epsilon=1e-06) -> (Tensor, Tensor)``.

    Source: the torch_npu 2.14.0 wheel (schema: ``csrc/aten/npu_native_functions_by_codegen
    .yaml``; rules: ``_op_plugin_docs.py``; outputs: ``op_plugin/meta/_meta_registrations.py``;
    checked by tests/test_torch_npu_conformance.py): y = x / Rms(x) * gamma with Rms over the
    trailing ``gamma.dim()`` axes; returns (y in self's dtype, rstd in float32 with the
    normalised axes kept as size 1). ``self`` has 2-8 dims and is float16/bfloat16/float32;
    gamma has ``self``'s dtype (2.14.0 allows no mixed pair) and trailing shape.
    """
    op = "npu_rms_norm"
    _count(op)
    _check(2 <= self.dim() <= 8, op, f"self must have 2-8 dims, got {self.dim()}")
    _check(
        0 < gamma.dim() < self.dim() and tuple(gamma.shape) == tuple(self.shape[-gamma.dim() :]),
        op,
        f"gamma shape {tuple(gamma.shape)} must equal self's trailing shape {tuple(self.shape)}",
    )
    _check(self.dtype in _FLOATS, op, f"unsupported dtype self={self.dtype}")
    _check(
        gamma.dtype == self.dtype,
        op,
        f"unsupported dtypes self={self.dtype} gamma={gamma.dtype}: gamma takes self's dtype",
    )
    x = self.float()
    rstd = _rms(x, gamma.dim(), epsilon)
    y = (x * rstd * gamma.float()).to(self.dtype)
    return y, rstd


def npu_add_rms_norm(
    x1: torch.Tensor, x2: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch_npu.npu_add_rms_norm(x1, x2, gamma, epsilon=1e-06) -> (y, rstd, x)``.

    Source: the torch_npu 2.14.0 wheel (schema: ``csrc/aten/npu_native_functions_by_codegen
    .yaml``; outputs: ``op_plugin/meta/_meta_registrations.py``; checked by
    tests/test_torch_npu_conformance.py). Its ``_op_plugin_docs.py`` has no entry for this op,
    so the rules are the newer op page's: x = x1 + x2, y = RMSNorm(x) * gamma. x1/x2: 1-8 dims,
    float32/float16/bfloat16, not empty; gamma has x1's dtype and trailing shape. Returns y and
    x in x1's dtype, rstd in float32. The sum is normalised before it is rounded to x1's dtype.
    """
    op = "npu_add_rms_norm"
    _count(op)
    _check(1 <= x1.dim() <= 8, op, f"x1 must have 1-8 dims, got {x1.dim()}")
    _check(x1.numel() > 0, op, "empty tensors are not supported")
    _check(x1.shape == x2.shape, op, f"x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} differ")
    _check(x1.dtype in _FLOATS and x2.dtype == x1.dtype, op, f"bad dtypes {x1.dtype}/{x2.dtype}")
    _check(gamma.dtype == x1.dtype, op, f"gamma dtype {gamma.dtype} must equal x1's {x1.dtype}")
    _check(
        0 < gamma.dim() <= x1.dim() and tuple(gamma.shape) == tuple(x1.shape[-gamma.dim() :]),
        op,
        f"gamma shape {tuple(gamma.shape)} must equal x1's trailing shape {tuple(x1.shape)}",
    )
    x = x1.float() + x2.float()
    rstd = _rms(x, gamma.dim(), epsilon)
    y = (x * rstd * gamma.float()).to(x1.dtype)
    return y, rstd, x.to(x1.dtype)
