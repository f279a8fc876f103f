"""Whose ACL graph sizes an NPU-mode engine captures: the user's ``--compilation-config`` sizes
exactly (checked: positive, within ``max_num_batched_tokens``), else
``VLLM_ASCEND_RERANK_GRAPH_SIZES``, else the plugin's default grid; the log names the sizes and
where they came from. Each case is the config as vLLM 0.34 resolves it with the emulated npu
device on (one child process for all cases: the device never enters the pytest process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, require_emulated_npu

EMULATION = REPO / "tests" / "npu_emulation"


CONFIG_SCRIPT = """
import json, logging, os, sys
from vllm.engine.arg_utils import EngineArgs
from vllm.logger import configure_logging_if_needed
from conftest import HF_OVERRIDES

class Keep(logging.Handler):
    def emit(self, record):
        logs.append(record.getMessage())

# Configured now, the way EngineArgs does (each configuration clears the handlers below
# "vllm"), so that the handler stays; the plugin's loggers are vllm.vllm_ascend_rerank.*.
configure_logging_if_needed(EngineArgs().create_logging_config())
logging.getLogger("vllm.vllm_ascend_rerank").addHandler(Keep())
out = {}
for name, case in json.loads(sys.argv[2]).items():
    logs = []
    os.environ["VLLM_ASCEND_RERANK_GRAPH_SIZES"] = case.get("env", "")
    try:
        comp = EngineArgs(model=sys.argv[1], runner="pooling", hf_overrides=HF_OVERRIDES,
                          max_num_batched_tokens=1024, max_model_len=1024,
                          compilation_config=case.get("comp", {})).create_engine_config(
                          ).compilation_config
        out[name] = {"sizes": comp.cudagraph_capture_sizes,
                     "prefill": comp.prefill_cudagraph_capture_token_sizes,
                     "mode": comp.cudagraph_mode.name, "logs": logs}
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}", "logs": logs}
print(json.dumps(out))
"""
DEFAULT_1024 = [16, 32, 64, 128, 256, 512, 1024]
# name: (settings, sizes captured or the error's words, words the log names the source with)
SIZE_CASES = {
    "default": ({}, DEFAULT_1024, "from default"),
    "cap": ({"comp": {"max_cudagraph_capture_size": 256}}, [16, 32, 64, 128, 256],
            "compilation_config.max_cudagraph_capture_size"),
    "env": ({"env": "64,256"}, [64, 256], "from VLLM_ASCEND_RERANK_GRAPH_SIZES"),
    "legacy": ({"comp": {"cudagraph_capture_sizes": [200, 8, 48, 8]}, "env": "64"}, [8, 48, 200],
               "from compilation_config.cudagraph_capture_sizes"),
    "prefill": ({"comp": {"prefill_cudagraph_capture_token_sizes": [96, 32]}}, [32, 96],
                "from compilation_config.prefill_cudagraph_capture_token_sizes"),
    "above_budget": ({"comp": {"cudagraph_capture_sizes": [64, 4096]}}, [64],
                     "dropping capture sizes [4096], above max_num_batched_tokens=1024"),
    "none": ({"comp": {"prefill_cudagraph_capture_token_sizes": []}}, [], "none, eager"),
    "all_above": ({"comp": {"cudagraph_capture_sizes": [2048]}},
                  "compilation_config.cudagraph_capture_sizes: every capture size [2048] is "
                  "above max_num_batched_tokens=1024", ""),
    "not_positive": ({"comp": {"prefill_cudagraph_capture_token_sizes": [0, 16]}},
                     "compilation_config.prefill_cudagraph_capture_token_sizes: capture sizes "
                     "must be positive", ""),
}  # fmt: skip


@pytest.fixture(scope="module")
def resolved_sizes(checkpoints, tmp_path_factory) -> dict[str, dict]:
    """Each case's compilation config as vLLM resolves it in NPU mode (one child process)."""
    require_emulated_npu()
    script = tmp_path_factory.mktemp("sizes") / "sizes.py"
    script.write_text(CONFIG_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(EMULATION), str(REPO / "tests")]),
        "VLLM_ASCEND_RERANK_DEVICE": "npu",
        "VLLM_LOGGING_LEVEL": "INFO",  # the sizes and their source are logged at INFO
    }
    cases = json.dumps({name: case for name, (case, _, _) in SIZE_CASES.items()})
    out = subprocess.run(
        [sys.executable, str(script), str(checkpoints["tied"]), cases],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(SIZE_CASES))
def test_capture_sizes_are_the_users(resolved_sizes, name: str) -> None:
    """A user's ``--compilation-config`` sizes are captured exactly (checked: positive, within
    ``max_num_batched_tokens``), else ``VLLM_ASCEND_RERANK_GRAPH_SIZES``, else the default grid;
    the log names the sizes and where they came from."""
    _, want, source = SIZE_CASES[name]
    got = resolved_sizes[name]
    if isinstance(want, str):
        assert want in got.get("error", ""), got
        return
    assert "error" not in got, got
    assert got["sizes"] == want and got["prefill"] == want, got
    assert got["mode"] == ("PIECEWISE" if want else "NONE"), got
    said = [m for m in got["logs"] if "ACL graph token sizes" in m or "dropping" in m]
    assert any(source in m for m in said), got["logs"]
    if want:
        assert any(f"ACL graph token sizes {want}" in m for m in said), got["logs"]
