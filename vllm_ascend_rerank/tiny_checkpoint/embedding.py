"""The tiny Qwen3-VL-Embedding checkpoint: the reranker's shape with a hidden size of 128, so
that Matryoshka sizes from the model card's smallest (64) up to 128 can be tested.

The real embedders are Qwen3-VL checkpoints (``Qwen3VLForConditionalGeneration``) plus, in
their sentence-transformers release, ``modules.json`` (Transformer, Pooling, Normalize) and
``1_Pooling/config.json`` (last-token pooling); ``sentence_transformers=True`` writes those
too, so both forms are served and tested.
"""

from __future__ import annotations

import json
import os
import pathlib

from vllm_ascend_rerank.tiny_checkpoint.reranker import make_tiny_checkpoint

EMBEDDING_HIDDEN_SIZE = 128
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {
        "idx": 2,
        "name": "2",
        "path": "2_Normalize",
        "type": "sentence_transformers.models.Normalize",
    },
]


def make_tiny_embedding_checkpoint(
    out_dir: str | os.PathLike,
    *,
    seed: int = 3,
    hidden_size: int = EMBEDDING_HIDDEN_SIZE,
    num_layers: int = 2,
    sentence_transformers: bool = False,
) -> pathlib.Path:
    """Write a tiny Qwen3-VL-Embedding checkpoint to ``out_dir`` and return its path."""
    out = make_tiny_checkpoint(
        out_dir, tied=True, seed=seed, hidden_size=hidden_size, num_layers=num_layers
    )
    if sentence_transformers:
        (out / "modules.json").write_text(json.dumps(MODULES, indent=2) + "\n")
        pooling = {"word_embedding_dimension": hidden_size, "pooling_mode": "lasttoken"}
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
        (out / "2_Normalize").mkdir(exist_ok=True)
    return out
