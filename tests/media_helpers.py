"""Media for the tests: synthetic pictures and videos, the content parts that carry them, and
the maintained list of bad media (test_multimodal.py sends it to its server). Also imported by
test_embedding*.py and benchmarks/parity.py.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image


def image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]  # some structure to resample
    return Image.fromarray(((base.astype(np.uint16) + ramp) // 2).astype(np.uint8))


def png_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_video(path: Path, frames: int, fps: int, h: int, w: int, seed: int = 0) -> Path:
    """A small mp4 (MPEG-4 part 2) whose content moves, written with OpenCV."""
    import cv2

    base = np.asarray(image(h, w, seed))
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(frames):
        out.write(np.roll(base, 3 * i, axis=1)[..., ::-1].copy())
    out.release()
    return path


def video_url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def img(x: Image.Image) -> dict:
    return {"type": "image_url", "image_url": {"url": png_url(x)}}


def vid(path: Path) -> dict:
    return {"type": "video_url", "video_url": {"url": video_url(path)}}


def txt(t: str) -> dict:
    return {"type": "text", "text": t}


def png_url_raw(width: int, height: int) -> str:
    """A PNG whose header declares ``width`` x ``height`` (0 is not a valid image)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
    png += chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def bad_media(media, tmp: Path) -> dict[str, tuple[dict, str]]:
    """The bad media test_multimodal.py sends its server: ``media`` is its fixture (the
    "square" picture), ``tmp`` a folder for the broken videos."""
    import cv2

    empty = tmp / "empty.mp4"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48)).release()
    one = write_video(tmp / "one.mp4", frames=1, fps=10, h=48, w=64)
    b64 = base64.b64encode
    url = {"type": "image_url", "image_url": {"url": ""}}

    def image_url(u: str) -> dict:
        return {**url, "image_url": {"url": u}}

    return {  # name -> (document, words the error message must contain)
        "malformed url": (image_url("cat.png"), "URL"),
        "not base64": (image_url("data:image/png;base64,@@@@"), "base64"),
        "undecodable": (
            image_url("data:image/png;base64," + b64(b"not an image").decode()),
            "Failed to load image",
        ),
        "zero-sized": (image_url(png_url_raw(0, 5)), "image_url"),
        "extreme aspect": (img(image(1, 300, 0)), "aspect ratio"),
        "video without frames": (vid(empty), "video_url"),
        "one-frame video": (vid(one), "frame"),
        "local file": (image_url("file:///etc/hostname"), "allowed-local-media-path"),
        "too many images": ({"content": [img(media["square"])] * 4}, "At most 3 image"),
    }
