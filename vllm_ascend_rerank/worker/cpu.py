"""The CPU reference mode's worker: vLLM's CPU worker, device hooks only, nothing copied.

``RerankCPUWorker`` reuses vLLM's ``CPUWorker`` and its no-Triton model runner
(``StandaloneCPUModelRunner``, whose input ops come from ``runner_ops``) minus the NUMA
binding that needs vLLM's compiled ``_C`` ops. Importing vLLM's CPU worker patches torch's
accelerator and stream APIs for the whole process: only the CPU mode may import this module.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import psutil
import torch
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"


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
        fraction = vllm_config.cache_config.resolved_gpu_memory_utilization
        self.requested_cpu_memory = math.ceil(psutil.virtual_memory().total * fraction)
        self.parallel_config.disable_custom_all_reduce = True

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager:
        # vLLM only exempts its own CPU platform from the CUDA memory pool.
        return nullcontext()

    def load_model(self, **kwargs: Any) -> None:
        # On a GPU the host needs one thread once weights are loaded, and vLLM's
        # Worker drops torch to 1; here the model itself runs on these threads.
        threads = torch.get_num_threads()
        super().load_model(**kwargs)
        torch._C.set_num_threads(threads)  # CPUWorker hides torch.set_num_threads
        linear = self._prepack_linears()
        logger.info("CPU reference mode: %d torch threads, linear layers: %s", threads, linear)

    def _prepack_linears(self) -> str:
        from vllm_ascend_rerank import envs
        from vllm_ascend_rerank.ops import cpu_linear

        wanted = envs.VLLM_ASCEND_RERANK_CPU_LINEAR
        if wanted not in ("auto", "onednn", "torch"):
            raise ValueError(
                f"VLLM_ASCEND_RERANK_CPU_LINEAR must be auto, onednn or torch; got {wanted!r}"
            )
        if wanted == "torch" or (wanted == "auto" and not cpu_linear.onednn_available()):
            return "F.linear"
        if not cpu_linear.onednn_available():
            raise RuntimeError("VLLM_ASCEND_RERANK_CPU_LINEAR=onednn: torch has no oneDNN")
        rows = self.vllm_config.scheduler_config.max_num_batched_tokens
        n = cpu_linear.prepack_linears(self.model_runner.get_model(), rows)
        return f"oneDNN, {n} prepacked"
