"""Loads the optional C++ op library (``vllm_ascend_rerank._C``, built from csrc/).

Importing the package never needs it: callers ask ``available()`` first.
"""

from __future__ import annotations

import functools
import importlib


@functools.cache
def _load() -> str | None:
    """Import the extension once; return None on success, else why it failed."""
    try:
        importlib.import_module("vllm_ascend_rerank._C")
    except ImportError as exc:
        return str(exc)
    return None


def available() -> bool:
    return _load() is None


def load_error() -> str | None:
    return _load()
