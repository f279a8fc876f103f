"""torch.npu graphs: ``NPUGraph``, ``graph``, ``graph_pool_handle``, ``is_current_stream_capturing``
and ``_weak_ref_tensor`` (``torch_npu._C._weak_ref_tensor``), with the pinned torch_npu's
signatures (``torch_npu/npu/graphs.py`` of the 2.14 wheel).

What is emulated, and how
-------------------------
On the device, capture *records* the kernels issued on the capturing stream without running
them: the tensors a capture allocates (from the graph's memory pool) hold no results until
the graph is replayed, and a replay re-issues the same kernels on the same addresses, reading
whatever the captured inputs hold now. The emulation:

- records every aten / custom op that touches a device tensor while capturing (a
  ``TorchDispatchMode``; one op = one kernel: an emulated torch_npu op is recorded as one op,
  not as the aten ops it is made of). Ops on host tensors only run once, as host code does.
  Views (an op whose outputs all alias its inputs) and bare allocations (``empty``) are not
  recorded: they issue no kernel. An op that may alias but copied (``aten.to`` converting) is.
- allocates what the capture allocates from the graph's pool (the emulated allocator's
  ``begin/end_allocate_to_pool``; several graphs may share a pool: ``pool=`` /
  ``graph_pool_handle()``), and releases the pool when the graph is reset or deleted.
- poisons, at ``capture_end``, every block the capture's ops allocated (all bytes 0xFF: NaN
  for floats, -1 for ints), so code that reads a capture's outputs gets garbage, as it would
  on the device.
- keeps no Python reference to device memory after ``capture_end``: recorded tensors become
  non-owning aliases (same address, size, strides) as the device graph holds raw addresses.
  Memory the caller drops goes back to the pool and can be reused by the next capture; a
  replay of a graph whose inputs were freed reads freed memory, as on the device.
- ``replay()`` re-runs the recorded ops on those aliases; an op that returns new memory
  (functional ops) has its result copied into the address the capture recorded.
- refuses host synchronisation while capturing (``.item()``, ``.tolist()``, a blocking copy
  to the host) and ops whose output shape depends on tensor values (``nonzero``, ...): the
  device refuses the first and cannot capture the second.

Where it differs from the device
--------------------------------
- The ops do run while capturing (the emulation needs their outputs' shapes and addresses):
  in-place writes to memory the capture did not allocate (inputs, the KV cache, the
  runner's buffers) happen at capture time here, and not on the device.
- A functional op's replay allocates a temporary outside the pool before the copy (the
  device writes in place): the steady-state memory high-water mark is higher by the
  largest single op output.
- Capture modes (``capture_error_mode``) are checked but not enforced; only one capture at a
  time per process, as in torch_npu; streams are not modelled (work is synchronous).
- With the emulated device off (``torch.npu.is_available() is False``: CPU tensors stand in
  for device tensors) every op is recorded, tensors are held strongly (there is no pool to keep
  them) and only the poisoning and replay semantics above apply.

Per-size trace: each capture is filed under the token count of vLLM's forward context
(``batch_descriptor.num_tokens``) when there is one, else "other"; ``graph_stats`` counts
captures and replays per size for the exit-time trace.
"""

from __future__ import annotations

import collections
import sys
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from ._common import _count, trace_sections

_aten = torch.ops.aten
# Host synchronisations a real graph capture refuses ("operation not permitted when stream is
# capturing"): reading a device value on the host during capture would bake it into the graph.
_SYNC_OPS = {_aten._local_scalar_dense.default}
# Output shapes that depend on tensor values: the device has to synchronise to size them.
_DATA_DEPENDENT = {
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten._unique2.default,
    _aten.unique_consecutive.default,
    _aten.unique_dim.default,
    _aten.repeat_interleave.Tensor,
}
# Allocation or aliasing only: no kernel to replay (outputs still count as capture memory).
_NO_KERNEL = {
    _aten.empty.memory_format,
    _aten.empty_strided.default,
    _aten._unsafe_view.default,
}
CAPTURE_ERROR_MODES = ("global", "thread_local", "relaxed")
POISON_BYTE = 0xFF

# size ("16", "other") -> {"captures": n, "replays": m}; reported by the exit-time trace.
graph_stats: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
trace_sections["graphs"] = lambda: {size: dict(c) for size, c in graph_stats.items()}
_capturing: list[NPUGraph] = []


