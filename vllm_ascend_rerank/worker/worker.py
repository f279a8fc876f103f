"""Workers: vLLM's own, with device hooks overridden and nothing copied.

``RerankCPUWorker`` reuses vLLM's CPU worker and ``CPUModelRunner`` (device hooks
only) minus the NUMA binding that needs vLLM's compiled ``_C`` ops.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import psutil
from vllm.config import VllmConfig
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker


class RerankCPUWorker(CPUWorker):
    def __init__(
        self,
        vllm_config: VllmConfig,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
    ) -> None:
        # Skip CPUWorker.__init__: it binds NUMA memory through torch.ops._C, which
        # the CUDA wheel of vLLM does not build for the CPU.
        Worker.__init__(
            self,
            vllm_config,
            local_rank,
            rank,
            distributed_init_method,
            is_driver_worker=is_driver_worker,
        )
        fraction = vllm_config.cache_config.gpu_memory_utilization
        self.requested_cpu_memory = math.ceil(psutil.virtual_memory().total * fraction)
        self.parallel_config.disable_custom_all_reduce = True

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # vLLM only exempts its own CPU platform from the CUDA memory pool.
        return nullcontext()
