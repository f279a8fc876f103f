"""What the general plugin registers in every vLLM process (idempotent)."""

from __future__ import annotations

import functools

MODEL_ARCH = "Qwen3VLForSequenceClassification"


@functools.cache
def register_all() -> None:
    from vllm import ModelRegistry
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from vllm_ascend_rerank.attention.backend import BACKEND_NAME

    register_backend(
        AttentionBackendEnum[BACKEND_NAME],
        "vllm_ascend_rerank.attention.backend.RerankAttentionBackend",
    )
    ModelRegistry.register_model(
        MODEL_ARCH,
        "vllm_ascend_rerank.models.qwen3_vl_reranker:Qwen3VLForSequenceClassification",
    )
    from vllm_ascend_rerank import embedding

    ModelRegistry.register_model(
        embedding.MODEL_ARCH, "vllm_ascend_rerank.models.qwen3_vl_embedding:Qwen3VLForEmbedding"
    )
    embedding.register()
    from vllm_ascend_rerank.ops import register_custom_ops

    register_custom_ops()
    from vllm_ascend_rerank.media_connector import register_media_connector
    from vllm_ascend_rerank.multimodal import register_video_loader

    register_video_loader()
    register_media_connector()
    from vllm_ascend_rerank.compat import join_client_threads_at_exit

    join_client_threads_at_exit()