# ---- the trace's memory phases: before the first capture, capturing, steady state ------------
class _Phases:
    """Device-memory high-water marks per phase (the allocator's own marks, watermark.cpp, not
    its resettable peak statistics): "before_capture" (model, profiling, KV cache) until the
    first graph capture, "capture" until the first replay, "steady" (serving) until exit;
    "whole_run" in a process that captured no graph."""

    def __init__(self) -> None:
        self.phase = "before_capture"
        self.device: int | None = None
        self.marks: dict[str, dict[str, int]] = {}
        self.pools: set[tuple[int, int]] = set()

    def enter(self, phase: str, device: int) -> None:
        if self.device is None:
            self.device = device
        if phase != self.phase and self._order(phase) > self._order(self.phase):
            self._take()
            if phase == "steady":  # what the graphs hold: their pools, as capture left them
                self.marks.setdefault("capture", {})["graph_pool_reserved_bytes"] = sum(
                    _device_ops().pool_stats(self.device, *p)[0] for p in self.pools
                )
            self.phase = phase

    def _take(self) -> None:
        if not hasattr(_device_ops(), "take_watermark"):  # a _device.so built before the hook
            return
        allocated, reserved = _device_ops().take_watermark(self.device)
        self.marks[self.phase] = {
            "peak_allocated_bytes": int(allocated),
            "peak_reserved_bytes": int(reserved),
        }

    @staticmethod
    def _order(phase: str) -> int:
        return ("before_capture", "capture", "steady").index(phase)

    def report(self) -> dict[str, dict[str, int]]:
        if self.device is None:  # no graph captured (eager): one phase, the whole run
            if not _device_on():
                return {}
            self.device = torch.npu.current_device()  # type: ignore[attr-defined]
            self._take()
            whole = self.marks.pop("before_capture", {})
            return {"whole_run": whole} if whole.get("peak_reserved_bytes") else {}
        self._take()
        return self.marks


_phases = _Phases()
trace_sections["memory"] = _phases.report


# ---- memory: the emulated device's allocator, or plain host memory with the device off -----
def _device_on() -> bool:
    npu = sys.modules.get("torch_npu.npu")
    return bool(npu is not None and npu.is_available())


def _device_ops() -> Any:
    return torch.ops.npu_emulation_device  # the emulated device's library (csrc/bindings.cpp)


def _weak_ref_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``torch_npu._C._weak_ref_tensor``: same memory, sizes and strides, no ownership."""
    if tensor.device.type == "npu":
        return _device_ops().weak_ref_tensor(tensor)
    storage = torch._C._construct_storage_from_data_pointer(
        tensor.data_ptr(), tensor.device, tensor.untyped_storage().nbytes()
    )
    return torch.empty(0, dtype=tensor.dtype).set_(storage, 0, tensor.size(), tensor.stride())


def _poison_device_memory(ptr: int, nbytes: int, device: torch.device) -> None:
    _device_ops().from_blob(ptr, [nbytes], [1], 0, torch.uint8, device.index).fill_(POISON_BYTE)


_pool_ids = iter(range(1, 1 << 62))


def graph_pool_handle() -> tuple[int, int]:
    """An opaque token for a memory pool that several graphs can share."""
    return (0, next(_pool_ids))


def is_current_stream_capturing() -> bool:
    return bool(_capturing)


# ---- capture ----------------------------------------------------------------------------------
class _Op:
    __slots__ = ("func", "args", "kwargs", "out")

    def __init__(self, func: Any, args: Any, kwargs: Any, out: Any) -> None:
        self.func, self.args, self.kwargs, self.out = func, args, kwargs, out


class _RecordMode(TorchDispatchMode):
    """Runs and records every op on device tensors while a graph captures."""

    def __init__(self, graph: NPUGraph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        on_device = self.graph._on_device
        inputs = [t for t in tree_flatten((args, kwargs))[0] if on_device(t)]
        if func in _SYNC_OPS and inputs:
            raise RuntimeError(
                "NPUGraph capture: host synchronisation (.item()/.tolist()/...) is not "
                "permitted while the stream is capturing"
            )
        if func in _DATA_DEPENDENT and inputs:
            raise RuntimeError(
                f"NPUGraph capture: {func} has a data-dependent output shape and cannot be "
                "captured (it synchronises with the host)"
            )
        if self.graph._device_on and _blocking_copy_to_host(func, args, kwargs):
            raise RuntimeError(
                "NPUGraph capture: a blocking copy to the host synchronises the stream and is "
                "not permitted while the stream is capturing"
            )
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if on_device(t)]
        if not inputs and not outputs:
            return out  # host work: runs now, once, as host code between kernels does
        seen = {t.untyped_storage().data_ptr() for t in inputs}
        fresh = [t for t in outputs if t.untyped_storage().data_ptr() not in seen]
        if func.is_view and not fresh:
            return out  # a view: no kernel, no memory of its own
        # (A "view" op that copied, e.g. aten.to.dtype converting, is a kernel like any other.)
        for t in fresh:
            if t.untyped_storage().nbytes() > 0:
                self.graph._note_allocated(t)
        if func not in _NO_KERNEL:
            self.graph._ops.append(_Op(func, args, kwargs, out))
        return out


def _blocking_copy_to_host(func: Any, args: Any, kwargs: Any) -> bool:
    if func is _aten.copy_.default:
        dst, src = args[0], args[1]
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return dst.device.type == "cpu" and src.device.type == "npu" and not non_blocking
    if func is _aten._to_copy.default:
        device = kwargs.get("device")
        return (
            args[0].device.type == "npu"
            and device is not None
            and torch.device(device).type == "cpu"
            and not kwargs.get("non_blocking", False)
        )
    return False


def _refresh(recorded: Any, new: Any) -> None:
    """Write a replayed op's result into the memory the capture recorded."""
    if isinstance(recorded, torch.Tensor) and isinstance(new, torch.Tensor):
        if recorded.data_ptr() == new.data_ptr() and recorded.stride() == new.stride():
            return  # in-place and out= results already are the recorded memory
        if recorded.shape != new.shape:
            raise RuntimeError(
                f"NPUGraph replay: an op returned shape {tuple(new.shape)}, captured as "
                f"{tuple(recorded.shape)}"
            )
        recorded.copy_(new)
    elif isinstance(recorded, (tuple, list)):
        for r, n in zip(recorded, new, strict=True):
            _refresh(r, n)


