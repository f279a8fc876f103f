"""End-to-end rerank throughput: the plugin against the transformers reference, in one run.

On one random Qwen3-VL reranker checkpoint (made by ``make_tiny_checkpoint``, large enough that
compute dominates on a CPU) and the same (query, document) pairs, it times:

  plugin-offline   stock ``LLM.score`` through the plugin (all pairs in one call)
  plugin-online    stock ``vllm serve`` on 127.0.0.1, N concurrent clients posting /v1/rerank
  ref-pairwise     transformers Qwen3-VL, one forward per pair (as the official scorer)
  ref-padded       transformers Qwen3-VL, padded batches (attention mask, last real token)

Scenarios:
  short-long     (i)   queries of ~30 words, 16 documents of ~200 words each
  shared-prefix  (ii)  one 256-token query, 32 documents of 64 tokens; prefix caching on and off
                       (scores must agree within 1e-5 in fp32)
  every-token    (iii) scenario (i) pairs with prefix caching off: every prompt token computed;
                       achieved FLOP/s of the language-model forward vs this machine's matmul rate
  startup              ``vllm serve`` time-to-healthy of the embedded default tiny model

Timings are medians over ``--repeats`` rounds; in each round every method runs once on the same
pairs, one after the other (the prefix cache is reset first), so a noisy neighbour hits all
alike. Ratios are taken within the run.

    python benchmarks/bench_rerank.py                     # everything, fp32 and bf16
    python benchmarks/bench_rerank.py --quick             # smoke run, small sizes
    python benchmarks/bench_rerank.py --dtype float32 --scenario short-long --skip-online
    python benchmarks/bench_rerank.py --scenario every-token --profile   # + op profile
    VLLM_ASCEND_RERANK_CPU_LINEAR=torch python benchmarks/bench_rerank.py  # plain F.linear

The plugin's engines run its defaults (C++ attention, oneDNN linear layers with prepacked
weights); plugin variables set in the environment reach them, e.g. to time ``F.linear``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import functools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HF_OVERRIDES = {
    "architectures": ["Qwen3VLForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
SCENARIOS = ("short-long", "shared-prefix", "every-token", "bench-serve", "startup")
DTYPES = ("float32", "bfloat16")
# Engines run in spawned processes; the timing hooks below are sent to them as pickled callables.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

_WORDS = (
    "the a of to in and for with on is are was what which how why where cat dog bird fish river "
    "city music film book paper science history art sport food water fire earth light sound red "
    "green blue black white big small new old good first last people time year day world life "
    "market price stock bank money tree forest house piano game team score search find answer "
    "question model rank query document image video picture photo car mountain"
).split()


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    groups: list[tuple[str, list[str]]]  # (query, documents)
    prompt_tokens: list[int] = field(default_factory=list)  # per pair, official prompt

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(q, d) for q, docs in self.groups for d in docs]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def tokens_text(rng: random.Random, tokenizer: Any, n: int) -> str:
    """Text of exactly ``n`` tokens (alone; a neighbour can merge one token at the edge)."""
    text = words(rng, n)
    ids = tokenizer.encode(text, add_special_tokens=False)
    while len(ids) < n:
        text += " " + words(rng, n)
        ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids[:n])


def short_long(rng: random.Random, queries: int, docs: int) -> Workload:
    groups = [
        (words(rng, rng.randint(24, 36)), [words(rng, rng.randint(160, 240)) for _ in range(docs)])
        for _ in range(queries)
    ]
    return Workload("short-long", groups)


def shared_prefix(rng: random.Random, tokenizer: Any, q_tokens: int, docs: int, d_tokens: int):
    query = tokens_text(rng, tokenizer, q_tokens)
    return Workload(
        "shared-prefix", [(query, [tokens_text(rng, tokenizer, d_tokens) for _ in range(docs)])]
    )


def count_prompt_tokens(w: Workload, tokenizer: Any) -> None:
    from vllm_ascend_rerank.prompt import render

    w.prompt_tokens = [len(tokenizer.encode(render(q, d))) for q, d in w.pairs]


# ---------------------------------------------------------------------------------------------
# FLOPs and the machine's matmul rate
# ---------------------------------------------------------------------------------------------
@dataclass
class LMShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, checkpoint: Path) -> LMShape:
        t = json.loads((checkpoint / "config.json").read_text())["text_config"]
        return cls(
            t["hidden_size"],
            t["intermediate_size"],
            t["num_hidden_layers"],
            t["num_attention_heads"],
            t["num_key_value_heads"],
            t["head_dim"],
        )

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of one decoder layer's GEMMs, fused as vLLM runs them."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [(h, q + 2 * kv), (q, h), (h, 2 * i), (i, h)]  # qkv, o, gate_up, down

    @property
    def linear_params(self) -> int:
        """Weights every token multiplies (decoder layers; embedding lookup excluded)."""
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    def flops(self, new_tokens: list[int], cached: list[int] | None = None) -> float:
        """2 * linear_params * tokens  +  attention  +  score head.

        Attention per layer and request with c cached and n new tokens (causal, useful work
        only): QK^T and PV, each 2 * heads * head_dim * sum_{i=1..n} (c + i) FLOPs.
        RMSNorm, RoPE, SiLU and residual adds are not counted.
        """
        cached = cached or [0] * len(new_tokens)
        total = 0.0
        for n, c in zip(new_tokens, cached, strict=True):
            attn = 4 * self.heads * self.head_dim * (n * c + n * (n + 1) / 2) * self.layers
            total += 2 * self.linear_params * n + attn + 2 * self.hidden
        return total


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


class Offline:
    def __init__(self, checkpoint: Path, dtype: str, prefix_caching: bool, max_len: int) -> None:
        from vllm import LLM

        self.llm = LLM(
            model=str(checkpoint),
            runner="pooling",
            dtype=dtype,
            max_model_len=max_len,
            hf_overrides=HF_OVERRIDES,
            enable_prefix_caching=prefix_caching,
            seed=0,
        )
        self.llm.collective_rpc(_install_hooks)
        self.pid = self.llm.collective_rpc(_pid)[0]
        sched = self.llm.llm_engine.vllm_config.scheduler_config
        self.max_batched_tokens = sched.max_num_batched_tokens

    def score(self, w: Workload) -> list[float]:
        qs = [q for q, docs in w.groups for _ in docs]
        ds = [d for _, docs in w.groups for d in docs]
        return [o.outputs.score for o in self.llm.score(qs, ds, use_tqdm=False)]

    def reset(self) -> None:
        self.llm.reset_prefix_cache()
        self.llm.collective_rpc(_read_hooks, args=(True,))

    def hooks(self) -> dict[str, float]:
        return self.llm.collective_rpc(_read_hooks, args=(False,))[0]

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()


# ---------------------------------------------------------------------------------------------
# Plugin, online: vllm serve + concurrent /v1/rerank clients
# ---------------------------------------------------------------------------------------------
class ServeProcess:
    """``vllm serve`` on 127.0.0.1; every output line is kept with its arrival time."""

    def __init__(self, model: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(model)
        cmd = [str(Path(sys.executable).parent / "vllm"), "serve", self.model]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), *args]
        self.lines: list[tuple[float, str]] = []
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "VLLM_LOGGING_LEVEL": "INFO", **(env or {})},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter() - self.t0, line.rstrip()))

    def wait_healthy(self, timeout: float = 300) -> float:
        """Seconds from launch to the first 200 from /health."""
        import requests

        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                tail = "\n".join(line for _, line in self.lines[-40:])
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n{tail}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return time.perf_counter() - self.t0
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("vllm serve did not become healthy")

    def first(self, needle: str) -> float | None:
        return next((t for t, line in self.lines if needle in line), None)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_args(dtype: str | None, max_len: int) -> list[str]:
    from vllm_ascend_rerank.prompt import template_path

    args = ["--runner", "pooling", "--max-model-len", str(max_len)]
    args += ["--hf_overrides", json.dumps(HF_OVERRIDES), "--chat-template", template_path()]
    return args + (["--dtype", dtype] if dtype else [])


class Online:
    def __init__(self, checkpoint: Path, dtype: str, max_len: int) -> None:
        # Dev mode only adds /reset_prefix_cache, so every round starts cold like offline.
        self.server = ServeProcess(
            checkpoint, serve_args(dtype, max_len), env={"VLLM_SERVER_DEV_MODE": "1"}
        )
        self.server.wait_healthy()
        self.latencies: list[float] = []

    def score(self, w: Workload, concurrency: int) -> list[float]:
        """Scores in pair order; one request per query, ``concurrency`` clients at a time."""
        import requests

        def one(group: tuple[str, list[str]]) -> tuple[list[float], float]:
            query, docs = group
            body = {"model": self.server.model, "query": query, "documents": docs}
            start = time.perf_counter()
            r = requests.post(self.server.url + "/v1/rerank", json=body, timeout=600)
            latency = time.perf_counter() - start
            r.raise_for_status()
            scores = [0.0] * len(docs)
            for item in r.json()["results"]:
                scores[item["index"]] = item["relevance_score"]
            return scores, latency

        with cf.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, w.groups))
        self.latencies += [lat for _, lat in results]
        return [s for scores, _ in results for s in scores]

    def pids(self) -> list[int]:
        import psutil

        proc = psutil.Process(self.server.proc.pid)
        return [proc.pid] + [c.pid for c in proc.children(recursive=True)]

    def reset(self) -> None:
        import requests

        requests.post(self.server.url + "/reset_prefix_cache", timeout=30).raise_for_status()

    def close(self) -> None:
        self.server.stop()


# ---------------------------------------------------------------------------------------------
# The transformers reference (tests/reference.py: the official scorer's rules)
# ---------------------------------------------------------------------------------------------
class Reference:
    def __init__(self, checkpoint: Path, dtype: str) -> None:
        import torch

        sys.path.insert(0, str(REPO / "tests"))
        from reference import OfficialReranker

        self.ref = OfficialReranker(checkpoint)
        self.ref.model.to(getattr(torch, dtype))
        self.pad_id = self.ref.tokenizer.pad_token_id

    def _encode(self, q: str, d: str) -> list[int]:
        return self.ref.encode({"text": q}, {"text": d})["input_ids"][0].tolist()

    def _score_hidden(self, last: Any) -> list[float]:
        import torch

        return torch.sigmoid(last.float() @ self.ref.score_weight).tolist()

    def pairwise(self, pairs: list[tuple[str, str]]) -> list[float]:
        """One forward per pair, batch of one, no padding: the official scorer's loop."""
        import torch

        scores = []
        with torch.inference_mode():
            for q, d in pairs:
                inputs = self.ref.encode({"text": q}, {"text": d})
                self.ref.model.rope_deltas = None
                hidden = self.ref.model(**inputs).last_hidden_state
                scores += self._score_hidden(hidden[:, -1])
        return scores

    def padded(self, pairs: list[tuple[str, str]], batch: int, side: str) -> list[float]:
        """The same prompts in padded batches; the score is read at the last real token."""
        import torch

        scores = []
        with torch.inference_mode():
            for i in range(0, len(pairs), batch):
                ids = [self._encode(q, d) for q, d in pairs[i : i + batch]]
                width = max(map(len, ids))
                input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros_like(input_ids)
                for row, seq in enumerate(ids):
                    cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
                    input_ids[row, cols] = torch.tensor(seq)
                    mask[row, cols] = 1
                self.ref.model.rope_deltas = None
                hidden = self.ref.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    mm_token_type_ids=torch.zeros_like(input_ids),
                ).last_hidden_state
                last = mask.sum(1) - 1 if side == "right" else torch.full((len(ids),), width - 1)
                scores += self._score_hidden(hidden[torch.arange(len(ids)), last])
        return scores


