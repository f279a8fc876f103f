"""Official truncation of an over-long pair, through ``truncate_prompt_tokens``.

The official scorer (``Qwen3VLReranker.tokenize``, reranker L139-164, L205-211) sets the last 5
ids aside (``<|im_end|>`` ``\\n`` ``<|im_start|>`` ``assistant`` ``\\n``), keeps every special
id of the rest and only as many ordinary ids as fit, from the front, and puts the 5 back: the
document's text tail goes first, the closing turn and every image and video stay.

vLLM 0.32 truncates a score prompt while tokenizing it, by keeping its first
``truncate_prompt_tokens`` ids (``-1``: the model's maximum length), which cuts the closing
turn away, and only then calls the model's ``post_process_tokens`` hook, which sees neither the
request nor the tokenizer. The hook can still restore the official shape: a prompt that starts
with the reranker's system turn but lost its closing turn was cut at its current length N, and
``ids[:N - 5] + closing`` is the official result with ``max_length = N - 5`` as long as only
text was cut (every special id, the vision placeholders included, comes before the document's
text, which is what goes first). Usage reports N tokens.

Limits (stock vLLM offers no hook that sees the request): images and videos are expanded into
their vision tokens after this step, so N counts a placeholder as its 3 ids (the official
``max_length`` counts the expanded vision tokens); a cut that would reach into the document's
images or videos is a 400 instead of keeping them; with ``truncation_side`` set, vLLM slices
the whole prompt itself, not the official way.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.config import ModelConfig

CLOSING = "<|im_end|>\n<|im_start|>assistant\n"
SYSTEM_TURN = "<|im_start|>system\n"
# A cut prompt must not end inside a placeholder (<|vision_start|> <|image_pad|> ...).
MEDIA_OPENERS = "<|vision_start|><|image_pad|><|video_pad|>"

# Tokenizers of the reranker models configured in this process (usually one).
_TOKENIZERS: dict[tuple[str, str | None, str, bool], None] = {}


def register(model_config: ModelConfig) -> None:
    """Remember the model's tokenizer; it is loaded only if a prompt needs truncating."""
    key = (
        str(model_config.tokenizer),
        model_config.tokenizer_revision,
        str(model_config.tokenizer_mode),
        bool(model_config.trust_remote_code),
    )
    _TOKENIZERS[key] = None


@functools.cache
def _markers(key: tuple[str, str | None, str, bool]) -> tuple[tuple[int, ...], ...]:
    """(system turn ids, closing turn ids, ids that must not end a cut prompt)."""
    from vllm.tokenizers import get_tokenizer

    name, revision, mode, trust = key
    tok: Any = get_tokenizer(name, revision=revision, tokenizer_mode=mode, trust_remote_code=trust)
    encode = functools.partial(tok.encode, add_special_tokens=False)
    inside_media = encode(MEDIA_OPENERS)
    return tuple(encode(SYSTEM_TURN)), tuple(encode(CLOSING)), tuple(inside_media)


def restore_closing_turn(ids: list[int]) -> list[int] | None:
    """``ids`` cut the official way, if vLLM cut its closing turn away; else None."""
    for key in list(_TOKENIZERS):
        system, closing, inside_media = _markers(key)
        n = len(closing)
        if len(ids) <= len(system) + n or tuple(ids[: len(system)]) != system:
            continue
        if tuple(ids[-n:]) == closing:
            return None
        kept = ids[:-n]
        if kept[-1] in inside_media:
            raise ValueError(
                f"truncate_prompt_tokens={len(ids)} would cut into an image or video; the "
                "official truncation keeps every vision token: allow more tokens"
            )
        return kept + list(closing)
    return None
