"""The pieces of ``benchmarks/bench_rerank.py`` (its docstring says what it times), one module
per concern: workloads, profiling, methods, measure, scenarios, report, cli; here the settings
they share."""

import os
from pathlib import Path

from vllm_ascend_rerank.serving import HF_OVERRIDES  # noqa: F401 (the documented flags, one copy)

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = ("short-long", "shared-prefix", "every-token", "bench-serve", "startup")
DTYPES = ("float32", "bfloat16")
# Engines run in spawned processes; the timing hooks (profiling.py) are sent to them as pickled
# callables.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
