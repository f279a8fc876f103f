"""What a round times: the plugin offline and online, the transformers reference, and the
Method that runs one of them and counts its wall and CPU time."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import HF_OVERRIDES, REPO
from .profiling import _install_hooks, _pid, _read_hooks
from .workloads import Workload


# ---------------------------------------------------------------------------------------------
# Plugin, offline: LLM.score
# ---------------------------------------------------------------------------------------------
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