def _size_of_current_step() -> str:
    """The token count vLLM's forward context gives this capture ("other" outside vLLM)."""
    fc = sys.modules.get("vllm.forward_context")
    if fc is not None and fc.is_forward_context_available():
        desc = fc.get_forward_context().batch_descriptor
        if desc is not None:
            return str(desc.num_tokens)
    return "other"


def _release_pool(device: int, pool: tuple[int, int]) -> None:
    _device_ops().release_pool(device, *pool)


class NPUGraph:
    """``torch_npu.npu.NPUGraph``: see the module docstring for what is emulated."""

    def __init__(self) -> None:
        self._ops: list[_Op] = []
        # What the capture allocated, poisoned at its end: device memory by address (a freed
        # block stays in the pool); with the device off, the tensors (freed host memory is gone).
        self._allocated: dict[int, tuple[int, torch.device]] = {}
        self._host_allocated: list[torch.Tensor] = []
        self._release: weakref.finalize | None = None
        self._mode: _RecordMode | None = None
        self._captured = False
        self._device_on = False
        self._device_index = 0
        self._pool: tuple[int, int] | None = None
        self._size = "other"
        self.auto_dispatch_capture = False  # set by torch.npu.graph(), as in torch_npu

    def _on_device(self, t: Any) -> bool:
        """A tensor the graph captures: an npu one (host tensors stand in with the device off)."""
        return isinstance(t, torch.Tensor) and (t.device.type == "npu" or not self._device_on)

    def capture_begin(self, pool: Any = None, capture_error_mode: str = "global") -> None:
        if capture_error_mode not in CAPTURE_ERROR_MODES:
            raise RuntimeError(
                f"Unknown capture error mode {capture_error_mode!r}: expected one of "
                f"{CAPTURE_ERROR_MODES}"
            )
        if self._captured or self._mode is not None:
            raise RuntimeError("NPUGraph: capture_begin on a graph that already captured")
        if _capturing:
            raise RuntimeError("NPUGraph: another graph is capturing (one capture at a time)")
        self._pool = tuple(pool) if pool is not None else graph_pool_handle()
        self._size = _size_of_current_step()
        self._device_on = _device_on()
        if self._device_on:
            self._device_index = torch.npu.current_device()  # type: ignore[attr-defined]
            _phases.enter("capture", self._device_index)
            _phases.pools.add(self._pool)
            _device_ops().begin_allocate_to_pool(self._device_index, *self._pool)
            # The graph holds the pool (its blocks stay reserved) until reset or deleted.
            self._release = weakref.finalize(self, _release_pool, self._device_index, self._pool)
        self._mode = _RecordMode(self)
        self._mode.__enter__()
        _capturing.append(self)

    def capture_end(self) -> None:
        if self._mode is None:
            raise RuntimeError("NPUGraph: capture_end without capture_begin")
        self._mode.__exit__(None, None, None)
        self._mode = None
        _capturing.remove(self)
        if self._device_on:
            _device_ops().end_allocate_to_pool(self._device_index, *self._pool)
            for op in self._ops:  # keep addresses, not memory, as the device graph does
                op.args, op.kwargs, op.out = tree_map(
                    lambda v: _weak_ref_tensor(v) if self._on_device(v) else v,
                    (op.args, op.kwargs, op.out),
                )
        for ptr, (nbytes, device) in self._allocated.items():
            _poison_device_memory(ptr, nbytes, device)
        for t in self._host_allocated:
            t.untyped_storage().fill_(POISON_BYTE)
        self._allocated.clear()
        self._host_allocated.clear()
        self._captured = True
        _count("NPUGraph.capture")
        graph_stats[self._size]["captures"] += 1

    def _note_allocated(self, t: torch.Tensor) -> None:
        if not self._device_on:
            self._host_allocated.append(t)
            return
        storage = t.untyped_storage()
        old = self._allocated.get(storage.data_ptr(), (0, t.device))[0]
        self._allocated[storage.data_ptr()] = (max(old, storage.nbytes()), t.device)

    def replay(self) -> None:
        if not self._captured:
            raise RuntimeError("NPUGraph: replay before a capture finished")
        _count("NPUGraph.replay")
        if self._device_on:
            _phases.enter("steady", self._device_index)
        graph_stats[self._size]["replays"] += 1
        with torch.inference_mode():  # like the device, ignore autograd state
            for i, op in enumerate(self._ops):
                try:
                    _refresh(op.out, op.func(*op.args, **op.kwargs))
                except Exception as exc:
                    shapes = [
                        f"{tuple(t.shape)}:{t.dtype}" if isinstance(t, torch.Tensor) else repr(t)
                        for t in tree_flatten((op.args, op.kwargs))[0]
                    ]
                    raise RuntimeError(
                        f"NPUGraph replay: kernel {i} of {len(self._ops)} ({op.func}) on "
                        f"{shapes} failed: {exc}"
                    ) from exc

    def reset(self) -> None:
        self._ops.clear()
        self._captured = False
        if self._release is not None:
            self._release()  # once: a finalizer runs at most one time

    def pool(self) -> Any:
        return self._pool


