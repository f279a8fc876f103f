"""The pure-torch paged attention and slot mapping against a dense, unpaged computation."""

from __future__ import annotations

import pytest
import torch

from vllm_ascend_rerank.attention import reference


def dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Textbook attention over a whole sequence: q/k/v [L, H(kv), D]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    mask = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v)


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
def test_paged_prefill_with_cached_context(block_size: int, heads: tuple[int, int]) -> None:
    torch.manual_seed(0)
    nh, nkv, d = heads[0], heads[1], 16
    seq_lens, cached = [23, 9, 40], [10, 0, 33]  # context already in the cache per request
    num_blocks = 64
    kv_cache = torch.full((num_blocks, nkv, block_size, 2 * d), float("nan"))
    perm = torch.randperm(num_blocks)  # scattered, non-contiguous blocks
    max_blocks = max(-(-s // block_size) for s in seq_lens)
    block_table = perm[: len(seq_lens) * max_blocks].view(len(seq_lens), max_blocks)
    full = [
        (torch.randn(s, nh, d), torch.randn(s, nkv, d), torch.randn(s, nkv, d)) for s in seq_lens
    ]

    def slots(r: int, positions: range) -> torch.Tensor:
        return torch.tensor(
            [int(block_table[r, p // block_size]) * block_size + p % block_size for p in positions],
            dtype=torch.long,
        )

    # Step 1: the cached context is written.
    for r, c in enumerate(cached):
        if c:
            q, k, v = full[r]
            reference.write_kv(k[:c], v[:c], kv_cache, slots(r, range(c)))
    # Step 2: the remaining tokens arrive as one variable-length batch (+2 padding tokens).
    qs, ks, vs, sl, starts = [], [], [], [], [0]
    for r, (s, c) in enumerate(zip(seq_lens, cached, strict=True)):
        q, k, v = full[r]
        qs.append(q[c:]), ks.append(k[c:]), vs.append(v[c:])
        sl.append(slots(r, range(c, s)))
        starts.append(starts[-1] + s - c)
    pad = 2
    query = torch.cat(qs + [torch.zeros(pad, nh, d)])
    key = torch.cat(ks + [torch.zeros(pad, nkv, d)])
    value = torch.cat(vs + [torch.zeros(pad, nkv, d)])
    slot_mapping = torch.cat(sl + [torch.full((pad,), -1)])
    reference.write_kv(key, value, kv_cache, slot_mapping)
    out = torch.full_like(query, float("nan"))
    reference.paged_attention(
        query, kv_cache, block_table, starts, seq_lens, d**-0.5, True, out, key=key, value=value
    )
    for r, c in enumerate(cached):
        q, k, v = full[r]
        want = dense_causal(q, k, v, d**-0.5)[c:]
        torch.testing.assert_close(out[starts[r] : starts[r + 1]], want, atol=1e-5, rtol=1e-5)
    assert torch.isnan(out[starts[-1] :]).all()  # padding rows untouched
    used = torch.zeros(num_blocks * block_size, dtype=torch.bool)
    used[slot_mapping[slot_mapping >= 0]] = True
    for r, c in enumerate(cached):
        used[slots(r, range(c))] = True
    rows = kv_cache.transpose(1, 2).reshape(num_blocks * block_size, -1)
    assert not torch.isnan(rows[used]).any() and torch.isnan(rows[~used]).all()
