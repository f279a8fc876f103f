"""The NPU worker: vLLM's GPU worker and V2 model runner on an Ascend NPU, device hooks only.

``RerankNPUWorker`` is vLLM's GPU worker with an NPU ``init_device`` (device, HCCL, memory
snapshot and budget) and ``RerankNPUModelRunner``: vLLM's V2 GPU model runner, whose input
preparation, block tables and slot mapping are vLLM's Triton kernels (compiled by
triton-ascend), with torch.cuda's stream/event API pointed at torch.npu and explicit host to
NPU copies in place of UVA buffers. torch.npu exists once torch_npu is imported (by ``device``
on an NPU host). This module never imports vLLM's CPU worker, which patches torch's
accelerator APIs process-wide.
"""

from __future__ import annotations

import gc
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.platforms import current_platform
from vllm.utils.mem_utils import MemorySnapshot, format_gib
from vllm.utils.torch_utils import set_random_seed
from vllm.v1.worker.gpu import buffer_utils
from vllm.v1.worker.gpu.model_runner import GPUModelRunner
from vllm.v1.worker.gpu_worker import Worker, init_worker_distributed_environment
from vllm.v1.worker.utils import request_memory

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
        # vLLM's profiler (determine_available_memory) measures from this snapshot; the
        # budget is vLLM's rule (resolved --gpu-memory-utilization of the NPU's memory,
        # checked against what is free now).
        self.init_snapshot = MemorySnapshot(device=self.device)
        self.requested_memory = request_memory(self.init_snapshot, self.cache_config)
        logger.debug("NPU budget %s GiB", format_gib(self.requested_memory))
        self._init_workspace_and_model_runner()

    def _make_model_runner(self) -> GPUModelRunner:
        return RerankNPUModelRunner(self.vllm_config, self.device)

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # The cuMem pool behind sleep mode is CUDA-only.
        return nullcontext()


class RerankNPUModelRunner(GPUModelRunner):
    """vLLM's V2 GPU model runner on an Ascend NPU: only the device hooks differ."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device) -> None:
        use_npu_streams_for_cuda()
        use_copies_for_uva()
        super().__init__(vllm_config, device)


def _npu_event(*args: Any, external: bool | None = None, **kwargs: Any) -> Any:
    # torch_npu's Event(enable_timing, blocking, interprocess) has no ``external``.
    return torch.npu.Event(*args, **kwargs)  # type: ignore[attr-defined]


def use_npu_streams_for_cuda() -> None:
    """Point torch.cuda's stream/event API at torch.npu's (same interface) for the rest of
    this worker process, as vLLM's XPU runner does: the V2 runner calls it on every step
    (output copy stream and event, step timing, graph capture's stream). Each callable is
    its own ``partial`` so that torch.cuda's never *is* torch.npu's (Dynamo registers
    handlers per function object)."""
    npu: Any = torch.npu  # type: ignore[attr-defined]
    torch.cuda.Stream = npu.Stream  # type: ignore[misc]
    torch.cuda.Event = _npu_event  # type: ignore[misc,assignment]
    torch.cuda.current_stream = partial(npu.current_stream)
    torch.cuda.default_stream = partial(npu.default_stream)
    torch.cuda.stream = partial(npu.stream)
    torch.cuda.set_stream = partial(npu.set_stream)


def use_copies_for_uva() -> None:
    """vLLM's UVA buffers need a device view of pinned host memory, which vLLM builds for
    CUDA/ROCm/XPU only; on an NPU its explicit-copy buffers take their place (vLLM swaps
    them the same way for its CPU runner)."""
    buffer_utils.UvaBuffer = buffer_utils.NonUvaBuffer  # type: ignore[misc]
