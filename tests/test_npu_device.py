"""The emulated npu device (tests/npu_emulation with VLLM_ASCEND_RERANK_DEVICE=npu).

The device renames PrivateUse1 and hooks torch's CPU allocator for its whole process, which
must not leak into the other tests: the ``check_*`` functions below run in one subprocess
(``python tests/test_npu_device.py`` runs them all and prints one JSON line per check), and each
test asserts that its check passed. The library is built by ``make npu-emulation``; without it
the module skips, or fails when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EMULATION = REPO / "tests" / "npu_emulation"
CAPACITY_MB = 1024
DEVICES = 2


# ---- checks (run in the device subprocess) ---------------------------------------------
def check_device_api() -> None:
    import torch

    npu = torch.npu  # type: ignore[attr-defined]
    assert npu.is_available() and npu.device_count() == DEVICES
    assert torch.accelerator.current_accelerator().type == "npu"
    assert torch.device("npu").type == "npu" and torch.empty(1, device="npu").is_npu
    npu.set_device(1)
    assert npu.current_device() == 1 and torch.empty(1, device="npu").device.index == 1
    with npu.device(0):
        assert npu.current_device() == 0
    assert npu.current_device() == 1
    npu.set_device("npu:0")
    props = npu.get_device_properties(0)
    assert props.total_memory == CAPACITY_MB << 20 and "emulated" in props.name
    assert npu.mem_get_info()[1] == CAPACITY_MB << 20
    npu.synchronize()


def check_copy_round_trip() -> None:
    import torch

    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.bool):
        x = (torch.arange(24).reshape(4, 6) % 5).to(dtype)
        y = x.to("npu")
        assert y.device == torch.device("npu", 0) and y.dtype == dtype
        assert torch.equal(y.cpu(), x)
    x = torch.randn(5, 7)
    y = x.npu()
    assert torch.equal(y.t().contiguous().cpu(), x.t().contiguous())  # strided npu -> npu
    assert torch.equal(y[:, 1::2].cpu(), x[:, 1::2])  # strided npu -> cpu
    z = torch.empty(7, 5, device="npu")
    z.copy_(x.t())  # strided cpu -> npu
    assert torch.equal(z.cpu(), x.t())
    assert torch.equal(y.to("npu:1").cpu(), x) and y.to("npu:1").device.index == 1
    assert torch.equal(y.half().cpu(), x.half())  # dtype conversion on the device
    assert y[2, 3].item() == x[2, 3].item()


def check_fallback_is_zero_copy() -> None:
    import torch

    npu = torch.npu  # type: ignore[attr-defined]
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    na, nb = a.npu(), b.npu()
    npu.reset_peak_memory_stats()
    base = npu.memory_allocated()
    c = na @ nb  # a CPU kernel on the npu memory: only the result is new device memory
    assert npu.max_memory_allocated() - base == c.numel() * 4
    torch.testing.assert_close(c.cpu(), a @ b)
    host = npu.memory_allocated()
    assert host - base == c.numel() * 4  # the kernel's output is npu-accounted memory


def check_views_alias() -> None:
    import torch

    base = torch.arange(24.0, device="npu").reshape(4, 6)
    v = base.view(24)[5:9]  # registered view ops
    v.fill_(-1)  # fill_ through the fallback, into the view
    assert base.cpu().view(24)[5:9].eq(-1).all()
    alias = torch.ops.aten.alias(base)  # a view op served by the fallback
    assert alias.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    parts = torch.split(base, 2)  # tuple of views
    assert [p.data_ptr() - base.data_ptr() for p in parts] == [0, 12 * 4]
    parts[1].zero_()
    assert base.cpu()[2:].eq(0).all()
    d = torch.diagonal(base)
    assert d.data_ptr() == base.data_ptr() and d.stride() == (7,)
    u = base.unfold(1, 2, 2)
    assert u.shape == (4, 3, 2) and u.data_ptr() == base.data_ptr()
    r = torch.view_as_real(torch.zeros(3, dtype=torch.complex64, device="npu"))
    assert r.shape == (3, 2)


def check_inplace_and_out() -> None:
    import torch

    x = torch.ones(3, device="npu")
    assert x.add_(1) is x and x.mul_(x) is x and x.cpu().eq(4).all()
    out = torch.empty(3, device="npu")
    ptr = out.data_ptr()
    assert torch.add(x, 1, out=out) is out and out.data_ptr() == ptr
    grown = torch.empty(0, device="npu")  # the CPU kernel resizes it: it stays npu memory
    before = torch.npu.memory_allocated()  # type: ignore[attr-defined]
    assert torch.mul(x.expand(100, 3), 2, out=grown) is grown
    assert grown.shape == (100, 3) and grown.device.type == "npu" and grown.cpu().eq(8).all()
    assert torch.npu.memory_allocated() - before >= 1200  # type: ignore[attr-defined]
    vals, idx = torch.empty(0, device="npu"), torch.empty(0, dtype=torch.long, device="npu")
    res = torch.max(torch.tensor([[1.0, 5.0], [7.0, 2.0]], device="npu"), 1, out=(vals, idx))
    assert res[0] is vals and res[1] is idx and idx.cpu().tolist() == [1, 0]


def check_tuple_list_optional_args() -> None:
    import torch
    import torch.nn.functional as F  # noqa: N812

    a = torch.randn(4, 6)
    na = a.npu()
    vals, idx = torch.max(na, dim=1)
    assert vals.is_npu and idx.is_npu and torch.equal(idx.cpu(), a.max(1).indices)
    assert torch.equal(torch.cat([na, na]).cpu(), torch.cat([a, a]))  # Tensor[]
    assert torch.equal(torch.stack([na[0], na[2]]).cpu(), torch.stack([a[0], a[2]]))
    i = torch.tensor([0, 2])
    assert torch.equal(na[i.npu()].cpu(), a[i])  # Tensor?[] (index)
    assert torch.equal(na[:, i.npu()].cpu(), a[:, i])  # Tensor?[] with a None
    b = na.clone()
    b[i.npu()] = 0.0  # index_put_
    assert b.cpu()[i].eq(0).all() and torch.equal(b.cpu()[1], a[1])
    w, bias = torch.randn(3, 6), torch.randn(3)
    torch.testing.assert_close(F.linear(na, w.npu()).cpu(), F.linear(a, w))
    torch.testing.assert_close(F.linear(na, w.npu(), bias.npu()).cpu(), F.linear(a, w, bias))
    torch.testing.assert_close(F.layer_norm(na, (6,)).cpu(), F.layer_norm(a, (6,)))
    assert torch.equal(torch.nonzero(na > 0).cpu(), torch.nonzero(a > 0))
    scalar = torch.tensor(2.0)  # a CPU scalar next to npu tensors, as on other devices
    assert torch.equal((na * scalar).cpu(), a * 2) and (na * scalar).is_npu


def check_random() -> None:
    import torch

    npu = torch.npu  # type: ignore[attr-defined]
    npu.manual_seed(7)
    r1 = torch.randn(8, device="npu").cpu()
    state = npu.get_rng_state()
    r2 = torch.randn(8, device="npu").cpu()
    npu.manual_seed(7)
    assert torch.equal(torch.randn(8, device="npu").cpu(), r1)
    npu.set_rng_state(state)
    assert torch.equal(torch.randn(8, device="npu").cpu(), r2)
    g = torch.Generator(device="npu")
    assert g.device.type == "npu"
    g.manual_seed(3)
    x = torch.rand(4, device="npu", generator=g).cpu()
    g.manual_seed(3)
    assert torch.equal(torch.rand(4, device="npu", generator=g).cpu(), x)


def check_pinned_memory() -> None:
    import torch

    p = torch.randn(16).pin_memory()
    assert p.is_pinned() and p[4:].is_pinned() and not torch.randn(16).is_pinned()
    q = torch.empty(16, pin_memory=True)
    assert q.is_pinned()
    y = p.to("npu", non_blocking=True)
    assert torch.equal(y.cpu(), p)
    z = torch.empty(16, pin_memory=True)
    z.copy_(y, non_blocking=True)
    assert torch.equal(z, p)


def check_accounting() -> None:
    import torch

    npu = torch.npu  # type: ignore[attr-defined]
    free0, total = npu.mem_get_info()
    alloc0 = npu.memory_allocated()
    npu.reset_peak_memory_stats()
    x = torch.empty(1 << 20, dtype=torch.uint8, device="npu")
    assert npu.memory_allocated() - alloc0 == 1 << 20
    assert free0 - npu.mem_get_info()[0] == 1 << 20 and npu.mem_get_info()[1] == total
    assert torch.accelerator.memory_allocated() == npu.memory_allocated()
    assert torch.accelerator.get_memory_info() == npu.mem_get_info()
    stats = torch.accelerator.memory_stats()
    assert stats["allocated_bytes.all.current"] == npu.memory_allocated()
    assert stats["allocation.all.current"] >= 1
    del x
    assert npu.memory_allocated() == alloc0 and npu.mem_get_info()[0] == free0
    assert npu.max_memory_allocated() - alloc0 == 1 << 20  # the peak stays
    npu.reset_peak_memory_stats()
    assert npu.max_memory_allocated() == alloc0
    npu.empty_cache()
    try:
        torch.empty(CAPACITY_MB + 1, 1 << 20, dtype=torch.uint8, device="npu")
    except torch.OutOfMemoryError as exc:
        assert "out of memory" in str(exc)
    else:
        raise AssertionError("allocating more than the capacity did not raise")


def check_graph_pools() -> None:
    import torch

    npu = torch.npu  # type: ignore[attr-defined]
    ops = torch.ops.npu_emulation_device
    pool, mb = (0, 4242), 1 << 20
    reserved0 = npu.memory_reserved()
    ops.begin_allocate_to_pool(0, *pool)
    big = torch.empty(mb, dtype=torch.uint8, device="npu")
    del big  # back to the pool, still reserved there
    assert npu.pool_stats(pool)["reserved_bytes"] == mb
    assert npu.memory_reserved() - reserved0 == mb
    small = [torch.empty(mb // 4, dtype=torch.uint8, device="npu") for _ in range(4)]
    stats = npu.pool_stats(pool)  # four quarters reuse the freed block (split)
    assert (stats["reserved_bytes"], stats["segments"]) == (mb, 1)
    del small
    again = torch.empty(mb, dtype=torch.uint8, device="npu")  # coalesced again
    assert npu.pool_stats(pool)["reserved_bytes"] == mb
    outside: list[torch.Tensor] = []
    t = threading.Thread(target=lambda: outside.append(torch.empty(mb, device="npu")))
    t.start()
    t.join()
    assert npu.pool_stats(pool)["reserved_bytes"] == mb  # other threads: not the pool's
    ops.end_allocate_to_pool(0, *pool)
    after = torch.empty(mb, dtype=torch.uint8, device="npu")  # not routed to the pool any more
    assert npu.pool_stats(pool)["reserved_bytes"] == mb
    del after
    outside.clear()
    ops.release_pool(0, *pool)
    assert npu.pool_stats(pool)["reserved_bytes"] == mb  # a live block keeps its segment
    del again
    assert npu.pool_stats(pool)["reserved_bytes"] == 0
    assert npu.memory_reserved() == reserved0


def check_zero_copy_views_api() -> None:
    import torch

    npu = torch.npu  # type: ignore[attr-defined]
    ops = torch.ops.npu_emulation_device
    x = torch.arange(6.0, device="npu")
    host = ops.as_cpu(x)
    assert host.device.type == "cpu" and host.data_ptr() == x.data_ptr()
    host[0] = 42.0
    assert x[0].item() == 42.0
    back = ops.as_npu(host, 1)
    assert back.device == torch.device("npu", 1) and back.data_ptr() == x.data_ptr()
    blob = ops.from_blob(x.data_ptr(), [2, 2], [1, 2], 1, torch.float32, 0)
    assert blob.cpu().tolist() == [[1.0, 3.0], [2.0, 4.0]]
    before = npu.memory_allocated()
    y = torch.empty(1 << 16, device="npu")
    weak = torch_npu_c()._weak_ref_tensor(y)
    assert weak.data_ptr() == y.data_ptr() and weak.shape == y.shape
    del y  # the weak reference does not keep the memory
    assert npu.memory_allocated() == before


def torch_npu_c():  # noqa: ANN201 - the emulation's torch_npu._C
    import torch_npu

    return torch_npu._C


def check_streams_events() -> None:
    import torch

    npu = torch.npu  # type: ignore[attr-defined]
    default = npu.current_stream()
    assert default == npu.default_stream() and default.stream_id == 0
    s = npu.Stream()
    assert s.stream_id != 0 and s.device == torch.device("npu", 0)
    with npu.stream(s):
        assert npu.current_stream() == s
        x = torch.ones(4, device="npu") * 2
    assert npu.current_stream() == default
    x.record_stream(s)
    s.wait_stream(default)
    s.synchronize()
    start, end = npu.Event(enable_timing=True), npu.Event(enable_timing=True)
    start.record()
    (x @ x).item()
    end.record()
    end.synchronize()
    assert end.query() and start.elapsed_time(end) >= 0.0
    assert isinstance(s.record_event(), npu.Event)


def check_compile_eager() -> None:
    import torch

    def f(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.silu(x @ w) * 2
        return y.view(-1)[:5] + y.sum()

    w = torch.randn(8, 8, device="npu")
    compiled = torch.compile(f, backend="eager", dynamic=True)
    for rows in (4, 6):
        x = torch.randn(rows, 8, device="npu")
        out = compiled(x, w)
        assert out.is_npu
        torch.testing.assert_close(out.cpu(), f(x.cpu(), w.cpu()))


def _hccl_rank(rank: int, port: int, queue: object) -> None:
    import torch
    import torch.distributed as dist
    import torch_npu  # noqa: F401 - the emulated device and the hccl backend

    npu = torch.npu  # type: ignore[attr-defined]
    npu.set_device(rank)
    dist.init_process_group("hccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dev = torch.device("npu", rank)
    x = torch.full((4,), float(rank + 1), device=dev)
    dist.all_reduce(x)
    gathered = torch.empty(4, device=dev)
    dist.all_gather_into_tensor(gathered, torch.full((2,), float(rank), device=dev))
    parts = [torch.empty(2, device=dev) for _ in range(2)]
    dist.all_gather(parts, torch.full((2,), float(rank), device=dev))
    scattered = torch.empty(2, device=dev)
    dist.reduce_scatter_tensor(scattered, torch.arange(4.0, device=dev))
    if rank == 0:
        dist.send(torch.full((2,), 5.0, device=dev), 1)
        received = None
    else:
        received = torch.zeros(2, device=dev)
        dist.recv(received, 0)
    try:
        dist.all_reduce(torch.ones(1))  # HCCL carries npu tensors only
        cpu_refused = False
    except RuntimeError:
        cpu_refused = True
    queue.put(  # type: ignore[attr-defined]
        {
            "rank": rank,
            "backend": dist.get_backend(),
            "all_reduce": x.cpu().tolist(),
            "all_gather_into_tensor": gathered.cpu().tolist(),
            "all_gather": [p.cpu().tolist() for p in parts],
            "reduce_scatter": scattered.cpu().tolist(),
            "recv": None if received is None else received.cpu().tolist(),
            "cpu_refused": cpu_refused,
        }
    )
    dist.destroy_process_group()


def check_hccl_two_processes() -> None:
    import multiprocessing as mp
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hccl_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = sorted((queue.get(timeout=120) for _ in procs), key=lambda r: r["rank"])
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    for r in results:
        assert r["backend"] == "hccl" and r["cpu_refused"], r
        assert r["all_reduce"] == [3.0] * 4
        assert r["all_gather_into_tensor"] == [0.0, 0.0, 1.0, 1.0]
        assert r["all_gather"] == [[0.0, 0.0], [1.0, 1.0]]
    assert results[0]["reduce_scatter"] == [0.0, 2.0]
    assert results[1]["reduce_scatter"] == [4.0, 6.0]
    assert results[1]["recv"] == [5.0, 5.0]


CHECKS: dict[str, Callable[[], None]] = {
    name[len("check_") :]: fn for name, fn in sorted(globals().items()) if name.startswith("check_")
}


def _run_checks() -> None:
    import torch
    import torch_npu  # noqa: F401 - switches the device on (VLLM_ASCEND_RERANK_DEVICE=npu)

    for name, check in CHECKS.items():
        torch.npu.set_device(0)  # type: ignore[attr-defined]
        try:
            check()
            result = {"check": name, "ok": True}
        except Exception:  # reported to the test that owns the check
            result = {"check": name, "ok": False, "error": traceback.format_exc()}
        print(json.dumps(result), flush=True)


# ---- the tests ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built() -> None:
    from conftest import require_emulated_npu  # not at module level: this file is also the child

    require_emulated_npu()


@pytest.fixture(scope="module")
def results(built: None) -> dict[str, dict]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EMULATION), str(REPO / "tests")]),
        "VLLM_ASCEND_RERANK_DEVICE": "npu",
        "TORCH_NPU_EMULATION_MEMORY_MB": str(CAPACITY_MB),
        "TORCH_NPU_EMULATION_DEVICE_COUNT": str(DEVICES),
    }
    env.pop("ASCEND_RT_VISIBLE_DEVICES", None)
    out = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    found = {}
    for line in out.stdout.splitlines():
        if line.startswith('{"check"'):
            row = json.loads(line)
            found[row["check"]] = row
    if not found:
        pytest.fail(f"device checks did not run (rc {out.returncode}):\n{out.stderr[-4000:]}")
    return found


@pytest.mark.parametrize("name", list(CHECKS))
def test_device(results: dict[str, dict], name: str) -> None:
    row = results.get(name)
    assert row is not None, f"check {name} did not report (the process died before it)"
    assert row["ok"], row.get("error")


if __name__ == "__main__":
    _run_checks()
