"""The emulated ops that run in torch.compile'd model code, registered as opaque torch ops."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from . import ops_activation, ops_norm, ops_rope


# ---------------------------------------------------------------------------------------------
# Opaque registration: the real ops are torch ops, so torch.compile (Dynamo) records one call
# and never traces their insides; the same holds here for the ops that run in compiled model
# code. The ops modules' checks then run when the op executes, as on the device. (The attention
# and cache ops run inside vLLM's own opaque attention ops and are left as plain functions.)
# ---------------------------------------------------------------------------------------------
def _opaque(fn: Callable[..., Any], fake: Callable[..., Any]) -> Callable[..., Any]:
    op = torch.library.custom_op(f"npu_emulation::{fn.__name__}", mutates_args=())(fn)
    op.register_fake(fake)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return op(*args, **kwargs)

    return call


def _rstd_like(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    g = gamma.dim()
    return x.new_empty(tuple(x.shape[:-g]) + (1,) * g, dtype=torch.float32)


npu_rms_norm = _opaque(
    ops_norm.npu_rms_norm,
    lambda self, gamma, epsilon=1e-6: (torch.empty_like(self), _rstd_like(self, gamma)),
)
npu_add_rms_norm = _opaque(
    ops_norm.npu_add_rms_norm,
    lambda x1, x2, gamma, epsilon=1e-6: (
        torch.empty_like(x1),
        _rstd_like(x1, gamma),
        torch.empty_like(x1),
    ),
)


def _swiglu_fake(self: torch.Tensor, dim: int = -1) -> torch.Tensor:
    shape = list(self.shape)
    shape[dim] //= 2
    return self.new_empty(shape)


npu_swiglu = _opaque(ops_activation.npu_swiglu, _swiglu_fake)
npu_mrope = _opaque(
    ops_rope.npu_mrope,
    lambda positions, query, key, cos_sin_cache, head_size, **kw: (
        torch.empty_like(query),
        torch.empty_like(key),
    ),
)
