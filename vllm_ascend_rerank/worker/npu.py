"""The NPU worker: vLLM's GPU worker and V2 model runner on an Ascend NPU, device hooks only.

``RerankNPUWorker`` is vLLM's GPU worker with an NPU ``init_device`` (device, HCCL, memory
check) and ``RerankNPUModelRunner``: vLLM's GPU model runner with NPU streams and events.
torch.npu exists once torch_npu is imported (by ``device`` on an NPU host). This module never
imports vLLM's CPU worker, which patches torch's accelerator APIs process-wide.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.utils.mem_utils import MemorySnapshot, format_gib
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.gpu.model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment

from vllm_ascend_rerank import device as npu_device

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"


class RerankNPUWorker(Worker):
    """vLLM's GPU worker on an Ascend NPU; everything but ``init_device`` is vLLM's."""

    def init_device(self) -> None:
        # vLLM's executor sets ASCEND_RT_VISIBLE_DEVICES: local rank = visible NPU index.
        self.device = torch.device(f"npu:{self.local_rank}")
        npu_device.set_device(self.device)
        current_platform.check_if_supports_dtype(self.model_config.dtype)
        # HCCL buffers are allocated here, before the memory snapshot.
        init_worker_distributed_environment(
            self.vllm_config,
            self.rank,
            self.distributed_init_method,
            self.local_rank,
            current_platform.dist_backend,
        )
        set_random_seed(self.model_config.seed)
        gc.collect()
        npu_device.empty_cache()

        free, total = npu_device.mem_get_info()
        requested = math.ceil(total * self.cache_config.gpu_memory_utilization)
        if free < requested:
            raise ValueError(
                f"NPU {self.device}: {format_gib(free)}/{format_gib(total)} GiB free at "
                f"start-up, less than --gpu-memory-utilization "
                f"{self.cache_config.gpu_memory_utilization} ({format_gib(requested)} GiB). "
                "Lower it or free the NPU (npu-smi info shows who uses it)."
            )
        # vLLM's profiler (determine_available_memory) measures from this snapshot.
        self.init_snapshot = MemorySnapshot(device=self.device)
        self.requested_memory = requested
        self._init_workspace_and_model_runner()

    def _make_model_runner(self) -> GPUModelRunner:
        return RerankNPUModelRunner(self.vllm_config, self.device)

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # The cuMem pool behind sleep mode is CUDA-only.
        return nullcontext()


class RerankNPUModelRunner(GPUModelRunner):
    """vLLM's GPU model runner on an Ascend NPU: only the device hooks differ."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device) -> None:
        # The runner builds CUDA streams/events (async scheduling): make them NPU ones.
        with _cuda_streams_as_npu_streams():
            super().__init__(vllm_config, device)

    def capture_model(self) -> int:
        # vLLM's graph_capture() opens and switches CUDA streams: make them NPU ones.
        with _cuda_streams_as_npu_streams():
            return super().capture_model()

    def _sync_device(self) -> None:
        npu_device.synchronize()

    def _get_or_create_async_output_copy_stream(self) -> Any:
        if self.async_output_copy_stream is None:
            self.async_output_copy_stream = torch.npu.Stream()  # type: ignore[attr-defined]
        return self.async_output_copy_stream


_STREAM_APIS = ("Stream", "Event", "current_stream", "stream")


@contextmanager
def _cuda_streams_as_npu_streams() -> Iterator[None]:
    """Point torch.cuda's stream/event API at torch.npu's (same interface) while vLLM code
    that hard-codes it runs; restored afterwards."""
    saved = {name: getattr(torch.cuda, name) for name in _STREAM_APIS}
    for name in _STREAM_APIS:
        setattr(torch.cuda, name, getattr(torch.npu, name))  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for name, api in saved.items():
            setattr(torch.cuda, name, api)
