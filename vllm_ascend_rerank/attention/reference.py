"""Pure-torch paged attention: the reference every other implementation is checked against.

Cache layout (vLLM's logical per-layer view): ``kv_cache[num_blocks, num_kv_heads,
block_size, 2 * head_size]`` with K in the first ``head_size`` channels and V in the
rest. Slot ``s`` is token ``s % block_size`` of block ``s // block_size``; slot -1
marks a padding token that must not be written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias


def token_major(kv_cache: torch.Tensor) -> torch.Tensor:
    """``[num_blocks * block_size, num_kv_heads, 2 * head_size]`` view, one row per slot.

    A view when the cache is stored block/token-major (vLLM's LBNHC layout, which our
    backend asks for); a copy otherwise, so writes must go through ``write_kv``.
    """
    return kv_cache.transpose(1, 2).flatten(0, 1)


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store ``key``/``value`` ``[num_tokens, num_kv_heads, head_size]`` at their slots."""
    num_tokens = slot_mapping.shape[0]
    head_size = key.shape[-1]
    slots = slot_mapping.to(torch.long)
    valid = slots >= 0
    if not bool(valid.all()):
        slots = slots[valid]
        key, value = key[:num_tokens][valid], value[:num_tokens][valid]
    else:
        key, value = key[:num_tokens], value[:num_tokens]
    block_size = kv_cache.shape[2]
    blocks, offsets = slots // block_size, slots % block_size
    kv_cache[blocks, :, offsets, :head_size] = key.to(kv_cache.dtype)
    kv_cache[blocks, :, offsets, head_size:] = value.to(kv_cache.dtype)


def gather_kv(
    kv_cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of one sequence, ``[seq_len, num_kv_heads, head_size]`` each."""
    head_size = kv_cache.shape[-1] // 2
    rows = kv_cache[block_ids].transpose(1, 2).flatten(0, 1)[:seq_len]
    return rows[..., :head_size], rows[..., head_size:]


def causal_mask(query_len: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[query_len, seq_len]``: query i (absolute position seq_len - query_len + i)
    sees keys at positions <= its own; the cached context is fully visible."""
    context_len = seq_len - query_len
    q_pos = torch.arange(query_len, device=device).unsqueeze(1) + context_len
    k_pos = torch.arange(seq_len, device=device).unsqueeze(0)
    return k_pos <= q_pos


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool,
) -> torch.Tensor:
    """One sequence: q ``[Lq, H, D]``, k/v ``[Lk, Hkv, D]`` -> ``[Lq, H, D]``.

    The query is the tail of the sequence (cached context first), so the causal
    mask is offset by ``Lk - Lq``.
    """
    query_len, seq_len = q.shape[0], k.shape[0]
    # [1, H, L, D]: torch runs its fused (flash) CPU kernel only on 4-D inputs; 3-D ones
    # take the unfused math path, 1.3x (head_dim 128) to 6x (head_dim 16) slower.
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    gqa = qh.shape[1] != kh.shape[1]
    if not causal:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale, enable_gqa=gqa)
    elif query_len == seq_len:
        out = F.scaled_dot_product_attention(
            qh, kh, vh, is_causal=True, scale=scale, enable_gqa=gqa
        )
    else:
        mask = causal_mask(query_len, seq_len, q.device)
        out = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=gqa
        )
    return out[0].transpose(0, 1)


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: list[int],
    seq_lens: list[int],
    scale: float,
    causal: bool,
    output: torch.Tensor,
    key: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention for a variable-length batch whose K/V were already written to the cache.

    ``query`` is ``[num_tokens, num_heads, head_size]``; request ``r`` owns rows
    ``query_start_loc[r]:query_start_loc[r + 1]`` and has ``seq_lens[r]`` tokens in
    total (cached context + this step's tokens). When a request has no cached
    context, its fresh ``key``/``value`` rows are used directly instead of reading
    them back from the cache (same values, no gather).
    """
    block_size = kv_cache.shape[2]
    for r, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[r], query_start_loc[r + 1]
        if end == start:
            continue
        if key is not None and value is not None and end - start == seq_len:
            k, v = key[start:end], value[start:end]
        else:
            num_blocks = -(-seq_len // block_size)
            k, v = gather_kv(kv_cache, block_table[r, :num_blocks], seq_len)
        out = attend(query[start:end], k, v, scale, causal)
        output[start:end] = out.to(output.dtype)
    return output
