"""Qwen3-VL-Embedding served at the official embedder's fidelity.

A Qwen3-VL checkpoint served with ``--runner pooling`` (or one carrying sentence-transformers
files, which vLLM serves as a pooling model by itself) and no classification overrides is the
embedder: vLLM would wrap ``Qwen3VLForConditionalGeneration`` with ``as_embedding_model``;
``configure`` (called by the platform's config hook) makes it choose, instead:

- the architecture ``Qwen3VLForEmbedding`` (``models.qwen3_vl_embedding``): the same body
  and pooler, with the reranker's multimodal processor, which feeds official-size media
  (``multimodal``: images 4,096..1,843,200 px with PIL bicubic, videos at 1 fps, 4..64
  frames, the transformers 4.57.3 video layout), the defaults applied as for the reranker;
- the tokenizer mode ``qwen3_vl_embedding``: vLLM's HF tokenizer with ``EmbeddingRenderer``,
  which formats every input as the official prompt (``prompt``);
- Matryoshka output sizes 64 up to the hidden size (``dimensions``), unless the checkpoint
  declares its own.

Pooling follows vLLM's resolution: the sentence-transformers files when the checkpoint has them
(``modules.json``, ``1_Pooling/config.json``, ``2_Normalize``), else the model's default, the
last token, L2-normalised: the official vector. Generation (``--runner generate``) never
reaches this.

Turned off with ``VLLM_ASCEND_RERANK_QWEN3_VL_EMBEDDING=off`` (stock vLLM behaviour for a
different Qwen3-VL-based embedder); ``--tokenizer-mode hf`` keeps the media rules and MRL but
turns the official prompt formatting off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm_ascend_rerank import envs

if TYPE_CHECKING:
    from vllm.config import VllmConfig

SOURCE_ARCH = "Qwen3VLForConditionalGeneration"
MODEL_ARCH = "Qwen3VLForEmbedding"
TOKENIZER_MODE = "qwen3_vl_embedding"
MIN_DIMENSIONS = 64  # the model card's smallest Matryoshka size


class DimensionRange(list):
    """Matryoshka sizes ``lo..hi`` for vLLM's ``matryoshka_dimensions`` check; shown as the
    range in its error message instead of 2,000 numbers."""

    def __str__(self) -> str:
        return f"{self[0]} to {self[-1]} (any integer in that range)" if self else "[]"

    __repr__ = __str__


def register() -> None:
    """The tokenizer mode and its renderer (the model class is registered with the others)."""
    from vllm.renderers.registry import RENDERER_REGISTRY
    from vllm.tokenizers.registry import TokenizerRegistry

    if TOKENIZER_MODE not in TokenizerRegistry.tokenizers:
        TokenizerRegistry.register(TOKENIZER_MODE, "vllm.tokenizers.hf", "CachedHfTokenizer")
    if TOKENIZER_MODE not in RENDERER_REGISTRY.renderers:
        RENDERER_REGISTRY.register(
            TOKENIZER_MODE, "vllm_ascend_rerank.embedding.renderer", "EmbeddingRenderer"
        )


def is_embedder(vllm_config: VllmConfig) -> bool:
    """Whether this config serves a Qwen3-VL checkpoint as the official embedder."""
    model = vllm_config.model_config
    if model is None or envs.VLLM_ASCEND_RERANK_QWEN3_VL_EMBEDDING == "off":
        return False
    archs = list(getattr(model.hf_config, "architectures", None) or [])
    if archs == [MODEL_ARCH]:
        return True
    return (
        archs == [SOURCE_ARCH] and model.runner_type == "pooling" and model.convert_type == "embed"
    )


def configure(vllm_config: VllmConfig) -> None:
    """Make vLLM choose the embedder's classes (module docstring); idempotent."""
    if not is_embedder(vllm_config):
        return
    from vllm_ascend_rerank import multimodal

    model = vllm_config.model_config
    hf_config = model.hf_config
    # vLLM resolves the model class (and so the multimodal processor) from these, in every
    # process; our class is a pooling model, so as_embedding_model leaves it as it is.
    hf_config.architectures = [MODEL_ARCH]
    if model.tokenizer_mode in ("auto", TOKENIZER_MODE):
        register()
        model.tokenizer_mode = TOKENIZER_MODE
    if not getattr(hf_config, "matryoshka_dimensions", None) and not getattr(
        hf_config, "is_matryoshka", False
    ):
        hidden = model.get_hidden_size()
        hf_config.matryoshka_dimensions = DimensionRange(range(MIN_DIMENSIONS, hidden + 1))
    multimodal.apply_defaults(vllm_config)
