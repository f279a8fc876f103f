"""ACL graphs on the torch_npu emulation (tests/npu_emulation): the emulated ``NPUGraph``
(capture records and returns garbage, replay recomputes on the captured memory) and the
plugin's ``ACLGraphWrapper`` (padding, eager fallback, weak references to outputs).

(a) and (c) run in this process with the emulated device off (CPU tensors stand in for
device tensors). (b), graph-capture memory, needs the emulated device's allocator and pools:
it runs in a child process with ``VLLM_ASCEND_RERANK_DEVICE=npu``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

EMULATION = pathlib.Path(__file__).parent / "npu_emulation"
_spec = importlib.util.find_spec("torch_npu")
if _spec is not None and EMULATION not in pathlib.Path(_spec.origin or "").parents:
    pytest.skip("a real torch_npu is installed: see test_npu_hardware.py", allow_module_level=True)
sys.path.insert(0, str(EMULATION))

import torch_npu  # noqa: E402  (the emulation, from the path above)
from vllm.config import CUDAGraphMode, VllmConfig  # noqa: E402
from vllm.forward_context import BatchDescriptor, set_forward_context  # noqa: E402

from vllm_ascend_rerank.graphs.acl_graph import (  # noqa: E402
    ACLGraphWrapper,
    capture_sizes,
    padded_size,
)

assert getattr(torch_npu, "__emulation__", False)


@pytest.fixture(autouse=True)
def _calls() -> None:
    torch_npu.calls.clear()


@pytest.fixture
def vllm_config(monkeypatch: pytest.MonkeyPatch) -> VllmConfig:
    from vllm.platforms import current_platform

    # In this process the platform runs CPU mode, whose torch.cpu has no graph pools: give
    # the wrapper the emulation's, as the NPU platform would (torch.npu.graph_pool_handle).
    monkeypatch.setattr(type(current_platform), "_global_graph_pool", torch.npu.graph_pool_handle())
    return VllmConfig()


def is_poison(t: torch.Tensor) -> bool:
    return bool(t.isnan().all()) if t.is_floating_point() else bool((t == -1).all())


# ---- (a) the emulated NPUGraph ------------------------------------------------------------------
def test_capture_returns_garbage_and_replay_recomputes() -> None:
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    out = torch.empty(4, 8)  # allocated before the capture: written in place by it
    graph = torch.npu.NPUGraph()
    with torch.inference_mode(), torch.npu.graph(graph):
        y = torch.relu(x @ w) + 1
        idx = torch.arange(4) * 2
        wide = y.to(torch.float64)  # aten.to: a "view" op that converts (a kernel)
        out.copy_(y)
    # What the capture allocated holds no result, as on the device.
    assert is_poison(y) and is_poison(idx) and is_poison(wide)
    x.copy_(torch.randn(4, 8))  # new data, same memory
    graph.replay()
    want = torch.relu(x @ w) + 1
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(idx, torch.arange(4) * 2)
    torch.testing.assert_close(wide, want.double())
    x.mul_(-1)
    graph.replay()
    torch.testing.assert_close(out, torch.relu(x @ w) + 1)
    assert torch_npu.calls["NPUGraph.capture"] == 1 and torch_npu.calls["NPUGraph.replay"] == 2


def test_capture_refuses_host_sync_and_value_dependent_shapes() -> None:
    x = torch.randn(4, 8)
    with (
        pytest.raises(RuntimeError, match="host synchronisation"),
        torch.npu.graph(torch.npu.NPUGraph()),
    ):
        (x * 2).sum().item()
    with pytest.raises(RuntimeError, match="data-dependent"), torch.npu.graph(torch.npu.NPUGraph()):
        torch.nonzero(x > 0)
    assert not torch.npu.is_current_stream_capturing()
    with pytest.raises(RuntimeError, match="capture error mode"):
        torch.npu.NPUGraph().capture_begin(capture_error_mode="strict")


def test_graph_api_follows_the_pinned_torch_npu() -> None:
    import inspect

    sig = inspect.signature(torch.npu.graph)
    assert list(sig.parameters) == [
        "npu_graph", "pool", "stream", "auto_dispatch_capture", "capture_error_mode",
    ]  # fmt: skip
    assert sig.parameters["capture_error_mode"].default == "global"
    begin = inspect.signature(torch.npu.NPUGraph.capture_begin)
    assert list(begin.parameters) == ["self", "pool", "capture_error_mode"]
    pool = torch.npu.graph_pool_handle()
    graph = torch.npu.NPUGraph()
    with torch.npu.graph(graph, pool=pool):
        torch.ones(2).add_(1)
    assert graph.pool() == pool
    graph.reset()
    with pytest.raises(RuntimeError, match="replay before"):
        graph.replay()


# ---- (c) ACLGraphWrapper in vLLM's forward context ---------------------------------------------
def test_capture_sizes_and_padding() -> None:
    assert capture_sizes(8192) == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    assert capture_sizes(100) == [16, 32, 64, 100]
    assert capture_sizes(10) == [10]
    assert capture_sizes(4096, "512, 64,8,100000") == [8, 64, 512]
    with pytest.raises(ValueError, match="comma separated"):
        capture_sizes(4096, "64,abc")
    with pytest.raises(ValueError, match="positive"):
        capture_sizes(4096, "0,64")
    sizes = [16, 32, 64, 100]
    assert [padded_size(n, sizes) for n in (1, 16, 17, 64, 65, 100, 101, 0)] == [
        16, 16, 32, 64, 100, 100, None, None,
    ]  # fmt: skip


class _Piece(torch.nn.Module):
    """A stand-in for one piecewise-compiled piece: per-token, so padding rows stay apart."""

    def __init__(self, d_in: int = 8, d_out: int = 8) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(d_in, 32), torch.nn.Linear(16, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        return self.down(F.silu(h[:, :16]) * h[:, 16:])


def _step(
    wrapper: ACLGraphWrapper, static: torch.Tensor, x: torch.Tensor, vllm_config: VllmConfig
) -> tuple[torch.Tensor, int | None]:
    """One step as vLLM's runner drives a piece: pad the token count up to a captured size
    and copy the inputs into the persistent buffer (PIECEWISE), or run eagerly beyond the
    largest size (mode NONE)."""
    n = x.shape[0]
    size = padded_size(n, wrapper.sizes)
    if size is None:
        mode, inp = CUDAGraphMode.NONE, x
    else:
        mode, inp = CUDAGraphMode.PIECEWISE, static[:size]
        static[:n] = x
        static[n:size] = 0
    desc = BatchDescriptor(num_tokens=size or n)
    with set_forward_context(
        None, vllm_config, cudagraph_runtime_mode=mode, batch_descriptor=desc
    ):  # fmt: skip
        return wrapper(inp)[:n], size


def test_wrapper_pads_captures_replays_and_falls_back(vllm_config: VllmConfig) -> None:
    vllm_config.compilation_config.cudagraph_capture_sizes = [4, 8, 16]
    piece = _Piece()
    wrapper = ACLGraphWrapper(piece, vllm_config, CUDAGraphMode.PIECEWISE)
    assert wrapper.up is piece.up  # attributes reach the runnable
    static = torch.zeros(16, 8)  # the runner's persistent input buffer
    torch.manual_seed(1)
    captured: set[int] = set()
    with torch.inference_mode():
        for n in [3, 7, 5, 8, 2, 20, 16]:
            x = torch.randn(n, 8)
            out, size = _step(wrapper, static, x, vllm_config)
            if size is not None and size not in captured:
                captured.add(size)
                assert is_poison(out), f"{n} tokens: a capture must not compute"
            else:
                torch.testing.assert_close(out, piece(x), rtol=1e-5, atol=1e-5, msg=f"{n}")
    # 3 -> 4 (capture), 7 -> 8 (capture), 5 -> 8 (replay), 8 (replay), 2 -> 4 (replay),
    # 20: eager beyond the largest, 16 (capture)
    assert torch_npu.calls["NPUGraph.capture"] == 3
    assert torch_npu.calls["NPUGraph.replay"] == 3
    assert sorted(d.num_tokens for d in wrapper.concrete_cudagraph_entries) == [4, 8, 16]
    assert wrapper.replays == {4: 1, 8: 2}
    with set_forward_context(None, vllm_config):  # cudagraph mode NONE: plain eager call
        torch.testing.assert_close(wrapper(static[:3]), piece(static[:3]))
    # A descriptor of a size vLLM did not capture (e.g. another runner's): eager, no capture.
    desc = BatchDescriptor(num_tokens=5)
    with set_forward_context(
        None, vllm_config, cudagraph_runtime_mode=CUDAGraphMode.PIECEWISE, batch_descriptor=desc
    ):  # fmt: skip
        torch.testing.assert_close(wrapper(static[:5]), piece(static[:5]))
    assert torch_npu.calls["NPUGraph.capture"] == 3 and torch_npu.calls["NPUGraph.replay"] == 3
    # vLLM drops its memory-profiling graphs through CUDAGraphWrapper: ours go with them.
    from vllm.compilation.cuda_graph import CUDAGraphWrapper

    CUDAGraphWrapper.clear_all_graphs()
    assert not wrapper.concrete_cudagraph_entries


def test_wrapper_keeps_weak_references(vllm_config: VllmConfig) -> None:
    """The entry's output aliases the capture's output without owning it."""
    vllm_config.compilation_config.cudagraph_capture_sizes = [4]
    wrapper = ACLGraphWrapper(_Piece(), vllm_config, CUDAGraphMode.PIECEWISE)
    with torch.inference_mode():
        out, _ = _step(wrapper, torch.zeros(4, 8), torch.randn(4, 8), vllm_config)
    (entry,) = wrapper.concrete_cudagraph_entries.values()
    assert entry.output.data_ptr() == out.data_ptr()
    assert entry.output.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
    # A non-owning alias: its storage has no allocator-backed deleter of its own.
    assert entry.output.untyped_storage()._cdata != out.untyped_storage()._cdata


# ---- (b) graph-capture memory on the emulated device -------------------------------------------
MEMORY_SCRIPT = r"""
import json, sys
import torch
import torch_npu  # the emulation, device on (VLLM_ASCEND_RERANK_DEVICE=npu)
from vllm.compilation.cuda_graph import CUDAGraphOptions, CUDAGraphWrapper
from vllm.config import CUDAGraphMode, VllmConfig
from vllm.forward_context import BatchDescriptor, set_forward_context
from vllm.platforms import current_platform
from vllm_ascend_rerank.graphs import acl_graph

