"""Images and videos the way the official Qwen3-VL reranker sees them.

The official scorer (QwenLM/Qwen3-VL-Embedding ``src/models/qwen3_vl_reranker.py``, commit
8ce3aab) reads media with qwen-vl-utils 0.0.14 (``qwen_vl_utils/vision_process.py``) and calls
the processor with ``do_resize=False``. Stock vLLM 0.32 with transformers 5.19 departs from it;
this module closes the gaps for ``Qwen3VLForSequenceClassification`` only:

- images: smart_resize with factor 32, each side at least 32 px, into 4,096..1,843,200 px
  (reranker L16-21, L308-313; vision_process L56-81, L122-141), resampled with PIL's bicubic
  (``Image.resize`` default, L140). vLLM's fast processor would resample with torchvision and
  take the pixel bounds from the checkpoint. Here the processor gets the image already at its
  official size and runs with ``do_resize=False``, as the official code calls it (L194-203);
- videos: frames sampled at 1 fps, at least 4 and at most 64, an even count (reranker L22-23,
  L280-283; smart_nframes L144-181, frame indices L366), each frame resized with torchvision
  bicubic + antialias to 131,072..786,432 px (fetch_video L405-475). vLLM would sample 2 fps
  up to 768 frames and bound the whole clip;
- the video placeholder: transformers 4.57.3 (the official pin) replaces the whole
  ``<|vision_start|><|video_pad|><|vision_end|>`` with the per-frame
  ``<t seconds><|vision_start|>pads<|vision_end|>`` sequence; transformers >= 5.10 keeps the
  outer pair (2 tokens more per video). The 4.57.3 layout is used.

Users keep the last word: ``--mm-processor-kwargs`` (``min_pixels``/``max_pixels``/``size``
for images, ``videos_kwargs`` ``min_pixels``/``max_pixels`` per frame, ``fps``/``max_frames``/
``min_frames``) and ``--media-io-kwargs '{"video": {...}}'`` override these defaults; per
request ``mm_processor_kwargs`` (with ``--trust-request-mm-kwargs``) and ``media_io_kwargs``
do too.

Fetching media (errors that name the item, ``--allowed-media-domains`` on every redirect
hop) is ``vllm_ascend_rerank.media_connector``'s concern.

Still different from the official scorer: in ``LLM.score``, several text parts of one side are
joined with "\n" (official: nothing) and an empty document is "" (official: "NULL") by vLLM's
request parser, which no model hook reaches (send one text part per side; ``vllm serve`` is
exact: ``middleware`` fixes the body before vLLM parses it); videos are decoded with OpenCV
(official: torchcodec, decord or PyAV).
Kept from stock vLLM on purpose: an image is turned upright by its EXIF orientation (the
official code feeds it as stored) and one with transparency other than RGBA (LA, P + tRNS) is
composited on white (official: alpha dropped).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vllm_ascend_rerank.media_connector import MEDIA_CONNECTOR, register_media_connector

if TYPE_CHECKING:
    from vllm.config import VllmConfig

IMAGE_FACTOR = 32  # patch 16 x spatial merge 2
MAX_RATIO = 200
# Images (reranker L20-21): 4 to 1,800 tokens.
IMAGE_MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR  # 4,096
IMAGE_MAX_PIXELS = 1800 * IMAGE_FACTOR * IMAGE_FACTOR  # 1,843,200
# Videos (reranker L22-23; vision_process L28-34, L405-407, L450).
VIDEO_FPS = 1.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 64
FRAME_FACTOR = 2  # temporal patch
VIDEO_FRAME_MIN_PIXELS = 128 * IMAGE_FACTOR * IMAGE_FACTOR  # 131,072
VIDEO_FRAME_MAX_PIXELS = 768 * IMAGE_FACTOR * IMAGE_FACTOR  # 786,432
# A video given as a file gets qwen-vl-utils' default total budget (MODEL_SEQ_LEN 128,000).
VIDEO_TOTAL_PIXELS = 128000 * IMAGE_FACTOR * IMAGE_FACTOR * 0.9
VIDEO_LOADER = "qwen3_vl_reranker"

# The most frames one video may be sampled to: the maximum of transformers' own Qwen3-VL video
# processor (``max_frames``). Without a cap a request's ``max_frames``/``nframes`` would make
# the loader decode every frame of a long clip before anything else checks the size.
VIDEO_FRAMES_CAP = 768

_SAMPLING_KEYS = ("fps", "min_frames", "max_frames", "nframes")


def check_sampling(options: Mapping[str, Any], where: str = "media_io_kwargs.video") -> None:
    """ValueError naming the option unless the frame-sampling ``options`` are usable."""
    for key in ("min_frames", "max_frames", "nframes"):
        value = options.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}.{key} must be an integer, got {value!r}")
        if not 1 <= value <= VIDEO_FRAMES_CAP:
            raise ValueError(f"{where}.{key} must be 1 to {VIDEO_FRAMES_CAP} frames, got {value}")
    fps = options.get("fps")
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf
    ):
        raise ValueError(f"{where}.fps must be a positive number, got {fps!r}")


def most_frames(media_io_kwargs: Mapping[str, Any] | None) -> int:
    """The most frames a video is sampled to under the configured ``media_io_kwargs``
    (``nframes``, else ``max_frames``, else the official 64), an even count."""
    video = dict((media_io_kwargs or {}).get("video") or {})
    n = video.get("nframes") or video.get("max_frames") or VIDEO_MAX_FRAMES
    n = min(int(n), VIDEO_FRAMES_CAP)
    return max(FRAME_FACTOR, round(n / FRAME_FACTOR) * FRAME_FACTOR)


def check_pixels(name: str, value: Any) -> int:
    """``value`` as a pixel bound, or a 400 naming ``mm_processor_kwargs.<name>`` (a bound of
    0 would divide by zero in the resize rule)."""
    from vllm.exceptions import VLLMValidationError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise VLLMValidationError(
            f"mm_processor_kwargs.{name} must be a positive number of pixels, got {value!r}",
            parameter=f"mm_processor_kwargs.{name}",
        )
    return int(value)


# ---- the official rules ---------------------------------------------------------------------
def smart_resize(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int = IMAGE_FACTOR
) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize (vision_process L56-81): (height, width), multiples of
    ``factor``, each at least ``factor``, area in [min_pixels, max_pixels]."""
    if min(height, width) <= 0:
        raise ValueError(f"image of {width}x{height} pixels has no area")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(
            f"image of {width}x{height} pixels: aspect ratio above {MAX_RATIO} is not supported"
        )
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def num_frames_to_sample(
    total_frames: int,
    video_fps: float,
    fps: float = VIDEO_FPS,
    min_frames: int = VIDEO_MIN_FRAMES,
    max_frames: int = VIDEO_MAX_FRAMES,
    nframes: int | None = None,
) -> int:
    """qwen-vl-utils' smart_nframes (vision_process L144-181)."""
    if total_frames <= 0:
        raise ValueError("video has no frames")
    if nframes is not None:
        n = round(nframes / FRAME_FACTOR) * FRAME_FACTOR
    else:
        if video_fps <= 0:
            raise ValueError("video has no frame rate: pass media_io_kwargs video.nframes")
        lo = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
        n = min(min(max(total_frames / video_fps * fps, lo), hi), total_frames)
        n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(
            f"video has {total_frames} frame(s); sampling needs {FRAME_FACTOR} to "
            f"{total_frames} frames, got {n}"
        )
    return n


