"""The one module that imports torch_npu: NPU or CPU device facts behind one interface.

torch_npu is imported lazily (never at module import) so that importing the plugin
needs neither torch_npu nor CANN. Everything else in the package asks this module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from vllm_ascend_rerank import envs


@dataclass(frozen=True)
class DeviceFacts:
    """Static facts vLLM's platform interface needs as class attributes."""

    device_name: str
    device_type: str
    dispatch_key: str
    dist_backend: str
    device_control_env_var: str
    ray_device_key: str


NPU_FACTS = DeviceFacts(
    device_name="npu",
    device_type="npu",
    dispatch_key="PrivateUse1",
    dist_backend="hccl",
    device_control_env_var="ASCEND_RT_VISIBLE_DEVICES",
    ray_device_key="NPU",
)
CPU_FACTS = DeviceFacts(
    device_name="cpu",
    device_type="cpu",
    dispatch_key="CPU",
    dist_backend="gloo",
    # Nothing to hide on a CPU; vLLM still needs a variable name to set.
    device_control_env_var="VLLM_ASCEND_RERANK_CPU_VISIBLE_DEVICES",
    ray_device_key="CPU",
)


def torch_npu() -> ModuleType:
    """Import torch_npu on first use (it needs CANN; a CPU machine never calls this)."""
    return importlib.import_module("torch_npu")


def cann_version() -> str:
    """The CANN toolkit torch_npu runs on, e.g. ``9.1.0``."""
    return str(importlib.import_module("torch_npu.npu.utils").get_cann_version("CANN"))


def cann_at_least(version: str) -> bool:
    """Whether torch_npu runs on CANN ``version`` or newer, by torch_npu's own comparison
    (``torch_npu.npu.utils``; it knows CANN's ``8.3.RC1`` / ``8.5.0.alpha003`` scheme)."""
    utils = importlib.import_module("torch_npu.npu.utils")
    return bool(utils._is_gte_cann_version(version, "CANN"))


@functools.cache
def npu_available() -> bool:
    """True when torch_npu is installed and sees at least one NPU."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        torch_npu()
        return bool(torch.npu.is_available())  # type: ignore[attr-defined]
    except Exception:  # a broken CANN install must not break CPU mode
        return False


@functools.cache
def mode() -> str:
    """ "npu" or "cpu", as chosen by VLLM_ASCEND_RERANK_DEVICE (default: auto-detect)."""
    wanted = envs.VLLM_ASCEND_RERANK_DEVICE
    if wanted not in ("auto", "npu", "cpu"):
        raise ValueError(
            f"VLLM_ASCEND_RERANK_DEVICE must be 'auto', 'npu' or 'cpu', got {wanted!r}"
        )
    if wanted == "cpu":
        return "cpu"
    if npu_available():
        return "npu"
    if wanted == "npu":
        raise RuntimeError(
            "VLLM_ASCEND_RERANK_DEVICE=npu but no Ascend NPU is usable: torch_npu is "
            "not installed or sees no device (check CANN and ASCEND_RT_VISIBLE_DEVICES)."
        )
    return "cpu"


def facts() -> DeviceFacts:
    return NPU_FACTS if mode() == "npu" else CPU_FACTS


def is_npu() -> bool:
    return mode() == "npu"


def set_device(device: torch.device) -> None:
    if is_npu():
        torch.npu.set_device(device)  # type: ignore[attr-defined]


def device_name(device_id: int = 0) -> str:
    if is_npu():
        return str(torch.npu.get_device_name(device_id))  # type: ignore[attr-defined]
    return "cpu"


def total_memory(device_id: int = 0) -> int:
    if is_npu():
        return int(torch.npu.get_device_properties(device_id).total_memory)  # type: ignore[attr-defined]
    import psutil

    return int(psutil.virtual_memory().total)


def mem_get_info() -> tuple[int, int]:
    """(free, total) bytes of the current device."""
    if is_npu():
        free, total = torch.npu.mem_get_info()  # type: ignore[attr-defined]
        return int(free), int(total)
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


def current_memory_usage(device: torch.types.Device | None = None) -> float:
    if is_npu():
        torch.npu.reset_peak_memory_stats(device)  # type: ignore[attr-defined]
        return float(torch.npu.max_memory_allocated(device))  # type: ignore[attr-defined]
    import psutil

    return float(psutil.Process(os.getpid()).memory_info().rss)


def synchronize() -> None:
    if is_npu():
        torch.npu.synchronize()  # type: ignore[attr-defined]


def manual_seed_all(seed: int) -> None:
    if is_npu():
        torch.npu.manual_seed_all(seed)  # type: ignore[attr-defined]


def weak_ref_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor over ``tensor``'s memory that does not keep it alive (torch_npu's helper, as
    vllm-ascend uses it): graph wrappers keep these so that the graph pool can reuse blocks."""
    return torch_npu()._C._weak_ref_tensor(tensor)


def empty_cache() -> None:
    if is_npu():
        torch.npu.empty_cache()  # type: ignore[attr-defined]
