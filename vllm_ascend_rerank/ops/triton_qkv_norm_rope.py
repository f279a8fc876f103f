"""Qwen3's attention prologue in one Triton pass (for triton-ascend): split qkv, RMSNorm each
q and k head, apply (M)RoPE.

torch_npu has no fused op for this sequence; eager it is a split, two RMSNorms and a rotary
embedding, each a full read and write of q and k. Here one program handles one (token, head):
it loads the head once, normalises it in fp32 and rotates it before a single store.

``qkv_norm_rope_reference`` is the same computation in plain torch (vLLM's semantics: the
norm in fp32, the rotation NeoX style; MRoPE sections chunked or interleaved T/H/W), used as
the test oracle and as the fallback where Triton is missing. Triton is imported lazily: the
package imports without it.
"""

# ruff: noqa: N803 - Triton constexpr parameters are upper case by convention
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch


def _mrope_cos_sin(
    cos_sin_cache: torch.Tensor,
    positions: torch.Tensor,
    mrope_section: Sequence[int],
    interleaved: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``[tokens, rotary_dim / 2]``: rotary pair i takes the T, H or W position."""
    cos_sin = cos_sin_cache.float()[positions.long()]
    cos, sin = cos_sin.chunk(2, dim=-1)
    if positions.dim() == 1:
        return cos, sin
    half = cos.shape[-1]
    pair = torch.arange(half, device=cos.device)
    if interleaved:  # THWTHW...: pair i % 3 == 1 is H, == 2 is W, within each section's span
        axis = torch.where((pair % 3 == 1) & (pair < 3 * mrope_section[1]), 1, 0)
        axis = torch.where((pair % 3 == 2) & (pair < 3 * mrope_section[2]), 2, axis)
    else:  # TTT..HHH..WWW
        bounds = torch.tensor(list(mrope_section), device=cos.device).cumsum(0)
        axis = torch.bucketize(pair, bounds, right=True)
    # cos[axis[i], t, i] for every token t and pair i
    return cos[axis, :, pair].t(), sin[axis, :, pair].t()


def qkv_norm_rope_reference(
    qkv: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    positions: torch.Tensor,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    eps: float,
    mrope_section: Sequence[int] = (),
    mrope_interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k (normalised and rotated, ``[tokens, heads * head_size]``) and v (a view of qkv).

    qkv ``[tokens, (num_q_heads + 2 * num_kv_heads) * head_size]``; positions ``[tokens]``
    (RoPE) or ``[3, tokens]`` (MRoPE); cos_sin_cache ``[max_pos, rotary_dim]`` = cos | sin.
    """
    tokens = qkv.shape[0]
    q_size, kv_size = num_q_heads * head_size, num_kv_heads * head_size
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    cos, sin = _mrope_cos_sin(cos_sin_cache, positions, mrope_section, mrope_interleaved)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = cos.shape[-1]
    outs = []
    for x, weight, heads in ((q, q_weight, num_q_heads), (k, k_weight, num_kv_heads)):
        h = x.reshape(tokens, heads, head_size).float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
        x1, x2, rest = h[..., :half], h[..., half : 2 * half], h[..., 2 * half :]
        h = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)
        outs.append(h.reshape(tokens, -1).to(qkv.dtype))
    return outs[0], outs[1], v


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def qkv_norm_rope_kernel(
        qkv_ptr,
        out_ptr,
        weight_ptr,  # [2, HEAD_SIZE]: q weight, then k weight
        cos_sin_ptr,
        pos_ptr,
        qkv_stride,
        out_stride,
        cache_stride,
        pos_stride,  # 0 when all three axes share one 1D position row
        eps,
        NUM_Q_HEADS: tl.constexpr,
        HEAD_SIZE: tl.constexpr,
        HALF_ROT: tl.constexpr,
        SEC_T: tl.constexpr,
        SEC_H: tl.constexpr,
        SEC_W: tl.constexpr,
        INTERLEAVED: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        token = tl.program_id(0)
        head = tl.program_id(1)  # q heads, then k heads: laid out back to back in qkv
        src = qkv_ptr + token * qkv_stride + head * HEAD_SIZE
        dst = out_ptr + token * out_stride + head * HEAD_SIZE
        w_ptr = weight_ptr + (head >= NUM_Q_HEADS).to(tl.int32) * HEAD_SIZE
        out_ty = out_ptr.dtype.element_ty

        # RMS of the whole head, in fp32.
        d = tl.arange(0, BLOCK_D)
        d_mask = d < HEAD_SIZE
        x = tl.load(src + d, mask=d_mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / HEAD_SIZE + eps)
        w = tl.load(w_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
        tl.store(dst + d, (x * rstd * w).to(out_ty), mask=d_mask & (d >= 2 * HALF_ROT))

        # Rotary pairs (i, i + HALF_ROT), NeoX style.
        r = tl.arange(0, BLOCK_R)
        r_mask = r < HALF_ROT
        x1 = tl.load(src + r, mask=r_mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF_ROT + r, mask=r_mask, other=0.0).to(tl.float32)
        w1 = tl.load(w_ptr + r, mask=r_mask, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + HALF_ROT + r, mask=r_mask, other=0.0).to(tl.float32)
        y1 = x1 * rstd * w1
        y2 = x2 * rstd * w2
        if INTERLEAVED:
            axis = tl.where((r % 3 == 1) & (r < 3 * SEC_H), 1, 0)
            axis = tl.where((r % 3 == 2) & (r < 3 * SEC_W), 2, axis)
        else:
            axis = tl.where(r < SEC_T, 0, tl.where(r < SEC_T + SEC_H, 1, 2))
        pos = tl.load(pos_ptr + axis * pos_stride + token, mask=r_mask, other=0)
        cos = tl.load(cos_sin_ptr + pos * cache_stride + r, mask=r_mask, other=0.0)
        sin = tl.load(cos_sin_ptr + pos * cache_stride + HALF_ROT + r, mask=r_mask, other=0.0)
        cos = cos.to(tl.float32)
        sin = sin.to(tl.float32)
        tl.store(dst + r, (y1 * cos - y2 * sin).to(out_ty), mask=r_mask)
        tl.store(dst + HALF_ROT + r, (y2 * cos + y1 * sin).to(out_ty), mask=r_mask)

    return qkv_norm_rope_kernel


def qkv_norm_rope(
    qkv: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    positions: torch.Tensor,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_size: int,
    eps: float,
    mrope_section: Sequence[int] = (),
    mrope_interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Triton version of ``qkv_norm_rope_reference`` (same arguments, same results).

    q and k come back as column slices of one ``[tokens, (Hq + Hkv) * head_size]`` buffer
    (row stride larger than their width), v as a view of qkv.
    """
    import triton

    if qkv.stride(-1) != 1:
        raise ValueError("qkv rows must be contiguous")
    tokens = qkv.shape[0]
    rotary_dim = cos_sin_cache.shape[-1]
    if rotary_dim % 2 or rotary_dim > head_size:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_size {head_size}")
    if positions.dim() == 2:
        if len(mrope_section) != 3 or sum(mrope_section) != rotary_dim // 2:
            raise ValueError(
                f"mrope_section {mrope_section} must be 3 parts summing to "
                f"rotary_dim / 2 = {rotary_dim // 2}"
            )
        sec_t, sec_h, sec_w = mrope_section
        pos_stride = positions.stride(0)
    else:  # one position per token for every pair
        sec_t, sec_h, sec_w = rotary_dim // 2, 0, 0
        pos_stride = 0
    q_size, kv_size = num_q_heads * head_size, num_kv_heads * head_size
    out = torch.empty(tokens, q_size + kv_size, dtype=qkv.dtype, device=qkv.device)
    if tokens:
        weights = torch.stack((q_weight, k_weight)).contiguous()
        cache = cos_sin_cache.contiguous()
        _kernel()[(tokens, num_q_heads + num_kv_heads)](
            qkv,
            out,
            weights,
            cache,
            positions,
            qkv.stride(0),
            out.stride(0),
            cache.stride(0),
            pos_stride,
            eps,
            NUM_Q_HEADS=num_q_heads,
            HEAD_SIZE=head_size,
            HALF_ROT=rotary_dim // 2,
            SEC_T=sec_t,
            SEC_H=sec_h,
            SEC_W=sec_w,
            INTERLEAVED=bool(mrope_interleaved) and positions.dim() == 2,
            BLOCK_D=triton.next_power_of_2(head_size),
            BLOCK_R=triton.next_power_of_2(max(rotary_dim // 2, 1)),
        )
    return out[:, :q_size], out[:, q_size:], qkv[:, q_size + kv_size :]
