"""The scenarios: short-long, shared-prefix, every-token and bench-serve per dtype, and
startup."""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import REPO
from .measure import Context, closing_all, log, max_diff, percentile, rounds
from .methods import Method, Offline, Online, Reference, ServeProcess, serve_args
from .profiling import _matmul_in_worker, _profile, summarize_profile
from .workloads import Workload, count_prompt_tokens, shared_prefix, short_long


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------
def offline_method(name: str, engine: Offline, w: Workload) -> Method:
    tokens = sum(w.prompt_tokens)
    pids = lambda: [os.getpid(), engine.pid]  # noqa: E731 - front end + engine process
    return Method(name, lambda: engine.score(w), pids, len(w.pairs), tokens, before=engine.reset)


def reference_methods(
    ctx: Context, ref: Reference, w: Workload, pairwise_pairs: int
) -> list[Method]:
    a, me = ctx.args, lambda: [os.getpid()]
    pw = w.pairs[:pairwise_pairs]
    return [
        Method(
            f"ref-padded b={a.ref_batch_size} {a.padding_side}",
            lambda: ref.padded(w.pairs, a.ref_batch_size, a.padding_side),
            me,
            len(w.pairs),
            sum(w.prompt_tokens),
        ),
        Method(
            "ref-pairwise", lambda: ref.pairwise(pw), me, len(pw), sum(w.prompt_tokens[: len(pw)])
        ),
    ]


def run_dtype(ctx: Context, dtype: str, scenarios: list[str]) -> None:
    a = ctx.args
    rng = random.Random(0)
    short = short_long(rng, a.queries, 16)
    shared = shared_prefix(rng, ctx.tokenizer, a.shared_query_tokens, 32, a.shared_doc_tokens)
    for w in (short, shared):
        count_prompt_tokens(w, ctx.tokenizer)
    need_ref = bool({"short-long", "shared-prefix"} & set(scenarios))
    need_on = bool({"short-long", "shared-prefix"} & set(scenarios))
    need_off = bool({"shared-prefix", "every-token"} & set(scenarios))
    online_wanted = not a.skip_online and bool({"short-long", "bench-serve"} & set(scenarios))

    log(f"{dtype}: starting engines (prefix caching on: {need_on}, off: {need_off})")
    on = Offline(ctx.checkpoint, dtype, True, a.max_model_len) if need_on else None
    off = Offline(ctx.checkpoint, dtype, False, a.max_model_len) if need_off else None
    with closing_all(on, off):
        online = Online(ctx.checkpoint, dtype, a.max_model_len) if online_wanted else None
        with closing_all(online):
            ref = Reference(ctx.checkpoint, dtype) if need_ref else None
            engine = on or off
            if engine is not None:
                ctx.notes.append(
                    f"{dtype}: vLLM max_num_batched_tokens = {engine.max_batched_tokens}"
                )
            if "short-long" in scenarios:
                assert on is not None and ref is not None
                _short_long(ctx, dtype, short, on, online, ref)
            if "shared-prefix" in scenarios:
                assert on is not None and off is not None and ref is not None
                _shared_prefix(ctx, dtype, shared, on, off, ref)
            if "every-token" in scenarios:
                assert off is not None
                _every_token(ctx, dtype, short, off)
            if "bench-serve" in scenarios and online is not None:
                _bench_serve(ctx, dtype, online)


def _short_long(
    ctx: Context, dtype: str, w: Workload, on: Offline, online: Online | None, ref: Reference
) -> None:
    a = ctx.args
    pw_pairs = min(a.ref_pairs or len(w.pairs), len(w.pairs))
    log(
        f"{dtype} short-long: {len(w.groups)} queries x 16 docs = {len(w.pairs)} pairs, "
        f"{sum(w.prompt_tokens)} prompt tokens (ref-pairwise on the first {pw_pairs} pairs)"
    )
    offline = offline_method("plugin-offline", on, w)
    methods = [offline]
    if online:
        methods.append(
            Method(
                f"plugin-online c={a.concurrency}",
                lambda: online.score(w, a.concurrency),
                online.pids,
                len(w.pairs),
                sum(w.prompt_tokens),
                before=online.reset,
            )
        )
    methods += reference_methods(ctx, ref, w, pw_pairs)
    for m in methods:  # warm-up, the reference too (first-call costs, allocator)
        m.run()
    rounds(ctx, f"{dtype} short-long", methods)
    pad, pw = methods[-2:]
    ctx.notes.append(
        f"{dtype} short-long: max |score diff| plugin-offline vs ref-pairwise "
        f"{max_diff(offline.scores, pw.scores):.1e}, vs ref-padded "
        f"{max_diff(offline.scores, pad.scores):.1e}"
    )
    if online:
        ctx.notes[-1] += f", vs plugin-online {max_diff(offline.scores, methods[1].scores):.1e}"
    for m in methods:
        lat = {}
        if online and m is methods[1]:
            lat = {"p50_ms": 1e3 * percentile(online.latencies, 50)}
            lat["p99_ms"] = 1e3 * percentile(online.latencies, 99)
        ctx.add("short-long", dtype, m, **lat)
    if a.profile:
        profile_pass(ctx, f"{dtype} short-long (prefix caching on)", on, w)
    if online:
        ctx.notes.append(
            f"{dtype} short-long online: {a.concurrency} clients, each request = 1 query + 16 "
            f"docs; latency percentiles over {len(online.latencies)} requests; CPU = server "
            "processes (API server + engine)"
        )


