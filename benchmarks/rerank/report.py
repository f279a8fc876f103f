"""The table, notes and profiles printed at the end (and the optional JSON file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .measure import Context, Row


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
