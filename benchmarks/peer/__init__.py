"""The pieces of ``benchmarks/vs_vllm_cpu.py`` (its docstring says what it measures), one module
per concern: worker (what runs inside each side's interpreter; a script of its own that imports
only the stdlib and vLLM), side (one side's process: start, freeze/thaw, CPU accounting,
environment), ab (the A/B rounds and their report), cli (the command line and main()); here the
settings they share."""

import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIDES = ("stock", "plugin")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
