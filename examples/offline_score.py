"""Offline scoring with stock ``LLM.score`` through the plugin.

    python examples/offline_score.py [--model DIR]

Without ``--model`` it makes and uses the embedded tiny reranker (random weights).
"""

from __future__ import annotations

import argparse

from vllm import LLM

from vllm_ascend_rerank.serving import HF_OVERRIDES, add_model_arguments, resolve_model


def main() -> None:
    ap = argparse.ArgumentParser()
    add_model_arguments(ap)
    args = ap.parse_args()
    model = resolve_model(args.model, args.model_dir)

    llm = LLM(model=model, runner="pooling", hf_overrides=HF_OVERRIDES, max_model_len=4096)
    query = "What do cats eat?"
    documents = [
        "Cats are carnivores and eat mostly meat and fish.",
        "The stock market closed higher on Friday.",
    ]
    for doc, out in zip(documents, llm.score(query, documents), strict=True):
        print(f"{out.outputs.score:.4f}  {doc}")


if __name__ == "__main__":  # vLLM spawns its engine process: keep the guard
    main()
