"""Paged prefill attention per rerank batch: C++ ops (vllm_ascend_rerank._C) vs pure torch.

Both run in the same process on the same inputs, alternately, and the best of N runs is
kept (shared machines are noisy). The pure-torch side is what the backend runs without the
library (``TorchKernels``: fresh K/V used directly when a request has no cached context).

    python benchmarks/bench_attention.py [--threads 2 1] [--dtypes float32 bfloat16] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from vllm_ascend_rerank import native_ops
from vllm_ascend_rerank.attention import reference

# Qwen3-VL-Reranker-2B-like attention: 16 query heads, 8 kv heads, head_dim 128.
HEADS, KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 16, 8, 128, 16
PAIRS, TOKENS = 32, 256
# Agreement asked of the two sides (as tests/test_native_ops.py asks of the same ops).
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def best_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    for fn in fns:  # warm-up
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return [b * 1e3 for b in best]


def run_case(name: str, cached: int, dtype: torch.dtype, repeats: int) -> None:
    """PAIRS requests of TOKENS tokens each, the first `cached` of them already cached."""
    gen = torch.Generator().manual_seed(0)
    new = TOKENS - cached
    blocks_per_req = -(-TOKENS // BLOCK_SIZE)
    num_blocks = PAIRS * blocks_per_req
    storage = torch.zeros(num_blocks, BLOCK_SIZE, KV_HEADS, 2 * HEAD_SIZE, dtype=dtype)
    kv_cache = storage.transpose(1, 2)  # vLLM's LBNHC layout
    block_table = torch.randperm(num_blocks, generator=gen).view(PAIRS, -1).int()
    pos = torch.arange(TOKENS)
    keys, values = [], []
    for r in range(PAIRS):
        k = torch.randn(TOKENS, KV_HEADS, HEAD_SIZE, generator=gen).to(dtype)
        v = torch.randn(TOKENS, KV_HEADS, HEAD_SIZE, generator=gen).to(dtype)
        slots = block_table[r, pos // BLOCK_SIZE].long() * BLOCK_SIZE + pos % BLOCK_SIZE
        reference.write_kv(k, v, kv_cache, slots)
        keys.append(k[cached:])
        values.append(v[cached:])
    key, value = torch.cat(keys), torch.cat(values)
    query = torch.randn(PAIRS * new, HEADS, HEAD_SIZE, generator=gen).to(dtype)
    qsl = [r * new for r in range(PAIRS + 1)]
    seq_lens = [TOKENS] * PAIRS
    qsl_t = torch.tensor(qsl, dtype=torch.int32)
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
    scale = HEAD_SIZE**-0.5
    # One output each, the native one poisoned: a kernel that skips rows or writes garbage
    # must not be timed as a speed-up.
    out_ref = torch.empty_like(query)
    out = torch.full_like(query, float("nan"))

    def torch_ref() -> None:
        reference.paged_attention(
            query, kv_cache, block_table, qsl, seq_lens, scale, True, out_ref, key=key, value=value
        )

    def native() -> None:
        torch.ops.vllm_ascend_rerank.paged_prefill_attention(
            query, kv_cache, block_table, qsl_t, seq_lens_t, scale, True, out
        )

    t_ref, t_native = best_ms([torch_ref, native], repeats)
    try:
        torch.testing.assert_close(out.float(), out_ref.float(), **TOL[dtype])
    except AssertionError as exc:
        raise SystemExit(f"{name} {dtype}: the C++ op disagrees with pure torch\n{exc}") from exc
    print(
        f"{name:<34} {str(dtype).removeprefix('torch.'):<9} threads={torch.get_num_threads()}  "
        f"torch {t_ref:7.1f} ms   native {t_native:6.1f} ms   x{t_ref / t_native:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads(), 1])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if not native_ops.available():
        raise SystemExit(f"C++ op library not built: {native_ops.load_error()}")
    from vllm_ascend_rerank.attention import native

    print(
        f"{PAIRS} pairs x {TOKENS} tokens, {HEADS} q heads / {KV_HEADS} kv heads, "
        f"head_dim {HEAD_SIZE}, block {BLOCK_SIZE}, causal; CPU kernel ISA: {native.cpu_isa()}"
    )
    cases = [("rerank batch (no cached context)", 0), ("cached context (64 + 192 new)", 64)]
    for threads in dict.fromkeys(args.threads):
        torch.set_num_threads(threads)
        for dtype_name in args.dtypes:
            for name, cached in cases:
                run_case(name, cached, getattr(torch, dtype_name), args.repeats)


if __name__ == "__main__":
    main()
