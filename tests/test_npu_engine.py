"""The plugin's NPU mode end to end on the emulated npu device, against the official rule.

Stock ``LLM.score`` with ``tests/npu_emulation`` on the path and ``VLLM_ASCEND_RERANK_DEVICE=npu``:
the plugin's NPU platform, ``RerankNPUWorker`` and vLLM's V2 model runner on ``npu:0``, its
Triton kernels (input preparation, block tables, slot mapping) run by Triton's interpreter
through the emulated triton-ascend, block size 128, prefix caching and piecewise ACL graphs
(two capture sizes: steps pad up to one and replay it; a batch above the largest runs eagerly).
Two engines, one per process, run side by side:

- fp32 on the tiny checkpoint: within 1e-4 of the official rule;
- bf16 on the 128-dim-head, [24, 20, 20] M-RoPE checkpoint (the shape the fused NPU attention
  and ``npu_mrope`` take): within 2e-2.

Each scores one batch, then every pair alone: the query is long enough (over one 128-token
block with the system prompt) that the single pairs reuse cached prefix blocks. The emulation's
trace (``TORCH_NPU_EMULATION_TRACE``, one JSON line per process) proves what ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ATOL, REPO, make_pairs, require_emulated_npu, run_npu_script

EMULATION = REPO / "tests" / "npu_emulation"
BF16_ATOL = 2e-2  # bfloat16 engine against the float32 official rule
GRAPH_SIZES = (64, 256)
N_PAIRS = 6
QUERY_REPEATS = 10

SCRIPT = """
import json, sys
from conftest import make_llm
if __name__ == "__main__":
    ckpt, dtype, pairs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    llm = make_llm(ckpt, dtype=dtype, kv_cache_memory_bytes=64 << 20,
                   limit_mm_per_prompt={"image": 0, "video": 0})
    query, docs = pairs["query"], pairs["docs"]
    batch = [o.outputs.score for o in llm.score(query, docs)]
    single = [llm.score(query, d)[0].outputs.score for d in docs]
    print(json.dumps({"batch": batch, "single": single}))
    # Room for the engine process to exit by itself: it writes its trace at exit.
    llm.llm_engine.engine_core.shutdown(timeout=120)
"""


def _pairs() -> tuple[str, list[str]]:
    query, docs = make_pairs(N_PAIRS, seed=11)
    # With the official system prompt and instruction, past one 128-token KV block.
    return " ".join([query] * QUERY_REPEATS), docs


def _trace(path: Path) -> dict:
    """The engine process's line: the one that ran a worker."""
    lines = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    engines = [ln for ln in lines if "worker" in ln]
    assert len(engines) == 1, lines
    return engines[0]


@pytest.fixture(scope="module")
def runs(checkpoints, heads128_checkpoint, tmp_path_factory) -> dict[str, dict]:
    require_emulated_npu()
    tmp = tmp_path_factory.mktemp("npu-engine")
    script = tmp / "run_npu.py"
    script.write_text(SCRIPT)
    query, docs = _pairs()
    cases = {"fp32": (checkpoints["tied"], "float32"), "bf16": (heads128_checkpoint, "bfloat16")}
    procs = {}
    for name, (ckpt, dtype) in cases.items():
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(EMULATION), str(REPO / "tests")]),
            "VLLM_ASCEND_RERANK_DEVICE": "npu",
            "VLLM_ASCEND_RERANK_GRAPH_SIZES": ",".join(map(str, GRAPH_SIZES)),
            "TORCH_NPU_EMULATION_MEMORY_MB": "1024",
            "TORCH_NPU_EMULATION_TRACE": str(tmp / f"{name}.jsonl"),
        }
        args = [sys.executable, str(script), str(ckpt), dtype,
                json.dumps({"query": query, "docs": docs})]  # fmt: skip
        # Side by side: vLLM runs each engine on one thread; CI has two cores.
        procs[name] = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err[-4000:]}"
        scores = json.loads(next(ln for ln in out.splitlines() if ln.startswith("{")))
        results[name] = {**scores, "ckpt": cases[name][0],
                         "trace": _trace(tmp / f"{name}.jsonl")}  # fmt: skip
    return results


