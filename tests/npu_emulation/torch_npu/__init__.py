"""A CPU emulation of the part of ``torch_npu`` that vllm-ascend-rerank calls.

Tests put ``tests/npu_emulation`` on ``sys.path`` (or ``PYTHONPATH``, so that vLLM's engine
subprocesses see it too) to run the plugin's NPU code paths on a machine without an Ascend
NPU. It is NOT torch_npu: it emulates exactly the ops our code calls, on CPU tensors, following
their documented semantics, and it refuses what the documentation says the real op refuses
(layouts, dtypes, shapes, missing arguments), so that a wrong call fails here before it fails
on hardware. Features the real op has but our code never uses raise ``NotImplementedError``.

Sources (Ascend op-plugin repository, ``docs/zh/custom_APIs/torch_npu/``, master 2026-08;
the same pages are published as the "Ascend Extension for PyTorch custom API reference" on
hiascend.com):

- ``torch_npu-npu_fused_infer_attention_score.md``
- ``torch_npu-npu_fusion_attention.md``
- ``（beta）torch_npu-npu_rms_norm.md``, ``torch_npu-npu_add_rms_norm.md``
- ``（beta）torch_npu-npu_swiglu.md``
- ``torch_npu-npu_mrope.md``
- ``torch_npu-npu_scatter_nd_update_.md``
- NPUGraph: Ascend/pytorch ``docs/en/developer_notes/framework_feature_guide_pytorch/
  pytorch_npugraph_desc.md`` (``torch_npu.npu.NPUGraph``, ``torch_npu.npu.graph``).

Importing this package installs ``torch.npu`` (as the real torch_npu does). The emulated device
reports itself unavailable (``torch.npu.is_available() is False``): tensors stay on the CPU and
the plugin keeps running its CPU platform; only the kernels it selects change.

The ops that run inside torch.compile'd model code are registered as opaque torch ops, as the
real ones are, so Dynamo records a call instead of tracing the emulation's Python.

Every op call is counted in ``calls``; with ``TORCH_NPU_EMULATION_TRACE=<path>`` each process
appends its counts to that file (one JSON object per line) at exit, so an end-to-end test can
prove the engine's worker really ran the NPU kernels.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import json
import math
import os
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from torch.utils._python_dispatch import TorchDispatchMode

__version__ = "2.13.0+emulation"
__emulation__ = True

calls: collections.Counter[str] = collections.Counter()

_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INT_MAX = 2147483647


class NpuOpError(RuntimeError):
    """What the real op raises (a RuntimeError from its parameter checks)."""


def _check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise NpuOpError(f"{op}: {msg}")


def _count(op: str) -> None:
    calls[op] += 1


def _write_trace() -> None:
    path = os.environ.get("TORCH_NPU_EMULATION_TRACE")
    if path and calls:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), "calls": dict(calls)}) + "\n")


atexit.register(_write_trace)


def _int_list(value: Any, op: str, name: str) -> list[int]:
    # The documented type is a host list of ints (SymInt[]).
    _check(
        isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value),
        op,
        f"{name} must be a list of int, got {type(value).__name__}",
    )
    return list(value)


def _cumulative(value: list[int], op: str, name: str) -> None:
    _check(len(value) > 0, op, f"{name} must not be empty")
    _check(value[0] >= 0, op, f"{name} must be non-negative")
    _check(
        all(b >= a for a, b in zip(value, value[1:], strict=False)),
        op,
        f"{name} holds cumulative lengths: each value must be >= the previous one",
    )


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    right_down_causal: bool,
) -> torch.Tensor:
    """One sequence in fp32: q [Sq, N, D], k/v [Skv, Nkv, D] -> [Sq, N, Dv]. With
    ``right_down_causal`` query i sees key j <= i + (Skv - Sq); a row that sees nothing
    outputs zeros. The mask and the GQA head mapping are built here; torch's SDPA only does
    the softmax(QK^T)V arithmetic (memory-efficiently: vLLM profiles with long sequences)."""
    sq, skv = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    # [1, N, S, D]: the 4D form takes torch's memory-efficient CPU kernel
    qf = q.float().transpose(0, 1).unsqueeze(0)
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)  # h -> h // group
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
    mask = None
    if right_down_causal:
        mask = torch.arange(skv).unsqueeze(0) <= torch.arange(sq).unsqueeze(1) + (skv - sq)
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=scale)[0]
    if mask is not None:
        out = out.masked_fill(~mask.any(-1).view(1, sq, 1), 0.0)  # rows with no visible key
    return out.transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# npu_rms_norm / npu_add_rms_norm
# ---------------------------------------------------------------------------------------------
# Atlas A2/A3 table of (self dtype, gamma dtype) pairs.
_RMS_NORM_DTYPES = {
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float32),
}


def _rms(x: torch.Tensor, gamma_dims: int, epsilon: float) -> torch.Tensor:
    dims = tuple(range(x.dim() - gamma_dims, x.dim()))
    return torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + epsilon)


def npu_rms_norm(
    self: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch_npu.npu_rms_norm(self, gamma, epsilon=1e-06) -> (Tensor, Tensor)``.

    Follows "(beta) torch_npu.npu_rms_norm" (op-plugin docs): y = x / Rms(x) * gamma with
    Rms over the trailing ``gamma.dim()`` axes; returns (y in self's dtype, rstd in float32 with
    the normalised axes kept as size 1). ``self`` has 2-8 dims; gamma's shape is ``self``'s
    trailing shape; dtype pairs per the A2/A3 table.
    """
    op = "npu_rms_norm"
    _count(op)
    _check(2 <= self.dim() <= 8, op, f"self must have 2-8 dims, got {self.dim()}")
    _check(
        0 < gamma.dim() < self.dim() and tuple(gamma.shape) == tuple(self.shape[-gamma.dim() :]),
        op,
        f"gamma shape {tuple(gamma.shape)} must equal self's trailing shape {tuple(self.shape)}",
    )
    _check(
        (self.dtype, gamma.dtype) in _RMS_NORM_DTYPES,
        op,
        f"unsupported dtypes self={self.dtype} gamma={gamma.dtype}",
    )
    x = self.float()
    rstd = _rms(x, gamma.dim(), epsilon)
    y = (x * rstd * gamma.float()).to(self.dtype)
    return y, rstd


