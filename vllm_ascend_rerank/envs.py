"""Every environment variable the plugin reads, in one place.

Each entry is read lazily (``envs.NAME``) so a value set after import is honoured,
which matters for engine subprocesses spawned with a modified environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

_ENV: dict[str, Callable[[], Any]] = {
    # Which device the platform drives: "auto" (NPU when torch_npu finds one, else
    # the CPU reference mode), "npu" (fail loudly without one), "cpu", or "off" (the
    # plugin registers nothing; read directly by the entry points in __init__.py).
    "VLLM_ASCEND_RERANK_DEVICE": lambda: os.getenv("VLLM_ASCEND_RERANK_DEVICE", "auto").lower(),
    # Which attention implementation runs the paged attention: "auto" (NPU kernels
    # on an NPU, the compiled C++ ops when built, else pure torch), "torch"
    # (pure-torch reference), "native" (compiled C++ ops, error if not built) or
    # "npu" (torch_npu fused ops; on a CPU only with the test emulation).
    "VLLM_ASCEND_RERANK_ATTN_IMPL": lambda: os.getenv(
        "VLLM_ASCEND_RERANK_ATTN_IMPL", "auto"
    ).lower(),
    # Which custom-op kernels (RMSNorm, SiluAndMul, MRoPE) run: "auto" (torch_npu on an
    # NPU; on the CPU, RMSNorm and SiluAndMul from the C++ library when built, else
    # native torch paths), "npu" or "native" (vLLM's native torch paths everywhere).
    "VLLM_ASCEND_RERANK_OPS": lambda: os.getenv("VLLM_ASCEND_RERANK_OPS", "auto").lower(),
    # CPU reference mode: KV-cache budget in MiB. Unset = sized from the workload
    # (max model length and batch budget) rather than from 90% of RAM.
    "VLLM_ASCEND_RERANK_CPU_KV_CACHE_MB": lambda: _int_or_none(
        "VLLM_ASCEND_RERANK_CPU_KV_CACHE_MB"
    ),
    # CPU reference mode: how linear layers multiply: "auto" (oneDNN with weights prepacked
    # once, when torch has oneDNN; else torch), "onednn" (error without it) or "torch"
    # (``F.linear`` on the stored weight, vLLM's default on a non-CPU platform).
    "VLLM_ASCEND_RERANK_CPU_LINEAR": lambda: os.getenv(
        "VLLM_ASCEND_RERANK_CPU_LINEAR", "auto"
    ).lower(),
    # A Qwen3-VL checkpoint under ``--runner pooling`` is served as the official
    # Qwen3-VL-Embedding ("auto": official media rules, prompt and Matryoshka sizes) or as
    # stock vLLM serves it ("off"; for a different Qwen3-VL-based embedder).
    "VLLM_ASCEND_RERANK_QWEN3_VL_EMBEDDING": lambda: os.getenv(
        "VLLM_ASCEND_RERANK_QWEN3_VL_EMBEDDING", "auto"
    ).lower(),
    # Token counts for which ACL graphs are captured, comma separated ("" = derived
    # from the scheduler's token budget).
    "VLLM_ASCEND_RERANK_GRAPH_SIZES": lambda: os.getenv("VLLM_ASCEND_RERANK_GRAPH_SIZES", ""),
}


def _int_or_none(name: str) -> int | None:
    value = os.getenv(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {value!r}") from exc


def __getattr__(name: str) -> Any:
    if name in _ENV:
        return _ENV[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(_ENV)
