"""Stock ``vllm serve`` on the emulated npu device with piecewise ACL graphs, and tensor / data
parallelism.

The emulated device (tests/npu_emulation, ``make npu-emulation``) makes the plugin take its real
NPU mode: NPU platform, ``RerankNPUWorker``, vLLM's GPU runner on npu:N, hccl over gloo. Every
engine here is a ``vllm serve`` subprocess, so the device never enters the pytest process.

The TP=1 NPU server (fp32, scores within 1e-4 of the official rule) runs as a user would
configure it: piecewise ACL graphs at the sizes its ``--compilation-config`` names, and images
with a small profiling image (``--limit-mm-per-prompt`` width/height: vLLM's encoder profile runs
the vision tower on that image instead of the largest one the processor accepts, whose
position-embedding Triton kernel takes ~16 ms per patch in Triton's interpreter, ~2 min for the
default 1,843,200 px bound). Its trace proves what ran. The parallel servers are eager and
text-only: they are compared with TP=1's scores.

Engine starts dominate the time (2 cores in CI): one server runs at a time, each configuration
starts once per module (``Engines``) and its scores on a fixed pair set are kept for comparison.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ATOL, REPO, Server, make_pairs, run_bench_serve, serve_args
from PIL import Image

EMULATION = REPO / "tests" / "npu_emulation"
LIBRARY = EMULATION / "torch_npu" / "_device.so"

# Small and fast: the emulated KV cache is zeroed host memory.
SERVE_FLAGS = [
    "--max-num-batched-tokens", "1024",
    "--gpu-memory-utilization", "0.5",
    "--seed", "0",
]  # fmt: skip
# Two small graphs: shorter steps pad up to one and replay it; a full 1024-token step is eager.
GRAPH_SIZES = [128, 512]
# Profile the vision tower on one 64x64 image (16 patches) rather than the largest allowed.
PROFILE_IMAGE = {"count": 2, "width": 64, "height": 64}
NPU_TP1_FLAGS = [
    "--compilation-config", json.dumps({"cudagraph_capture_sizes": GRAPH_SIZES}),
    "--limit-mm-per-prompt", json.dumps({"image": PROFILE_IMAGE, "video": 0}),
]  # fmt: skip
TEXT_ONLY = json.dumps({"image": 0, "video": 0})
EAGER_TEXT_FLAGS = ["--enforce-eager", "--limit-mm-per-prompt", TEXT_ONLY]
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


def mode_env(mode: str, parallel: str, trace: Path) -> dict[str, str]:
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
        "TORCH_NPU_EMULATION_TRACE": str(trace),  # one line per process, written at exit
        # The engine process gets 5 s to exit after the server's SIGINT, then is killed before
        # writing its trace (measured: longer on 2 busy cores). Within Server.stop's 30 s.
        "VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "25",
    }


class Engines:
    """At most one ``vllm serve`` at a time (2 cores); each (mode, parallelism) starts once."""

    def __init__(self, model: Path, traces: Path) -> None:
        self.model = model
        self.traces = traces
        self.current: tuple[str, str] | None = None
        self.running: Server | None = None
        self.scores: dict[tuple[str, str], list[float]] = {}

    def trace_path(self, mode: str, parallel: str) -> Path:
        return self.traces / f"{mode}-{parallel}.jsonl"

    def server(self, mode: str, parallel: str) -> Server:
        if self.current != (mode, parallel):
            self.stop()
            flags = NPU_TP1_FLAGS if (mode, parallel) == ("npu", "tp1") else EAGER_TEXT_FLAGS
            args = serve_args([*SERVE_FLAGS, *flags, *PARALLEL_FLAGS[parallel]])
            env = mode_env(mode, parallel, self.trace_path(mode, parallel))
            # two emulated ranks on 2 busy cores start slowly
            self.running = Server(self.model, args, env=env, timeout=900)
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
def engines(checkpoints: dict[str, Path], tmp_path_factory) -> Iterator[Engines]:  # noqa: ANN001
    if not LIBRARY.exists():
        msg = f"{LIBRARY.name} not built (make npu-emulation)"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}: CI must build the emulated device")
        pytest.skip(msg)
    eng = Engines(checkpoints["tied"], tmp_path_factory.mktemp("npu-serve-traces"))
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def ref(checkpoints, reference_factory):  # noqa: ANN001, ANN201 - conftest fixtures
    return reference_factory(checkpoints["tied"])


def png_url(h: int, w: int, seed: int) -> str:
    """A random RGB image as a data URL."""
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


# ---- 1. vllm serve in NPU mode with ACL graphs: the official rule's scores, text and images ----
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


def test_npu_images_match_official(engines: Engines, ref) -> None:  # noqa: ANN001
    """Images through the vision tower on the emulated device: an image query, and documents
    with an image and text, an image alone (50x70: resized the official way) and text."""
    server = engines.server("npu", "tp1")
    square, odd, query_image = png_url(64, 64, 1), png_url(50, 70, 2), png_url(64, 96, 3)
    docs = [
        {"content": [{"type": "image_url", "image_url": {"url": square}},
                     {"type": "text", "text": "a red car in the city"}]},
        {"content": [{"type": "image_url", "image_url": {"url": odd}}]},
        "a green tree by the river",
    ]  # fmt: skip
    ref_docs = [{"image": load(square), "text": "a red car in the city"},
                {"image": load(odd)}, {"text": "a green tree by the river"}]  # fmt: skip
    cases = {
        "text query": ("which picture shows a car?", {"text": "which picture shows a car?"}),
        "image query": ({"content": [{"type": "image_url", "image_url": {"url": query_image}}]},
                        {"image": load(query_image)}),
    }  # fmt: skip
    for name, (query, ref_query) in cases.items():
        want = ref.score(ref_query, ref_docs)
        r = server.post("/v1/rerank", {"model": str(engines.model), "query": query,
                                       "documents": docs})  # fmt: skip
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        diff = max(abs(got[i] - w) for i, w in enumerate(want))
        print(f"npu tp1 images, {name}: max |score - official| = {diff:.3g}")
        assert [got[i] for i in range(len(docs))] == pytest.approx(want, abs=ATOL), name


def test_npu_vllm_bench_serve_rerank(engines: Engines) -> None:
    run_bench_serve(engines.server("npu", "tp1"), str(engines.model), prompts=16)


def test_npu_graph_replays_give_official_scores(engines: Engines, ref) -> None:  # noqa: ANN001
    """Short pairs one at a time: each step pads up to the 128-token graph and replays it. Then
    the server stops and its engine process's trace (written at exit) shows the NPU worker,
    graphs at exactly the user's sizes, those replays and the vision tower's Triton kernel."""
    server = engines.server("npu", "tp1")
    query, docs = make_pairs(4, seed=7)  # documents of 1, 2, 5 and 10 words
    want = ref.score({"text": query}, [{"text": d} for d in docs])
    for doc, w in zip(docs, want, strict=True):
        r = server.post("/v1/score", {"model": str(engines.model), "queries": query,
                                      "documents": [doc]})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["data"][0]["score"] == pytest.approx(w, abs=ATOL)
    engines.stop()
    path = engines.trace_path("npu", "tp1")
    lines = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    (trace,) = [ln for ln in lines if "worker" in ln] or [None]
    assert trace is not None, lines
    assert trace["worker"] == "vllm_ascend_rerank.worker.npu.RerankNPUWorker"
    graphs = trace["graphs"]
    assert {int(s) for s in graphs if s != "other"} == set(GRAPH_SIZES), graphs
    assert graphs[str(GRAPH_SIZES[0])].get("replays", 0) >= len(docs), graphs
    assert trace["triton"].get("_bilinear_pos_embed_kernel", 0) > 0, trace["triton"]
    attention = {k: v for k, v in trace["calls"].items() if "attention" in k}
    print(f"npu tp1 trace: graphs {graphs}; attention ops {attention}")
    # The vision tower's fused attention ran on the images. The text model's fused op
    # (npu_fused_infer_attention_score) takes float16/bfloat16 only: this fp32 server runs the
    # reference attention there; test_npu_engine.py runs it in bf16.
    assert attention.get("npu_fusion_attention", 0) > 0, attention


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
