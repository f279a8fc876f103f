"""Multimodal retrieval in two stages: Qwen3-VL-Embedding recalls, Qwen3-VL-Reranker ranks.

    python examples/retrieve_then_rerank.py [--embedding-model DIR] [--model DIR] [--top-k K]

Without model arguments it makes and uses the embedded tiny checkpoints (random weights: the
rankings show the pipeline works, not relevance). A small corpus of texts and pictures is
embedded with stock ``LLM.embed`` (the official prompt and image rules are applied by the
plugin), the query's top-k documents by cosine similarity are then scored with stock
``LLM.score``, and both rankings are printed. One engine runs at a time.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np
from multimodal_offline import image_url, picture  # the same synthetic pictures
from PIL import Image
from vllm import LLM

from vllm_ascend_rerank.embedding.prompt import embedding_input
from vllm_ascend_rerank.serving import (
    DEFAULT_EMBEDDING_MODEL_DIR,
    HF_OVERRIDES,
    add_model_arguments,
    resolve_embedding_model,
    resolve_model,
)

QUERY = "a red car parked in the street"
# What the query asks for (the embedder's instruction; documents keep the default one).
INSTRUCTION = "Retrieve images or passages that match the user's query."


CORPUS: list[tuple[str, str | Image.Image]] = [
    ("text", "A red sports car parked in the street."),
    ("text", "A green tree in a quiet park."),
    ("text", "The piano concert starts at eight."),
    ("text", "Traffic in the city centre at rush hour."),
    ("image", picture(120, 180, (220, 20, 20))),  # a red disc
    ("image", picture(200, 90, (20, 160, 40))),  # a green disc
    ("image", picture(96, 96, (30, 30, 200))),  # a blue disc
]


def describe(kind: str, item: str | Image.Image) -> str:
    return item if isinstance(item, str) else f"<image {item.width}x{item.height}>"


def close(llm: LLM) -> None:
    llm.llm_engine.engine_core.shutdown()  # free its memory before the next engine starts
    del llm
    gc.collect()


def retrieve(model: str, top_k: int) -> list[tuple[int, float]]:
    embedder = LLM(model=model, runner="pooling", max_model_len=4096)
    docs = [
        embedding_input(item) if kind == "text" else embedding_input(images=[item])
        for kind, item in CORPUS
    ]
    doc_vectors = np.array([o.outputs.embedding for o in embedder.embed(docs)])
    query = embedder.embed([embedding_input(QUERY, instruction=INSTRUCTION)])
    close(embedder)
    cosine = doc_vectors @ np.array(query[0].outputs.embedding)  # the vectors are normalised
    order = np.argsort(-cosine)[:top_k]
    return [(int(i), float(cosine[i])) for i in order]


def rerank(model: str, hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
    reranker = LLM(model=model, runner="pooling", hf_overrides=HF_OVERRIDES, max_model_len=4096)
    documents = [
        item
        if kind == "text"
        else {"content": [{"type": "image_url", "image_url": {"url": image_url(item)}}]}
        for kind, item in (CORPUS[i] for i, _ in hits)
    ]
    scores = [o.outputs.score for o in reranker.score(QUERY, documents)]
    close(reranker)
    ranked = sorted(zip((i for i, _ in hits), scores, strict=True), key=lambda p: -p[1])
    return [(i, float(s)) for i, s in ranked]


def main() -> None:
    ap = argparse.ArgumentParser()
    add_model_arguments(ap)  # --model / --model-dir: the reranker
    ap.add_argument("--embedding-model", default=None, help="use this embedder instead")
    ap.add_argument("--embedding-model-dir", default=DEFAULT_EMBEDDING_MODEL_DIR)
    ap.add_argument("--top-k", type=int, default=4)
    args = ap.parse_args()
    embedder = resolve_embedding_model(args.embedding_model, args.embedding_model_dir)
    reranker = resolve_model(args.model, args.model_dir)

    print(f"query: {QUERY}")
    hits = retrieve(embedder, args.top_k)
    print(f"retrieved (top {args.top_k} of {len(CORPUS)} by cosine):")
    for i, cosine in hits:
        print(f"  {cosine:+.4f}  {describe(*CORPUS[i])}")
    print("reranked:")
    for i, score in rerank(reranker, hits):
        print(f"  {score:.4f}  {describe(*CORPUS[i])}")
    if args.model is None or args.embedding_model is None:
        print("(random tiny weights: the rankings show the pipeline works, not relevance)")


if __name__ == "__main__":  # vLLM spawns its engine process: keep the guard
    main()
