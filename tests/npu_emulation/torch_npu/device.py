"""The emulated ``npu`` device and the device half of ``torch.npu`` (streams, events, memory, RNG).

Switched on by importing this package with ``VLLM_ASCEND_RERANK_DEVICE=npu`` in the
environment; without it the package keeps its op-level emulation on CPU tensors and
``torch.npu.is_available()`` stays False.

The device is PyTorch's PrivateUse1 backend, renamed ``npu`` as torch_npu renames it, from the
test-only library ``_device.so`` (sources ``tests/npu_emulation/csrc``, built by
``make npu-emulation``): an allocator over host memory with graph pools and the device
allocator's statistics, a device guard (``ASCEND_RT_VISIBLE_DEVICES`` or
``TORCH_NPU_EMULATION_DEVICE_COUNT`` devices, default 8, each with
``TORCH_NPU_EMULATION_MEMORY_MB`` of memory, default 32 GiB), pinned host memory, per-device
generators, and aten kernels: creation/copy/view ops of its own and every other op through the
CPU kernels on the same memory (no copies). Work is synchronous: streams are ids, waits are
no-ops, events time the host.

What follows the pinned torch_npu 2.14.0 rather than convenience:

- ``torch.accelerator``'s memory API (``memory_stats``, ``memory_allocated``,
  ``memory_reserved``, ``reset_peak_memory_stats``, ``get_memory_info``, ``empty_cache``) reaches
  the emulated allocator, because torch_npu 2.14 registers its caching allocator for
  PrivateUse1 with ``c10::SetAllocator`` and that allocator is a ``c10::DeviceAllocator``
  (``NPUAllocator : public c10::DeviceAllocator`` with ``getMemoryInfo`` from
  ``aclrtGetMemInfo``, ``torch_npu/include/.../NPUCachingAllocator.h``; the registration is in
  ``libtorch_npu.so``). vllm-ascend's ``patch_torch_accelerator`` exists for torch_npu 2.10,
  whose allocator was not a ``DeviceAllocator``; with 2.14 the plain ``torch.accelerator`` calls
  work, here as there, and this module's ``torch.npu`` memory functions are the same numbers.
- ``mem_get_info`` is (capacity - bytes this process holds on the device, capacity): as
  ``aclrtGetMemInfo``, memory reserved by the allocator (graph pools included) is not free.
- ``get_device_capability`` returns None unless ``TORCH_NPU_DEVICE_CAPABILITY`` is set, as
  torch_npu 2.14's does.
- The default generator of each device is torch's accelerator default generator
  (``torch._C._accelerator_getDefaultGenerator``, what torch_npu 2.14's ``random`` module uses).
"""

from __future__ import annotations

import os
import types
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ._common import note_worker

ENV = "VLLM_ASCEND_RERANK_DEVICE"
LIBRARY = Path(__file__).with_name("_device.so")
DEVICE_NAME = "Ascend910B3 (emulated)"
# torch_npu refuses these quantized dtypes in the generated .npu() helpers.
_UNSUPPORTED_DTYPES = [torch.quint8, torch.quint4x2, torch.quint2x4, torch.qint32, torch.qint8]


def enabled() -> bool:
    """Whether this process runs the emulated device (the plugin's NPU mode)."""
    return os.environ.get(ENV) == "npu"


def load_library() -> None:
    """Load ``_device.so`` (registers the PrivateUse1 device and torch.ops.npu_emulation_device)."""
    if str(LIBRARY) in torch.ops.loaded_libraries:
        return
    if not LIBRARY.exists():
        raise ImportError(
            f"{ENV}=npu needs the emulated npu device library {LIBRARY}, which is not built: "
            "run `make npu-emulation` in the repository root"
        )
    torch.ops.load_library(str(LIBRARY))


def _ops() -> Any:
    return torch.ops.npu_emulation_device


