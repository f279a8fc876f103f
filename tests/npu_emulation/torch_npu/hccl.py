"""The ``hccl`` collective backend of the emulated npu device, carried over gloo.

Registered as torch_npu 2.14 registers its HCCL backend
(``torch.distributed.Backend.register_backend("hccl", creator, extended_api=True,
devices=["npu"])``), so ``init_process_group("hccl")`` / ``new_group(backend="hccl")`` build a
process group whose npu collectives land here. Each collective runs gloo's on CPU tensors over
the npu tensors' memory (no copies) and returns once it completed, as the device's work is
synchronous. Like HCCL it takes npu tensors only. Loopback is enough: the emulated devices of
one host talk through gloo's TCP transport (``GLOO_SOCKET_IFNAME`` picks the interface).
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist
from torch._C import _distributed_c10d as c10d

from . import device as _device

BACKEND = "hccl"


def _host(t: torch.Tensor) -> torch.Tensor:
    if t.device.type != "npu":
        raise RuntimeError(f"hccl: expected npu tensors, got a tensor on {t.device}")
    return _device.as_cpu(t)


def _hosts(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [_host(t) for t in ts]


def _done(work: Any) -> Any:
    work.wait()
    return work


class ProcessGroupHCCL(c10d.Backend):
    """An HCCL-named c10d backend whose collectives are gloo's on zero-copy host views."""

    def __init__(self, store: Any, rank: int, size: int, timeout: datetime.timedelta) -> None:
        super().__init__(rank, size)
        # Our own key space in the group's store: gloo's rendezvous keys must not meet others'.
        self._gloo = c10d.ProcessGroupGloo(c10d.PrefixStore("hccl-emulation/", store),
                                           rank, size, timeout)  # fmt: skip

    def getBackendName(self) -> str:  # noqa: N802 - c10d's virtual
        return BACKEND

    def allreduce(self, tensors: list[torch.Tensor], opts: Any) -> Any:
        return _done(self._gloo.allreduce(_hosts(tensors), opts))

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any) -> Any:
        return _done(self._gloo.allreduce_coalesced(_hosts(tensors), opts))

    def reduce(self, tensors: list[torch.Tensor], opts: Any) -> Any:
        return _done(self._gloo.reduce(_hosts(tensors), opts))

    def broadcast(self, tensors: list[torch.Tensor], opts: Any) -> Any:
        return _done(self._gloo.broadcast(_hosts(tensors), opts))

    def allgather(
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any
    ) -> Any:
        return _done(self._gloo.allgather([_hosts(o) for o in outputs], _hosts(inputs), opts))

    def all_gather_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any) -> Any:  # noqa: A002
        return _done(self._gloo._allgather_base(_host(output), _host(input), opts))

    def reduce_scatter(
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts: Any
    ) -> Any:
        return _done(self._gloo.reduce_scatter(_hosts(outputs), [_hosts(i) for i in inputs], opts))

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts: Any) -> Any:  # noqa: A002
        return _done(self._gloo._reduce_scatter_base(_host(output), _host(input), opts))

    def all_to_all_single(
        self,
        output: torch.Tensor,
        input: torch.Tensor,  # noqa: A002
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: Any,
    ) -> Any:
        return _done(self._gloo.alltoall_base(
            _host(output), _host(input), output_split_sizes, input_split_sizes, opts
        ))  # fmt: skip

    def alltoall(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any) -> Any:
        return _done(self._gloo.alltoall(_hosts(outputs), _hosts(inputs), opts))

    def gather(
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any
    ) -> Any:
        return _done(self._gloo.gather([_hosts(o) for o in outputs], _hosts(inputs), opts))

    def scatter(
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts: Any
    ) -> Any:
        return _done(self._gloo.scatter(_hosts(outputs), [_hosts(i) for i in inputs], opts))

    # Point-to-point work is returned pending: gloo's send/recv wait() is not idempotent, and
    # the caller (send/recv, batch_isend_irecv) waits once. The work holds the host views.
    def send(self, tensors: list[torch.Tensor], dst: int, tag: int) -> Any:
        return self._gloo.send(_hosts(tensors), dst, tag)

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int) -> Any:
        return self._gloo.recv(_hosts(tensors), src, tag)

    def barrier(self, opts: Any) -> Any:
        return _done(self._gloo.barrier(c10d.BarrierOptions()))


def _create(dist_backend_opts: Any, pg_options: Any) -> ProcessGroupHCCL:
    return ProcessGroupHCCL(
        dist_backend_opts.store,
        dist_backend_opts.group_rank,
        dist_backend_opts.group_size,
        dist_backend_opts.timeout,
    )


def register() -> None:
    """Make ``hccl`` a torch.distributed backend for npu tensors (once per process)."""
    if BACKEND not in dist.Backend.backend_list:
        dist.Backend.register_backend(BACKEND, _create, extended_api=True, devices=["npu"])
