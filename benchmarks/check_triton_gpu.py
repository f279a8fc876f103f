"""The Triton qkv+norm+rope kernel on a real GPU: errors against the torch reference, and time.

    python benchmarks/check_triton_gpu.py      # needs a CUDA GPU, torch and triton

Triton kernels are written for triton-ascend; on CI they run under Triton's interpreter
(tests/test_triton_kernels.py). This script is the compiled-kernel check where a GPU is lent.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_triton_kernels import CASES, _inputs, largest_error  # noqa: E402

from vllm_ascend_rerank.ops import triton_qkv_norm_rope as mod  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def bench(fn, iters: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    print("device:", torch.cuda.get_device_name(0))
    failed = 0
    for case, (tokens, hq, hkv, d, rot, section, inter) in CASES.items():
        for dtype, tol in TOL.items():
            args = [t.cuda() for t in _inputs(tokens, hq, hkv, d, rot, dtype, section is not None)]
            kw = dict(num_q_heads=hq, num_kv_heads=hkv, head_size=d, eps=1e-6,
                      mrope_section=section or (), mrope_interleaved=inter)  # fmt: skip
            got = mod.qkv_norm_rope(*args, **kw)
            want = mod.qkv_norm_rope_reference(*args, **kw)
            err = largest_error(got, want)  # NaN in any output: not <= tol, so FAIL
            ok = err <= tol
            failed += not ok
            print(f"{case:22s} {str(dtype):15s} max|err| {err:.2e} {'ok' if ok else 'FAIL'}")
    # Qwen3-VL-8B shapes: 32 q heads, 8 kv heads, head 128, interleaved MRoPE.
    tokens, hq, hkv, d = 8192, 32, 8, 128
    args = [t.cuda() for t in _inputs(tokens, hq, hkv, d, d, torch.bfloat16, True)]
    args[-1] = torch.randint(0, 64, (3, tokens), device="cuda")
    kw = dict(num_q_heads=hq, num_kv_heads=hkv, head_size=d, eps=1e-6,
              mrope_section=[24, 20, 20], mrope_interleaved=True)  # fmt: skip
    t_k = bench(lambda: mod.qkv_norm_rope(*args, **kw))
    t_r = bench(lambda: mod.qkv_norm_rope_reference(*args, **kw))
    moved = args[0].numel() * 2 * 2  # read qkv, write q/k/v-sized output (bf16)
    print(
        f"8192 tokens bf16: triton {t_k * 1e6:.0f} us ({moved / t_k / 1e9:.0f} GB/s), "
        f"torch eager {t_r * 1e6:.0f} us, speedup x{t_r / t_k:.1f}"
    )
    print("FAILED" if failed else "all cases within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
