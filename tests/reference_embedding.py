"""An independent reference for the official Qwen3-VL-Embedding vectors (test oracle).

Reimplements, without importing it, ``Qwen3VLEmbedder`` of QwenLM/Qwen3-VL-Embedding
``src/models/qwen3_vl_embedding.py`` (commit 8ce3aab). Model: transformers'
``Qwen3VLForConditionalGeneration`` (its ``.model``, the body without the LM head, as the
official ``Qwen3VLForEmbedding``), fp32. Rule by rule:

- Conversation (``format_model_input``): a system message with the instruction and a user
  message with the input's videos, then images, then texts (each a part; the template joins
  parts with nothing). A given instruction is stripped and gets a "." when its last character
  is not Unicode punctuation (category P*); none, or only blanks, means the default "Represent
  the user's input.". An input with no text, image or video is the text "NULL" (a text "" is
  a text).
- Rendering: the Qwen3-VL chat template with the generation prompt (``reference.render``).
- Media: the reranker reference's readers (``reference.expand_media``): images by
  qwen-vl-utils' rules with 4,096..1,843,200 px, videos given as files at 1 fps, up to 64
  frames (the embedder passes the same values), the transformers 4.57.3 video layout.
- Tokens: plain right truncation to 8192 (the processor's ``truncation=True``); no EOS added.
- Vector: the last hidden state (after the final norm) at the last token, L2-normalised
  (``_pooling_last``, ``F.normalize``); one input per forward, so padding never matters.
- Matryoshka (model card): the official vector's first ``d`` components, re-normalised.

Not reproduced: videos given as frame lists; the fallback to a user-only "NULL" prompt when
reading media fails (the official code logs the error and embeds that instead).
"""

from __future__ import annotations

import os
import unicodedata
from typing import Any

from reference import MAX_PIXELS, MIN_PIXELS, expand_media

DEFAULT_INSTRUCTION = "Represent the user's input."
MAX_LENGTH = 8192


def instruction_text(instruction: str | None) -> str:
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction = instruction + "."
    return instruction or DEFAULT_INSTRUCTION


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def build_messages(
    text: str | list[str] | None = None,
    image: Any = None,
    video: Any = None,
    instruction: str | None = None,
) -> list[dict]:
    """The official conversation for one input."""
    texts = [text] if isinstance(text, str) else list(text or [])
    images = _as_list(image)
    videos = _as_list(video)
    if any(not isinstance(v, (str, os.PathLike)) for v in videos):
        raise NotImplementedError("only videos given as files are reproduced")
    content: list[dict] = []
    if not texts and not images and not videos:
        content.append({"type": "text", "text": "NULL"})
    else:
        content += [{"type": "video", "video": v} for v in videos]
        content += [{"type": "image", "image": i} for i in images]
        content += [{"type": "text", "text": t} for t in texts]
    return [
        {"role": "system", "content": [{"type": "text", "text": instruction_text(instruction)}]},
        {"role": "user", "content": content},
    ]


class OfficialEmbedder:
    """Embeds inputs (dicts with text/image/video/instruction) as the official embedder."""

    def __init__(self, model_dir: str | os.PathLike, max_length: int = MAX_LENGTH) -> None:
        import torch
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        self.max_length = max_length
        lm = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        self.model = lm.model.eval()
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.tokenizer = self.processor.tokenizer
        self.image_token_id = lm.config.image_token_id
        self.video_token_id = lm.config.video_token_id

    def encode(self, item: dict) -> dict:
        import torch

        messages = build_messages(
            item.get("text"), item.get("image"), item.get("video"), item.get("instruction")
        )
        text, pixels = expand_media(self.processor, messages, MIN_PIXELS, MAX_PIXELS)
        ids = self.tokenizer(text)["input_ids"][: self.max_length]
        input_ids = torch.tensor([ids])
        # transformers 5.x needs the modality of each token for M-RoPE (4.57.3 derived it).
        mm_types = (input_ids == self.image_token_id).int() + 2 * (
            input_ids == self.video_token_id
        ).int()
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": mm_types,
            **pixels,
        }

    def embed(self, items: list[dict], dimensions: int | None = None):
        """One L2-normalised vector per input (a float32 tensor [n, d])."""
        import torch
        from torch.nn.functional import normalize

        vectors = []
        with torch.no_grad():
            for item in items:
                self.model.rope_deltas = None  # M-RoPE state cached by a previous call
                hidden = self.model(**self.encode(item)).last_hidden_state[0, -1]
                vectors.append(normalize(hidden, dim=-1))
        out = torch.stack(vectors)
        if dimensions is not None:
            out = normalize(out[:, :dimensions], dim=-1)
        return out

    def prompt(self, item: dict) -> str:
        from reference import render

        return render(
            build_messages(
                item.get("text"), item.get("image"), item.get("video"), item.get("instruction")
            )
        )