# ---- devices -------------------------------------------------------------------------------
def _get_device_index(device: Any = None, optional: bool = True) -> int:
    """torch_npu's rule: an int, "npu", "npu:i" or torch.device; None/"npu" is the current one."""
    if device is None:
        return current_device()
    if isinstance(device, str):
        device = torch.device(device)
    if isinstance(device, torch.device):
        if device.type != "npu":
            raise ValueError(f"Expected an npu device, got {device}")
        return current_device() if device.index is None else device.index
    return int(device)


def is_available() -> bool:
    return device_count() > 0


def device_count() -> int:
    return int(_ops().device_count())


def current_device() -> int:
    return torch.accelerator.current_device_index()


def set_device(device: Any) -> None:
    note_worker()  # the trace's "worker": which vLLM worker class selects the device
    index = _get_device_index(device)
    if index >= 0:
        torch.accelerator.set_device_index(index)


class device:  # noqa: N801 - torch_npu's name
    """Context manager that selects a device (no-op for None or a negative index)."""

    def __init__(self, device: Any) -> None:
        self.idx = -1 if device is None else _get_device_index(device)
        self.prev_idx = -1

    def __enter__(self) -> None:
        if self.idx >= 0:
            self.prev_idx = current_device()
            set_device(self.idx)

    def __exit__(self, *exc: Any) -> bool:
        if self.idx >= 0:
            set_device(self.prev_idx)
        return False


def device_of(obj: Any) -> device:
    return device(obj.get_device() if getattr(obj, "is_npu", False) else None)


def _check_index(device_name: Any) -> int:
    index = _get_device_index(device_name)
    if index < 0 or index >= device_count():
        raise AssertionError("Invalid device id")
    return index


def get_device_name(device_name: Any = None) -> str:
    _check_index(device_name)
    return DEVICE_NAME


def get_device_properties(device_name: Any = None) -> types.SimpleNamespace:
    index = _check_index(device_name)
    return types.SimpleNamespace(
        name=DEVICE_NAME,
        total_memory=mem_get_info(index)[1],
        cube_core_num=20,
        vector_core_num=40,
        L2_cache_size=192 * 1024 * 1024,
    )


def get_device_capability(device: Any = None) -> tuple[int, int] | None:
    env = os.environ.get("TORCH_NPU_DEVICE_CAPABILITY")
    if not env:
        warnings.warn(
            "You can set the device capability via the environment variable "
            "TORCH_NPU_DEVICE_CAPABILITY.",
            stacklevel=2,
        )
        return None
    major, _, minor = env.partition(".")
    return int(major), int(minor)


def is_initialized() -> bool:
    return True


def init() -> None:
    """The emulated runtime needs no initialisation."""


def _lazy_init() -> None:
    """The emulated runtime needs no initialisation."""


def _is_in_bad_fork() -> bool:
    return False


def is_bf16_supported(including_emulation: bool = False) -> bool:
    return True


def synchronize(device: Any = None) -> None:
    """Work on the emulated device is synchronous: nothing is ever pending."""
    torch.accelerator.synchronize(_get_device_index(device))


# ---- streams and events --------------------------------------------------------------------
class Stream(torch.Stream):
    """``torch_npu.npu.Stream(device=None, priority=0)``: an id on the emulated device, whose
    work runs synchronously on the host."""

    def __new__(cls, device: Any = None, priority: int = 0, **kwargs: Any) -> Stream:
        if kwargs:  # stream_id/device_index/device_type: wrap an existing stream
            return super().__new__(cls, **kwargs)
        index = _get_device_index(device)
        return super().__new__(cls, device=torch.device("npu", index), priority=priority)

    def wait_event(self, event: Event | torch.Event) -> None:
        super().wait_event(event.event if isinstance(event, Event) else event)

    def record_event(self, event: Event | torch.Event | None = None) -> Event | torch.Event:
        event = Event() if event is None else event
        event.record(self)
        return event

    @property
    def npu_stream(self) -> int:
        return int(self.stream_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, torch.Stream) and super().__eq__(other)

    def __hash__(self) -> int:
        return hash((self.stream_id, self.device_index))

    def __repr__(self) -> str:
        return f"<torch_npu.npu.Stream device={self.device} npu_stream={self.stream_id:#x}>"


