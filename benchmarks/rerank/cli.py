"""The command line, the allocator setting, and main()."""

from __future__ import annotations

import argparse
import os
import sys

from . import DTYPES, REPO, SCENARIOS
from .measure import Context, log
from .report import report
from .scenarios import run_dtype, run_startup
from .workloads import LMShape


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
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


def main(doc: str) -> None:
    args = parse_args(doc)
    _same_allocator_as_the_engine()
    import torch
    from transformers import AutoTokenizer

    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    scenarios = list(SCENARIOS) if "all" in args.scenario else args.scenario
    checkpoint = (
        REPO
        / ".cache"
        / (
            f"bench-h{args.hidden_size}-l{args.num_layers}-d{args.head_dim}-i{args.intermediate_size}"
        )
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
