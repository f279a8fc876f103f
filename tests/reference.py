"""An independent reference for the official Qwen3-VL reranker score (test oracle).

Reimplements, without importing it, the scorer `Qwen3VLReranker` of the official repository
QwenLM/Qwen3-VL-Embedding, file `src/models/qwen3_vl_reranker.py` (commit 8ce3aab), together with
the image step it delegates to `qwen_vl_utils.process_vision_info` (QwenLM/Qwen3-VL,
`qwen-vl-utils/src/qwen_vl_utils/vision_process.py`, v0.0.14). Model: transformers'
`Qwen3VLForConditionalGeneration`, run in fp32. Rule by rule (line numbers of those files):

- Score (reranker.py L113-137): W = lm_head[vocab["yes"]] - lm_head[vocab["no"]] (a 1-row linear,
  no bias, from the *lm_head*, which is the embedding when tied); score = sigmoid(W . h), h = the
  text model's last hidden state (after the final norm) at the last position.
  Same as softmax([logit_no, logit_yes])[yes].
- One forward per pair, batch of one, no padding (L407-413).
- Messages (L321-377): system text "Judge whether ... "yes" or "no"."; one user turn whose parts
  are "<Instruct>: " + (instruction or default), then "<Query>:" + the query side, then
  "\\n<Document>:" + the document side. An empty or missing instruction means the default;
  a query text given as a tuple (instruction, text) overrides the instruction (L343-346).
- A side (format_mm_content, L225-319): its prefix, then all videos, then all images, then all
  texts, in that order whatever the order of the dict's keys; several texts are joined with
  nothing between them. A side with no text, image or video (text None, not "") becomes "NULL".
- Rendering: the checkpoint's Qwen3-VL chat template with add_generation_prompt (L168): parts
  are concatenated, an image is "<|vision_start|><|image_pad|><|vision_end|>", and the prompt
  ends with "<|im_start|>assistant\\n" (Instruct template: no <think> block).
- Images (vision_process.py L56-141, called with image_patch_size=16 from L171-176): RGBA is
  pasted on white, other modes convert("RGB"); smart_resize with factor 32 (round to multiples of
  32, each side at least 32, aspect ratio <= 200) into [min_pixels, max_pixels] =
  [4 * 32 * 32, 1800 * 32 * 32] = [4096, 1843200] (reranker.py L16-21, L308-313); then
  PIL `Image.resize` with its default filter (bicubic). The processor is then called with
  `do_resize=False` (L194-203), so the checkpoint's own pixel bounds are never used.
- Truncation (L139-164, L205-211): the last 5 ids ("<|im_end|>", "\\n", "<|im_start|>",
  "assistant", "\\n") are set aside; if the rest is longer than max_length (default 10240), every
  special id (tokenizer.all_special_ids: <|endoftext|>, <|im_start|>, <|im_end|>, the vision and
  box/quad/ref tokens, image/video pads) is kept and only the first (max_length - n_special)
  non-special ids are kept, so the tail (the document's end first) goes; then the 5 ids are put
  back. The result can therefore hold max_length + 5 ids. Media placeholders are special, so
  images are never cut.
- An empty query dict or no documents scores nothing: [] (L388-389).
- Not reproduced: if reading media fails, the official code logs the error and scores a
  user-only "NULL" prompt with no system turn instead (L177-186).
- Videos given as a file (reranker L280-283: video_kwargs = {fps: 1, max_frames: 64}, no pixel
  bounds; qwen-vl-utils fetch_video L403-480): frames are counted with smart_nframes (L144-181:
  total / video_fps * fps, clamped to [4, 64] and to the frame count, floored to an even number),
  picked at torch.linspace(0, total - 1, n).round() (L366), the whole clip is resized with
  torchvision bicubic + antialias to smart_resize(factor 32) with per-frame bounds
  [128 * 32 * 32, min(768 * 32 * 32, total_pixels / n * 2)], total_pixels = 128000 * 32 * 32
  * 0.9 (L405-407, L448-475), kept as float; metadata fps = source fps, frames_indices = the
  picks. The processor then runs with do_resize=False, do_sample_frames=False (L194-203, L528).
  Placeholder, as transformers 4.57.3 (the official pin) writes it: the whole
  "<|vision_start|><|video_pad|><|vision_end|>" becomes, per temporal group of 2 frames,
  "<{t:.1f} seconds><|vision_start|>" + pads + "<|vision_end|>", t = the mean time of the
  group's two frames (index / fps); the expanded text is tokenized as one string.
  Decoding: the official code reads with torchcodec, decord or torchvision (PyAV); none is
  installed here, so frames are decoded with OpenCV (the decoder vLLM uses). Frame lists
  (official: per-frame fetch_image, then down-sampled to 64) are not reproduced.

Departure forced by transformers 5.x: its Qwen3-VL model needs `mm_token_type_ids` for M-RoPE;
it is recomputed from the (truncated) ids (image pad -> 1, video pad -> 2), which gives the
positions transformers 4.57.3 derived from the ids themselves.
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import Any

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
MAX_LENGTH = 10240
IMAGE_FACTOR = 32  # patch 16 x spatial merge 2
MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR  # 4,096
MAX_PIXELS = 1800 * IMAGE_FACTOR * IMAGE_FACTOR  # 1,843,200
MAX_RATIO = 200
KEEP_TAIL = 5  # "<|im_end|>\n<|im_start|>assistant\n"

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
VIDEO_FPS = 1.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 64
FRAME_FACTOR = 2
VIDEO_MIN_PIXELS = 128 * IMAGE_FACTOR * IMAGE_FACTOR  # 131,072
VIDEO_MAX_PIXELS = 768 * IMAGE_FACTOR * IMAGE_FACTOR  # 786,432
VIDEO_TOTAL_PIXELS = 128000 * IMAGE_FACTOR * IMAGE_FACTOR * 0.9


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def side_parts(prefix: str, side: dict) -> list[dict]:
    """Message parts for one side: prefix, videos, images, texts; 'NULL' when empty."""
    text = side.get("text")
    texts = [text] if isinstance(text, str) else list(text or [])  # official: str or sequence
    images = _as_list(side.get("image"))
    videos = _as_list(side.get("video"))  # file paths; official: str = one video
    if any(not isinstance(v, (str, os.PathLike)) for v in videos):
        raise NotImplementedError("only videos given as files are reproduced")
    parts: list[dict] = [{"type": "text", "text": prefix}]
    if not texts and not images and not videos:
        return parts + [{"type": "text", "text": "NULL"}]
    parts += [{"type": "video", "video": v} for v in videos]
    parts += [{"type": "image", "image": img} for img in images]
    parts += [{"type": "text", "text": t} for t in texts]
    return parts


def build_messages(
    query: dict,
    document: dict,
    instruction: str | None = None,
    default_instruction: str = DEFAULT_INSTRUCTION,
) -> list[dict]:
    """The official chat messages for one (query, document) pair."""
    query = dict(query)
    if isinstance(query.get("text"), tuple):  # official: (instruction, text) tuple
        instruction, query["text"] = query["text"]
    user = [{"type": "text", "text": "<Instruct>: " + (instruction or default_instruction)}]
    user += side_parts("<Query>:", query)
    user += side_parts("\n<Document>:", document)
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": user},
    ]


def render(messages: list[dict]) -> str:
    """What the Qwen3-VL chat template renders for these messages, with a generation prompt."""
    out = []
    for message in messages:
        placeholder = {"image": IMAGE_PLACEHOLDER, "video": VIDEO_PLACEHOLDER}
        body = "".join(
            placeholder[part["type"]] if part["type"] in placeholder else part["text"]
            for part in message["content"]
        )
        out.append(f"<|im_start|>{message['role']}\n{body}<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n"


def format_text_prompt(
    query_text: str | None, doc_text: str | None, instruction: str | None = None
) -> str:
    """The exact official prompt string for a text-only pair (None -> "NULL")."""
    return render(build_messages({"text": query_text}, {"text": doc_text}, instruction))


def smart_resize(
    height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize with factor 32: (height, width), multiples of 32."""
    f = IMAGE_FACTOR
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio above {MAX_RATIO}")
    h = max(f, round(height / f) * f)
    w = max(f, round(width / f) * f)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / f) * f, math.floor(width / beta / f) * f
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return h, w


