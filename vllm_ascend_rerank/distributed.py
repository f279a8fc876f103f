"""Collectives between NPUs: torch.distributed over the HCCL device group.

vLLM builds, for each parallel group, a gloo ``cpu_group`` and a ``device_group`` on the
platform's ``dist_backend`` ("hccl" on the NPU, whose backend torch_npu registers). The
base class already runs its collectives on ``device_group``; this subclass only skips them
for a group of one (tensor parallel size 1, the common reranker deployment) and states the
HCCL requirement where it is checked.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)


class NpuCommunicator(DeviceCommunicatorBase):
    def __init__(
        self,
        cpu_group: ProcessGroup,
        device: torch.device | None = None,
        device_group: ProcessGroup | None = None,
        unique_name: str = "",
        global_ranks: list[int] | None = None,
        global_world_size: int | None = None,
        use_all2all: bool = False,
    ) -> None:
        super().__init__(
            cpu_group,
            device,
            device_group,
            unique_name,
            global_ranks=global_ranks,
            global_world_size=global_world_size,
            use_all2all=use_all2all,
        )
        if self.world_size > 1 and device_group is None:
            raise RuntimeError(f"{unique_name}: NPU collectives need an HCCL device group")

    def all_reduce(self, input_: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return input_
        dist.all_reduce(input_, group=self.device_group)
        return input_

    def all_gather(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        if self.world_size == 1:
            return input_
        return super().all_gather(input_, dim)
