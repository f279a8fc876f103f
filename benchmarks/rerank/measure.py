"""Rounds, result rows, statistics, logging, and the Context a run collects results in."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .methods import Method
    from .workloads import LMShape


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