class graph:  # noqa: N801 - the real API's name
    """``torch_npu.npu.graph(npu_graph, pool=None, stream=None, auto_dispatch_capture=False,
    capture_error_mode="global")``: synchronises, empties the cache, captures on ``stream``
    (default: one side stream shared by all captures, as in torch_npu)."""

    default_capture_stream: Any = None

    def __init__(
        self,
        npu_graph: NPUGraph,
        pool: Any = None,
        stream: Any = None,
        auto_dispatch_capture: bool = False,
        capture_error_mode: str = "global",
    ) -> None:
        if auto_dispatch_capture:
            raise NotImplementedError("auto_dispatch_capture (graph task update) is not emulated")
        self.npu_graph = npu_graph
        self.pool = () if pool is None else (pool,)
        if graph.default_capture_stream is None:
            graph.default_capture_stream = torch.npu.Stream()  # type: ignore[attr-defined]
        self.capture_stream = stream if stream is not None else graph.default_capture_stream
        self.capture_error_mode = capture_error_mode
        npu_graph.auto_dispatch_capture = auto_dispatch_capture

    def __enter__(self) -> None:
        npu = torch.npu  # type: ignore[attr-defined]
        npu.synchronize()
        npu.empty_cache()  # looked up at call time, as torch_npu does: callers may patch it
        self.stream_ctx = npu.stream(self.capture_stream)
        self.stream_ctx.__enter__()
        self.npu_graph.capture_begin(*self.pool, capture_error_mode=self.capture_error_mode)

    def __exit__(self, *exc: Any) -> None:
        self.npu_graph.capture_end()
        self.stream_ctx.__exit__(*exc)
