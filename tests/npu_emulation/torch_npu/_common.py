"""Shared by the emulated ops: the error type, argument checks, call counting and the trace
written at exit (``TORCH_NPU_EMULATION_TRACE``)."""

from __future__ import annotations

import atexit
import collections
import functools
import json
import multiprocessing.util
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

calls: collections.Counter[str] = collections.Counter()

_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INT_MAX = 2147483647


class NpuOpError(RuntimeError):
    """What the real op raises (a RuntimeError from its parameter checks)."""


def _check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise NpuOpError(f"{op}: {msg}")


def _count(op: str) -> None:
    calls[op] += 1


# More sections of a process's trace line: name -> a function giving JSON data (empty: left
# out). The graph recorder adds "graphs" and "memory", the device API "worker".
trace_sections: dict[str, Callable[[], Any]] = {}


def note_worker() -> None:
    """Record the vLLM worker (a ``WorkerBase`` on the call stack) that called the device API:
    the trace's "worker" says which worker class ran on the emulated device."""
    worker_base = sys.modules.get("vllm.v1.worker.worker_base")
    if worker_base is None or "worker" in trace_sections:
        return
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, worker_base.WorkerBase):
            name = f"{type(obj).__module__}.{type(obj).__qualname__}"
            trace_sections["worker"] = functools.partial(str, name)
            return
        frame = frame.f_back


_traced_pids: set[int] = set()


def _write_trace() -> None:
    path = os.environ.get("TORCH_NPU_EMULATION_TRACE")
    extra = {name: data for name, get in trace_sections.items() if (data := get())}
    if path and (calls or extra) and os.getpid() not in _traced_pids:
        _traced_pids.add(os.getpid())
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"pid": os.getpid(), "calls": dict(calls), **extra}) + "\n")


class _ForkHook:
    """A forked multiprocessing child (vLLM's engine core unless spawn is asked for) leaves
    through ``os._exit``: atexit never runs there, multiprocessing's finalizers do. Its trace
    counts only its own calls, not the parent's it inherited."""

    def __call__(self, _: object) -> None:
        calls.clear()
        multiprocessing.util.Finalize(None, _write_trace, exitpriority=0)


_FORK_HOOK = _ForkHook()
atexit.register(_write_trace)
multiprocessing.util.register_after_fork(_FORK_HOOK, _FORK_HOOK)


def _int_list(value: Any, op: str, name: str) -> list[int]:
    # The documented type is a host list of ints (SymInt[]).
    _check(
        isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value),
        op,
        f"{name} must be a list of int, got {type(value).__name__}",
    )
    return list(value)


def _cumulative(value: list[int], op: str, name: str) -> None:
    _check(len(value) > 0, op, f"{name} must not be empty")
    _check(value[0] >= 0, op, f"{name} must be non-negative")
    _check(
        all(b >= a for a, b in zip(value, value[1:], strict=False)),
        op,
        f"{name} holds cumulative lengths: each value must be >= the previous one",
    )
