"""torch.npu graphs: ``NPUGraph`` capture/replay through a recording dispatch mode."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._common import _count
from .streams import Stream, synchronize

# Host synchronisations a real graph capture refuses ("operation not permitted when stream is
# capturing"): reading a device value on the host during capture would bake it into the graph.
_SYNC_OPS = {torch.ops.aten._local_scalar_dense.default}
_capturing: list[NPUGraph] = []


class _RecordMode(TorchDispatchMode):
    """Records every aten op run while a graph captures."""

    def __init__(self, graph: NPUGraph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _SYNC_OPS:
            raise RuntimeError(
                "NPUGraph capture: host synchronisation (.item()/.tolist()/...) is not "
                "permitted while the stream is capturing"
            )
        out = func(*args, **kwargs)
        self.graph._ops.append((func, args, kwargs, out))
        return out


def _refresh(recorded: Any, new: Any) -> None:
    """Write a replayed op's result into the tensors the capture produced (static memory)."""
    if isinstance(recorded, torch.Tensor) and isinstance(new, torch.Tensor):
        same = recorded.untyped_storage().data_ptr() == new.untyped_storage().data_ptr()
        if not same:  # views and in-place results already alias the recorded memory
            recorded.copy_(new)
    elif isinstance(recorded, (tuple, list)):
        for r, n in zip(recorded, new, strict=True):
            _refresh(r, n)


class NPUGraph:
    """``torch_npu.npu.NPUGraph``: capture_begin/capture_end record the kernels issued in
    between; replay() re-issues exactly those kernels on the same memory, so it reads whatever
    the captured input tensors hold now and writes the captured output tensors in place. The
    emulation records aten ops (one per kernel; an emulated torch_npu op is one op) with a
    dispatch mode and re-runs them. Python code between the kernels is not re-run, as on the
    device. Differences: the emulation also runs the work while capturing (the device only
    records it), and host tensors are captured too (the device runs host ops once)."""

    def __init__(self, keep_graph: bool = False) -> None:
        self._ops: list[tuple[Any, Any, Any, Any]] = []
        self._mode: _RecordMode | None = None
        self._captured = False
        self._pool: tuple[int, int] | None = None

    def capture_begin(self, pool: Any = None, capture_error_mode: str = "global") -> None:
        if self._captured or self._mode is not None:
            raise RuntimeError("NPUGraph: capture_begin on a graph that already captured")
        self._pool = pool if pool is not None else graph_pool_handle()
        self._mode = _RecordMode(self)
        self._mode.__enter__()
        _capturing.append(self)

    def capture_end(self) -> None:
        if self._mode is None:
            raise RuntimeError("NPUGraph: capture_end without capture_begin")
        self._mode.__exit__(None, None, None)
        self._mode = None
        _capturing.remove(self)
        self._captured = True
        _count("NPUGraph.capture")

    def replay(self) -> None:
        if not self._captured:
            raise RuntimeError("NPUGraph: replay before a capture finished")
        _count("NPUGraph.replay")
        with torch.inference_mode():  # like the device, ignore autograd state
            for func, args, kwargs, out in self._ops:
                _refresh(out, func(*args, **kwargs))

    def reset(self) -> None:
        self._ops.clear()
        self._captured = False

    def pool(self) -> Any:
        return self._pool


class graph:  # noqa: N801 - the real API's name
    """``torch_npu.npu.graph(npu_graph, pool=None, stream=None, ...)`` context manager."""

    def __init__(
        self,
        npu_graph: NPUGraph,
        pool: Any = None,
        stream: Stream | None = None,
        capture_error_mode: str = "global",
        **kwargs: Any,
    ) -> None:
        self.npu_graph = npu_graph
        self.pool = pool
        self.capture_error_mode = capture_error_mode

    def __enter__(self) -> None:
        synchronize()
        self.npu_graph.capture_begin(pool=self.pool, capture_error_mode=self.capture_error_mode)

    def __exit__(self, *exc: Any) -> None:
        self.npu_graph.capture_end()


_pool_ids = iter(range(1, 1 << 30))


def graph_pool_handle() -> tuple[int, int]:
    return (0, next(_pool_ids))


def is_current_stream_capturing() -> bool:
    return bool(_capturing)
