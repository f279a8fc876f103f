"""KV cache ops: ``npu_scatter_nd_update_`` and the PageAttention gather of paged K/V caches
used by ``npu_fused_infer_attention_score``."""

from __future__ import annotations

import math

import torch

from ._common import _check, _count

_SCATTER_DTYPES = (
    torch.float32,
    torch.float16,
    torch.bool,
    torch.bfloat16,
    torch.int64,
    torch.int8,
)


def npu_scatter_nd_update_(
    self: torch.Tensor,
    indices: torch.Tensor,
    updates: torch.Tensor,
) -> torch.Tensor:
    """``torch_npu.npu_scatter_nd_update_(self, indices, updates) -> Tensor`` (in place).

    Source: the torch_npu 2.14.0 wheel (schema: ``csrc/aten/npu_native_functions_by_codegen
    .yaml``; rules: ``_op_plugin_docs.py``; output: ``op_plugin/meta/_meta_registrations.py``;
    checked by tests/test_torch_npu_conformance.py): with a = indices.shape[-1],
    self[indices[i]] = updates[i] over self's first a dims; returns ``self``. self: 1-8 dims
    (views allowed), float32/float16/bool/bfloat16/int64/int8 on A2/A3; updates of the same
    dtype, shaped indices.shape[:-1] + self.shape[a:]; indices int32/int64, >= 2D, never out of
    bounds (the op does not support it; the emulation raises).
    """
    op = "npu_scatter_nd_update_"
    _count(op)
    _check(1 <= self.dim() <= 8, op, f"self must have 1-8 dims, got {self.dim()}")
    _check(self.dtype in _SCATTER_DTYPES, op, f"dtype {self.dtype} is not supported")
    _check(updates.dtype == self.dtype, op, "updates must have self's dtype")
    _check(indices.dtype in (torch.int32, torch.int64), op, "indices must be int32/int64")
    _check(indices.dim() >= 2, op, "indices must have at least 2 dims")
    a = indices.shape[-1]
    _check(1 <= a <= self.dim(), op, f"indices.shape[-1]={a} exceeds self dims {self.dim()}")
    want = tuple(indices.shape[:-1]) + tuple(self.shape[a:])
    _check(tuple(updates.shape) == want, op, f"updates shape {tuple(updates.shape)} != {want}")
    idx = indices.reshape(-1, a).long()
    if idx.numel():
        bounds = torch.tensor(self.shape[:a], device=idx.device)
        _check(bool(((idx >= 0) & (idx < bounds)).all()), op, "indices out of bounds")
        self[tuple(idx.t())] = updates.reshape(-1, *self.shape[a:])
    return self


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
    # torch_npu 2.14.0 _op_plugin_docs.py: PageAttention blocks hold 128..512 tokens, by 128.
    _check(
        128 <= block_size <= 512 and block_size % 128 == 0,
        op,
        f"block_size {block_size}: PageAttention takes 128, 256, 384 or 512",
    )
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
        offsets = torch.arange(block_size, device=ids.device)
        slots = (ids.unsqueeze(1) * block_size + offsets).flatten()[:kv_len]
        out.append((k_rows[slots], v_rows[slots]))
    return out
