"""Version shims for the pinned stack (vLLM 0.32, transformers 5.16-5.19), each saying when
it can go."""

from __future__ import annotations

import functools


@functools.cache
def qwen3_vl_video_kwargs() -> dict[str, object]:
    """Extra ``videos_kwargs`` for transformers' Qwen3-VL video processor.

    transformers 5.19 warns about its per-frame pixel cap on the first video unless
    ``cap_pixels_per_frame`` is given. The plugin resizes frames itself and calls the
    processor with ``do_resize=False``, so the cap never applies: say so, when the
    argument exists. Remove once the transformers floor is >= 5.22 (argument gone).
    """
    from transformers.models.qwen3_vl import Qwen3VLVideoProcessor

    valid = getattr(Qwen3VLVideoProcessor, "valid_kwargs", None)
    if "cap_pixels_per_frame" in getattr(valid, "__annotations__", {}):
        return {"cap_pixels_per_frame": False}
    return {}