def _official(reference_factory, ckpt: Path) -> list[float]:
    query, docs = _pairs()
    return reference_factory(ckpt).score({"text": query}, [{"text": d} for d in docs])


@pytest.mark.parametrize(("name", "atol"), [("fp32", ATOL), ("bf16", BF16_ATOL)])
def test_npu_mode_matches_official(runs, reference_factory, name: str, atol: float) -> None:
    run = runs[name]
    want = _official(reference_factory, run["ckpt"])
    assert run["batch"] == pytest.approx(want, abs=atol)
    assert run["single"] == pytest.approx(want, abs=atol)  # prefix-cached, graph replays


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_npu_worker_ran_vllm_runner_and_its_triton_kernels(runs, name: str) -> None:
    trace = runs[name]["trace"]
    assert trace["worker"] == "vllm_ascend_rerank.worker.npu.RerankNPUWorker"
    # vLLM's V2 runner kernels, two of them through raw device-pointer tables.
    for kernel in ("_prepare_prefill_inputs_kernel", "_gather_block_tables_kernel",
                   "_compute_slot_mappings_kernel"):  # fmt: skip
        assert trace["triton"].get(kernel, 0) > 0, trace["triton"]


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_acl_graphs_captured_and_replayed(runs, name: str) -> None:
    graphs = runs[name]["trace"]["graphs"]
    assert {int(s) for s in graphs if s != "other"} == set(GRAPH_SIZES), graphs
    assert sum(g.get("replays", 0) for g in graphs.values()) > 0, graphs


def test_npu_ops_ran(runs) -> None:
    calls = runs["bf16"]["trace"]["calls"]
    ops = ("npu_fused_infer_attention_score", "npu_mrope", "npu_rms_norm", "npu_add_rms_norm",
           "npu_swiglu", "npu_scatter_nd_update_",
           "npu_fused_infer_attention_score:cached_context")  # fmt: skip
    for op in ops:
        assert calls.get(op, 0) > 0, (op, calls)


def test_npu_mode_without_triton_ascend_names_it(checkpoints) -> None:
    """Without triton-ascend (no active Triton driver) NPU mode stops at configuration and
    says what to install, instead of vLLM's worker failing later."""
    require_emulated_npu()
    code = (
        "from vllm.engine.arg_utils import EngineArgs\n"
        "from conftest import HF_OVERRIDES\n"
        f"EngineArgs(model={str(checkpoints['tied'])!r}, runner='pooling', "
        "hf_overrides=HF_OVERRIDES).create_engine_config()\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EMULATION), str(REPO / "tests")]),
        "VLLM_ASCEND_RERANK_DEVICE": "npu",
        "TORCH_NPU_EMULATION_TRITON": "0",  # the emulated triton-ascend stays out
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0
    assert "install triton-ascend" in out.stderr, out.stderr[-2000:]


# ---- the engine in NPU mode (eager): platform, RerankNPUWorker, vLLM's runner on npu:0 -----
ENGINE_SCRIPT = """
import json, sys
from conftest import make_llm, make_pairs
if __name__ == "__main__":
    llm = make_llm(sys.argv[1], enforce_eager=True, gpu_memory_utilization=0.5,
                   limit_mm_per_prompt={"image": 0, "video": 0})
    query, docs = make_pairs(8, seed=3)
    print(json.dumps([o.outputs.score for o in llm.score(query, docs)]))
"""


def test_eager_engine_in_npu_mode_matches_official(
    checkpoints, reference_factory, tmp_path: Path
) -> None:
    """Stock ``LLM.score`` with the device on: the plugin's NPU platform and worker run vLLM's
    GPU model runner on npu:0 (eager), and the scores are the official rule's (fp32)."""
    require_emulated_npu()
    stdout, trace = run_npu_script(ENGINE_SCRIPT, tmp_path, str(checkpoints["tied"]))
    scores = json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("[")))
    query, docs = make_pairs(8, seed=3)
    want = reference_factory(checkpoints["tied"]).score(
        {"text": query}, [{"text": d} for d in docs]
    )
    assert scores == pytest.approx(want, abs=ATOL)
    workers = [json.loads(ln).get("worker") for ln in trace.read_text().splitlines()]
    assert any(w and w.endswith(".RerankNPUWorker") for w in workers), workers