def frame_indices(total_frames: int, n: int) -> list[int]:
    """Evenly spread frame indices, as the official readers pick them (vision_process L366)."""
    import torch

    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


def frame_bounds(num_frames: int, min_pixels: int, max_pixels: float) -> tuple[int, float]:
    """Per-frame pixel bounds of a file video (vision_process L449-455)."""
    cap = max(
        min(max_pixels, VIDEO_TOTAL_PIXELS / num_frames * FRAME_FACTOR), int(min_pixels * 1.05)
    )
    return min_pixels, min(max_pixels, cap)


def resize_image(image: Any, min_pixels: int, max_pixels: int):
    """An RGB PIL image at its official size, resampled with PIL bicubic."""
    from PIL import Image

    image = _as_pil(image)
    h, w = smart_resize(image.height, image.width, min_pixels, max_pixels)
    if (w, h) == image.size:
        return image
    return image.resize((w, h), resample=Image.Resampling.BICUBIC)


def resize_frames(frames: np.ndarray, min_pixels: int, max_pixels: int) -> np.ndarray:
    """THWC uint8 frames at the official per-frame size (torchvision bicubic, antialias)."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"video has no frames (decoded array of shape {frames.shape})")
    lo, hi = frame_bounds(frames.shape[0], min_pixels, max_pixels)
    h, w = smart_resize(frames.shape[1], frames.shape[2], lo, hi)
    if (h, w) == frames.shape[1:3]:
        return frames
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    video = tvf.resize(video, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return video.permute(0, 2, 3, 1).contiguous().numpy()


def _as_pil(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = image.numpy() if hasattr(image, "numpy") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(
            f"image array of shape {array.shape} and dtype {array.dtype}: give an RGB uint8 "
            "array (HWC) or a PIL image"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


# ---- defaults, in one place --------------------------------------------------------------
def apply_defaults(vllm_config: VllmConfig) -> None:
    """Official media defaults for the reranker, under whatever the user configured.

    ``mm_processor_kwargs``: ``images_kwargs.size`` = 4,096..1,843,200 px and
    ``videos_kwargs.size`` = 131,072..786,432 px per frame; an edge the user set (``size``,
    flat or scoped) replaces the default edge, and ``min_pixels``/``max_pixels`` (flat, scoped
    or per request) apply on top, as vLLM resolves them. ``media_io_kwargs.video``: this
    module's frame sampler (1 fps, 4..64 frames) unless the user chose a ``video_backend``;
    ``fps``, ``min_frames`` and ``max_frames`` given in ``--mm-processor-kwargs`` are honoured
    here, because vLLM samples Qwen3-VL videos while loading them, before the processor runs.
    """
    mm = vllm_config.model_config.multimodal_config
    if mm is None:
        return
    kwargs = dict(mm.mm_processor_kwargs or {})
    for scope, lo, hi in (
        ("images_kwargs", IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS),
        ("videos_kwargs", VIDEO_FRAME_MIN_PIXELS, VIDEO_FRAME_MAX_PIXELS),
    ):
        scoped = dict(kwargs.get(scope) or {})
        scoped["size"] = {
            "shortest_edge": lo,
            "longest_edge": hi,
            **dict(kwargs.get("size") or {}),
            **dict(scoped.get("size") or {}),
        }
        kwargs[scope] = scoped
    mm.mm_processor_kwargs = kwargs

    media = {k: dict(v) for k, v in (mm.media_io_kwargs or {}).items()}
    video_io = media.setdefault("video", {})
    if "video_backend" not in video_io:
        video_io["video_backend"] = VIDEO_LOADER
        for key in ("fps", "min_frames", "max_frames"):
            value = kwargs["videos_kwargs"].get(key, kwargs.get(key))
            if value is not None:
                video_io.setdefault(key, value)
        check_sampling(video_io, "--media-io-kwargs video")  # at start-up, not per request
    mm.media_io_kwargs = media
    # vLLM picks its media connector from the environment (read per request).
    os.environ.setdefault("VLLM_MEDIA_CONNECTOR", MEDIA_CONNECTOR)
    register_video_loader()  # also done by the general plugin; here they are selected
    register_media_connector()


def per_frame_bounds(videos_kwargs: Mapping[str, Any]) -> tuple[int, int]:
    """(min, max) pixels of one video frame from resolved ``videos_kwargs``."""
    size = dict(videos_kwargs.get("size") or {})
    lo = videos_kwargs.get("min_pixels", size.get("shortest_edge", VIDEO_FRAME_MIN_PIXELS))
    hi = videos_kwargs.get("max_pixels", size.get("longest_edge", VIDEO_FRAME_MAX_PIXELS))
    return check_pixels("min_pixels", lo), check_pixels("max_pixels", hi)


# ---- vLLM classes: built on first use (vLLM imports are heavy) ------------------------------
def register_video_loader() -> None:
    """Register the official frame sampler as vLLM video loader ``qwen3_vl_reranker``."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoBackend

    if VIDEO_LOADER in VIDEO_LOADER_REGISTRY.name2class:
        return

    @VIDEO_LOADER_REGISTRY.register(VIDEO_LOADER)
    class RerankVideoLoader(VideoBackend):
        """Decodes like vLLM's ``opencv`` loader (any ``backend`` codec) and samples frames
        like qwen-vl-utils: ``fps`` (1), ``min_frames`` (4), ``max_frames`` (64) or a fixed
        ``nframes``, always an even count."""

        _sampling_suffix: ClassVar[str] = "+qwen3_vl_reranker"

        @classmethod
        def compute_frames_index_to_sample(cls, source, target, **kwargs) -> list[int]:
            unknown = kwargs.keys() - set(_SAMPLING_KEYS)
            if unknown:
                raise ValueError(
                    f"media_io_kwargs.video: unknown option(s) {sorted(unknown)}; "
                    f"this loader takes {list(_SAMPLING_KEYS)}"
                )
            check_sampling(kwargs)  # before decoding: a request may ask for any count
            fps = target.fps if target.fps and target.fps > 0 else VIDEO_FPS
            n = num_frames_to_sample(
                source.total_frames_num,
                source.original_fps,
                fps=fps,
                min_frames=kwargs.get("min_frames", VIDEO_MIN_FRAMES),
                max_frames=kwargs.get("max_frames", VIDEO_MAX_FRAMES),
                nframes=kwargs.get("nframes"),
            )
            return frame_indices(source.total_frames_num, n)

        @classmethod
        def load_bytes(cls, data: bytes, num_frames: int = -1, fps: float = VIDEO_FPS, **kwargs):
            # ``num_frames`` (vLLM's VideoMediaIO always passes 32) has no official meaning.
            frames, metadata = super().load_bytes(data, num_frames=-1, fps=fps, **kwargs)
            if len(frames) == 0:
                raise ValueError("video has no decodable frames")
            metadata["do_sample_frames"] = False  # sampled here, officially
            return frames, metadata


def resize_video_item(item: Any, min_pixels: int, max_pixels: int) -> Any:
    """A vLLM video item (frames, or (frames, metadata)) with its frames resized."""
    if isinstance(item, tuple):
        frames, metadata = item
        return resize_frames(frames, min_pixels, max_pixels), metadata
    return resize_frames(item, min_pixels, max_pixels)
