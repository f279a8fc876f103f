"""The main job end to end: make the embedded tiny reranker, serve it with stock
``vllm serve``, send a real ``/v1/rerank`` request, print the ranked answer.

    python examples/serve_and_rerank.py [--model-dir DIR] [--port 8000]

On an Ascend host the same command serves on the NPU; pass ``--model`` to serve a real
checkpoint such as Qwen/Qwen3-VL-Reranker-2B instead of the tiny random one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

HF_OVERRIDES = {
    "architectures": ["Qwen3VLForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}
TEMPLATE = Path(__file__).resolve().parents[1] / "qwen3_vl_reranker.jinja"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=".cache/tiny-qwen3-vl-reranker")
    ap.add_argument("--model", default=None, help="serve this checkpoint instead")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()

    model = args.model
    if model is None:
        from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

        if not (Path(args.model_dir) / "config.json").exists():
            make_tiny_checkpoint(args.model_dir)
        model = args.model_dir
        print(f"embedded default model (tiny, random weights): {model}")

    cmd = [
        str(Path(sys.executable).parent / "vllm"), "serve", model,
        "--runner", "pooling",
        "--hf_overrides", json.dumps(HF_OVERRIDES),
        "--chat-template", str(TEMPLATE),
        "--host", "127.0.0.1", "--port", str(args.port),
        "--max-model-len", "4096",
    ]  # fmt: skip
    print("$", shlex.join(cmd), flush=True)
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(cmd)
    try:
        t0 = time.time()
        while True:
            if server.poll() is not None:
                print("vllm serve exited with", server.returncode, file=sys.stderr)
                return 1
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        print(f"server healthy after {time.time() - t0:.1f} s", flush=True)

        request = {
            "model": model,
            "query": "What do cats eat?",
            "documents": [
                "Cats are carnivores and eat mostly meat and fish.",
                "The stock market closed higher on Friday.",
                "Kittens need milk in their first weeks.",
                "Pianos have eighty-eight keys.",
            ],
            "top_n": 4,
        }
        r = requests.post(url + "/v1/rerank", json=request, timeout=60)
        r.raise_for_status()
        body = r.json()
        print(f"\nquery: {request['query']}")
        for rank, item in enumerate(body["results"], 1):
            print(f"{rank}. {item['relevance_score']:.4f}  {item['document']['text']}")
        print(f"usage: {body['usage']}")
        if args.model is None:
            print("(random tiny weights: the ranking shows the pipeline works, not relevance)")
        return 0
    finally:
        server.send_signal(signal.SIGINT)  # graceful, like Ctrl-C
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