class Event:
    """``torch_npu.npu.Event(enable_timing=False, blocking=False, interprocess=False)`` over a
    ``torch.Event`` of the npu device (torch's C++ event API takes exactly ``torch.Event``, so
    this wraps one rather than subclassing it)."""

    def __init__(
        self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False
    ) -> None:
        self.event = torch.Event(
            device=torch.device("npu", current_device()),
            enable_timing=enable_timing,
            blocking=blocking,
            interprocess=interprocess,
        )

    def record(self, stream: torch.Stream | None = None) -> None:
        self.event.record(stream)

    def wait(self, stream: torch.Stream | None = None) -> None:
        self.event.wait(stream)

    def query(self) -> bool:
        return bool(self.event.query())

    def synchronize(self) -> None:
        self.event.synchronize()

    def elapsed_time(self, end_event: Event | torch.Event) -> float:
        end = end_event.event if isinstance(end_event, Event) else end_event
        return float(self.event.elapsed_time(end))

    @property
    def device(self) -> torch.device:
        return self.event.device


def _wrap(s: torch.Stream) -> Stream:
    return Stream(stream_id=s.stream_id, device_index=s.device_index, device_type=s.device_type)


def current_stream(device: Any = None) -> Stream:
    return _wrap(torch.accelerator.current_stream(_get_device_index(device)))


def default_stream(device: Any = None) -> Stream:
    index = _get_device_index(device)
    cur = torch.accelerator.current_stream(index)
    return Stream(stream_id=0, device_index=index, device_type=cur.device_type)


def set_stream(stream: torch.Stream | None) -> None:
    if stream is not None:
        torch.accelerator.set_stream(stream)


class StreamContext:
    """``torch_npu.npu.StreamContext``: selects a stream (and its device) for the block."""

    def __init__(self, stream: torch.Stream | None) -> None:
        self.stream = stream
        self._prev: list[tuple[int, torch.Stream]] = []

    def __enter__(self) -> None:
        if self.stream is None:
            return
        self._prev = [(current_device(), current_stream(self.stream.device_index))]
        set_stream(self.stream)

    def __exit__(self, *exc: Any) -> None:
        for index, prev in self._prev:
            set_stream(prev)
            set_device(index)


def stream(stream: torch.Stream | None) -> StreamContext:
    return StreamContext(stream)


# ---- memory (the allocator behind torch.accelerator's memory API) ------------------------
def mem_get_info(device: Any = None) -> tuple[int, int]:
    free, total = torch.accelerator.get_memory_info(_check_index(device))
    return int(free), int(total)


def memory_stats(device: Any = None) -> OrderedDict[str, Any]:
    return torch.accelerator.memory_stats(_get_device_index(device))


def memory_allocated(device: Any = None) -> int:
    return torch.accelerator.memory_allocated(_get_device_index(device))


def max_memory_allocated(device: Any = None) -> int:
    return torch.accelerator.max_memory_allocated(_get_device_index(device))


def memory_reserved(device: Any = None) -> int:
    return torch.accelerator.memory_reserved(_get_device_index(device))


def max_memory_reserved(device: Any = None) -> int:
    return torch.accelerator.max_memory_reserved(_get_device_index(device))


def reset_peak_memory_stats(device: Any = None) -> None:
    torch.accelerator.reset_peak_memory_stats(_get_device_index(device))


def reset_max_memory_allocated(device: Any = None) -> None:
    reset_peak_memory_stats(device)


def reset_accumulated_memory_stats(device: Any = None) -> None:
    torch.accelerator.reset_accumulated_memory_stats(_get_device_index(device))


