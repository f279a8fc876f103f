"""Load benchmark: N concurrent clients for T seconds against a real ``vllm serve``.

Starts stock ``vllm serve`` for the reranker on 127.0.0.1 (the embedded tiny model unless
``--model``), drives it with Locust (the maintained Python load generator; the client mix is
``locustfile_rerank.py``: good requests, a repeated pair, malformed requests) and prints:
requests/s, p50/p99 latency per kind, failed requests, 5xx responses, the resident memory of
the server's processes (API server + engine) at start, at its highest and at the end, and the
spread of the repeated pair's score. Exits 1 on any 5xx or failed request.

    pip install -r requirements/bench.txt          # Locust
    .venv/bin/python benchmarks/load.py                          # 64 clients, 5 minutes
    .venv/bin/python benchmarks/load.py --clients 16 --duration 30   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

from vllm_ascend_rerank.serving import (
    LocalServer,
    add_model_arguments,
    reranker_serve_args,
    resolve_model,
)

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile_rerank.py"
_MiB = 1 << 20
# The pair every client repeats (passed to the locustfile; imported, it would gevent-patch
# this process).
REPEATED = {
    "query": "Which animal purrs?",
    "documents": ["The cat purrs on the warm windowsill.", "A train leaves the city at noon."],
}


def server_rss(pid: int) -> int:
    """Resident bytes of the server process and every process it started (the engine core)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class MemorySampler(threading.Thread):
    """The server tree's RSS every ``period`` seconds, for its high-water mark."""

    def __init__(self, pid: int, period: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.period, self.peak = pid, period, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.period):
            self.peak = max(self.peak, server_rss(self.pid))


def locust_binary() -> str:
    found = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if found is None:
        sys.exit("benchmarks/load.py needs Locust: pip install -r requirements/bench.txt")
    return found


def read_stats(prefix: Path) -> list[dict[str, str]]:
    with open(f"{prefix}_stats.csv") as f:
        return list(csv.DictReader(f))


def score_of_repeated(server: LocalServer, model: str) -> float:
    r = server.post("/v1/rerank", {"model": model, **REPEATED})
    r.raise_for_status()
    return next(x["relevance_score"] for x in r.json()["results"] if x["index"] == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=int, default=300, help="seconds of load")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--serve-arg", action="append", default=[], help="extra vllm serve arg")
    args = parser.parse_args()
    locust = locust_binary()
    model = resolve_model(args.model, args.model_dir)

    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        serve_args = reranker_serve_args(
            ["--dtype", args.dtype, "--max-model-len", str(args.max_model_len), *args.serve_arg]
        )
        server = LocalServer(model, serve_args, log=log, echo=True)
        with server:
            before = score_of_repeated(server, model)  # also the warm-up
            rss_start = server_rss(server.proc.pid)
            sampler = MemorySampler(server.proc.pid)
            sampler.start()
            results, prefix = Path(tmp) / "results.json", Path(tmp) / "locust"
            cmd = [
                locust, "-f", str(LOCUSTFILE), "--headless", "--only-summary",
                "-u", str(args.clients), "-r", str(args.clients), "-t", f"{args.duration}s",
                "--stop-timeout", "60", "--host", server.url, "--csv", str(prefix),
            ]  # fmt: skip
            env = {**os.environ, "LOAD_MODEL": model, "LOAD_RESULTS": str(results),
                   "LOAD_REPEATED": json.dumps(REPEATED),
                   "LOAD_MAX_MODEL_LEN": str(args.max_model_len)}  # fmt: skip
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            sampler.done.set()
            sampler.join()
            after = score_of_repeated(server, model)
            healthy = requests.get(server.url + "/health", timeout=10).status_code == 200
            rss_end = server_rss(server.proc.pid)
            if not results.exists():
                print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
                return 1
            stats = read_stats(prefix)
            out = json.loads(results.read_text())

    print(f"\n{args.clients} clients, {args.duration} s ({wall:.0f} s wall), dtype {args.dtype}, "
          f"model {model}")  # fmt: skip
    print(f"{'kind':<12} {'requests':>9} {'failed':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for row in stats:
        name = row["Name"] if row["Name"] != "Aggregated" else "all"
        print(f"{name:<12} {row['Request Count']:>9} {row['Failure Count']:>7} "
              f"{float(row['Requests/s']):>8.2f} {row['50%']:>8} {row['99%']:>8}")  # fmt: skip
    statuses = out["statuses"]
    n_5xx = sum(n for c in statuses.values() for s, n in c.items() if s.startswith("5"))
    failed = sum(int(r["Failure Count"]) for r in stats if r["Name"] == "Aggregated")
    print("statuses:", json.dumps(statuses, sort_keys=True))
    print(f"5xx responses: {n_5xx}; failed requests: {failed}; healthy after: {healthy}")
    print(f"server RSS: start {rss_start / _MiB:.0f} MiB, peak {sampler.peak / _MiB:.0f} MiB, "
          f"end {rss_end / _MiB:.0f} MiB")  # fmt: skip
    scores = out["repeated_scores"] + [before, after]
    spread = max(scores) - min(scores)
    print(f"repeated pair: {len(scores)} scores, spread (max - min) {spread:.3g}; "
          f"before load {before:.7f}, after {after:.7f}")  # fmt: skip
    return 1 if n_5xx or failed or not healthy else 0


if __name__ == "__main__":
    sys.exit(main())