def _shared_prefix(
    ctx: Context, dtype: str, w: Workload, on: Offline, off: Offline, ref: Reference
) -> None:
    a = ctx.args
    log(
        f"{dtype} shared-prefix: 1 query of {a.shared_query_tokens} tokens x {len(w.pairs)} docs "
        f"of {a.shared_doc_tokens} tokens, {sum(w.prompt_tokens)} prompt tokens"
    )
    m_on = offline_method("plugin-offline PC on", on, w)
    m_off = offline_method("plugin-offline PC off", off, w)
    methods = [m_on, m_off, *reference_methods(ctx, ref, w, len(w.pairs))]
    for m in methods:  # warm-up, the reference too
        m.run()
    computed = {}
    m_on.run = _then(m_on.run, computed, "on", on)
    m_off.run = _then(m_off.run, computed, "off", off)
    rounds(ctx, f"{dtype} shared-prefix", methods)
    diff = max_diff(m_on.scores, m_off.scores)
    limit = 1e-5 if dtype == "float32" else 1e-2
    ctx.notes.append(
        f"{dtype} shared-prefix: max |score(prefix caching on) - score(off)| = {diff:.1e} "
        f"(limit {limit:g}: {'OK' if diff <= limit else 'FAIL'}); tokens computed on/off "
        f"{computed['on']}/{computed['off']}; plugin vs ref-pairwise "
        f"{max_diff(m_on.scores, methods[-1].scores):.1e}"
    )
    for m in methods:
        ctx.add("shared-prefix", dtype, m)
    if not diff <= limit:  # a NaN fails too
        raise AssertionError(f"prefix caching changed the scores by {diff:.2e} ({dtype})")


def _then(run: Callable[[], list[float]], out: dict, key: str, engine: Offline) -> Callable:
    """``run``, then note how many tokens the engine computed (prefix cache hits excluded)."""

    def wrapped() -> list[float]:
        scores = run()
        out[key] = engine.hooks()["tokens"]
        return scores

    return wrapped


def _every_token(ctx: Context, dtype: str, w: Workload, off: Offline) -> None:
    a, tokens = ctx.args, sum(w.prompt_tokens)
    flops = ctx.shape.flops(w.prompt_tokens)
    log(f"{dtype} every-token: {len(w.pairs)} pairs, {tokens} tokens, {flops / 1e9:.1f} GFLOP")
    m = offline_method("plugin-offline PC off", off, w)
    hooks: list[dict[str, float]] = []
    rates: list[dict[str, tuple[float, float]]] = []
    shapes = ctx.shape.linear_shapes()
    m.run()

    def run() -> list[float]:
        scores = off.score(w)
        hooks.append(off.hooks())
        return scores

    def matmul() -> list[float]:  # the machine's rate, in the engine process between passes
        rows = math.ceil(hooks[-1]["tokens"] / max(1, hooks[-1]["steps"]))  # GEMM rows per step
        rates.append(off.llm.collective_rpc(_matmul_in_worker, args=(shapes, dtype, rows))[0])
        return []

    m.run = run
    methods = [m, Method("matmul", matmul, lambda: [], 0, 0)]
    rounds(ctx, f"{dtype} every-token", methods)
    if any(h["tokens"] != tokens for h in hooks):  # the FLOP count assumes these tokens
        ctx.notes.append(f"{dtype} every-token: engine computed {hooks[0]['tokens']} tokens")
    ctx.add("every-token", dtype, m)
    med = lambda key: statistics.median(h[key] for h in hooks)  # noqa: E731
    wall, fwd, fwd_cpu = statistics.median(m.walls), med("forward_s"), med("forward_cpu_s")
    fwd_rate, fwd_rate_cpu = flops / fwd, flops / fwd_cpu
    text = []
    for gemm in rates[0]:
        # Ratios per round (forward and matmul measured back to back), then the median.
        ratio = statistics.median(
            flops / h["forward_s"] / r[gemm][0] for h, r in zip(hooks, rates, strict=True)
        )
        ratio_cpu = statistics.median(
            flops / h["forward_cpu_s"] / r[gemm][1] for h, r in zip(hooks, rates, strict=True)
        )
        rate = statistics.median(r[gemm][0] for r in rates)
        text.append(
            f"{gemm} {rate / 1e9:.1f} GFLOP/s -> LM forward = {100 * ratio:.0f}% of it "
            f"(from CPU seconds: {100 * ratio_cpu:.0f}%)"
        )
    ctx.notes.append(
        f"{dtype} every-token: {flops / 1e9:.1f} GFLOP over {tokens} tokens (formula in "
        f"LMShape.flops); LM forward {fwd_rate / 1e9:.1f} GFLOP/s ({fwd_rate_cpu / 1e9:.1f} per "
        f"CPU-s), end to end {flops / wall / 1e9:.1f} GFLOP/s. Matmul rate (one layer's GEMM "
        "shapes x the rows of a step, in the engine process between passes): "
        + "; ".join(text)
        + f". Pass split: model forward {100 * fwd / wall:.0f}% (attention kernels "
        f"{100 * med('attention_s') / wall:.0f}%), rest of the worker step "
        f"{100 * (med('step_s') - fwd) / wall:.0f}%, outside the worker (scheduler, tokenizer, "
        f"engine I/O) {100 * (wall - med('step_s')) / wall:.0f}%"
    )
    if a.profile:
        profile_pass(ctx, f"{dtype} every-token (prefix caching off)", off, w)


