"""The media settings the plugin applies (official defaults, what the user and a request may
change): pixel bounds, the video frame budget and caps, bad bounds as a 400. On the processor
info of the tiny checkpoint; no engine, no server (those in test_multimodal.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.mark.parametrize(
    ("user", "image_bounds", "frame_bounds"),
    [
        ({}, (4096, 1843200), (131072, 786432)),  # the official defaults
        ({"max_pixels": 8192}, (4096, 8192), (131072, 8192)),  # flat: both modalities
        ({"images_kwargs": {"size": {"shortest_edge": 1024}}}, (1024, 1843200), (131072, 786432)),
        ({"videos_kwargs": {"min_pixels": 65536}}, (4096, 1843200), (65536, 786432)),
    ],
)
def test_user_settings_override_official_defaults(
    checkpoints, user, image_bounds, frame_bounds
) -> None:
    """--mm-processor-kwargs edges replace the defaults; a request's min/max_pixels win."""
    from conftest import HF_OVERRIDES
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from vllm_ascend_rerank import multimodal
    from vllm_ascend_rerank.registration import register_all

    register_all()
    config = ModelConfig(
        model=str(checkpoints["tied"]),
        runner="pooling",
        hf_overrides=HF_OVERRIDES,
        mm_processor_kwargs=user,
        media_io_kwargs={"video": {"fps": 2}},
    )
    multimodal.apply_defaults(SimpleNamespace(model_config=config))
    video_io = config.multimodal_config.media_io_kwargs["video"]
    assert video_io == {"fps": 2, "video_backend": multimodal.VIDEO_LOADER}
    info = MULTIMODAL_REGISTRY.create_processor(config).info
    assert info._image_bounds({}) == image_bounds
    assert info._frame_bounds({}) == frame_bounds
    assert info._image_bounds({"max_pixels": 9000}) == (image_bounds[0], 9000)


def _info(checkpoints, media_io_kwargs: dict | None = None):
    from conftest import HF_OVERRIDES
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from vllm_ascend_rerank import multimodal
    from vllm_ascend_rerank.registration import register_all

    register_all()
    config = ModelConfig(
        model=str(checkpoints["tied"]), runner="pooling", hf_overrides=HF_OVERRIDES,
        media_io_kwargs=media_io_kwargs,
    )  # fmt: skip
    multimodal.apply_defaults(SimpleNamespace(model_config=config))
    return MULTIMODAL_REGISTRY.create_processor(config).info


def test_video_budget_follows_configured_frames(checkpoints) -> None:
    default = _info(checkpoints).get_max_video_tokens(10**6, {"video": 1})
    more = _info(checkpoints, {"video": {"max_frames": 128}}).get_max_video_tokens(
        10**6, {"video": 1}
    )
    fixed = _info(checkpoints, {"video": {"nframes": 8}}).get_max_video_tokens(10**6, {"video": 1})
    # 64 frames (32 groups) of at most 786,432 px = 768 tokens each; 128 frames fit the
    # qwen-vl-utils total budget (128,000 tokens x 0.9 over 64 groups = 1,800 tokens) cut to
    # the per-frame maximum of 768 tokens; 8 frames: 4 groups
    assert (default, more, fixed) == (32 * 768, 64 * 768, 4 * 768)


def test_frame_counts_are_capped(checkpoints) -> None:
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY

    from vllm_ascend_rerank import multimodal

    multimodal.register_video_loader()
    loader = VIDEO_LOADER_REGISTRY.load(multimodal.VIDEO_LOADER)
    source = SimpleNamespace(total_frames_num=10**6, original_fps=30.0)
    target = SimpleNamespace(fps=30.0)
    assert len(loader.compute_frames_index_to_sample(source, target, max_frames=768)) == 768
    for key, value in [("max_frames", 10**5), ("nframes", 769), ("nframes", 0), ("fps", 0),
                       ("max_frames", "64")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"media_io_kwargs.video.{key}"):
            loader.compute_frames_index_to_sample(source, target, **{key: value})
    with pytest.raises(ValueError, match="--media-io-kwargs video.max_frames"):
        _info(checkpoints, {"video": {"max_frames": 5000}})  # refused at start-up


@pytest.mark.parametrize("value", [0, -5, "big"])
def test_zero_pixel_bound_is_a_400_naming_it(checkpoints, value) -> None:
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    info = _info(checkpoints)
    for bounds in (info._image_bounds, info._frame_bounds):
        with pytest.raises(Exception) as caught:
            bounds({"max_pixels": value})
        err = create_error_response(caught.value).error
        assert err.code == 400 and "mm_processor_kwargs.max_pixels" in err.message, err
