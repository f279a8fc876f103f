"""KV cache ops: ``npu_scatter_nd_update_`` and the PageAttention gather of paged K/V caches
used by ``npu_fused_infer_attention_score``."""

from __future__ import annotations

import math

import torch

from ._common import _check, _count

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
