"""Run stock ``vllm serve`` for a reranker on 127.0.0.1 from Python (examples, tests, benchmarks).

    with LocalServer(model, reranker_serve_args()) as server:
        server.post("/v1/rerank", {"model": model, "query": "...", "documents": [...]})

Nothing here changes how vLLM serves; it builds the documented command line, waits for
``/health`` and stops the server with SIGINT (vLLM's graceful path), then SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from vllm_ascend_rerank.prompt import template_path

# hf_overrides that turn an original Qwen3-VL-Reranker checkpoint into our classifier.
HF_OVERRIDES: dict[str, Any] = {
    "architectures": ["Qwen3VLForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
DEFAULT_MODEL_DIR = ".cache/tiny-qwen3-vl-reranker"
DEFAULT_EMBEDDING_MODEL_DIR = ".cache/tiny-qwen3-vl-embedding"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` / ``--model-dir`` as every example takes them (see ``resolve_model``)."""
    parser.add_argument("--model", default=None, help="use this checkpoint instead")
    parser.add_argument(
        "--model-dir", default=DEFAULT_MODEL_DIR, help="where the embedded tiny model is made"
    )


def resolve_model(model: str | None, model_dir: str = DEFAULT_MODEL_DIR) -> str:
    """``model`` if given, else the embedded tiny reranker (made in ``model_dir`` once)."""
    if model is not None:
        return model
    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    if not (Path(model_dir) / "config.json").exists():
        make_tiny_checkpoint(model_dir)
    return model_dir


def resolve_embedding_model(model: str | None, model_dir: str = DEFAULT_EMBEDDING_MODEL_DIR) -> str:
    """``model`` if given, else the embedded tiny embedder (made in ``model_dir`` once)."""
    if model is not None:
        return model
    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_embedding_checkpoint

    if not (Path(model_dir) / "config.json").exists():
        make_tiny_embedding_checkpoint(model_dir)
    return model_dir


def reranker_serve_args(extra: Sequence[str] = ()) -> list[str]:
    """The documented flags for an original checkpoint: pooling runner, overrides, template."""
    return [
        "--runner", "pooling",
        "--hf_overrides", json.dumps(HF_OVERRIDES),
        "--chat-template", template_path(),
        *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``vllm serve MODEL ARGS`` on 127.0.0.1, healthy on entry, stopped on exit."""

    def __init__(
        self,
        model: str | Path,
        args: Sequence[str],
        port: int | None = None,
        log: IO[str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        echo: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            str(Path(sys.executable).parent / "vllm"), "serve", str(model),
            "--host", "127.0.0.1", "--port", str(self.port), *args,
        ]  # fmt: skip
        if echo:
            print("$", shlex.join(self.cmd), flush=True)
        self.proc = subprocess.Popen(
            self.cmd, stdout=log, stderr=subprocess.STDOUT if log else None, env=env
        )
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        import requests

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vllm serve not healthy after {timeout:.0f} s")

    def post(self, path: str, body: dict[str, Any], timeout: float = 120) -> Any:
        import requests

        return requests.post(self.url + path, json=body, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
