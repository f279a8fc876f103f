"""Official truncation of an over-long pair, through ``truncate_prompt_tokens``.

The official scorer (``Qwen3VLReranker.tokenize``, reranker L139-164, L205-211) sets the last 5
ids aside (``<|im_end|>`` ``\\n`` ``<|im_start|>`` ``assistant`` ``\\n``), keeps every special
id of the rest and only as many ordinary ids as fit, from the front, and puts the 5 back: the
document's text tail goes first, the closing turn and every image and video stay.

vLLM (0.32 to 0.34) truncates a score prompt after tokenizing it, by keeping its first
``truncate_prompt_tokens`` ids (``-1``: the model's maximum length), which cuts the closing
turn away, and only then calls the model's ``post_process_tokens`` hook, which sees neither the
request nor the tokenizer. The hook can still restore the official shape: a prompt that starts
with the reranker's system turn but lost its closing turn was cut at its current length N, and
``ids[:N - 5] + closing`` is the official result with ``max_length = N - 5`` as long as only
text was cut (every special id, the vision placeholders included, comes before the document's
text, which is what goes first). Usage reports N tokens.

Images and videos are expanded into their vision tokens only after this step, by the
multimodal processor. The hook remembers which prompts it cut, and the reranker's processor
(``models.processing``) then cuts the expanded prompt again by the official rule, counting every
vision token, so the pair ends at N tokens as the official ``max_length = N - 5`` gives. The
processor also applies the rule, with N = the model's maximum length, to a pair whose vision
tokens alone push it past that length (the engine would otherwise reject it). A cut that would
have to remove text inside a video's frame sequence (its timestamps) is a 400.

Limits (stock vLLM offers no hook that sees the request): a cut before expansion that reaches
into the query's or the document's media placeholders is a 400 instead of keeping them; with
``truncation_side="left"`` vLLM drops the system turn itself, not the official way
(``"right"`` is the default cut above).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.config import ModelConfig
    from vllm.multimodal.inputs import PlaceholderRange

CLOSING = "<|im_end|>\n<|im_start|>assistant\n"
SYSTEM_TURN = "<|im_start|>system\n"
# A cut prompt must not end inside a placeholder (<|vision_start|> <|image_pad|> ...).
MEDIA_OPENERS = "<|vision_start|><|image_pad|><|video_pad|>"

KEEP_TAIL = 5  # the closing turn's ids, as the official scorer counts them

# Tokenizers of the reranker models configured in this process (usually one).
_TOKENIZERS: dict[tuple[str, str | None, str, bool], None] = {}

# Prompts with media the hook cut (by content, with how many are pending: the same pair may be
# in flight several times), until the multimodal processor expands them; bounded in case a
# request fails in between.
_CUT: OrderedDict[tuple[int, ...], int] = OrderedDict()
_CUT_MAX = 1024
_CUT_LOCK = threading.Lock()


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
        cut = kept + list(closing)
        if not any(t in inside_media for t in kept):
            return cut  # text only: never reaches the multimodal processor, nothing to record
        key = tuple(cut)
        with _CUT_LOCK:
            _CUT[key] = _CUT.get(key, 0) + 1
            _CUT.move_to_end(key)
            while len(_CUT) > _CUT_MAX:
                _CUT.popitem(last=False)
        return cut
    return None


def was_cut(ids: Sequence[int]) -> bool:
    """Whether ``restore_closing_turn`` cut this (unexpanded) prompt; forgets it."""
    key = tuple(ids)
    with _CUT_LOCK:
        pending = _CUT.get(key, 0)
        if pending == 0:
            return False
        if pending == 1:
            del _CUT[key]
        else:
            _CUT[key] = pending - 1
        return True


def cut_expanded(
    ids: list[int],
    placeholders: Mapping[str, Sequence[PlaceholderRange]],
    special_ids: set[int],
    limit: int,
) -> tuple[list[int], dict[str, list[PlaceholderRange]]]:
    """The official cut of an expanded prompt to ``limit`` ids, with its vision placeholders
    moved to their new offsets.

    As the official scorer does with ``max_length = limit - 5``: the closing turn is set
    aside, every special id (vision pads included) is kept, and only the first ordinary ids
    that fit (none if the special ids alone exceed the limit, as officially); then the closing
    turn goes back.
    """
    import dataclasses

    head, tail = ids[:-KEEP_TAIL], ids[-KEEP_TAIL:]
    n_special = sum(1 for t in head if t in special_ids)
    budget = limit - KEEP_TAIL - n_special
    keep = [False] * len(head)
    for i, t in enumerate(head):
        if t in special_ids:
            keep[i] = True
        elif budget > 0:
            keep[i] = True
            budget -= 1
    removed_before = [0] * (len(head) + 1)
    for i, k in enumerate(keep):
        removed_before[i + 1] = removed_before[i] + (not k)
    moved: dict[str, list[PlaceholderRange]] = {}
    for modality, ranges in placeholders.items():
        moved[modality] = []
        for r in ranges:
            if removed_before[r.offset + r.length] != removed_before[r.offset]:
                raise ValueError(
                    f"truncate_prompt_tokens={limit} would cut into a {modality}'s frame "
                    "sequence; allow more tokens"
                )
            moved[modality].append(
                dataclasses.replace(r, offset=r.offset - removed_before[r.offset])
            )
    return [t for t, k in zip(head, keep, strict=True) if k] + tail, moved


def is_reranker_prompt(ids: Sequence[int]) -> bool:
    """Whether ``ids`` has the official prompt's shape (system turn ... closing turn)."""
    for key in list(_TOKENIZERS):
        system, closing, _ = _markers(key)
        if tuple(ids[: len(system)]) == system and tuple(ids[-len(closing) :]) == closing:
            return True
    return False
