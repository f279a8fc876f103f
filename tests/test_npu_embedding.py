"""Qwen3-VL-Embedding in the plugin's NPU mode on the emulated npu device (issue 13 item 4).

Stock ``LLM(..., runner="pooling").embed`` with ``tests/npu_emulation`` on the path and
``VLLM_ASCEND_RERANK_DEVICE=npu``, eager, as ``test_npu_engine.py`` runs the reranker: the
plugin's NPU platform and ``RerankNPUWorker`` run vLLM's model runner on npu:0, with the
embedder's classes (``Qwen3VLForEmbedding``, the official prompt) and the vision tower on the
device. Text and a text+image input, fp32, within 1e-4 of the official rule
(tests/reference_embedding.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import require_emulated_npu, run_npu_script
from reference_embedding import OfficialEmbedder
from test_embedding import IMAGES, INSTRUCTIONS, TEXTS, assert_close

# skip_mm_profiling: the encoder's memory profile runs a largest-size dummy image (1,800 tokens)
# through Triton's interpreter, 2.5 of the 3 minutes this engine took to start on 2 cores; it
# only sizes memory, the vectors were the same to the last bit with and without it.
# The inputs travel to the engine process by name: the image is rebuilt there from the same
# definition (tests/test_embedding.py IMAGES), so both sides embed the same pixels.
SCRIPT = """
import json, sys
from conftest import make_llm
from test_embedding import IMAGES, INSTRUCTIONS, TEXTS
from vllm_ascend_rerank.embedding.prompt import embedding_input
if __name__ == "__main__":
    llm = make_llm(sys.argv[1], hf_overrides=None, enforce_eager=True,
                   gpu_memory_utilization=0.5, limit_mm_per_prompt={"image": 1, "video": 0},
                   skip_mm_profiling=True)
    prompts = [TEXTS[0], embedding_input(TEXTS[0], instruction=INSTRUCTIONS[0]),
               embedding_input("a photo", images=[IMAGES["odd"]])]
    outputs = llm.embed(prompts)
    print(json.dumps({"vectors": [o.outputs.embedding for o in outputs],
                      "arch": llm.llm_engine.model_config.hf_config.architectures}))
"""


def test_npu_mode_serves_the_embedder(embedding_checkpoints, tmp_path: Path) -> None:
    require_emulated_npu()
    ckpt = embedding_checkpoints["plain"]
    stdout, trace = run_npu_script(SCRIPT, tmp_path, str(ckpt))
    result = json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("{")))
    assert result["arch"] == ["Qwen3VLForEmbedding"]  # the embedder, not stock vLLM's
    want = OfficialEmbedder(ckpt).embed(
        [
            {"text": TEXTS[0]},
            {"text": TEXTS[0], "instruction": INSTRUCTIONS[0]},
            {"text": "a photo", "image": IMAGES["odd"]},
        ]
    )
    assert_close(torch.tensor(result["vectors"]), want)
    # It ran on the device: the emulation saw the plugin's NPU worker, and the vision tower's
    # ops (Qwen3-VL's position-embedding Triton kernel, the fused ViT attention) on npu:0.
    engines = [ln for ln in map(json.loads, trace.read_text().splitlines()) if "worker" in ln]
    assert [e["worker"] for e in engines] == ["vllm_ascend_rerank.worker.npu.RerankNPUWorker"]
    assert engines[0]["triton"].get("_bilinear_pos_embed_kernel", 0) > 0, engines[0]["triton"]
    assert engines[0]["calls"].get("npu_fusion_attention", 0) > 0, engines[0]["calls"]
