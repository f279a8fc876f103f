"""``Qwen3VLForSequenceClassification``: Qwen3-VL with a one-row relevance head.

Two checkpoint forms give the same scores:

- original (``is_original_qwen3_reranker`` + ``classifier_from_token: ["no", "yes"]``):
  the head is built while loading as ``lm_head[yes] - lm_head[no]`` in fp32, so
  ``sigmoid(head . h_last) = softmax([logit_no, logit_yes])[yes]``, the official
  score. ``lm_head`` is tied to ``embed_tokens`` on 2B and separate on 8B; only the
  two rows are kept, the full vocabulary head is never materialised;
- converted (``score.weight`` of shape ``[1, hidden]``, ``num_labels: 1``), e.g.
  written by ``python -m vllm_ascend_rerank.models.convert``.

A head that would make every score 0.5 (all zeros, or a token that is not one
vocabulary entry) is a load-time error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from vllm.inputs import TokensPrompt
from vllm.logger import init_logger
from vllm.model_executor.models.adapters import as_seq_cls_model
from vllm.model_executor.models.interfaces import SupportsScoreTemplate
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
from vllm.multimodal import MULTIMODAL_REGISTRY

from vllm_ascend_rerank.models.final_norm import keep_final_norm_fp32
from vllm_ascend_rerank.models.processing import (
    RerankDummyInputsBuilder,
    RerankMultiModalProcessor,
    RerankProcessingInfo,
)

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"

_LM_HEAD = "lm_head.weight"
_EMBED = "model.language_model.embed_tokens.weight"


def classifier_tokens(hf_config: Any) -> list[str] | None:
    text = hf_config.get_text_config()
    return getattr(hf_config, "classifier_from_token", None) or getattr(
        text, "classifier_from_token", None
    )


def resolve_token_id(tokenizer: Any, token: str) -> int:
    """The vocabulary id of ``token``, which must be exactly one token."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    tid = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) != 1 or tid is None or (unk is not None and tid == unk) or ids[0] != tid:
        raise ValueError(
            f"classifier_from_token: {token!r} is not a single token of this vocabulary "
            f"(it encodes to {ids}); the score head needs one vocabulary row per token."
        )
    return int(tid)


def check_head(weight: torch.Tensor, where: str) -> None:
    if not torch.isfinite(weight).all():
        raise ValueError(f"{where}: the score head has non-finite values")
    if not weight.abs().sum() > 0:
        raise ValueError(
            f"{where}: the score head is all zeros, so every pair would score 0.5. "
            "For an original Qwen3-VL-Reranker checkpoint pass "
            '--hf_overrides \'{"architectures": ["Qwen3VLForSequenceClassification"], '
            '"classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": true}\'.'
        )


# Images and videos at the official scorer's sizes and frame counts (see ..multimodal).
@MULTIMODAL_REGISTRY.register_processor(
    RerankMultiModalProcessor, info=RerankProcessingInfo, dummy_inputs=RerankDummyInputsBuilder
)
class Qwen3VLForSequenceClassification(
    as_seq_cls_model(Qwen3VLForConditionalGeneration), SupportsScoreTemplate
):
    # Without --chat-template vLLM asks the model for the pair's prompt: give the
    # official one (same template file), so scores never depend on remembering the flag.
    supports_score_template = True

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        keep_final_norm_fp32(self.language_model)  # the head reads it unrounded

    @classmethod
    def get_score_template(cls, query: str, document: str) -> str | None:
        from vllm_ascend_rerank.prompt import render

        return render(query, document)

    @classmethod
    def post_process_tokens(cls, prompt: TokensPrompt) -> None:
        # truncate_prompt_tokens cut the prompt vLLM's way: cut it the official way instead
        # (and take the template's marks out; see ..truncation).
        from vllm_ascend_rerank.truncation import finish_prompt

        ids = finish_prompt(prompt["prompt_token_ids"], prompt.get("multi_modal_data"))
        if ids is not None:
            prompt["prompt_token_ids"] = ids

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        tokens = classifier_tokens(self.config)
        if tokens is None:
            loaded = self._load_pooling_model_weights(weights)
            check_head(self.score.weight.data, "score.weight")
            return loaded
        return self._load_original(weights, tokens)

    def _load_original(
        self, weights: Iterable[tuple[str, torch.Tensor]], tokens: list[str]
    ) -> set[str]:
        if len(tokens) != 2:
            raise ValueError(
                f"classifier_from_token must name two tokens [false, true], got {tokens!r}"
            )
        from vllm.tokenizers import get_tokenizer

        mc = self.vllm_config.model_config
        tokenizer = get_tokenizer(
            mc.tokenizer,
            revision=mc.tokenizer_revision,
            tokenizer_mode=mc.tokenizer_mode,
            trust_remote_code=mc.trust_remote_code,
        )
        ids = [resolve_token_id(tokenizer, t) for t in tokens]
        rows: dict[str, torch.Tensor] = {}

        def keep_rows(
            stream: Iterable[tuple[str, torch.Tensor]],
        ) -> Iterator[tuple[str, torch.Tensor]]:
            for name, w in stream:
                if name == _LM_HEAD:
                    rows[name] = w[ids].to(torch.float32).clone()
                    continue  # the pooling model has no lm_head to load into
                if name == _EMBED:
                    rows[name] = w[ids].to(torch.float32).clone()
                yield name, w

        loaded = self._load_pooling_model_weights(keep_rows(weights))
        if _LM_HEAD in rows:
            source = _LM_HEAD
        elif self._tied():
            source = _EMBED
        else:
            raise ValueError(
                "is_original_qwen3_reranker: the checkpoint has no lm_head.weight and "
                "tie_word_embeddings is false, so the yes/no rows cannot be found"
            )
        if source not in rows:
            raise ValueError(f"is_original_qwen3_reranker: {source} missing from checkpoint")
        false_row, true_row = rows[source]
        head = (true_row - false_row).unsqueeze(0)
        check_head(head, f"is_original_qwen3_reranker ({source} rows {tokens})")
        self.score.weight.data.copy_(head.to(self.score.weight.dtype))
        logger.info(
            "Qwen3-VL reranker head = %s[%r] - %s[%r] (%s)",
            source,
            tokens[1],
            source,
            tokens[0],
            self.score.weight.dtype,
        )
        loaded.add("score.weight")
        return loaded

    def _tied(self) -> bool:
        cfg = self.config
        return bool(
            getattr(cfg, "tie_word_embeddings", False)
            or getattr(cfg.get_text_config(), "tie_word_embeddings", False)
        )
