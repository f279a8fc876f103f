"""The official Qwen3-VL-Embedding prompt (QwenLM/Qwen3-VL-Embedding
``src/models/qwen3_vl_embedding.py``, commit 8ce3aab, ``format_model_input``).

One input is one conversation: a system turn holding the instruction, a user turn holding the
input's videos, then its images, then its texts joined with nothing, and the generation prompt.
An input with nothing in it is the text ``NULL``. The vector is read at the last token of this
prompt (the ``\\n`` after ``assistant``).

Pure Python at import (vLLM is imported only to read a video offline, ``load_video``): the
renderer, the offline helpers and the docs use it.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

DEFAULT_INSTRUCTION = "Represent the user's input."
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
EMPTY_INPUT = "NULL"
TURN_START = "<|im_start|>"
GENERATION_PROMPT = "<|im_start|>assistant\n"

# Message parts the official input can hold, by the OpenAI content-part type vLLM parses.
TEXT_PARTS = ("text", "input_text")
IMAGE_PARTS = ("image_url", "input_image", "image_pil", "image")
VIDEO_PARTS = ("video_url", "video")


def instruction_text(instruction: str | None) -> str:
    """The system turn's text: a given instruction stripped and ended with a period when its
    last character is not punctuation; nothing (or only blanks) means the default."""
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
    return instruction or DEFAULT_INSTRUCTION


def format_prompt(
    text: str | Sequence[str] | None = None,
    *,
    images: int = 0,
    videos: int = 0,
    instruction: str | None = None,
) -> str:
    """The official prompt for one input with ``images`` images and ``videos`` videos (their
    placeholders; pass the media themselves as ``multi_modal_data`` in the same order)."""
    texts = [text] if isinstance(text, str) else list(text or [])
    if not texts and not images and not videos:
        user = EMPTY_INPUT
    else:
        user = VIDEO_PLACEHOLDER * videos + IMAGE_PLACEHOLDER * images + "".join(texts)
    return (
        f"{TURN_START}system\n{instruction_text(instruction)}<|im_end|>\n"
        f"{TURN_START}user\n{user}<|im_end|>\n{GENERATION_PROMPT}"
    )


def embedding_input(
    text: str | Sequence[str] | None = None,
    *,
    images: Sequence[Any] = (),
    videos: Sequence[str | os.PathLike[str]] = (),
    instruction: str | None = None,
    video_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One offline input for ``LLM.embed``: the official prompt and the media as its
    ``multi_modal_data``.

    ``images``: PIL images or arrays, in order. ``videos``: files (a path) or URLs (http(s),
    ``data:``, ``file:``), in order, read here with the server's reader (``load_video``: the
    official sampler, 1 fps, 4..64 frames); the engine then sizes the frames by the official
    per-frame bounds, as for ``video_url``. Decoded frames are refused: the official rule
    samples from the file, so frames sampled elsewhere would give another vector.
    ``video_options`` (``fps``, ``min_frames``, ``max_frames``, ``nframes``) replace the
    official sampling, as ``media_io_kwargs.video`` does on the server; the engine's own
    ``media_io_kwargs`` never reach a video decoded here, so pass them this way.
    """
    if isinstance(videos, (str, os.PathLike)):  # one path would be read letter by letter
        raise TypeError("videos: a list of files or URLs, got a single one; use videos=[...]")
    out: dict[str, Any] = {
        "prompt": format_prompt(
            text, images=len(images), videos=len(videos), instruction=instruction
        )
    }
    data: dict[str, list[Any]] = {}
    if videos:
        data["video"] = [load_video(v, video_options) for v in videos]
    if images:
        data["image"] = list(images)
    if data:
        out["multi_modal_data"] = data
    return out