SIZES, HIDDEN, LAYERS = [64, 128, 256, 512], 256, 6
if sys.argv[1] == "strong":  # what the wrapper did before: keep every capture's outputs
    acl_graph.weak_ref_tensors = lambda value: value
assert torch.npu.is_available() and current_platform.device_type == "npu"
torch.manual_seed(0)
w_in = torch.randn(64, HIDDEN, device="npu") / 8
ws = [torch.randn(HIDDEN, HIDDEN, device="npu") / 16 for _ in range(LAYERS)]
static = torch.zeros(SIZES[-1], 64, device="npu")  # the runner's persistent input buffer


def layer_piece(i):
    # The part of a layer up to attention: q, and the attention output buffer allocated inside
    # the graph, as vLLM's pieces do.
    def piece(h):
        if i == 0:  # the first piece reads the runner's input buffer itself
            h = h @ w_in
        return h @ ws[i], torch.empty(h.shape[0], HIDDEN, device="npu")
    return piece


def last_piece(h):
    return torch.tanh(h)


def attention(q, buf):  # between the pieces, eager in capture and replay: writes the buffer
    buf.copy_(q * 2)


def forward(pieces, n, mode):
    desc = BatchDescriptor(num_tokens=n)
    with set_forward_context(None, cfg, cudagraph_runtime_mode=mode, batch_descriptor=desc):
        h = static[:n]
        for piece in pieces[:-1]:
            q, buf = piece(h)
            attention(q, buf)
            h = buf
        return pieces[-1](h)


