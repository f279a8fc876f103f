"""The machine's matmul rate, and the timing hooks and profiler run inside the engine's
worker (sent there as pickled callables)."""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any


# ---------------------------------------------------------------------------------------------
# The machine's matmul rate
# ---------------------------------------------------------------------------------------------
def matmul_rate(
    shapes: list[tuple[int, int]], dtype_name: str, rows: int, repeats: int = 5
) -> dict[str, tuple[float, float]]:
    """FLOP per second and per CPU-second of one decoder layer's GEMMs (``shapes``: (in, out)
    weights) at ``rows`` tokens, medians of ``repeats``, on this process's torch threads:

    - "F.linear": ``torch.nn.functional.linear``, what the model's linear layers call;
    - "oneDNN": oneDNN with the weight prepacked (``torch.ops.mkldnn._linear_pointwise``),
      the best GEMM torch has on this CPU (vLLM's own CPU backend uses oneDNN too).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    ops = [
        (torch.randn(rows, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype))
        for k, n in shapes
    ]
    flops = sum(2 * rows * w.shape[0] * w.shape[1] for _, w in ops)
    gemms: dict[str, Callable[[], object]] = {"F.linear": lambda: [F.linear(x, w) for x, w in ops]}
    if torch.backends.mkldnn.is_available():
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for _, w in ops]
        gemms["oneDNN"] = lambda: [
            torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
            for (x, _), p in zip(ops, packed, strict=True)
        ]
    out = {}
    for name, gemm in gemms.items():
        gemm()  # warm-up
        walls, cpus = [], []
        for _ in range(repeats):
            start, cpu = time.perf_counter(), time.process_time()
            gemm()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
        out[name] = (flops / statistics.median(walls), flops / statistics.median(cpus))
    return out


def _matmul_in_worker(worker: Any, shapes: list, dtype_name: str, rows: int) -> tuple:
    """The matmul rate measured inside the engine process, on the threads the model uses."""
    return matmul_rate(shapes, dtype_name, rows)


# ---------------------------------------------------------------------------------------------
# Plugin, offline: LLM.score, with timing hooks inside the engine's worker
# ---------------------------------------------------------------------------------------------
def _install_hooks(worker: Any) -> None:
    """Runs inside the engine process: time worker steps, model forward and attention."""
    keys = ("step_s", "forward_s", "forward_cpu_s", "attention_s", "steps", "tokens")
    stats = worker._bench_stats = dict.fromkeys(keys, 0.0)

    def timed(fn: Callable, key: str, cpu_key: str | None = None) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.process_time()  # process: all threads
            try:
                return fn(*args, **kwargs)
            finally:
                stats[key] += time.perf_counter() - start
                if cpu_key:
                    stats[cpu_key] += time.process_time() - cpu

        return wrapper

    step = timed(worker.execute_model, "step_s")

    def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        stats["steps"] += 1
        stats["tokens"] += scheduler_output.total_num_scheduled_tokens
        return step(scheduler_output, *args, **kwargs)

    worker.execute_model = execute_model
    model = worker.model_runner.model
    model.forward = timed(model.forward, "forward_s", "forward_cpu_s")
    from vllm_ascend_rerank.attention.impls import select_kernels

    kernels = select_kernels()
    for name in ("paged_attention", "write_kv", "varlen_attention"):
        setattr(kernels, name, timed(getattr(kernels, name), "attention_s"))


def _pid(worker: Any) -> int:
    return os.getpid()


def _read_hooks(worker: Any, reset: bool) -> dict[str, float]:
    stats = dict(worker._bench_stats)
    if reset:
        for key in worker._bench_stats:
            worker._bench_stats[key] = 0
    return stats


# Layer types timed one by one in a profiled pass (inclusive wall time of their forward).
_LAYER_TYPES = {
    "linear (GEMM)": ("QKVParallelLinear", "MergedColumnParallelLinear", "RowParallelLinear",
                      "ColumnParallelLinear", "ReplicatedLinear"),
    "attention (KV write + kernel)": ("Attention",),
    "RMSNorm": ("RMSNorm",),
    "M-RoPE": ("MRotaryEmbedding", "MRotaryEmbeddingInterleaved"),
    "SiLU*mul": ("SiluAndMul",),
    "embedding": ("VocabParallelEmbedding",),
}  # fmt: skip


def _profile(worker: Any, action: str) -> dict[str, Any]:
    """Runs inside the engine process, around the next pass: torch.profiler, plus the wall
    time of each layer type's forward. On "stop" it returns both."""
    import torch

    if action == "start":
        types = {cls: kind for kind, names in _LAYER_TYPES.items() for cls in names}
        layer_s = worker._bench_layer_s = dict.fromkeys(_LAYER_TYPES, 0.0)
        wrapped = worker._bench_wrapped = []
        for module in worker.model_runner.model.modules():
            # by the vLLM class a layer is or replaces (the plugin's CPU/NPU kernels subclass it)
            names = (c.__name__ for c in type(module).__mro__)
            kind = next((types[n] for n in names if n in types), None)
            if kind is None:
                continue

            def timed(*args: Any, _fn: Callable = module.forward, _k: str = kind, **kw: Any):
                start = time.perf_counter()
                try:
                    return _fn(*args, **kw)
                finally:
                    layer_s[_k] += time.perf_counter() - start

            module.forward = timed
            wrapped.append(module)
        worker._bench_prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]
        )
        worker._bench_prof.__enter__()
        return {}
    prof = worker._bench_prof
    prof.__exit__(None, None, None)
    for module in worker._bench_wrapped:
        del module.forward  # back to the class's forward
    ops = [
        (e.key, e.self_cpu_time_total / 1e6, e.cpu_time_total / 1e6, e.count)
        for e in prof.key_averages()
    ]
    return {"ops": ops, "layers": worker._bench_layer_s, "hooks": dict(worker._bench_stats)}


def summarize_profile(prof: dict[str, Any], wall: float) -> str:
    """Where a pass's time goes: by layer type, then the top ATen ops (self CPU time)."""
    forward = prof["hooks"]["forward_s"]
    step = prof["hooks"]["step_s"]
    lines = [f"pass {wall:.2f} s wall; model forward {forward:.2f} s; by layer type:"]
    for kind, t in prof["layers"].items():
        lines.append(f"  {kind:<32}{t:8.2f} s {100 * t / forward:5.1f}% of forward")
    rest = forward - sum(prof["layers"].values())
    lines.append(
        f"  {'rest of the forward':<32}{rest:8.2f} s {100 * rest / forward:5.1f}%"
        "  (residual adds, reshapes, Python)"
    )
    lines.append(
        f"  {'worker step outside forward':<32}{step - forward:8.2f} s"
        f"   (vLLM runner: input prep, metadata, pooling)"
    )
    lines.append(
        f"  {'outside the worker':<32}{wall - step:8.2f} s   "
        "(front end, tokenizer, scheduler, engine I/O)"
    )
    lines.append("top ATen ops by self CPU time (torch.profiler; CPU s sum over threads):")
    lines.append(f"  {'op':<46}{'self s':>8}{'total s':>9}{'calls':>7}")
    for name, self_s, total, calls in sorted(prof["ops"], key=lambda o: -o[1])[:12]:
        lines.append(f"  {name[:45]:<46}{self_s:>8.3f}{total:>9.3f}{calls:>7}")
    return "\n".join(lines)