def profile_pass(ctx: Context, label: str, engine: Offline, w: Workload) -> None:
    """Layer-type timers and torch.profiler in the engine process around one cold pass."""
    engine.reset()
    engine.llm.collective_rpc(_profile, args=("start",))
    start = time.perf_counter()
    engine.score(w)
    wall = time.perf_counter() - start
    prof = engine.llm.collective_rpc(_profile, args=("stop",))[0]
    text = summarize_profile(prof, wall)
    ctx.profiles.append(
        f"torch.profiler + layer timers, {label}, engine process, one pass:\n{text}"
    )


def _bench_serve(ctx: Context, dtype: str, online: Online) -> None:
    """vLLM's own load generator against our server: the seed's benchmark command."""
    cmd = [
        str(Path(sys.executable).parent / "vllm"), "bench", "serve",
        "--backend", "vllm-rerank", "--dataset-name", "random-rerank", "--endpoint", "/v1/rerank",
        "--model", online.server.model, "--base-url", online.server.url,
        "--random-input", "200", "--num-prompts", str(ctx.args.bench_prompts), "--seed", "0",
    ]  # fmt: skip
    log(f"{dtype} bench-serve: {' '.join(cmd[1:])}")
    online.reset()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    block = out.stdout[out.stdout.find("=" * 10) :].strip()
    figures = {}
    for line in block.splitlines():
        name, _, value = line.rpartition(":")
        with contextlib.suppress(ValueError):
            figures[name.strip()] = float(value)
    ctx.profiles.append(f"vllm bench serve ({dtype} server):\n{block or out.stdout[-2000:]}")
    failed = int(figures.get("Failed requests", -1))
    ctx.notes.append(
        f"{dtype} bench-serve (vllm bench serve --backend vllm-rerank --dataset-name "
        f"random-rerank --random-input 200 --num-prompts {ctx.args.bench_prompts}): "
        f"{int(figures.get('Successful requests', 0))} ok, {failed} failed, "
        f"{figures.get('Request throughput (req/s)', 0):.1f} req/s, "
        f"{figures.get('Total token throughput (tok/s)', 0):.0f} tok/s"
    )
    if out.returncode != 0 or failed != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")


# ---------------------------------------------------------------------------------------------
# Startup
# ---------------------------------------------------------------------------------------------
def run_startup(ctx: Context) -> None:
    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    model = REPO / ".cache" / "tiny-qwen3-vl-reranker"
    if not (model / "config.json").exists():
        make_tiny_checkpoint(model)
    results = []
    for _ in range(ctx.args.startup_repeats):
        srv = ServeProcess(model, serve_args(None, 4096))  # as examples/serve_and_rerank.py
        try:
            healthy = srv.wait_healthy()
        finally:
            srv.stop()
        api = srv.first("(APIServer") or 0.0
        # The engine process is spawned right after the API server's last line before the
        # engine's first one; the gap is its interpreter start and imports.
        engine_first = srv.first("(EngineCore") or api
        spawned = max(
            (t for t, line in srv.lines if t < engine_first and line.startswith("(APIServer")),
            default=api,
        )
        engine_imports = engine_first - spawned
        results.append((healthy, api, engine_imports, srv))
    healthy, api, engine_imports, srv = sorted(results, key=lambda r: r[0])[len(results) // 2]
    milestones = [
        ("API server imports done (first log line)", api),
        ("API server multimodal warm-up done", srv.first("warmup completed")),
        ("engine process imports done (first log line)", srv.first("(EngineCore")),
        ("weights loaded", srv.first("Loading weights took")),
        ("KV cache + warm-up done", srv.first("init engine")),
        ("HTTP server starting", srv.first("Starting vLLM server")),
        ("healthy", healthy),
    ]
    after = healthy - api - engine_imports
    ctx.notes.append(
        f"startup (embedded tiny model, median of {len(results)}): healthy after {healthy:.1f}s; "
        f"minus imports (API {api:.1f}s, engine process {engine_imports:.1f}s) = {after:.1f}s "
        f"(target <= 10s)"
    )
    print("\nvllm serve start-up timeline (median run):")
    for name, t in milestones:
        print(f"  {'' if t is None else f'{t:6.2f}s'}  {name}")
