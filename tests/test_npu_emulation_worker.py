"""The NPU worker, model runner and communicator, on the CPU through the torch_npu emulation
(tests/npu_emulation; see test_npu_emulation.py): which hooks they override, NPU streams and
copies in place of CUDA's, a single-rank all-reduce.

On a host with a real torch_npu these are skipped: tests/test_npu_hardware.py covers the device.
"""

from __future__ import annotations

import npu_emulation_support  # noqa: F401 - the torch_npu emulation (torch.npu)
import pytest
import torch


def test_npu_runner_overrides_device_hooks_only() -> None:
    from vllm_ascend_rerank.worker.npu import RerankNPUModelRunner, RerankNPUWorker

    # vLLM's V2 runner as it is: only its construction is wrapped (streams, UVA buffers).
    assert {k for k in vars(RerankNPUModelRunner) if not k.startswith("__")} == set()
    assert "__init__" in vars(RerankNPUModelRunner)
    own = {k for k in vars(RerankNPUWorker) if not k.startswith("__")}
    assert own == {"init_device", "_make_model_runner", "_maybe_get_memory_pool_context"}


_CUDA_STREAM_API = ("Stream", "Event", "current_stream", "default_stream", "stream", "set_stream")


def test_npu_runner_uses_npu_streams_and_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.v1.worker.gpu import buffer_utils

    from vllm_ascend_rerank.worker.npu import use_copies_for_uva, use_npu_streams_for_cuda

    # Process-wide in a worker; undone here (monkeypatch restores what it saw first).
    for name in _CUDA_STREAM_API:
        monkeypatch.setattr(torch.cuda, name, getattr(torch.cuda, name))
    monkeypatch.setattr(buffer_utils, "UvaBuffer", buffer_utils.UvaBuffer)
    use_npu_streams_for_cuda()
    use_copies_for_uva()
    assert torch.cuda.Stream is torch.npu.Stream
    for name in _CUDA_STREAM_API[2:]:  # own callables, not torch.npu's objects (Dynamo)
        assert getattr(torch.cuda, name) is not getattr(torch.npu, name)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert torch.cuda.current_stream() is side or torch.cuda.current_stream() == side
    # vLLM passes CUDA-only keywords (external) that torch_npu's Event does not take.
    event = torch.cuda.Event(blocking=True, external=False)
    assert isinstance(event, torch.npu.Event)
    assert buffer_utils.UvaBuffer is buffer_utils.NonUvaBuffer


def test_npu_communicator_single_rank() -> None:
    import torch.distributed as dist

    from vllm_ascend_rerank.distributed import NpuCommunicator
    from vllm_ascend_rerank.serving import free_port

    url = f"tcp://127.0.0.1:{free_port()}"  # a fixed port collides with parallel runs
    dist.init_process_group("gloo", init_method=url, rank=0, world_size=1)
    try:
        group = dist.new_group([0], backend="gloo")
        comm = NpuCommunicator(group, device_group=group, unique_name="tp:0")
        x = torch.randn(3, 4)
        assert comm.all_reduce(x) is x and comm.all_gather(x, dim=0) is x
    finally:
        dist.destroy_process_group()
