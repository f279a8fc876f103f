"""The reranker's multimodal processor: vLLM's Qwen3-VL one, fed official-size media.

Images and video frames are resized by the rules in ``vllm_ascend_rerank.multimodal``
before the HF processor sees them, and the HF processor runs with ``do_resize=False`` (as the
official scorer calls it), so nothing is resampled twice. Token counts that vLLM uses to size
its encoder budget follow the same rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from transformers.models.qwen3_vl import Qwen3VLVideoProcessor
from vllm.inputs import MultiModalInput
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal.parse import ImageSize, MultiModalDataItems
from vllm.multimodal.processing.processor import HFMultiModalInputs

from vllm_ascend_rerank import truncation
from vllm_ascend_rerank.compat import qwen3_vl_video_kwargs
from vllm_ascend_rerank.multimodal import (
    FRAME_FACTOR,
    IMAGE_FACTOR,
    check_pixels,
    frame_bounds,
    most_frames,
    per_frame_bounds,
    resize_image,
    resize_video_item,
    smart_resize,
)

__all__ = ["RerankDummyInputsBuilder", "RerankMultiModalProcessor", "RerankProcessingInfo"]

RerankDummyInputsBuilder = Qwen3VLDummyInputsBuilder


class RerankProcessingInfo(Qwen3VLProcessingInfo):
    """Token counts under the official resize rules."""

    def _image_bounds(self, mm_kwargs: Mapping[str, object]) -> tuple[int, int]:
        merged = self._merge_and_resolve_mm_processor_kwargs(mm_kwargs)
        size = self._get_vision_size(
            merged.get("images_kwargs", {}), default_size=self.get_image_processor().size
        )
        return (
            check_pixels("min_pixels", size["shortest_edge"]),
            check_pixels("max_pixels", size["longest_edge"]),
        )

    def _frame_bounds(self, mm_kwargs: Mapping[str, object]) -> tuple[int, int]:
        merged = self._merge_and_resolve_mm_processor_kwargs(mm_kwargs)
        return per_frame_bounds(merged.get("videos_kwargs", {}))

    def _get_vision_info(
        self,
        *,
        image_width: int,
        image_height: int,
        num_frames: int = 2,
        do_resize: bool = True,
        image_processor: Any,
        mm_kwargs: Mapping[str, object],
        modality: str | None = None,
    ) -> tuple[ImageSize, int]:
        if modality is None:
            is_video = isinstance(image_processor, Qwen3VLVideoProcessor)
            modality = "video" if is_video else "image"
        if modality == "video":
            lo, hi = frame_bounds(num_frames, *self._frame_bounds(mm_kwargs))
        else:
            lo, hi = self._image_bounds(mm_kwargs)
        h, w = (
            smart_resize(image_height, image_width, lo, hi)
            if do_resize
            else (
                image_height,
                image_width,
            )
        )
        groups = max(-(-num_frames // FRAME_FACTOR), 1)
        tokens = groups * (h // IMAGE_FACTOR) * (w // IMAGE_FACTOR)
        return ImageSize(width=w, height=h), tokens

    def get_max_video_tokens(self, seq_len: int, mm_counts: Mapping[str, int]) -> int:
        # As many frames as the configured sampling gives (--media-io-kwargs max_frames).
        mm = self.ctx.model_config.multimodal_config
        frames = most_frames(mm.media_io_kwargs if mm is not None else None)
        _, hi = frame_bounds(frames, *self._frame_bounds({}))
        tokens = (frames // FRAME_FACTOR) * int(hi // (IMAGE_FACTOR * IMAGE_FACTOR))
        return max(1, min(tokens, seq_len))


class RerankMultiModalProcessor(Qwen3VLMultiModalProcessor):
    """Official-size media into vLLM's Qwen3-VL processor; a video placeholder is replaced
    whole (``<|vision_start|><|video_pad|><|vision_end|>`` -> per-frame sequence), as the
    official pin transformers 4.57.3 does."""

    @staticmethod
    def _expands_only_video_token(hf_processor: Any) -> bool:
        return False

    def apply(self, inputs: Any, timing_ctx: Any) -> MultiModalInput:
        # Official truncation counts vision tokens, which exist only from here on; a prompt
        # with a limit carries it (truncation.limit_mark).
        prompt, limit = truncation.take_limit(inputs.prompt)
        what, parameter = f"truncate_prompt_tokens={limit}", "truncate_prompt_tokens"
        if limit is not None:
            inputs = dataclasses.replace(inputs, prompt=prompt)
        out = super().apply(inputs, timing_ctx)
        ids = out["prompt_token_ids"]
        max_len = self.info.ctx.model_config.max_model_len
        if limit is None and len(ids) > max_len and truncation.is_reranker_prompt(ids):
            limit, what, parameter = max_len, f"--max-model-len {max_len}", "max_model_len"
        if limit is None or len(ids) <= limit:
            return out
        markers = truncation.for_ids(ids)
        if markers is None:
            return out
        ids, placeholders = truncation.cut_expanded(
            ids, out["mm_placeholders"], markers.special, limit
        )
        truncation.check_query_kept(ids, what, markers, parameter)
        out["prompt_token_ids"], out["mm_placeholders"] = ids, placeholders
        return out

    def _get_hf_mm_inputs(
        self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]
    ) -> HFMultiModalInputs:
        hf_data, hf_kwargs, passthrough = super()._get_hf_mm_inputs(mm_items, hf_kwargs)
        hf_data, hf_kwargs = dict(hf_data), dict(hf_kwargs)
        if hf_data.get("images"):
            lo, hi = self.info._image_bounds(hf_kwargs)
            hf_data["images"] = [resize_image(img, lo, hi) for img in hf_data["images"]]
            hf_kwargs["images_kwargs"] = _no_resize(hf_kwargs.get("images_kwargs"))
        if hf_data.get("videos"):
            lo, hi = self.info._frame_bounds(hf_kwargs)
            hf_data["videos"] = [resize_video_item(v, lo, hi) for v in hf_data["videos"]]
            hf_kwargs["videos_kwargs"] = {
                **_no_resize(hf_kwargs.get("videos_kwargs")),
                **qwen3_vl_video_kwargs(),
            }
        return HFMultiModalInputs(hf_data, hf_kwargs, passthrough)


def _no_resize(scoped: object) -> dict[str, object]:
    return {**dict(scoped or {}), "do_resize": False}  # type: ignore[call-overload]
