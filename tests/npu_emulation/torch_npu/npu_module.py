"""Builds the ``torch.npu`` module: no usable device, CPU-backed memory facts."""

from __future__ import annotations

import types
from typing import Any

import torch

from .graphs import NPUGraph, graph, graph_pool_handle, is_current_stream_capturing
from .streams import (
    Event,
    Stream,
    current_stream,
    default_stream,
    set_stream,
    stream,
    synchronize,
)


def _ram() -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


def _build_npu_module() -> types.ModuleType:
    """The ``torch.npu`` module: no usable device, CPU-backed memory facts."""
    m = types.ModuleType("torch_npu.npu")
    m.__doc__ = "Emulated torch.npu (see torch_npu emulation package docstring)."
    names: dict[str, Any] = {
        "is_available": lambda: False,
        "device_count": lambda: 0,
        "current_device": lambda: 0,
        "set_device": lambda device: None,
        "synchronize": synchronize,
        "get_device_name": lambda device=None: "Ascend (emulated)",
        "get_device_properties": lambda device=None: types.SimpleNamespace(
            name="Ascend (emulated)", total_memory=_ram()[1]
        ),
        "mem_get_info": lambda device=None: _ram(),
        "memory_allocated": lambda device=None: 0,
        "max_memory_allocated": lambda device=None: 0,
        "memory_reserved": lambda device=None: 0,
        "reset_peak_memory_stats": lambda device=None: None,
        "memory_stats": lambda device=None: {"allocated_bytes.all.current": 0},
        "empty_cache": lambda: None,
        "manual_seed": lambda seed: torch.manual_seed(seed),
        "manual_seed_all": lambda seed: torch.manual_seed(seed),
        "is_bf16_supported": lambda: True,
        "Stream": Stream,
        "Event": Event,
        "current_stream": current_stream,
        "default_stream": default_stream,
        "set_stream": set_stream,
        "stream": stream,
        "NPUGraph": NPUGraph,
        "graph": graph,
        "graph_pool_handle": graph_pool_handle,
        "is_current_stream_capturing": is_current_stream_capturing,
    }
    for name, value in names.items():
        setattr(m, name, value)
    return m
