"""Serve the reranker with stock ``vllm serve`` and rerank text, image and video documents
through ``/v1/rerank``; then show that bad media get a clear 4xx.

    python examples/multimodal_online.py [--model DIR] [--port 8000]

Without ``--model`` it makes and serves the embedded tiny reranker (random weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from multimodal_offline import image_url, picture, video_url

from vllm_ascend_rerank.serving import (
    LocalServer,
    add_model_arguments,
    reranker_serve_args,
    resolve_model,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(ap)
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()

    model = resolve_model(args.model, args.model_dir)

    serve_args = reranker_serve_args(
        ["--max-model-len", "4096", "--limit-mm-per-prompt", json.dumps({"image": 4, "video": 1})]
    )
    with LocalServer(model, serve_args, port=args.port, echo=True) as server:
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
        r = server.post("/v1/rerank", request)
        r.raise_for_status()
        body = r.json()
        print(f"\nquery: {request['query']}")
        for rank, item in enumerate(body["results"], 1):
            print(f"{rank}. {item['relevance_score']:.4f}  {names[item['index']]}")
        print(f"usage: {body['usage']}")

        bad = dict(request, documents=[
            {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
        ])  # fmt: skip
        r = server.post("/v1/rerank", bad)
        print(f"\nundecodable image -> {r.status_code}: {r.json()['error']['message']}")
        if args.model is None:
            print("(random tiny weights: the ranking shows the pipeline works, not relevance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
