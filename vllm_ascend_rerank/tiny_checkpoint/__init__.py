"""Build tiny, random-weight Qwen3-VL checkpoints on the local disk.

No weights can be downloaded on the machines that build and test this project, so the
project's default models and its test fixtures are made here: `Qwen3VLForConditionalGeneration`
checkpoints with the real architecture (text decoder with interleaved M-RoPE, a real vision
tower with deepstack levels), shrunk to a few hundred thousand parameters, plus a locally
trained byte-level BPE tokenizer with Qwen's special tokens and an image/video processor.

- ``reranker``: the reranker (score head rows calibrated, see there);
- ``embedding``: the embedder (hidden size 128 for Matryoshka sizes, sentence-transformers
  files optional);
- ``tokenizer``: the shared tokenizer and chat template.

    python -m vllm_ascend_rerank.tiny_checkpoint OUT_DIR [--untied] [--seed N]
    python -m vllm_ascend_rerank.tiny_checkpoint OUT_DIR --embedding [--sentence-transformers]
"""

from __future__ import annotations

import argparse

from vllm_ascend_rerank.tiny_checkpoint.embedding import (
    EMBEDDING_HIDDEN_SIZE,
    make_tiny_embedding_checkpoint,
)
from vllm_ascend_rerank.tiny_checkpoint.reranker import (
    PREPROCESSOR_CONFIG,
    SCORE_LOGIT_STD,
    VIDEO_PREPROCESSOR_CONFIG,
    make_tiny_checkpoint,
    tiny_config,
)
from vllm_ascend_rerank.tiny_checkpoint.tokenizer import (
    BPE_VOCAB_SIZE,
    CHAT_TEMPLATE,
    NON_SPECIAL_ADDED_TOKENS,
    SPECIAL_TOKENS,
    TOKENIZER_CONFIG,
    build_tokenizer,
)

__all__ = [
    "BPE_VOCAB_SIZE",
    "CHAT_TEMPLATE",
    "EMBEDDING_HIDDEN_SIZE",
    "NON_SPECIAL_ADDED_TOKENS",
    "PREPROCESSOR_CONFIG",
    "SCORE_LOGIT_STD",
    "SPECIAL_TOKENS",
    "TOKENIZER_CONFIG",
    "VIDEO_PREPROCESSOR_CONFIG",
    "build_tokenizer",
    "main",
    "make_tiny_checkpoint",
    "make_tiny_embedding_checkpoint",
    "tiny_config",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--untied", action="store_true", help="separate lm_head (8B-like)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--hidden-size", type=int, default=None)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--embedding", action="store_true", help="the embedder, not the reranker")
    parser.add_argument(
        "--sentence-transformers",
        action="store_true",
        help="with --embedding: add the sentence-transformers files",
    )
    args = parser.parse_args(argv)
    if args.embedding:
        path = make_tiny_embedding_checkpoint(
            args.out_dir,
            seed=3 if args.seed is None else args.seed,
            hidden_size=args.hidden_size or EMBEDDING_HIDDEN_SIZE,
            num_layers=args.num_layers,
            sentence_transformers=args.sentence_transformers,
        )
    else:
        path = make_tiny_checkpoint(
            args.out_dir,
            tied=not args.untied,
            seed=args.seed or 0,
            hidden_size=args.hidden_size or 64,
            num_layers=args.num_layers,
        )
    print(path)
