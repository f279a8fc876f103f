"""The full engine with the NPU kernels (torch_npu emulation) against the official rule.

The device stays the CPU; attention, M-RoPE, norms, SwiGLU and the KV write go through
``NpuKernels`` / ``ops.npu_ops`` calling the emulated torch_npu ops (tests/npu_emulation,
conformant to the pinned wheel). The checkpoint has the real rerankers' 128-dim heads and
M-RoPE sections and runs in bfloat16: the fused attention takes only half precision and 128
or 192-dim heads, npu_mrope only the kernel's sections. The trace proves the engine process
really ran each op.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, make_pairs

EMULATION = REPO / "tests" / "npu_emulation"
BF16_ATOL = 2e-2  # bfloat16 engine against the float32 official rule


SCRIPT = """
import json, sys
from conftest import make_llm, make_pairs
if __name__ == "__main__":
    llm = make_llm(sys.argv[1], dtype="bfloat16")
    query, docs = make_pairs(12, seed=11)
    print(json.dumps([o.outputs.score for o in llm.score(query, docs)]))
"""


@pytest.fixture(scope="module")
def npu_scores(heads128_checkpoint, tmp_path_factory) -> tuple[list[float], dict[str, int]]:
    # A separate process: the plugin's general entry point registers the NPU ops in
    # every vLLM process, this test's own included, and that must not leak to others.
    tmp = tmp_path_factory.mktemp("npu")
    trace, script = tmp / "trace.jsonl", tmp / "run_npu.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "VLLM_ASCEND_RERANK_ATTN_IMPL": "npu",
        "VLLM_ASCEND_RERANK_OPS": "npu",
        "TORCH_NPU_EMULATION_TRACE": str(trace),
        "PYTHONPATH": os.pathsep.join([str(EMULATION), str(REPO / "tests")]),
    }
    out = subprocess.run(
        [sys.executable, str(script), str(heads128_checkpoint)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    scores = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("[")))
    calls: dict[str, int] = {}
    for line in trace.read_text().splitlines():
        for op, n in json.loads(line)["calls"].items():
            calls[op] = calls.get(op, 0) + n
    return scores, calls


def test_npu_kernels_match_official(npu_scores, heads128_checkpoint, reference_factory) -> None:
    scores, _ = npu_scores
    query, docs = make_pairs(12, seed=11)
    want = reference_factory(heads128_checkpoint).score(
        {"text": query}, [{"text": d} for d in docs]
    )
    assert scores == pytest.approx(want, abs=BF16_ATOL)


def test_engine_ran_the_npu_ops(npu_scores) -> None:
    _, calls = npu_scores
    ops = (
        "npu_fused_infer_attention_score", "npu_mrope", "npu_rms_norm", "npu_add_rms_norm",
        "npu_swiglu", "npu_scatter_nd_update_",
    )  # fmt: skip
    for op in ops:
        assert calls.get(op, 0) > 0, (op, calls)