# ---------------------------------------------------------------------------------------------
# Measurement plumbing
# ---------------------------------------------------------------------------------------------
def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of these processes (all their threads)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


@dataclass
class Method:
    """One way of scoring a workload's pairs, run once per round."""

    name: str
    run: Callable[[], list[float]]  # scores in pair order
    pids: Callable[[], list[int]]  # processes whose CPU time the method costs
    pairs: int
    tokens: int
    before: Callable[[], None] = lambda: None  # untimed, e.g. reset the prefix cache
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def once(self) -> None:
        self.before()
        pids = self.pids()
        cpu0, start = cpu_seconds(pids), time.perf_counter()
        self.scores = self.run()
        self.walls.append(time.perf_counter() - start)
        self.cpus.append(cpu_seconds(pids) - cpu0)


def rounds(ctx: Context, label: str, methods: list[Method]) -> None:
    """Every method once per round, in turn, so that load changes hit all of them alike."""
    for r in range(ctx.args.repeats):
        for m in methods:
            m.once()
        load = os.getloadavg()[0]
        times = ", ".join(f"{m.name} {m.walls[-1]:.2f}s" for m in methods)
        log(f"  {label} round {r + 1}: {times} (load average {load:.1f})")
        ctx.loads.append(load)


@dataclass
class Row:
    scenario: str
    dtype: str
    method: str
    pairs: int
    tokens: int
    wall_s: float  # median over rounds of one pass over the pairs
    cpu_s: float  # median CPU seconds of the processes doing the work
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def pairs_s(self) -> float:
        return self.pairs / self.wall_s

    @property
    def tokens_s(self) -> float:
        return self.tokens / self.wall_s


