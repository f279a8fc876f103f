"""The main job end to end: make the embedded tiny reranker, serve it with stock
``vllm serve``, send a real ``/v1/rerank`` request, print the ranked answer.

    python examples/serve_and_rerank.py [--model-dir DIR] [--port 8000]

On an Ascend host the same command serves on the NPU; pass ``--model`` to serve a real
checkpoint such as Qwen/Qwen3-VL-Reranker-2B instead of the tiny random one.
"""

from __future__ import annotations

import argparse
import sys
import time

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
    if args.model is None:
        print(f"embedded default model (tiny, random weights): {model}")

    t0 = time.time()
    serve_args = reranker_serve_args(["--max-model-len", "4096"])
    with LocalServer(model, serve_args, port=args.port, echo=True) as server:
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
        r = server.post("/v1/rerank", request)
        r.raise_for_status()
        body = r.json()
        print(f"\nquery: {request['query']}")
        for rank, item in enumerate(body["results"], 1):
            print(f"{rank}. {item['relevance_score']:.4f}  {item['document']['text']}")
        print(f"usage: {body['usage']}")
        if args.model is None:
            print("(random tiny weights: the ranking shows the pipeline works, not relevance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