def empty_cache() -> None:
    torch.accelerator.empty_cache()


def pool_stats(pool: tuple[int, int], device: Any = None) -> dict[str, int]:
    """A graph pool's memory (emulation only): reserved/allocated bytes, the pool's reserved
    high-water mark, segments and users."""
    names = ("reserved_bytes", "allocated_bytes", "peak_reserved_bytes", "segments", "use_count")
    values = _ops().pool_stats(_get_device_index(device), *pool)
    return dict(zip(names, values, strict=True))


# ---- random numbers ------------------------------------------------------------------------
def _generator(device: Any = None) -> torch.Generator:
    return torch._C._accelerator_getDefaultGenerator(_get_device_index(device))


def manual_seed(seed: int) -> None:
    _generator().manual_seed(int(seed))


def manual_seed_all(seed: int) -> None:
    for i in range(device_count()):
        _generator(i).manual_seed(int(seed))


def seed() -> None:
    _generator().seed()


def seed_all() -> None:
    s = _generator(0).seed()
    for i in range(1, device_count()):
        _generator(i).manual_seed(s)


def initial_seed() -> int:
    return int(_generator().initial_seed())


def get_rng_state(device: Any = "npu") -> torch.Tensor:
    return _generator(device).get_state()


def set_rng_state(new_state: torch.Tensor, device: Any = "npu") -> None:
    _generator(device).set_state(new_state)


def get_rng_state_all() -> list[torch.Tensor]:
    return [get_rng_state(i) for i in range(device_count())]


def set_rng_state_all(new_states: list[torch.Tensor]) -> None:
    for i, state in enumerate(new_states):
        set_rng_state(state, i)


# ---- zero-copy host views (the hccl backend and the graph recorder use these) -------------
def as_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor over an npu tensor's memory (no copy; keeps the npu memory alive)."""
    return _ops().as_cpu(tensor)


def as_npu(tensor: torch.Tensor, device: Any = None) -> torch.Tensor:
    """An npu tensor over a CPU tensor's memory (no copy; keeps the CPU memory alive)."""
    return _ops().as_npu(tensor, _get_device_index(device))


_API = (
    "is_available", "device_count", "current_device", "set_device", "device", "device_of",
    "get_device_name", "get_device_properties", "get_device_capability", "is_initialized",
    "init", "_lazy_init", "_is_in_bad_fork", "is_bf16_supported", "synchronize",
    "Stream", "Event", "current_stream", "default_stream", "set_stream", "StreamContext",
    "stream", "mem_get_info", "memory_stats", "memory_allocated", "max_memory_allocated",
    "memory_reserved", "max_memory_reserved", "reset_peak_memory_stats",
    "reset_max_memory_allocated", "reset_accumulated_memory_stats", "empty_cache",
    "manual_seed", "manual_seed_all", "seed", "seed_all", "initial_seed", "get_rng_state",
    "set_rng_state", "get_rng_state_all", "set_rng_state_all",
)  # fmt: skip


def install(npu: types.ModuleType) -> None:
    """Turn the device on: load the library, name PrivateUse1 ``npu``, give ``npu`` (the
    package's ``torch.npu``) the device API and register it as torch's ``npu`` device module,
    as torch_npu's ``register_privateuse1_backend`` does, and register the ``hccl`` backend."""
    load_library()
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    for name in _API:
        setattr(npu, name, globals()[name])
    npu.pool_stats = pool_stats  # type: ignore[attr-defined]
    if getattr(torch, "npu", None) is not npu:
        torch._register_device_module("npu", npu)
    if not hasattr(torch.Tensor, "is_npu"):
        torch.utils.generate_methods_for_privateuse1_backend(
            for_tensor=True,
            for_module=True,
            for_storage=True,
            unsupported_dtype=_UNSUPPORTED_DTYPES,
        )
    from . import hccl

    hccl.register()
