"""``Qwen3VLForEmbedding``: vLLM's Qwen3-VL embedding adapter, fed official-size media.

``as_embedding_model`` gives the body and the pooler vLLM would build for a Qwen3-VL
checkpoint under ``--runner pooling`` (last token, normalised, or what the checkpoint's
sentence-transformers files say); the multimodal processor is the reranker's, which resizes
images and video frames by the official rules (``vllm_ascend_rerank.multimodal``). Chosen by
``vllm_ascend_rerank.embedding.configure``.
"""

from __future__ import annotations

from typing import Any

from vllm.model_executor.models.adapters import as_embedding_model
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
from vllm.multimodal import MULTIMODAL_REGISTRY

from vllm_ascend_rerank.models.final_norm import keep_final_norm_fp32
from vllm_ascend_rerank.models.processing import (
    RerankDummyInputsBuilder,
    RerankMultiModalProcessor,
    RerankProcessingInfo,
)


@MULTIMODAL_REGISTRY.register_processor(
    RerankMultiModalProcessor, info=RerankProcessingInfo, dummy_inputs=RerankDummyInputsBuilder
)
class Qwen3VLForEmbedding(as_embedding_model(Qwen3VLForConditionalGeneration)):  # type: ignore[misc]
    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        keep_final_norm_fp32(self.language_model)  # the pooler reads it unrounded
