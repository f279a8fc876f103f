"""torch.npu streams and events: the emulated device runs work synchronously."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch


class Stream:
    """A stream on the emulated device: work runs synchronously, so waits are no-ops."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
        self.device = torch.device("cpu")
        self.priority = priority

    def wait_stream(self, stream: Stream) -> None: ...

    def wait_event(self, event: Event) -> None: ...

    def record_event(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def synchronize(self) -> None: ...

    def query(self) -> bool:
        return True


class Event:
    def __init__(self, enable_timing: bool = False, blocking: bool = False, **kwargs: Any) -> None:
        self.enable_timing = enable_timing
        self._time: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._time = time.perf_counter()

    def wait(self, stream: Stream | None = None) -> None: ...

    def synchronize(self) -> None: ...

    def query(self) -> bool:
        return True

    def elapsed_time(self, end_event: Event) -> float:
        if not self.enable_timing or self._time is None or end_event._time is None:
            raise RuntimeError("Events must be created with enable_timing=True and recorded")
        return (end_event._time - self._time) * 1000.0


_default_stream = Stream()
_current_stream = _default_stream


def current_stream(device: Any = None) -> Stream:
    return _current_stream


def default_stream(device: Any = None) -> Stream:
    return _default_stream


def set_stream(s: Stream) -> None:
    global _current_stream
    _current_stream = s


@contextlib.contextmanager
def stream(s: Stream | None) -> Iterator[None]:
    global _current_stream
    prev = _current_stream
    _current_stream = s or prev
    try:
        yield
    finally:
        _current_stream = prev


def synchronize(device: Any = None) -> None:
    """Work on the emulated device is synchronous."""