def max_diff(a: list[float], b: list[float]) -> float:
    diffs = [abs(x - y) for x, y in zip(a, b, strict=False)]
    return math.nan if any(map(math.isnan, diffs)) else max(diffs)  # max() drops a NaN


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    k = min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def closing_all(*objs: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for obj in objs:
            if obj is not None:
                obj.close()


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------
@dataclass
class Context:
    args: argparse.Namespace
    checkpoint: Path
    shape: LMShape
    tokenizer: Any
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)

    def add(self, scenario: str, dtype: str, m: Method, **latency: float) -> None:
        wall, cpu = statistics.median(m.walls), statistics.median(m.cpus)
        self.rows.append(Row(scenario, dtype, m.name, m.pairs, m.tokens, wall, cpu, **latency))


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


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def report(ctx: Context) -> None:
    import torch

    s = ctx.shape
    print("\n" + "=" * 100)
    print(
        f"checkpoint {ctx.checkpoint.name} (make_tiny_checkpoint(hidden_size={s.hidden}, "
        f"num_layers={s.layers}, head_dim={s.head_dim}, intermediate_size={s.intermediate}), "
        f"random weights): {s.heads} heads / {s.kv_heads} kv heads, "
        f"{s.linear_params / 1e6:.1f}M linear params per token; torch threads "
        f"{torch.get_num_threads()}; attention kernels "
        f"{os.environ.get('VLLM_ASCEND_RERANK_ATTN_IMPL', 'auto')}, linear layers "
        f"{os.environ.get('VLLM_ASCEND_RERANK_CPU_LINEAR', 'auto')}; load average during rounds "
        + (f"{min(ctx.loads):.1f}..{max(ctx.loads):.1f}" if ctx.loads else "n/a")
        + f" on {os.cpu_count()} CPUs"
    )
    print(
        "x pad / x pw: pairs/s relative to ref-padded / ref-pairwise of the same scenario and "
        "dtype (every-token: of short-long), from wall time; 'cpu' columns: the same from CPU "
        "seconds (robust to other load on the machine)"
    )
    head = (
        f"{'scenario':<14}{'dtype':<9}{'method':<24}{'pairs':>6}{'tokens':>7}{'wall s':>8}"
        f"{'cpu s':>8}{'pairs/s':>8}{'tok/s':>7}{'p50ms':>7}{'p99ms':>7}"
        f"{'x pad':>7}{'x pw':>7}{'cpu x pad':>10}{'cpu x pw':>9}"
    )
    print(head)
    print("-" * len(head))

    def base(r: Row, prefix: str) -> Row | None:
        scenario = "short-long" if r.scenario == "every-token" else r.scenario
        for x in ctx.rows:
            if (x.scenario, x.dtype) == (scenario, r.dtype) and x.method.startswith(prefix):
                return None if x is r else x
        return None

    for r in ctx.rows:
        ratios = []
        for prefix in ("ref-padded", "ref-pairwise"):
            b = base(r, prefix)
            ratios.append(f"{r.pairs_s / b.pairs_s:.2f}" if b else "-")
        for prefix in ("ref-padded", "ref-pairwise"):
            b = base(r, prefix)
            ratios.append(f"{(b.cpu_s / b.pairs) / (r.cpu_s / r.pairs):.2f}" if b else "-")
        p50 = f"{r.p50_ms:.0f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.0f}" if r.p99_ms is not None else "-"
        print(
            f"{r.scenario:<14}{r.dtype:<9}{r.method:<24}{r.pairs:>6}{r.tokens:>7}"
            f"{r.wall_s:>8.2f}{r.cpu_s:>8.2f}{r.pairs_s:>8.1f}{r.tokens_s:>7.0f}{p50:>7}{p99:>7}"
            f"{ratios[0]:>7}{ratios[1]:>7}{ratios[2]:>10}{ratios[3]:>9}"
        )
    print()
    for note in ctx.notes:
        print("* " + note)
    for text in ctx.profiles:
        print("\n--- " + text)
    if ctx.args.json:
        rows = [{**r.__dict__, "pairs_s": r.pairs_s, "tokens_s": r.tokens_s} for r in ctx.rows]
        out = {"rows": rows, "notes": ctx.notes, "loads": ctx.loads}
        Path(ctx.args.json).write_text(json.dumps(out, indent=2))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dtype", choices=[*DTYPES, "both"], default=None, help="default both (quick: float32)"
    )
    p.add_argument("--scenario", nargs="+", choices=[*SCENARIOS, "all"], default=["all"])
    p.add_argument("--quick", action="store_true", help="small sizes, one round (smoke run)")
    p.add_argument("--skip-online", action="store_true", help="no vllm serve for scenario (i)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 3; quick 1)")
    p.add_argument("--concurrency", type=int, default=4, help="online clients")
    p.add_argument("--hidden-size", type=int, default=None, help="default 768 (quick 128)")
    p.add_argument("--num-layers", type=int, default=None, help="default 6 (quick 2)")
    p.add_argument("--head-dim", type=int, default=None, help="default 128 (quick 32)")
    p.add_argument(
        "--intermediate-size", type=int, default=None, help="MLP width, default 3 x hidden"
    )
    p.add_argument("--queries", type=int, default=None, help="scenario (i) queries (default 4)")
    p.add_argument("--shared-query-tokens", type=int, default=256)
    p.add_argument("--shared-doc-tokens", type=int, default=64)
    p.add_argument("--ref-pairs", type=int, default=0, help="cap ref-pairwise pairs (0 = all)")
    p.add_argument("--ref-batch-size", type=int, default=16)
    p.add_argument("--padding-side", choices=["left", "right"], default="left")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--bench-prompts", type=int, default=None, help="default 200 (quick 20)")
    p.add_argument("--startup-repeats", type=int, default=None, help="default 3 (quick 1)")
    p.add_argument("--profile", action="store_true", help="torch.profiler table (every-token)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    a = p.parse_args()
    q = a.quick
    a.dtype = a.dtype or ("float32" if q else "both")
    a.repeats = a.repeats or (1 if q else 3)
    a.hidden_size = a.hidden_size or (128 if q else 768)
    a.num_layers = a.num_layers or (2 if q else 6)
    a.head_dim = a.head_dim or (32 if q else 128)
    a.intermediate_size = a.intermediate_size or 3 * a.hidden_size
    a.queries = a.queries or (2 if q else 4)
    a.startup_repeats = a.startup_repeats or (1 if q else 3)
    a.bench_prompts = a.bench_prompts or (20 if q else 200)
    if q:
        a.shared_query_tokens, a.shared_doc_tokens = min(a.shared_query_tokens, 128), 32
    return a


def _same_allocator_as_the_engine() -> None:
    """The reference runs in this process, the plugin's engine in one spawned with the
    plugin's glibc malloc settings (``config._keep_freed_memory``), which glibc reads only at
    start: run this process again with them, so both sides are timed under one allocator."""
    from vllm_ascend_rerank.config import _GLIBC_MALLOC_ENV

    if "LD_PRELOAD" in os.environ or all(name in os.environ for name in _GLIBC_MALLOC_ENV):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**_GLIBC_MALLOC_ENV, **os.environ})


def main() -> None:
    args = parse_args()
    _same_allocator_as_the_engine()
    import torch
    from transformers import AutoTokenizer

    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    scenarios = list(SCENARIOS) if "all" in args.scenario else args.scenario
    checkpoint = REPO / ".cache" / (
        f"bench-h{args.hidden_size}-l{args.num_layers}-d{args.head_dim}-i{args.intermediate_size}"
    )
    if not (checkpoint / "config.json").exists():
        log(f"making checkpoint {checkpoint} (random weights, once)")
        make_tiny_checkpoint(
            checkpoint,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            head_dim=args.head_dim,
            intermediate_size=args.intermediate_size,
        )
    ctx = Context(
        args, checkpoint, LMShape.of(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    )
    log(f"checkpoint {checkpoint}; torch threads {torch.get_num_threads()}; scenarios {scenarios}")
    model_scenarios = [s for s in scenarios if s != "startup"]
    if model_scenarios:
        for dtype in DTYPES if args.dtype == "both" else (args.dtype,):
            run_dtype(ctx, dtype, model_scenarios)
    if "startup" in scenarios:
        run_startup(ctx)
    report(ctx)


if __name__ == "__main__":  # vLLM spawns its engine processes: keep the guard
    main()
