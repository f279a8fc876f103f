"""vllm-ascend-rerank: a vLLM platform plugin serving Qwen3-VL rerankers on Ascend NPUs.

Entry points only; importing this package imports neither vLLM's engine nor torch_npu.
"""

from __future__ import annotations

# The one vLLM release this plugin is built and tested against (with torch 2.14, torchvision
# 0.29, transformers >=5.16.1,<5.23). Other releases move the hooks it overrides.
SUPPORTED_VLLM = "0.34.0"
__version__ = "0.1.0"

_PLATFORM = "vllm_ascend_rerank.platform.AscendRerankPlatform"


def _check_vllm_version() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("vllm")
    except PackageNotFoundError as exc:
        raise RuntimeError("vllm-ascend-rerank needs vLLM installed") from exc
    if found.split("+")[0] != SUPPORTED_VLLM:
        raise RuntimeError(
            f"vllm-ascend-rerank {__version__} supports vLLM {SUPPORTED_VLLM} only (with "
            f"torch 2.14.0, torchvision 0.29.0); found vLLM {found}. Install "
            f"vllm=={SUPPORTED_VLLM} with --no-deps plus requirements/vllm-runtime.txt (see "
            "README), or set VLLM_ASCEND_RERANK_DEVICE=off to run vLLM without this plugin."
        )


def _disabled() -> bool:
    import os

    return os.getenv("VLLM_ASCEND_RERANK_DEVICE", "auto").lower() == "off"


def register() -> str | None:
    """``vllm.platform_plugins`` entry point: the platform's qualified name.

    Cheap and idempotent (vLLM calls it more than once); it must not import
    ``vllm.platforms.current_platform``.
    """
    if _disabled():
        return None
    _check_vllm_version()
    return _PLATFORM


def register_ops() -> None:
    """``vllm.general_plugins`` entry point, run in every vLLM process."""
    if _disabled():
        return
    from vllm_ascend_rerank.registration import register_all

    register_all()
