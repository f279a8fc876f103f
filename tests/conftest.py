"""Shared fixtures: tiny checkpoints, reference scores, engines and a server, built once.

Engines and servers are module- or session-scoped: each start costs seconds.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_ascend_rerank.serving import (  # noqa: F401 - HF_OVERRIDES, free_port: for tests
    HF_OVERRIDES,
    LocalServer,
    free_port,
    reranker_serve_args,
)

# Engines run the shipped default (the C++ attention when built, oneDNN linear layers); tests
# that need the pure-torch path say so with ``pure_torch``.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "qwen3_vl_reranker.jinja"
ATOL = 1e-4  # fp32 agreement with the official rule

_WORDS = (
    "cat dog animal market stock price river bank money tree forest green "
    "house city music piano play game team score yes no maybe light dark "
    "water fire stone paper code model rank query answer search find"
).split()


def make_pairs(n: int = 24, seed: int = 0) -> tuple[str, list[str]]:
    """One query and ``n`` documents of varied lengths (a few to ~300 tokens)."""
    rng = random.Random(seed)
    query = " ".join(rng.choice(_WORDS) for _ in range(6))
    lengths = [1, 2, 5, 10, 20, 40, 80, 150, 250] + [rng.randint(1, 120) for _ in range(n)]
    docs = [" ".join(rng.choice(_WORDS) for _ in range(k)) for k in lengths[:n]]
    return query, docs


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vllm_ascend_rerank.models.convert import convert
    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    base = tmp_path_factory.mktemp("checkpoints")
    tied = make_tiny_checkpoint(base / "tied", tied=True, seed=0)
    untied = make_tiny_checkpoint(base / "untied", tied=False, seed=1)
    converted = convert(tied, base / "converted")
    return {"tied": tied, "untied": untied, "converted": converted}


@pytest.fixture(scope="session")
def heads128_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real rerankers' attention shape, shrunk: 128-dim heads (2 query heads over 1 KV
    head, GQA) and their interleaved M-RoPE sections [24, 20, 20], the shape the fused NPU
    attention and npu_mrope take (the 16-dim default checkpoint falls back to torch code)."""
    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    base = tmp_path_factory.mktemp("checkpoints-heads128")
    return make_tiny_checkpoint(base / "tied", head_dim=128, hidden_size=256, seed=2)


@pytest.fixture(scope="session")
def embedding_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Qwen3-VL-Embedding (hidden size 128), without and with the sentence-transformers
    files of the real release (same weights)."""
    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_embedding_checkpoint

    base = tmp_path_factory.mktemp("embedding-checkpoints")
    return {
        "plain": make_tiny_embedding_checkpoint(base / "plain"),
        "st": make_tiny_embedding_checkpoint(base / "st", sentence_transformers=True),
    }


@pytest.fixture(scope="session")
def reference_factory():
    """OfficialReranker per checkpoint, loaded once."""
    from reference import OfficialReranker

    cache: dict[Path, OfficialReranker] = {}

    def get(path: Path) -> OfficialReranker:
        if path not in cache:
            cache[path] = OfficialReranker(path)
        return cache[path]

    return get


@contextlib.contextmanager
def plugin_env(**values: str) -> Iterator[None]:
    """Engines created inside see these plugin variables (inherited by spawn)."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def pure_torch() -> contextlib.AbstractContextManager[None]:
    """The pure-torch reference kernels: attention and plain ``F.linear``."""
    return plugin_env(VLLM_ASCEND_RERANK_ATTN_IMPL="torch", VLLM_ASCEND_RERANK_CPU_LINEAR="torch")


EMULATION = REPO / "tests" / "npu_emulation"
EMULATED_DEVICE = EMULATION / "torch_npu" / "_device.so"


def require_emulated_npu() -> None:
    """Skip without the emulated npu device library (``make npu-emulation``); fail in CI."""
    if not EMULATED_DEVICE.exists():
        msg = f"{EMULATED_DEVICE.name} not built (make npu-emulation)"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}: CI must build the emulated device")
        pytest.skip(msg)


def npu_mode_env(trace: Path, memory_mb: int = 2048, **extra: str) -> dict[str, str]:
    """The environment of a process that runs stock vLLM in NPU mode on the emulated device,
    writing its trace to ``trace``."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EMULATION), str(REPO / "tests")]),
        "VLLM_ASCEND_RERANK_DEVICE": "npu",
        "TORCH_NPU_EMULATION_MEMORY_MB": str(memory_mb),  # the KV cache is real host memory
        "TORCH_NPU_EMULATION_TRACE": str(trace),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),  # vLLM would use 1
        **extra,
    }


def run_npu_script(
    script: str, tmp_path: Path, *args: str, timeout: float = 600, **extra_env: str
) -> tuple[str, Path]:
    """Run ``script`` (a Python program) with ``args`` in NPU mode; its stdout and trace path.
    A failing run fails the test with the end of its stderr."""
    trace, path = tmp_path / "trace.jsonl", tmp_path / "run.py"
    path.write_text(script)
    out = subprocess.run(
        [sys.executable, str(path), *args],
        env=npu_mode_env(trace, **extra_env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout, trace


def make_llm(model: Path, **kwargs):
    from vllm import LLM

    opts = dict(
        runner="pooling",
        dtype="float32",
        max_model_len=1024,
        hf_overrides=HF_OVERRIDES,
        seed=0,
    )
    opts.update(kwargs)
    return LLM(model=str(model), **opts)


def close_llm(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


class Server(LocalServer):
    """``vllm serve`` for a test module, its output in a log file named in errors."""

    def __init__(
        self, model: Path, args: list[str], env: dict[str, str] | None = None, timeout: float = 240
    ) -> None:
        port = free_port()
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"vllm-serve-{port}.log", "w")
        try:
            super().__init__(model, args, port=port, log=self.log,
                             env={**os.environ, **(env or {})}, timeout=timeout)  # fmt: skip
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; see {self.log.name}") from exc

    def stop(self) -> None:
        super().stop()
        self.log.close()


def run_bench_serve(server: Server, model: str, prompts: int) -> None:
    """Stock ``vllm bench serve --backend vllm-rerank`` against ``server``: every request ok."""
    import subprocess
    import sys

    cmd = [
        str(Path(sys.executable).parent / "vllm"), "bench", "serve",
        "--backend", "vllm-rerank", "--dataset-name", "random-rerank",
        "--endpoint", "/v1/rerank", "--model", model,
        "--base-url", server.url, "--num-prompts", str(prompts), "--random-input", "60",
        "--seed", "0",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "Successful requests:" in text, text[-2000:]
    ok = int(text.split("Successful requests:")[1].split()[0])
    failed = int(text.split("Failed requests:")[1].split()[0]) if "Failed requests:" in text else 0
    assert ok == prompts and failed == 0, text[-2000:]


def serve_args(extra: list[str] | None = None) -> list[str]:
    return reranker_serve_args(["--dtype", "float32", "--max-model-len", "1024", *(extra or [])])


@pytest.fixture(scope="module")
def server(checkpoints: dict[str, Path]) -> Iterator[Server]:
    srv = Server(checkpoints["tied"], serve_args())
    yield srv
    srv.stop()