def eager(x):
    h = x @ w_in
    for w in ws:
        h = h @ w * 2
    return torch.tanh(h)


def capture(sizes):
    # vLLM's options: the first piece collects garbage, only the last drops its output.
    runnables = [layer_piece(i) for i in range(LAYERS)] + [last_piece]
    pieces = [
        acl_graph.ACLGraphWrapper(r, cfg, CUDAGraphMode.PIECEWISE, CUDAGraphOptions(
            debug_log_enable=i == 0, gc_disable=i > 0, weak_ref_output=i == LAYERS))
        for i, r in enumerate(runnables)
    ]
    for n in sorted(sizes, reverse=True):  # vLLM captures the largest first
        forward(runnables, n, CUDAGraphMode.NONE)  # warm-up, eager
        forward(pieces, n, CUDAGraphMode.PIECEWISE)  # capture (its output is garbage)
    return pieces


cfg = VllmConfig()
cfg.compilation_config.cudagraph_capture_sizes = SIZES
with torch.inference_mode():
    base = torch.npu.memory_reserved()
    torch.npu.reset_peak_memory_stats()
    forward([*map(layer_piece, range(LAYERS)), last_piece], SIZES[-1], CUDAGraphMode.NONE)
    activations = torch.npu.max_memory_reserved() - base

    # The largest size alone, then every size: the same pool each time.
    torch.npu.reset_peak_memory_stats()
    wrappers = capture(SIZES[-1:])
    alone = torch.npu.max_memory_reserved() - base
    pool_alone = torch.npu.pool_stats(current_platform.get_global_graph_pool())["reserved_bytes"]
    CUDAGraphWrapper.clear_all_graphs()  # releases the pool
    del wrappers
    assert torch.npu.memory_reserved() == base, (torch.npu.memory_reserved(), base)
    type(current_platform)._global_graph_pool = torch.npu.graph_pool_handle()

    torch.npu.reset_peak_memory_stats()
    pieces = capture(SIZES)
    every = torch.npu.max_memory_reserved() - base
    pool = torch.npu.pool_stats(current_platform.get_global_graph_pool())["reserved_bytes"]

    # Replays share the pool: each must still give the eager result, with new inputs.
    for n in SIZES + [100, 300]:
        size = acl_graph.padded_size(n, SIZES)
        x = torch.randn(n, 64, device="npu")
        static[:n] = x
        static[n:size] = 0
        out = forward(pieces, size, CUDAGraphMode.PIECEWISE)[:n].clone()
        torch.testing.assert_close(out, eager(x), rtol=1e-4, atol=1e-5)
