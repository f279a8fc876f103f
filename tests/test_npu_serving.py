"""Stock ``vllm serve`` on the emulated npu device (eager), and tensor / data parallelism.

The emulated device (tests/npu_emulation, ``make npu-emulation``) makes the plugin take its real
NPU mode: NPU platform, ``RerankNPUWorker``, vLLM's GPU runner on npu:N, hccl over gloo. Every
engine here is a ``vllm serve`` subprocess, so the device never enters the pytest process.

Engine starts dominate the time (2 cores in CI): one server runs at a time, each configuration
starts once per module (``Engines``) and its scores on a fixed pair set are kept for comparison.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ATOL, REPO, Server, make_pairs, run_bench_serve, serve_args

EMULATION = REPO / "tests" / "npu_emulation"
LIBRARY = EMULATION / "torch_npu" / "_device.so"

# Small and fast: the emulated KV cache is zeroed host memory and the encoder is not profiled
# (text only); eager until ACL graph replay works in emulation.
SERVE_FLAGS = [
    "--enforce-eager",
    "--max-num-batched-tokens", "1024",
    "--limit-mm-per-prompt", json.dumps({"image": 0, "video": 0}),
    "--gpu-memory-utilization", "0.5",
    "--seed", "0",
]  # fmt: skip
PARALLEL_FLAGS = {
    "tp1": [],
    "tp2": ["--tensor-parallel-size", "2"],
    "dp2": ["--data-parallel-size", "2"],
}
# Pairs scored by every configuration: documents from 1 to ~250 words span several KV blocks.
QUERY, DOCS = make_pairs(12, seed=11)
# fp32: TP's sharded matmuls + all-reduce reorder sums (measured max 6e-7; DP: 9e-9, the ranks
# batch the pairs differently).
PARALLEL_ATOL = 1e-5


def mode_env(mode: str, parallel: str) -> dict[str, str]:
    """The server's environment for ``mode``: the emulated NPU device or the CPU reference."""
    # 2 cores: one engine takes both (vLLM would use 1), two ranks one each.
    threads = {"OMP_NUM_THREADS": "2" if parallel == "tp1" else "1"}
    if mode == "cpu":
        return {**threads, "VLLM_ASCEND_RERANK_DEVICE": "cpu"}
    paths = [str(EMULATION), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **threads,
        "PYTHONPATH": os.pathsep.join(paths),
        "VLLM_ASCEND_RERANK_DEVICE": "npu",
        "TORCH_NPU_EMULATION_MEMORY_MB": "2048",  # per device; real host memory
    }


class Engines:
    """At most one ``vllm serve`` at a time (2 cores); each (mode, parallelism) starts once."""

    def __init__(self, model: Path) -> None:
        self.model = model
        self.current: tuple[str, str] | None = None
        self.running: Server | None = None
        self.scores: dict[tuple[str, str], list[float]] = {}

    def server(self, mode: str, parallel: str) -> Server:
        if self.current != (mode, parallel):
            self.stop()
            args = serve_args([*SERVE_FLAGS, *PARALLEL_FLAGS[parallel]])
            # two emulated ranks on 2 busy cores start slowly
            self.running = Server(self.model, args, env=mode_env(mode, parallel), timeout=900)
            self.current = (mode, parallel)
        assert self.running is not None
        return self.running

    def score(self, mode: str, parallel: str) -> list[float]:
        key = (mode, parallel)
        if key not in self.scores:
            self.scores[key] = post_scores(self.server(mode, parallel), str(self.model))
        return self.scores[key]

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
        self.running, self.current = None, None


def post_scores(server: Server, model: str) -> list[float]:
    r = server.post("/v1/score", {"model": model, "queries": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    return [d["score"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]


@pytest.fixture(scope="module")
def engines(checkpoints: dict[str, Path]) -> Iterator[Engines]:
    if not LIBRARY.exists():
        msg = f"{LIBRARY.name} not built (make npu-emulation)"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}: CI must build the emulated device")
        pytest.skip(msg)
    eng = Engines(checkpoints["tied"])
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def ref(checkpoints, reference_factory):  # noqa: ANN001, ANN201 - conftest fixtures
    return reference_factory(checkpoints["tied"])


# ---- 1. vllm serve in NPU mode (eager): the official rule's scores, bench without failures ----
def test_npu_rerank_matches_official(engines: Engines, ref) -> None:  # noqa: ANN001
    server = engines.server("npu", "tp1")
    query, docs = make_pairs(10, seed=5)
    want = ref.score({"text": query}, [{"text": d} for d in docs])
    r = server.post("/v1/rerank", {"model": str(engines.model), "query": query,
                                   "documents": docs, "top_n": 4})  # fmt: skip
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == sorted(range(len(docs)), key=lambda i: -want[i])[:4]
    for x in results:
        assert x["relevance_score"] == pytest.approx(want[x["index"]], abs=ATOL)


def test_npu_score_matches_official(engines: Engines, ref) -> None:  # noqa: ANN001
    want = ref.score({"text": QUERY}, [{"text": d} for d in DOCS])
    got = engines.score("npu", "tp1")
    diff = max(abs(a - b) for a, b in zip(got, want, strict=True))
    print(f"npu tp1: max |score - official| = {diff:.3g}")
    assert got == pytest.approx(want, abs=ATOL)


def test_npu_vllm_bench_serve_rerank(engines: Engines) -> None:
    run_bench_serve(engines.server("npu", "tp1"), str(engines.model), prompts=16)


# ---- 2. TP=2 and DP=2 give TP=1's scores, on the emulated NPU and in the CPU reference mode ----
# Mode outermost: each server starts once and TP=1 runs before the next mode's engines.
@pytest.mark.parametrize(
    ("mode", "parallel"), [("npu", "tp2"), ("npu", "dp2"), ("cpu", "tp2"), ("cpu", "dp2")]
)
def test_parallel_gives_tp1_scores(engines: Engines, mode: str, parallel: str) -> None:
    base = engines.score(mode, "tp1")
    got = engines.score(mode, parallel)
    diff = max(abs(a - b) for a, b in zip(got, base, strict=True))
    print(f"{mode} {parallel}: max |score - tp1| = {diff:.3g}")
    assert got == pytest.approx(base, abs=PARALLEL_ATOL)
