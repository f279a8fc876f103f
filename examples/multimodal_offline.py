"""Rerank documents made of text, images and videos with stock ``LLM.score``.

    python examples/multimodal_offline.py [--model DIR]

Without ``--model`` it makes and uses the embedded tiny reranker (random weights, a real small
vision tower). Media are given as vLLM content parts (``image_url``, ``video_url``: http(s),
``data:`` or, with ``allowed_local_media_path``, ``file://`` URLs); one ``{"content": [...]}``
is one document, whatever it mixes, and gets one score. Images are sized and videos sampled
the way the official Qwen3-VL reranker does (4,096..1,843,200 px; 1 fps, at most 64 frames).
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from vllm import LLM

from vllm_ascend_rerank.serving import HF_OVERRIDES, add_model_arguments, resolve_model


def picture(h: int, w: int, color: tuple[int, int, int]) -> Image.Image:
    """A synthetic picture: a colored disc on a gradient."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full((h, w), 128)], -1).astype(np.uint8)
    img[(y - h / 2) ** 2 + (x - w / 2) ** 2 < (min(h, w) / 3) ** 2] = color
    return Image.fromarray(img)


def image_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def video_url(path: Path, seconds: int = 4, fps: int = 8) -> str:
    """A small mp4 of a moving disc, written with OpenCV, as a data URL."""
    import cv2

    frames = [
        np.roll(np.asarray(picture(96, 128, (200, 30, 30))), 6 * i, 1) for i in range(seconds * fps)
    ]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (128, 96))
    for frame in frames:
        out.write(frame[..., ::-1].copy())  # OpenCV writes BGR
    out.release()
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def main() -> None:
    ap = argparse.ArgumentParser()
    add_model_arguments(ap)
    args = ap.parse_args()
    model = resolve_model(args.model, args.model_dir)

    red_car = image_url(picture(120, 180, (220, 20, 20)))
    green_tree = image_url(picture(200, 90, (20, 160, 40)))
    with tempfile.TemporaryDirectory() as tmp:
        clip = video_url(Path(tmp) / "clip.mp4")

    llm = LLM(model=model, runner="pooling", hf_overrides=HF_OVERRIDES, max_model_len=4096)

    query = "a red car"
    documents = {
        "text": "A red sports car parked in the street.",
        "image": {"content": [{"type": "image_url", "image_url": {"url": red_car}}]},
        "text + image": {
            "content": [
                {"type": "text", "text": "A tree in a park."},
                {"type": "image_url", "image_url": {"url": green_tree}},
            ]
        },
        "video": {"content": [{"type": "video_url", "video_url": {"url": clip}}]},
    }
    print(f"query: {query}")
    outputs = llm.score(query, list(documents.values()))
    for name, out in zip(documents, outputs, strict=True):
        print(f"{out.outputs.score:.4f}  {name}")

    # The query can be an image too (or text + image, or a video).
    image_query = {"content": [{"type": "image_url", "image_url": {"url": red_car}}]}
    texts = ["A red car.", "A green tree.", "A piano."]
    print("query: <image of a red disc>")
    for text, out in zip(texts, llm.score(image_query, texts), strict=True):
        print(f"{out.outputs.score:.4f}  {text}")
    if args.model is None:
        print("(random tiny weights: the scores show the pipeline works, not relevance)")


if __name__ == "__main__":  # vLLM spawns its engine process: keep the guard
    main()