def npu_add_rms_norm(
    x1: torch.Tensor, x2: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch_npu.npu_add_rms_norm(x1, x2, gamma, epsilon=1e-06) -> (y, rstd, x)``.

    Follows "torch_npu.npu_add_rms_norm" (op-plugin docs): x = x1 + x2, y = RMSNorm(x) * gamma.
    x1/x2: 1-8 dims, float32/float16/bfloat16, not empty; gamma has x1's dtype and trailing
    shape. Returns y and x in x1's dtype, rstd in float32. The sum is normalised before it is
    rounded to x1's dtype.
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


# ---------------------------------------------------------------------------------------------
# npu_swiglu
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# npu_mrope
# ---------------------------------------------------------------------------------------------
# mrope_section values the page lists as MRoPE configurations ([0, 0, 0] / None = plain RoPE).
_MROPE_SECTIONS = ([16, 24, 24], [24, 20, 20], [8, 12, 12], [16, 16, 16, 16])


def _mrope_cos_sin(
    cos_sin: torch.Tensor, section: list[int], cache_mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos_sin [m, T, rotary_dim] -> cos, sin [T, rotary_dim / 2] per the page's formulas."""
    cos, sin = cos_sin.chunk(2, dim=-1)
    if cache_mode == "default":
        return (
            torch.cat([m[i] for i, m in enumerate(cos.split(section, dim=-1))], dim=-1),
            torch.cat([m[i] for i, m in enumerate(sin.split(section, dim=-1))], dim=-1),
        )
    # "interleave": start from the T rows; channels 1, 4, 7, ... below 3 * section[1] take H,
    # channels 2, 5, 8, ... below 3 * section[1] take W (the page bounds both by section[1]).
    out = []
    for t in (cos, sin):
        r = t[0].clone()
        r[..., 1 : section[1] * 3 : 3] = t[1, ..., 1 : section[1] * 3 : 3]
        r[..., 2 : section[1] * 3 : 3] = t[2, ..., 2 : section[1] * 3 : 3]
        out.append(r)
    return out[0], out[1]


def _rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_mode: str
) -> torch.Tensor:
    """x [T, N, head_size] (fp32), cos/sin [T, rotary_dim / 2]."""
    rot = cos.shape[-1] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if rotary_mode == "half":
        x1, x2 = x_rot.chunk(2, dim=-1)
        x_rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = x_rot[..., ::2], x_rot[..., 1::2]
        x_rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((x_rot, x_pass), dim=-1)


def npu_mrope(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    head_size: int,
    *,
    mrope_section: list[int] | None = None,
    rotary_mode: str = "half",
    cache_mode: str = "default",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch_npu.npu_mrope(positions, query, key, cos_sin_cache, head_size, *,
    mrope_section=None, rotary_mode='half', cache_mode='default') -> (Tensor, Tensor)``.

    Follows "torch_npu.npu_mrope" (op-plugin docs). RoPE mode: positions [T], section None or
    [0, 0, 0]. MRoPE mode: positions [m, T] with m = len(section) (3 or 4); section one of the
    documented configurations, summing to rotary_dim / 2. cos_sin_cache [max_seq_len, rotary_dim]
    holds cos then sin. query/key are 2D [T, heads * head_size], same float dtype as the cache.
    head_size and rotary_dim must be multiples of 32 (float16/bfloat16) or 16 (float32).
    cache_mode 'interleave' (MRoPE only, not with 4 sections) interleaves T/H/W channels.
    Returns new tensors.
    """
    op = "npu_mrope"
    _count(op)
    section = list(mrope_section) if mrope_section is not None else [0, 0, 0]
    rope_mode = all(s == 0 for s in section)
    _check(positions.dtype in (torch.int32, torch.int64), op, "positions must be int32/int64")
    if rope_mode:
        _check(positions.dim() == 1, op, "RoPE mode takes 1D positions [num_tokens]")
        _check(cache_mode == "default", op, "RoPE mode supports cache_mode='default' only")
    else:
        _check(section in _MROPE_SECTIONS, op, f"mrope_section {section} is not supported")
        _check(
            positions.dim() == 2 and positions.shape[0] == len(section),
            op,
            f"MRoPE positions must be [{len(section)}, num_tokens], got {tuple(positions.shape)}",
        )
        _check(
            not (cache_mode == "interleave" and len(section) == 4),
            op,
            "cache_mode='interleave' is not supported with a 4-part mrope_section",
        )
    _check(rotary_mode in ("half", "interleaved"), op, f"rotary_mode {rotary_mode!r}")
    _check(cache_mode in ("default", "interleave"), op, f"cache_mode {cache_mode!r}")
    _check(query.dim() == 2 and key.dim() == 2, op, "query and key must be 2D [T, heads*head_size]")
    num_tokens = positions.shape[-1]
    _check(
        query.shape[0] == num_tokens and key.shape[0] == num_tokens,
        op,
        f"query/key rows must equal num_tokens {num_tokens}",
    )
    _check(query.dtype in _FLOATS, op, f"dtype {query.dtype} is not supported")
    _check(
        key.dtype == query.dtype and cos_sin_cache.dtype == query.dtype,
        op,
        "query, key and cos_sin_cache must have the same dtype",
    )
    _check(cos_sin_cache.dim() == 2, op, "cos_sin_cache must be 2D [max_seq_len, rotary_dim]")
    rotary_dim = cos_sin_cache.shape[1]
    align = 16 if query.dtype == torch.float32 else 32
    _check(head_size % align == 0, op, f"head_size {head_size} must be a multiple of {align}")
    _check(rotary_dim % align == 0, op, f"rotary_dim {rotary_dim} must be a multiple of {align}")
    _check(rotary_dim <= head_size, op, "rotary_dim must be <= head_size")
    _check(
        query.shape[1] % head_size == 0 and key.shape[1] % head_size == 0,
        op,
        "query/key widths must be multiples of head_size",
    )
    if not rope_mode:
        _check(sum(section) == rotary_dim // 2, op, "sum(mrope_section) must be rotary_dim / 2")
    _check(
        num_tokens == 0 or int(positions.max()) < cos_sin_cache.shape[0],
        op,
        "positions must be < cos_sin_cache.shape[0]",
    )
    cos_sin = cos_sin_cache.float()[positions.long()]
    if rope_mode:
        cos, sin = cos_sin.chunk(2, dim=-1)
    else:
        cos, sin = _mrope_cos_sin(cos_sin, section, cache_mode)
    outs = []
    for x in (query, key):
        heads = x.float().view(num_tokens, -1, head_size)
        outs.append(_rotate(heads, cos, sin, rotary_mode).reshape(x.shape).to(x.dtype))
    return outs[0], outs[1]


# ---------------------------------------------------------------------------------------------
# npu_scatter_nd_update_
# ---------------------------------------------------------------------------------------------
_SCATTER_DTYPES = (
    torch.float32, torch.float16, torch.bool, torch.bfloat16, torch.int64, torch.int8
)


def npu_scatter_nd_update_(
    input: torch.Tensor,  # noqa: A002 - doc name
    indices: torch.Tensor,
    updates: torch.Tensor,
) -> torch.Tensor:
    """``torch_npu.npu_scatter_nd_update_(input, indices, updates) -> Tensor`` (in place).

    Follows "torch_npu.npu_scatter_nd_update_" (op-plugin docs): with a = indices.shape[-1],
    input[indices[i]] = updates[i] over input's first a dims. input: 1-8 dims (non-contiguous
    allowed), dtype float32/float16/bool/bfloat16/int64/int8 (A2/A3), updates of the same
    dtype with shape indices.shape[:-1] + input.shape[a:]; indices int32/int64, >= 2D, never
    out of bounds (the real op does not support it; the emulation raises).
    """
    op = "npu_scatter_nd_update_"
    _count(op)
    _check(1 <= input.dim() <= 8, op, f"input must have 1-8 dims, got {input.dim()}")
    _check(input.dtype in _SCATTER_DTYPES, op, f"dtype {input.dtype} is not supported")
    _check(updates.dtype == input.dtype, op, "updates must have input's dtype")
    _check(indices.dtype in (torch.int32, torch.int64), op, "indices must be int32/int64")
    _check(indices.dim() >= 2, op, "indices must have at least 2 dims")
    a = indices.shape[-1]
    _check(1 <= a <= input.dim(), op, f"indices.shape[-1]={a} exceeds input dims {input.dim()}")
    want = tuple(indices.shape[:-1]) + tuple(input.shape[a:])
    _check(tuple(updates.shape) == want, op, f"updates shape {tuple(updates.shape)} != {want}")
    idx = indices.reshape(-1, a).long()
    if idx.numel():
        bounds = torch.tensor(input.shape[:a])
        _check(bool(((idx >= 0) & (idx < bounds)).all()), op, "indices out of bounds")
        input[tuple(idx.t())] = updates.reshape(-1, *input.shape[a:])
    return input


# ---------------------------------------------------------------------------------------------
# npu_fused_infer_attention_score
# ---------------------------------------------------------------------------------------------
_FIA_LAYOUTS = (
    "BSH", "BSND", "BNSD", "BNSD_BSND", "BSH_NBSD", "BSND_NBSD", "BNSD_NBSD",
    "TND", "TND_NTD", "NTD_TND",
)  # fmt: skip
_FIA_UNEMULATED = (
    "pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2",
    "quant_offset2", "antiquant_scale", "antiquant_offset", "query_padding_size",
    "kv_padding_size", "key_antiquant_scale", "key_antiquant_offset", "value_antiquant_scale",
    "value_antiquant_offset", "key_shared_prefix", "value_shared_prefix",
    "actual_shared_prefix_len", "query_rope", "key_rope", "key_rope_antiquant_scale",
)  # fmt: skip


def _check_causal_mask(mask: torch.Tensor | None, op: str) -> None:
    """sparse_mode 2/3/4 take the "optimised" 2048 x 2048 mask (1 = masked, strictly above
    the diagonal); the emulation also checks its content, which the real op trusts."""
    _check(mask is not None, op, "sparse_mode 3 needs the optimised 2048x2048 atten_mask")
    assert mask is not None
    _check(
        tuple(mask.shape) in ((2048, 2048), (1, 2048, 2048), (1, 1, 2048, 2048)),
        op,
        f"optimised atten_mask must be 2048x2048, got {tuple(mask.shape)}",
    )
    _check(mask.dtype in (torch.bool, torch.int8, torch.uint8), op, "atten_mask dtype")
    want = torch.ones(2048, 2048, dtype=torch.bool).triu(1)
    _check(torch.equal(mask.reshape(2048, 2048).bool(), want), op, "atten_mask is not triu(1)")


def npu_fused_infer_attention_score(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    atten_mask: torch.Tensor | None = None,
    actual_seq_lengths: Sequence[int] | None = None,
    actual_seq_lengths_kv: Sequence[int] | None = None,
    block_table: torch.Tensor | None = None,
    num_heads: int = 1,
    scale: float = 1.0,
    pre_tokens: int = _INT_MAX,
    next_tokens: int = _INT_MAX,
    input_layout: str = "BSH",
    num_key_value_heads: int = 0,
    sparse_mode: int = 0,
    inner_precise: int = 0,
    block_size: int = 0,
    antiquant_mode: int = 0,
    softmax_lse_flag: bool = False,
    key_antiquant_mode: int = 0,
    value_antiquant_mode: int = 0,
    **unemulated: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch_npu.npu_fused_infer_attention_score(query, key, value, *, ...) -> (out, lse)``.

    Follows "torch_npu.npu_fused_infer_attention_score" (op-plugin docs). Emulated: the TND
    layout (query [T, N, D], T = sum of the batch's query lengths) with
    ``actual_seq_lengths`` = cumulative query lengths (required, one entry per batch, <= 4096),
    GQA through ``num_key_value_heads`` (divides ``num_heads``, ratio <= 64), ``scale``, and
    ``sparse_mode`` 0 (no mask; TND allows no mask with mode 0) or 3 (rightDownCausal: query i of
    a batch with Sq queries and Skv keys sees keys j <= i + Skv - Sq; needs the optimised
    2048x2048 triu mask). Without ``block_table`` key/value are [T_kv, KV_N, D] and
    ``actual_seq_lengths_kv`` is cumulative. With ``block_table`` (int32 [B, >= max blocks],
    PageAttention) key/value are the paged caches [num_blocks, block_size, KV_N*D] or
    [num_blocks, KV_N, block_size, D], ``block_size`` must match them (multiple of 16, <= 1024
    for TND with D != 512) and ``actual_seq_lengths_kv`` holds each batch's own KV length (the
    form vllm-ascend's attention_v1.py passes with a block table).
    query/key/value: float16 or bfloat16 only (no float32), contiguous; TND without rope needs
    D = 128 (or 192). Returns (attention_out [T, N, D] in query's dtype, softmax_lse [1] = 0).
    """
    op = "npu_fused_infer_attention_score"
    _count(op)
    for name, val in unemulated.items():
        if name not in _FIA_UNEMULATED:
            raise TypeError(f"{op}() got an unexpected keyword argument {name!r}")
        if val is not None:
            raise NotImplementedError(f"{op}: {name} is not emulated")
    if softmax_lse_flag:
        raise NotImplementedError(f"{op}: softmax_lse_flag=True is not emulated")
    _check(input_layout in _FIA_LAYOUTS, op, f"input_layout {input_layout!r} is not supported")
    if input_layout != "TND":
        raise NotImplementedError(f"{op}: input_layout {input_layout!r} is not emulated")
    _check(query.dtype in _HALF, op, f"query dtype {query.dtype} is not supported")
    _check(key.dtype == query.dtype and value.dtype == query.dtype, op, "key/value dtype")
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check(t.is_contiguous(), op, f"{name} must be contiguous")
    _check(query.dim() == 3, op, f"TND query must be 3D [T, N, D], got {tuple(query.shape)}")
    total_q, n, d = query.shape
    nkv = num_key_value_heads or num_heads
    _check(num_heads == n, op, f"num_heads {num_heads} != query heads {n}")
    _check(n <= 256 and nkv <= 256, op, "at most 256 heads")
    _check(n % nkv == 0 and n // nkv <= 64, op, f"num_heads {n} / num_key_value_heads {nkv}")
    _check(d in (128, 192), op, f"TND without rope needs head dim 128 or 192, got {d}")
    _check(isinstance(scale, float), op, "scale must be a float")
    _check(sparse_mode in (0, 3), op, "TND supports sparse_mode 0 (no mask) or 3 (with mask)")
    if sparse_mode == 0:
        _check(atten_mask is None, op, "TND with sparse_mode 0 takes no atten_mask")
    else:
        _check_causal_mask(atten_mask, op)
    _check(actual_seq_lengths is not None, op, "TND needs actual_seq_lengths")
    _check(actual_seq_lengths_kv is not None, op, "TND needs actual_seq_lengths_kv")
    q_cum = _int_list(actual_seq_lengths, op, "actual_seq_lengths")
    kv_lens = _int_list(actual_seq_lengths_kv, op, "actual_seq_lengths_kv")
    _cumulative(q_cum, op, "actual_seq_lengths")
    batch = len(q_cum)
    _check(batch <= 4096, op, "at most 4096 batches")
    _check(len(kv_lens) == batch, op, "actual_seq_lengths_kv must have one entry per batch")
    _check(q_cum[-1] <= total_q, op, f"actual_seq_lengths exceed T={total_q}")

    if block_table is None:
        _check(key.dim() == 3 and key.shape[1:] == (nkv, d), op, f"key {tuple(key.shape)}")
        _check(value.shape[:2] == key.shape[:2], op, "value rows/heads must match key")
        _cumulative(kv_lens, op, "actual_seq_lengths_kv")
        _check(kv_lens[-1] <= key.shape[0], op, "actual_seq_lengths_kv exceed key rows")
        kv_starts = [0] + kv_lens[:-1]
        kv_rows = [(key[s:e], value[s:e]) for s, e in zip(kv_starts, kv_lens, strict=True)]
    else:
        kv_rows = _paged_kv(key, value, block_table, block_size, kv_lens, nkv, d, op)

    out = torch.zeros(total_q, n, d, dtype=query.dtype)
    context = False
    for b, (ks, vs) in enumerate(kv_rows):
        qs, qe = (q_cum[b - 1] if b else 0), q_cum[b]
        context |= ks.shape[0] > qe - qs
        if qe > qs:
            out[qs:qe] = _attend(query[qs:qe], ks, vs, scale, sparse_mode == 3).to(query.dtype)
    if context:  # lets end-to-end tests see that the prefix-cache path ran
        _count(f"{op}:cached_context")
    return out, torch.zeros(1, dtype=torch.float32)


def _paged_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    block_table: torch.Tensor,
    block_size: int,
    kv_lens: list[int],
    nkv: int,
    d: int,
    op: str,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """PageAttention: each batch's K/V rows gathered through its block table row."""
    _check(block_table.dtype == torch.int32, op, "block_table must be int32")
    _check(block_table.dim() == 2, op, "block_table must be 2D [B, maxBlockNumPerSeq]")
    _check(block_table.shape[0] == len(kv_lens), op, "block_table rows must equal the batch")
    _check(block_size > 0 and block_size % 16 == 0 and block_size <= 1024, op, "block_size")
    _check(key.shape == value.shape, op, "key and value caches must have the same shape")
    if key.dim() == 3:  # (blocknum, blocksize, H)
        _check(key.shape[1:] == (block_size, nkv * d), op, f"key cache {tuple(key.shape)}")
        k_rows = key.reshape(-1, nkv, d)
        v_rows = value.reshape(-1, nkv, d)
    else:  # (blocknum, KV_N, blocksize, D)
        _check(key.dim() == 4 and key.shape[1:] == (nkv, block_size, d), op, "key cache shape")
        k_rows = key.transpose(1, 2).reshape(-1, nkv, d)
        v_rows = value.transpose(1, 2).reshape(-1, nkv, d)
    num_blocks = key.shape[0]
    out = []
    for b, kv_len in enumerate(kv_lens):
        _check(kv_len >= 0, op, "actual_seq_lengths_kv must be non-negative")
        nb = math.ceil(kv_len / block_size)
        _check(nb <= block_table.shape[1], op, "block_table is too narrow for the KV length")
        ids = block_table[b, :nb].long()
        _check(bool(((ids >= 0) & (ids < num_blocks)).all()), op, "block id out of range")
        slots = (ids.unsqueeze(1) * block_size + torch.arange(block_size)).flatten()[:kv_len]
        out.append((k_rows[slots], v_rows[slots]))
    return out


# ---------------------------------------------------------------------------------------------
# npu_fusion_attention
# ---------------------------------------------------------------------------------------------
def npu_fusion_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    head_num: int,
    input_layout: str,
    pse: torch.Tensor | None = None,
    padding_mask: torch.Tensor | None = None,
    atten_mask: torch.Tensor | None = None,
    scale: float = 1.0,
    keep_prob: float = 1.0,
    pre_tockens: int = _INT_MAX,
    next_tockens: int = _INT_MAX,
    inner_precise: int = 0,
    prefix: Sequence[int] | None = None,
    actual_seq_qlen: Sequence[int] | None = None,
    actual_seq_kvlen: Sequence[int] | None = None,
    sparse_mode: int = 0,
    gen_mask_parallel: bool = True,
    sync: bool = False,
    softmax_layout: str = "",
    sink: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    seed: int = 0,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]:
    """``torch_npu.npu_fusion_attention(query, key, value, head_num, input_layout, ...)``.

    Follows "torch_npu.npu_fusion_attention" (op-plugin docs). Emulated: input_layout "TND"
    (varlen): query [T, N, D], key/value [T_kv, N_kv, D] (N divisible by N_kv, N <= 256,
    D <= 768, Dk >= Dv), float16/bfloat16/float32 with one dtype for all; actual_seq_qlen and
    actual_seq_kvlen are required cumulative lengths (at most 1024 batches in varlen); no
    atten_mask means full attention (sparse_mode has no effect), keep_prob 1 (no dropout).
    Returns the documented 7-tuple; only attention_out (first) is computed, the softmax
    statistics used by the backward pass are empty tensors.
    """
    op = "npu_fusion_attention"
    _count(op)
    _check(input_layout in ("BSH", "SBH", "BSND", "BNSD", "TND"), op, f"layout {input_layout!r}")
    if input_layout != "TND":
        raise NotImplementedError(f"{op}: input_layout {input_layout!r} is not emulated")
    _check(padding_mask is None, op, "padding_mask is not supported")
    for name, val in (("pse", pse), ("atten_mask", atten_mask), ("prefix", prefix),
                      ("sink", sink), ("dropout_mask", dropout_mask)):  # fmt: skip
        if val is not None:
            raise NotImplementedError(f"{op}: {name} is not emulated")
    if keep_prob != 1.0:
        raise NotImplementedError(f"{op}: dropout (keep_prob < 1) is not emulated")
    _check(query.dtype in _FLOATS, op, f"dtype {query.dtype} is not supported")
    _check(key.dtype == query.dtype and value.dtype == query.dtype, op, "q/k/v dtypes differ")
    _check(query.dim() == 3 and key.dim() == 3 and value.dim() == 3, op, "TND tensors are 3D")
    total_q, n, d = query.shape
    _check(head_num == n, op, f"head_num {head_num} != query heads {n}")
    nkv = key.shape[1]
    _check(value.shape[:2] == key.shape[:2], op, "key/value rows and heads must match")
    _check(n <= 256 and nkv > 0 and n % nkv == 0, op, f"heads {n} / kv heads {nkv}")
    _check(key.shape[2] == d and value.shape[2] <= d and d <= 768, op, "head dims")
    _check(actual_seq_qlen is not None and actual_seq_kvlen is not None, op, "TND needs lengths")
    q_cum = _int_list(actual_seq_qlen, op, "actual_seq_qlen")
    kv_cum = _int_list(actual_seq_kvlen, op, "actual_seq_kvlen")
    _cumulative(q_cum, op, "actual_seq_qlen")
    _cumulative(kv_cum, op, "actual_seq_kvlen")
    _check(len(q_cum) == len(kv_cum) and len(q_cum) <= 1024, op, "batch count")
    _check(q_cum[-1] <= total_q and kv_cum[-1] <= key.shape[0], op, "lengths exceed T")
    out = torch.zeros(total_q, n, value.shape[-1], dtype=query.dtype)
    for b in range(len(q_cum)):
        qs, qe = (q_cum[b - 1] if b else 0), q_cum[b]
        ks, ke = (kv_cum[b - 1] if b else 0), kv_cum[b]
        if qe > qs:
            out[qs:qe] = _attend(query[qs:qe], key[ks:ke], value[ks:ke], scale, False).to(
                query.dtype
            )
    empty = torch.empty(0, dtype=torch.float32)
    return out, empty, empty, empty, seed, offset, 0


# ---------------------------------------------------------------------------------------------
# Opaque registration: the real ops are torch ops, so torch.compile (Dynamo) records one call
# and never traces their insides; the same holds here for the ops that run in compiled model
# code. The checks above then run when the op executes, as on the device. (The attention and
# cache ops run inside vLLM's own opaque attention ops and are left as plain functions.)
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


npu_rms_norm = _opaque(  # type: ignore[assignment]
    npu_rms_norm,
    lambda self, gamma, epsilon=1e-6: (torch.empty_like(self), _rstd_like(self, gamma)),
)
npu_add_rms_norm = _opaque(  # type: ignore[assignment]
    npu_add_rms_norm,
    lambda x1, x2, gamma, epsilon=1e-6: (
        torch.empty_like(x1), _rstd_like(x1, gamma), torch.empty_like(x1)
    ),
)


def _swiglu_fake(input: torch.Tensor, dim: int = -1) -> torch.Tensor:  # noqa: A002
    shape = list(input.shape)
    shape[dim] //= 2
    return input.new_empty(shape)


npu_swiglu = _opaque(npu_swiglu, _swiglu_fake)  # type: ignore[assignment]
npu_mrope = _opaque(  # type: ignore[assignment]
    npu_mrope,
    lambda positions, query, key, cos_sin_cache, head_size, **kw: (
        torch.empty_like(query), torch.empty_like(key)
    ),
)


# ---------------------------------------------------------------------------------------------
# torch.npu: device facts, streams, events, memory, NPUGraph
# ---------------------------------------------------------------------------------------------
class Stream:
    """A stream on the emulated device: work runs synchronously, so waits are no-ops."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
        self.device = torch.device("cpu")
        self.priority = priority

    def wait_stream(self, stream: Stream) -> None: ...

    def wait_event(self, event: Event) -> None: ...

    def record_event(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def synchronize(self) -> None: ...

    def query(self) -> bool:
        return True


class Event:
    def __init__(self, enable_timing: bool = False, blocking: bool = False, **kwargs: Any) -> None:
        self.enable_timing = enable_timing
        self._time: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._time = time.perf_counter()

    def wait(self, stream: Stream | None = None) -> None: ...

    def synchronize(self) -> None: ...

    def query(self) -> bool:
        return True

    def elapsed_time(self, end_event: Event) -> float:
        if not self.enable_timing or self._time is None or end_event._time is None:
            raise RuntimeError("Events must be created with enable_timing=True and recorded")
        return (end_event._time - self._time) * 1000.0


_default_stream = Stream()
_current_stream = _default_stream


def current_stream(device: Any = None) -> Stream:
    return _current_stream


def default_stream(device: Any = None) -> Stream:
    return _default_stream


def set_stream(s: Stream) -> None:
    global _current_stream
    _current_stream = s


@contextlib.contextmanager
def stream(s: Stream | None) -> Iterator[None]:
    global _current_stream
    prev = _current_stream
    _current_stream = s or prev
    try:
        yield
    finally:
        _current_stream = prev


# Host synchronisations a real graph capture refuses ("operation not permitted when stream is
# capturing"): reading a device value on the host during capture would bake it into the graph.
_SYNC_OPS = {torch.ops.aten._local_scalar_dense.default}
_capturing: list[NPUGraph] = []


class _RecordMode(TorchDispatchMode):
    """Records every aten op run while a graph captures."""

    def __init__(self, graph: NPUGraph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _SYNC_OPS:
            raise RuntimeError(
                "NPUGraph capture: host synchronisation (.item()/.tolist()/...) is not "
                "permitted while the stream is capturing"
            )
        out = func(*args, **kwargs)
        self.graph._ops.append((func, args, kwargs, out))
        return out


def _refresh(recorded: Any, new: Any) -> None:
    """Write a replayed op's result into the tensors the capture produced (static memory)."""
    if isinstance(recorded, torch.Tensor) and isinstance(new, torch.Tensor):
        same = recorded.untyped_storage().data_ptr() == new.untyped_storage().data_ptr()
        if not same:  # views and in-place results already alias the recorded memory
            recorded.copy_(new)
    elif isinstance(recorded, (tuple, list)):
        for r, n in zip(recorded, new, strict=True):
            _refresh(r, n)


class NPUGraph:
    """``torch_npu.npu.NPUGraph``: capture_begin/capture_end record the kernels issued in
    between; replay() re-issues exactly those kernels on the same memory, so it reads whatever
    the captured input tensors hold now and writes the captured output tensors in place. The
    emulation records aten ops (one per kernel; an emulated torch_npu op is one op) with a
    dispatch mode and re-runs them. Python code between the kernels is not re-run, as on the
    device. Differences: the emulation also runs the work while capturing (the device only
    records it), and host tensors are captured too (the device runs host ops once)."""

    def __init__(self, keep_graph: bool = False) -> None:
        self._ops: list[tuple[Any, Any, Any, Any]] = []
        self._mode: _RecordMode | None = None
        self._captured = False
        self._pool: tuple[int, int] | None = None

    def capture_begin(self, pool: Any = None, capture_error_mode: str = "global") -> None:
        if self._captured or self._mode is not None:
            raise RuntimeError("NPUGraph: capture_begin on a graph that already captured")
        self._pool = pool if pool is not None else graph_pool_handle()
        self._mode = _RecordMode(self)
        self._mode.__enter__()
        _capturing.append(self)

    def capture_end(self) -> None:
        if self._mode is None:
            raise RuntimeError("NPUGraph: capture_end without capture_begin")
        self._mode.__exit__(None, None, None)
        self._mode = None
        _capturing.remove(self)
        self._captured = True
        _count("NPUGraph.capture")

    def replay(self) -> None:
        if not self._captured:
            raise RuntimeError("NPUGraph: replay before a capture finished")
        _count("NPUGraph.replay")
        with torch.inference_mode():  # like the device, ignore autograd state
            for func, args, kwargs, out in self._ops:
                _refresh(out, func(*args, **kwargs))

    def reset(self) -> None:
        self._ops.clear()
        self._captured = False

    def pool(self) -> Any:
        return self._pool


class graph:  # noqa: N801 - the real API's name
    """``torch_npu.npu.graph(npu_graph, pool=None, stream=None, ...)`` context manager."""

    def __init__(
        self,
        npu_graph: NPUGraph,
        pool: Any = None,
        stream: Stream | None = None,
        capture_error_mode: str = "global",
        **kwargs: Any,
    ) -> None:
        self.npu_graph = npu_graph
        self.pool = pool
        self.capture_error_mode = capture_error_mode

    def __enter__(self) -> None:
        synchronize()
        self.npu_graph.capture_begin(pool=self.pool, capture_error_mode=self.capture_error_mode)

    def __exit__(self, *exc: Any) -> None:
        self.npu_graph.capture_end()


_pool_ids = iter(range(1, 1 << 30))


def graph_pool_handle() -> tuple[int, int]:
    return (0, next(_pool_ids))


def is_current_stream_capturing() -> bool:
    return bool(_capturing)


def _ram() -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


def _build_npu_module() -> types.ModuleType:
    """The ``torch.npu`` module: no usable device, CPU-backed memory facts."""
    m = types.ModuleType("torch_npu.npu")
    m.__doc__ = "Emulated torch.npu (see torch_npu emulation package docstring)."
    names: dict[str, Any] = {
        "is_available": lambda: False,
        "device_count": lambda: 0,
        "current_device": lambda: 0,
        "set_device": lambda device: None,
        "synchronize": synchronize,
        "get_device_name": lambda device=None: "Ascend (emulated)",
        "get_device_properties": lambda device=None: types.SimpleNamespace(
            name="Ascend (emulated)", total_memory=_ram()[1]
        ),
        "mem_get_info": lambda device=None: _ram(),
        "memory_allocated": lambda device=None: 0,
        "max_memory_allocated": lambda device=None: 0,
        "memory_reserved": lambda device=None: 0,
        "reset_peak_memory_stats": lambda device=None: None,
        "memory_stats": lambda device=None: {"allocated_bytes.all.current": 0},
        "empty_cache": lambda: None,
        "manual_seed": lambda seed: torch.manual_seed(seed),
        "manual_seed_all": lambda seed: torch.manual_seed(seed),
        "is_bf16_supported": lambda: True,
        "Stream": Stream,
        "Event": Event,
        "current_stream": current_stream,
        "default_stream": default_stream,
        "set_stream": set_stream,
        "stream": stream,
        "NPUGraph": NPUGraph,
        "graph": graph,
        "graph_pool_handle": graph_pool_handle,
        "is_current_stream_capturing": is_current_stream_capturing,
    }
    for name, value in names.items():
        setattr(m, name, value)
    return m


def synchronize(device: Any = None) -> None:
    """Work on the emulated device is synchronous."""


npu = _build_npu_module()
sys.modules["torch_npu.npu"] = npu
if not hasattr(torch, "npu"):  # as the real torch_npu: torch.npu is its npu module
    torch.npu = npu  # type: ignore[attr-defined]
    sys.modules.setdefault("torch.npu", npu)