def load_image(image: Any, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    """qwen-vl-utils' fetch_image for PIL images, paths, file:// and data: URLs (no http)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, str) and image.startswith("data:image") and "base64," in image:
        img = Image.open(io.BytesIO(base64.b64decode(image.split("base64,", 1)[1])))
    elif isinstance(image, (str, os.PathLike)):
        path = str(image)
        if path.startswith(("http://", "https://")):
            raise NotImplementedError("no network in tests: pass a PIL image or a path")
        img = Image.open(path.removeprefix("file://"))
    else:
        raise TypeError(f"unrecognized image: {type(image)}")
    if img.mode == "RGBA":
        rgb = Image.new("RGB", img.size, (255, 255, 255))
        rgb.paste(img, mask=img.split()[3])
    else:
        rgb = img.convert("RGB")
    h, w = smart_resize(rgb.height, rgb.width, min_pixels, max_pixels)
    return rgb.resize((w, h), resample=Image.Resampling.BICUBIC)


def smart_nframes(
    total_frames: int,
    video_fps: float,
    fps: float = VIDEO_FPS,
    min_frames: int = VIDEO_MIN_FRAMES,
    max_frames: int = VIDEO_MAX_FRAMES,
) -> int:
    """qwen-vl-utils' smart_nframes with the reranker's fps and max_frames."""
    lo = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
    hi = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
    n = min(min(max(total_frames / video_fps * fps, lo), hi), total_frames)
    n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(f"nframes should be in [{FRAME_FACTOR}, {total_frames}], got {n}")
    return n


def load_video(path: str | os.PathLike):
    """(frames float TCHW at the official size, metadata) for a video file."""
    import cv2
    import numpy as np
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    cap = cv2.VideoCapture(str(path).removeprefix("file://"))
    video_fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    total = len(frames)
    n = smart_nframes(total, video_fps)
    idx = torch.linspace(0, total - 1, n).round().long()
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[idx]
    _, _, height, width = video.shape
    max_pixels = max(
        min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / n * FRAME_FACTOR), int(VIDEO_MIN_PIXELS * 1.05)
    )
    h, w = smart_resize(height, width, VIDEO_MIN_PIXELS, max_pixels)
    video = tvf.resize(video, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    metadata = {"fps": video_fps, "frames_indices": idx.tolist(), "total_num_frames": total}
    return video.float(), metadata


def video_placeholder(grid_thw, metadata: dict, frame_seqlen: int) -> str:
    """transformers 4.57.3's replacement for one whole VIDEO_PLACEHOLDER."""
    indices = list(metadata["frames_indices"])
    if len(indices) % FRAME_FACTOR:
        indices += [indices[-1]] * (FRAME_FACTOR - len(indices) % FRAME_FACTOR)
    times = [i / metadata["fps"] for i in indices]
    stamps = [(times[i] + times[i + 1]) / 2 for i in range(0, len(times), FRAME_FACTOR)]
    pads = "<|vision_start|>" + "<|video_pad|>" * frame_seqlen + "<|vision_end|>"
    return "".join(f"<{stamps[t]:.1f} seconds>" + pads for t in range(int(grid_thw[0])))


def expand_media(
    processor: Any, messages: list[dict], min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[str, dict]:
    """The rendered prompt of ``messages`` with each media placeholder expanded as the official
    processor does (one pad per merged patch; the 4.57.3 video layout), and the pixel inputs.
    Images and videos are read by the official rules (``load_image``, ``load_video``)."""
    text = render(messages)
    parts = [part for m in messages for part in m["content"]]
    images = [load_image(p["image"], min_pixels, max_pixels) for p in parts if p["type"] == "image"]
    videos = [load_video(p["video"]) for p in parts if p["type"] == "video"]
    merge = processor.image_processor.merge_size**2
    pixels = {}
    if images:
        out = processor.image_processor(images=images, do_resize=False, return_tensors="pt")
        pixels.update(pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"])
        for grid in out["image_grid_thw"]:
            pads = "<|vision_start|>" + "<|placeholder|>" * (int(grid.prod()) // merge)
            text = text.replace(IMAGE_PLACEHOLDER, pads + "<|vision_end|>", 1)
        text = text.replace("<|placeholder|>", "<|image_pad|>")
    if videos:
        out = processor.video_processor(
            videos=[v for v, _ in videos],
            video_metadata=[m for _, m in videos],
            do_resize=False,
            do_sample_frames=False,
            return_tensors="pt",
        )
        grids = out["video_grid_thw"]
        pixels.update(pixel_values_videos=out["pixel_values_videos"], video_grid_thw=grids)
        for grid, (_, metadata) in zip(grids, videos, strict=True):
            seqlen = int(grid[1:].prod()) // merge
            text = text.replace(VIDEO_PLACEHOLDER, video_placeholder(grid, metadata, seqlen), 1)
    return text, pixels


def truncate(ids: list[int], max_length: int, special_ids: set[int]) -> list[int]:
    """Official truncate_tokens_optimized applied to ids[:-5], then the 5 tail ids back."""
    head, tail = ids[:-KEEP_TAIL], ids[-KEEP_TAIL:]
    if len(head) > max_length:
        budget = max_length - sum(1 for t in head if t in special_ids)
        kept, n = [], 0
        for t in head:
            if t in special_ids:
                kept.append(t)
            elif n < budget:
                kept.append(t)
                n += 1
        head = kept
    return head + tail


class OfficialReranker:
    """Scores (query, documents) the way the official Qwen3VLReranker does, in fp32."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        max_length: int = MAX_LENGTH,
        instruction: str = DEFAULT_INSTRUCTION,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        import torch
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        self.max_length = max_length
        self.instruction = instruction
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        lm = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.model = lm.model
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.tokenizer = self.processor.tokenizer
        vocab = self.tokenizer.get_vocab()
        self.yes_id, self.no_id = vocab["yes"], vocab["no"]
        head = lm.get_output_embeddings().weight.detach()
        self.score_weight = (head[self.yes_id] - head[self.no_id]).clone()
        self.special_ids = set(self.tokenizer.all_special_ids)
        self.image_token_id = lm.config.image_token_id
        self.video_token_id = lm.config.video_token_id

    def prompt(self, query: dict, document: dict, instruction: str | None = None) -> str:
        return render(build_messages(query, document, instruction, self.instruction))

    def encode(self, query: dict, document: dict, instruction: str | None = None) -> dict:
        """Model inputs for one pair (ids truncated the official way)."""
        import torch

        messages = build_messages(query, document, instruction, self.instruction)
        text, pixels = expand_media(self.processor, messages, self.min_pixels, self.max_pixels)
        ids = truncate(self.tokenizer(text)["input_ids"], self.max_length, self.special_ids)
        input_ids = torch.tensor([ids])
        mm_types = (input_ids == self.image_token_id).int() + 2 * (
            input_ids == self.video_token_id
        ).int()
        out = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": mm_types,
        }
        out.update(pixels)
        return out

    def score(
        self, query: dict, documents: list[dict], instruction: str | None = None
    ) -> list[float]:
        """One score per document, each from its own forward pass (as the official loop)."""
        import torch

        if not query or not documents:  # official process(): nothing to score
            return []
        scores = []
        with torch.no_grad():
            for document in documents:
                self.model.rope_deltas = None  # cached M-RoPE state from a previous call
                hidden = self.model(**self.encode(query, document, instruction)).last_hidden_state
                # in the head's dtype (a bf16 model read through an fp32 head: exactly)
                logit = hidden[0, -1].to(self.score_weight.dtype) @ self.score_weight
                scores.append(torch.sigmoid(logit).item())
        return scores