def load_video(video: str | os.PathLike[str], options: Mapping[str, Any] | None = None) -> Any:
    """A video file or URL decoded and sampled exactly as ``vllm serve`` reads a
    ``video_url``: vLLM's ``VideoMediaIO`` with the plugin's video loader (the official frame
    sampler, ``vllm_ascend_rerank.multimodal``), and for URLs the plugin's media connector.
    The result is a ``multi_modal_data`` video item (frames, their metadata, the file bytes).
    """
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(
            f"videos: give a file path or URL, got {type(video).__name__}; the official rule "
            "samples frames from the file (1 fps, 4..64 frames), which decoded frames skip"
        )
    # vLLM imports are heavy and only videos need them.
    from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, ImageMediaIO, VideoMediaIO

    from vllm_ascend_rerank import media_connector, multimodal

    options = dict(options or {})
    # Sampling options only: a video_backend here would replace the official sampler.
    unknown = options.keys() - set(multimodal._SAMPLING_KEYS)
    if unknown:
        raise ValueError(
            f"video_options: unknown {sorted(unknown)}; allowed {list(multimodal._SAMPLING_KEYS)}"
        )
    multimodal.check_sampling(options, "video_options")
    # Registered by the plugin in the engine's processes; this one may not have an engine yet.
    multimodal.register_video_loader()
    io_kwargs = {"video_backend": multimodal.VIDEO_LOADER, **options}
    source = os.fspath(video)
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme in ("http", "https", "data"):
        media_connector.register_media_connector()
        connector = MEDIA_CONNECTOR_REGISTRY.load(
            media_connector.MEDIA_CONNECTOR, media_io_kwargs={"video": io_kwargs}
        )
        return connector.fetch_video(source)  # errors name the URL
    path = Path(url2pathname(urlparse(source).path)) if scheme == "file" else Path(source)
    try:
        return VideoMediaIO(ImageMediaIO(), **io_kwargs).load_file(path)
    except Exception as exc:
        raise ValueError(f"video {str(path)!r}: {exc}") from exc


def is_formatted(prompt: str) -> bool:
    """Whether a text prompt is already a chat conversation (sent as it is, never templated
    a second time)."""
    return prompt.startswith(TURN_START)


class MessageError(ValueError):
    """A chat-style input the official prompt cannot represent; ``parameter`` names it."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _text_of(content: Any, where: str) -> str:
    """The text of a system message (a string or text parts, joined with nothing)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, Iterable) or isinstance(content, Mapping):
        raise MessageError(f"{where} must be a string or a list of text parts", where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in TEXT_PARTS:
            raise MessageError(
                f"{where}[{i}]: a system message (the instruction) holds text only, got "
                f"part type {kind!r}",
                f"{where}[{i}]",
            )
        texts.append(str(part.get("text") or ""))
    return "".join(texts)


def official_messages(
    messages: Sequence[Mapping[str, Any]], instruction: str | None = None
) -> list[dict[str, Any]]:
    """Chat-style input -> the official conversation, in OpenAI message form.

    ``instruction`` (``chat_template_kwargs.instruction``) or at most one ``system`` (or
    ``developer``) message is the instruction, not both; exactly one
    ``user`` message, the input: its parts are reordered to videos, images, texts (each kind
    keeps its own order), texts are joined with nothing, and an empty input becomes "NULL".
    Anything else (assistant turns, several inputs, tool calls) has no official meaning and
    raises ``MessageError`` naming it.
    """
    user: Any = None
    seen_system = seen_user = False
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        where = f"messages[{i}]"
        if role in ("system", "developer"):
            if seen_system:
                raise MessageError(f"{where}: only one system message (the instruction)", where)
            if instruction is not None:
                raise MessageError(
                    f"{where}: the instruction is given twice (system message and "
                    "chat_template_kwargs.instruction)",
                    where,
                )
            seen_system = True
            instruction = _text_of(message.get("content"), f"{where}.content")
        elif role == "user":
            if seen_user:
                raise MessageError(
                    f"{where}: one user message per input (send several inputs as a batch)",
                    where,
                )
            seen_user = True
            user = message.get("content")
        else:
            raise MessageError(
                f"{where}.role: an embedding input has a system and a user message only, "
                f"got {role!r}",
                f"{where}.role",
            )
    if not seen_user:
        raise MessageError("messages: no user message (the input to embed)", "messages")
    videos: list[Any] = []
    images: list[Any] = []
    texts: list[str] = []
    if isinstance(user, str):
        texts.append(user)
    elif user is not None:
        for i, part in enumerate(user):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in TEXT_PARTS:
                texts.append(str(part.get("text") or ""))
            elif kind in IMAGE_PARTS:
                images.append(part)
            elif kind in VIDEO_PARTS:
                videos.append(part)
            else:
                raise MessageError(
                    f"user content part {i}: type {kind!r} is not text, image_url or video_url",
                    f"messages.content[{i}].type",
                )
    content: list[Any] = [*videos, *images]
    if texts or content:
        if texts:
            content.append({"type": "text", "text": "".join(texts)})
    else:
        content.append({"type": "text", "text": EMPTY_INPUT})
    return [
        {"role": "system", "content": [{"type": "text", "text": instruction_text(instruction)}]},
        {"role": "user", "content": content},
    ]


# The official conversation rendered as the Qwen3-VL chat template renders it (system and
# user turns, media placeholders, the generation prompt), whatever template the checkpoint has.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '" + IMAGE_PLACEHOLDER + "' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '" + VIDEO_PLACEHOLDER + "' -}}"
    "{%- else -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{{- '" + GENERATION_PROMPT.replace("\n", "\\n") + "' -}}"
)
