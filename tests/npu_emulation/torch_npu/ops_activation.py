"""``npu_swiglu`` (plain function; see ``opaque``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

from ._common import _FLOATS, _check, _count


def npu_swiglu(self: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``torch_npu.npu_swiglu(self, dim=-1) -> Tensor``.

    Source: the torch_npu 2.14.0 wheel (schema: ``csrc/aten/npu_native_functions_by_codegen
    .yaml``; rules: ``_op_plugin_docs.py``; output: ``op_plugin/meta/_meta_registrations.py``;
    checked by tests/test_torch_npu_conformance.py). A, B = ``self`` halved along ``dim``;
    out = A * sigmoid(A) * B in ``self``'s dtype. 1-8 dims, float32/float16/bfloat16, an even
    size on ``dim`` (the halves must match). The 2.14.0 docs say nothing of layout; the newer
    op page asks for a contiguous, non-empty input, kept here as the stricter reading.
    """
    op = "npu_swiglu"
    _count(op)
    _check(1 <= self.dim() <= 8, op, f"self must have 1-8 dims, got {self.dim()}")
    _check(self.is_contiguous(), op, "non-contiguous input is not supported")
    _check(self.numel() > 0, op, "empty input is not supported")
    _check(self.dtype in _FLOATS, op, f"dtype {self.dtype} is not supported")
    _check(-self.dim() <= dim < self.dim(), op, f"dim {dim} out of range")
    _check(self.shape[dim] % 2 == 0, op, f"size {self.shape[dim]} on dim {dim} must be even")
    a, b = self.float().chunk(2, dim=dim)
    return (F.silu(a) * b).to(self.dtype)
