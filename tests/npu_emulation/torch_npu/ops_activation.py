"""``npu_swiglu`` (plain function; see ``opaque``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

from ._common import _FLOATS, _check, _count


def npu_swiglu(input: torch.Tensor, dim: int = -1) -> torch.Tensor:  # noqa: A002 - doc name
    """``torch_npu.npu_swiglu(input, dim=-1) -> Tensor``.

    Follows "(beta) torch_npu.npu_swiglu" (op-plugin docs): A, B = input split in halves along
    ``dim``; out = A * sigmoid(A) * B. 1-8 dims, even size on ``dim``, float32/float16/bfloat16,
    contiguous and non-empty input.
    """
    op = "npu_swiglu"
    _count(op)
    _check(1 <= input.dim() <= 8, op, f"input must have 1-8 dims, got {input.dim()}")
    _check(input.is_contiguous(), op, "non-contiguous input is not supported")
    _check(input.numel() > 0, op, "empty input is not supported")
    _check(input.dtype in _FLOATS, op, f"dtype {input.dtype} is not supported")
    _check(-input.dim() <= dim < input.dim(), op, f"dim {dim} out of range")
    _check(input.shape[dim] % 2 == 0, op, f"size {input.shape[dim]} on dim {dim} must be even")
    a, b = input.float().chunk(2, dim=dim)
    return (F.silu(a) * b).to(input.dtype)
