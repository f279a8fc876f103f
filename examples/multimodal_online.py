"""Serve the reranker with stock ``vllm serve`` and rerank text, image and video documents
through ``/v1/rerank``; then show that bad media get a clear 4xx.

    python examples/multimodal_online.py [--model DIR] [--port 8000]

Without ``--model`` it makes and serves the embedded tiny reranker (random weights).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from multimodal_offline import HF_OVERRIDES, image_url, picture, video_url

TEMPLATE = Path(__file__).resolve().parents[1] / "qwen3_vl_reranker.jinja"


def wait_healthy(server: subprocess.Popen, url: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"vllm serve exited with {server.returncode}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit("vllm serve did not become healthy")


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

    cmd = [
        str(Path(sys.executable).parent / "vllm"), "serve", model,
        "--runner", "pooling",
        "--hf_overrides", json.dumps(HF_OVERRIDES),
        "--chat-template", str(TEMPLATE),
        "--host", "127.0.0.1", "--port", str(args.port),
        "--max-model-len", "4096",
        "--limit-mm-per-prompt", json.dumps({"image": 4, "video": 1}),
    ]  # fmt: skip
    print("$", shlex.join(cmd), flush=True)
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(cmd)
    try:
        wait_healthy(server, url)
        with tempfile.TemporaryDirectory() as tmp:
            clip = video_url(Path(tmp) / "clip.mp4")
        red_car = image_url(picture(120, 180, (220, 20, 20)))
        names = ["text", "image", "text + image", "video"]
        request = {
            "model": model,
            "query": "a red car",
            "documents": [
                "A red sports car parked in the street.",
                {"content": [{"type": "image_url", "image_url": {"url": red_car}}]},
                {"content": [  # one document, one score
                    {"type": "text", "text": "A tree in a park."},
                    {"type": "image_url",
                     "image_url": {"url": image_url(picture(200, 90, (20, 160, 40)))}},
                ]},
                {"content": [{"type": "video_url", "video_url": {"url": clip}}]},
            ],
        }  # fmt: skip
        r = requests.post(url + "/v1/rerank", json=request, timeout=120)
        r.raise_for_status()
        body = r.json()
        print(f"\nquery: {request['query']}")
        for rank, item in enumerate(body["results"], 1):
            print(f"{rank}. {item['relevance_score']:.4f}  {names[item['index']]}")
        print(f"usage: {body['usage']}")

        bad = dict(request, documents=[
            {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
        ])  # fmt: skip
        r = requests.post(url + "/v1/rerank", json=bad, timeout=60)
        print(f"\nundecodable image -> {r.status_code}: {r.json()['error']['message']}")
        if args.model is None:
            print("(random tiny weights: the ranking shows the pipeline works, not relevance)")
        return 0
    finally:
        server.send_signal(signal.SIGINT)  # graceful, like Ctrl-C
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
