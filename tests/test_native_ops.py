"""The C++ ops (vllm_ascend_rerank._C) against the pure-torch reference.

Caches and outputs are poisoned (NaN / sentinels) before each call: every element that must
be written is checked, and everything else must come back bit-identical. Skipped when the
library is not built.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch

from vllm_ascend_rerank import native_ops

if not native_ops.available():
    pytest.skip(f"C++ op library not built ({native_ops.load_error()})", allow_module_level=True)

from vllm_ascend_rerank.attention import native, reference  # noqa: E402

ops = torch.ops.vllm_ascend_rerank
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bit-identical, NaN included."""
    torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)


def lbnhc_cache(
    num_blocks: int, block_size: int, kv_heads: int, head_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """vLLM's logical view over token-major storage, poisoned with NaN."""
    storage = torch.full((num_blocks, block_size, kv_heads, 2 * head_size), float("nan"))
    return storage.to(dtype).transpose(1, 2)


class Batch:
    """Requests with cached context already in a paged cache, and this step's queries."""

    def __init__(
        self,
        query_lens: list[int],
        context_lens: list[int],
        *,
        heads: int,
        kv_heads: int,
        head_size: int,
        block_size: int,
        dtype: torch.dtype,
        pad_tokens: int = 3,
        seed: int = 0,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.seq_lens = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
        self.query_start_loc = [0]
        for q in query_lens:
            self.query_start_loc.append(self.query_start_loc[-1] + q)
        self.num_tokens = self.query_start_loc[-1]
        blocks_per_req = [-(-s // block_size) for s in self.seq_lens]
        num_blocks = sum(blocks_per_req) + 4  # spare blocks stay NaN
        perm = torch.randperm(num_blocks, generator=gen)  # scattered, out of order
        width = max(blocks_per_req)
        self.block_table = torch.zeros(len(query_lens), width, dtype=torch.int32)
        used = 0
        for r, n in enumerate(blocks_per_req):
            self.block_table[r, :n] = perm[used : used + n]
            used += n
        self.kv_cache = lbnhc_cache(num_blocks, block_size, kv_heads, head_size, dtype)
        # Whole sequences' K/V go into the cache; the query covers the tail of each.
        for r, s in enumerate(self.seq_lens):
            k = torch.randn(s, kv_heads, head_size, generator=gen).to(dtype)
            v = torch.randn(s, kv_heads, head_size, generator=gen).to(dtype)
            pos = torch.arange(s)
            slots = self.block_table[r, pos // block_size].long() * block_size + pos % block_size
            reference.write_kv(k, v, self.kv_cache, slots)
        self.query = torch.randn(self.num_tokens + pad_tokens, heads, head_size, generator=gen).to(
            dtype
        )
        self.scale = head_size**-0.5

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.tensor(self.query_start_loc, dtype=torch.int32),
            torch.tensor(self.seq_lens, dtype=torch.int32),
        )

    def reference(self, causal: bool) -> torch.Tensor:
        out = torch.full_like(self.query, float("nan"))
        reference.paged_attention(
            self.query,
            self.kv_cache,
            self.block_table,
            self.query_start_loc,
            self.seq_lens,
            self.scale,
            causal,
            out,
        )
        return out

    def native(self, causal: bool, query: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.full_like(self.query, float("nan"))
        qsl, seq_lens = self.tensors()
        cache_before = self.kv_cache.clone()
        ops.paged_prefill_attention(
            self.query if query is None else query,
            self.kv_cache,
            self.block_table,
            qsl,
            seq_lens,
            self.scale,
            causal,
            out,
        )
        same(self.kv_cache, cache_before)  # read-only
        return out

    def check(self, causal: bool = True) -> None:
        out, ref = self.native(causal), self.reference(causal)
        n = self.num_tokens
        assert out[:n].isfinite().all(), "a query row was not written"
        assert out[n:].isnan().all(), "padding rows past the last query were touched"
        torch.testing.assert_close(out[:n], ref[:n], **TOL[self.query.dtype])


def contexts(block_size: int) -> list[int]:
    # none, partial block, exactly one block, several blocks and a bit
    return [0, block_size // 2 + 3, block_size, 3 * block_size + 5]


@pytest.fixture
def each_isa() -> Iterator[list[str]]:
    """Every instruction set this CPU can run; restores the default afterwards."""
    default = native.cpu_isa()
    yield native.cpu_isas()
    native.set_cpu_isa(default)


# --- paged_prefill_attention -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("gqa", [1, 2, 4])
@pytest.mark.parametrize("head_size", [64, 128, 80])
def test_paged_attention_matches_reference(
    head_size: int, gqa: int, block_size: int, dtype: torch.dtype
) -> None:
    Batch(
        [37, 20, 50, 1],
        contexts(block_size),
        heads=2 * gqa,
        kv_heads=2,
        head_size=head_size,
        block_size=block_size,
        dtype=dtype,
    ).check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_paged_attention_non_causal(dtype: torch.dtype) -> None:
    Batch(
        [9, 30, 70], [0, 21, 40], heads=8, kv_heads=2, head_size=64, block_size=16, dtype=dtype
    ).check(causal=False)


@pytest.mark.parametrize(
    ("head_size", "dtype"),
    [(80, torch.float32), (36, torch.float32), (128, torch.bfloat16), (33, torch.float16)],
)
def test_paged_attention_every_isa(each_isa: list[str], head_size: int, dtype: torch.dtype) -> None:
    # Odd head sizes exercise the padded (converted) tiles of every vector width.
    for isa, causal in itertools.product(each_isa, (True, False)):
        native.set_cpu_isa(isa)
        Batch(
            [70, 5, 1],
            [0, 19, 130],
            heads=6,
            kv_heads=2,
            head_size=head_size,
            block_size=16,
            dtype=dtype,
        ).check(causal)


def test_paged_attention_strided_query_and_output() -> None:
    # vLLM hands attention views of a fused qkv projection.
    b = Batch(
        [33, 64], [17, 0], heads=4, kv_heads=2, head_size=64, block_size=16, dtype=torch.float32
    )
    t, h, d = b.query.shape
    qkv = torch.randn(t, (h + 4) * d)
    qkv[:, : h * d] = b.query.reshape(t, -1)
    query = qkv[:, : h * d].view(t, h, d)
    assert not query.is_contiguous()
    qsl, seq_lens = b.tensors()
    big = torch.full((t, h, 2 * d), float("nan"))
    out = big[..., :d]  # non-contiguous output
    ops.paged_prefill_attention(query, b.kv_cache, b.block_table, qsl, seq_lens, b.scale, True, out)
    ref = b.reference(True)
    torch.testing.assert_close(out[: b.num_tokens], ref[: b.num_tokens], **TOL[torch.float32])
    assert big[..., d:].isnan().all()


def test_paged_attention_same_result_on_any_thread_count() -> None:
    b = Batch(
        [64, 64, 3],
        [0, 40, 9],
        heads=8,
        kv_heads=4,
        head_size=64,
        block_size=16,
        dtype=torch.float32,
    )
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = b.native(True)
        torch.set_num_threads(max(2, threads))
        many = b.native(True)
    finally:
        torch.set_num_threads(threads)
    same(one, many)


def test_paged_attention_rejects_bad_block_ids() -> None:
    b = Batch([5], [3], heads=2, kv_heads=2, head_size=64, block_size=16, dtype=torch.float32)
    b.block_table[0, 0] = b.kv_cache.shape[0]
    with pytest.raises(RuntimeError, match="out of range"):
        b.native(True)


# --- write_kv -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.float32, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("layout", ["lbnhc", "contiguous"])
def test_write_kv_matches_reference(src: torch.dtype, dst: torch.dtype, layout: str) -> None:
    gen = torch.Generator().manual_seed(1)
    num_blocks, block_size, kv_heads, head_size, tokens = 6, 16, 2, 80, 40
    if layout == "lbnhc":
        cache = lbnhc_cache(num_blocks, block_size, kv_heads, head_size, dst)
    else:
        cache = torch.full((num_blocks, kv_heads, block_size, 2 * head_size), float("nan"))
        cache = cache.to(dst)
    key = torch.randn(tokens + 5, kv_heads, head_size, generator=gen).to(src)  # rows past
    value = torch.randn(tokens + 5, kv_heads, head_size, generator=gen).to(src)  # the slots
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[[0, 7, tokens - 1]] = -1  # padding tokens
    expected = cache.clone()
    reference.write_kv(key, value, expected, slots)
    ops.write_kv(key, value, cache, slots.to(torch.int32))
    same(cache, expected)


@pytest.mark.parametrize("bad", [32, -2, -33])
def test_write_kv_rejects_out_of_range_slot(bad: int) -> None:
    # Only -1 is padding: another negative slot is a corrupt mapping, refused before any
    # row is written (the valid slot 0 in front of it must stay untouched).
    cache = lbnhc_cache(2, 16, 1, 64, torch.float32)
    before = cache.clone()
    key = torch.zeros(2, 1, 64)
    with pytest.raises(RuntimeError, match="out of range"):
        ops.write_kv(key, key, cache, torch.tensor([0, bad]))
    same(cache, before)


# --- registration: fake tensors / torch.compile ---------------------------------------------------


def test_ops_pass_opcheck() -> None:
    b = Batch(
        [7, 9], [0, 20], heads=4, kv_heads=2, head_size=64, block_size=16, dtype=torch.float32
    )
    qsl, seq_lens = b.tensors()
    out = torch.zeros_like(b.query)
    torch.library.opcheck(
        ops.paged_prefill_attention.default,
        (b.query, b.kv_cache, b.block_table, qsl, seq_lens, b.scale, True, out),
    )
    cache = torch.zeros(4, 2, 16, 128)
    key = torch.randn(10, 2, 64)
    torch.library.opcheck(ops.write_kv.default, (key, key, cache, torch.arange(10)))


def test_native_kernels_follow_the_kernel_interface() -> None:
    from vllm_ascend_rerank.attention.backend import RerankAttentionMetadata
    from vllm_ascend_rerank.attention.impls import TorchKernels

    b = Batch(
        [12, 30], [20, 0], heads=4, kv_heads=2, head_size=64, block_size=16, dtype=torch.float32
    )
    qsl, seq_lens = b.tensors()
    md = RerankAttentionMetadata(
        num_actual_tokens=b.num_tokens,
        query_start_loc=b.query_start_loc,
        seq_lens=b.seq_lens,
        max_query_len=30,
        max_seq_len=32,
        block_table=b.block_table,
        slot_mapping=torch.empty(0, dtype=torch.int64),
        causal=True,
        query_start_loc_tensor=qsl,
        seq_lens_tensor=seq_lens,
    )
    n = b.num_tokens
    # This step's K/V (the torch kernels use them directly for requests without context).
    fresh = [
        reference.gather_kv(b.kv_cache, b.block_table[r, : -(-s // 16)], s)
        for r, s in enumerate(b.seq_lens)
    ]
    tails = list(zip(fresh, b.seq_lens, [12, 30], strict=True))
    key = torch.cat([k[s - q :] for (k, _), s, q in tails])
    value = torch.cat([v[s - q :] for (_, v), s, q in tails])
    outs = []
    for kernels in (native.NativeKernels(), TorchKernels()):
        out = torch.full_like(b.query[:n], float("nan"))
        kernels.paged_attention(b.query[:n], key, value, b.kv_cache, md, b.scale, out)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], **TOL[torch.float32])