print(json.dumps({"activations": activations, "largest_alone": alone, "every_size": every,
                  "pool_largest_alone": pool_alone, "pool": pool,
                  "replays": dict(pieces[0].replays)}))
"""


def _capture_memory(tmp_path: pathlib.Path, refs: str) -> dict[str, int]:
    script = tmp_path / "capture_memory.py"
    script.write_text(MEMORY_SCRIPT)
    env = {
        **os.environ,
        "VLLM_ASCEND_RERANK_DEVICE": "npu",
        "PYTHONPATH": os.pathsep.join([str(EMULATION), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, str(script), refs], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_device = pytest.mark.skipif(
    not (EMULATION / "torch_npu" / "_device.so").exists(),
    reason="the emulated npu device is not built (make npu-emulation)",
)


@needs_device
def test_capture_memory_is_the_largest_size_not_the_sum(tmp_path: pathlib.Path) -> None:
    """Captures at several sizes share the pool: the high-water mark of capturing every size
    stays within the largest size's activations (an eager warm-up) plus the pool that capturing
    the largest size alone takes, the pool does not grow, and every replay still computes the
    eager result."""
    m = _capture_memory(tmp_path, "weak")
    assert m["pool"] == m["pool_largest_alone"], m
    assert m["every_size"] <= m["activations"] + m["pool_largest_alone"], m
    assert m["replays"] == {"64": 1, "128": 2, "256": 1, "512": 2}, m


@needs_device
def test_capture_memory_check_fails_with_strong_references(tmp_path: pathlib.Path) -> None:
    """The check above tells the defect apart: kept outputs pile up, one set per size."""
    m = _capture_memory(tmp_path, "strong")
    assert m["pool"] > 1.5 * m["pool_largest_alone"], m
    assert m["every_size"] > m["activations"] + m["pool_largest_alone"], m


# ---- the engine with piecewise ACL graphs on the emulated device -------------------------------
ENGINE_SCRIPT = """
import json, sys
from conftest import make_llm, make_pairs
if __name__ == "__main__":
    llm = make_llm(sys.argv[1], dtype="bfloat16", gpu_memory_utilization=0.5,
                   max_num_batched_tokens=256, limit_mm_per_prompt={"image": 0, "video": 0})
    query, docs = make_pairs(12, seed=11)
    print(json.dumps([o.outputs.score for o in llm.score(query, docs)]))
"""
BF16_ATOL = 2e-2  # bfloat16 engine against the float32 official rule


@needs_device
def test_engine_replays_acl_graphs(heads128_checkpoint, reference_factory, tmp_path) -> None:
    """Stock ``LLM.score`` in NPU mode without enforce_eager: vLLM's piecewise compilation and
    runner, our wrapper and the emulated NPUGraph. Steps up to 128 tokens replay the graph of
    the next captured size; larger ones (the budget is 256) run eagerly; the scores are the
    official rule's and the trace shows the replays and the memory phases."""
    from conftest import make_pairs, run_npu_script

    stdout, trace = run_npu_script(
        ENGINE_SCRIPT, tmp_path, str(heads128_checkpoint), timeout=900,
        VLLM_ASCEND_RERANK_GRAPH_SIZES="16,64,128",
    )  # fmt: skip
    scores = json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("[")))
    query, docs = make_pairs(12, seed=11)
    want = reference_factory(heads128_checkpoint).score(
        {"text": query}, [{"text": d} for d in docs]
    )
    assert scores == pytest.approx(want, abs=BF16_ATOL)

    (engine,) = [r for r in map(json.loads, trace.read_text().splitlines()) if "graphs" in r]
    assert engine["worker"].endswith(".RerankNPUWorker")
    graphs = engine["graphs"]
    assert set(graphs) == {"16", "64", "128"}, graphs
    pieces = graphs["128"]["captures"]  # one graph per piece (layers + 1) and size
    assert pieces > 1 and all(g["captures"] == pieces for g in graphs.values()), graphs
    assert sum(g.get("replays", 0) for g in graphs.values()) > 0, graphs
    assert engine["calls"]["npu_fused_infer_attention_score"] > 0  # eager, between the pieces
    memory = engine["memory"]
    assert memory["capture"]["graph_pool_reserved_bytes"] > 0, memory
    assert set(memory) == {"before_capture", "capture", "steady"}, memory
