"""Official truncation of an over-long pair, through ``truncate_prompt_tokens``.

The official scorer (``Qwen3VLReranker.tokenize``, reranker L139-164, L205-211) sets the last 5
ids aside (``<|im_end|>`` ``\\n`` ``<|im_start|>`` ``assistant`` ``\\n``), keeps every special
id of the rest and only as many ordinary ids as fit, from the front, and puts the 5 back: the
document's text tail goes first, the closing turn and every image and video stay.

vLLM (0.32 to 0.34) truncates a score prompt while tokenizing it, by keeping its first
``truncate_prompt_tokens`` ids (``-1``: the model's maximum length), which cuts the closing
turn away (and any image placeholder after the cut), and only then calls the model's
``post_process_tokens`` hook, which sees the cut ids and the pair's media but neither the
request nor the limit. Everything the later steps need is carried in the prompt itself, so
nothing outlives a request:

- cut or not: a prompt rendered by the reranker template always ends with the official
  closing turn, so one that starts with the system turn and lacks it was cut, at its current
  length N. A pre-formatted prompt (the query starts with the system turn) that does not end
  with the official closing is marked by the template (``USER_MARK`` in place of its first
  ``<|im_start|>``) and is scored exactly as sent: there is no official rule for it;
- the hook rebuilds the official shape of a cut prompt: the media placeholders the cut
  removed (the document's, videos then images) and the closing turn go back, and the
  ordinary ids that no longer fit go, by the official rule with ``max_length = N - 5``;
- images and videos are expanded into their vision tokens only later, by the multimodal
  processor. A prompt with media that has a limit ends with the limit mark
  (``<|repo_name|>N<|repo_name|>``); the reranker's processor (``models.processing``) takes it
  out and cuts the expanded prompt to N by the same rule, counting every vision token, as
  the official ``max_length = N - 5`` does. It also applies the rule, with N = the model's
  maximum length, to a pair whose vision tokens alone push it past that length;
- when vLLM's cut removed nothing, no hook learns the limit from vLLM: ``vllm serve``'s
  middleware writes it at the end of each document (``limit_mark``), the template moves it
  before the closing turn, and the model takes it out (text only) or hands it on (media).

A limit the official rule cannot meet sensibly is a 400 that names ``truncate_prompt_tokens``:
one that would cut into the system turn, the instruction or ``<Query>:`` (the official rule
would keep its special tokens only), one smaller than the vision and special tokens it must
keep, one that cuts the query's own images or videos before expansion, or text inside a
video's frame sequence (its timestamps).

Limits (stock vLLM offers no hook that sees the limit when nothing was cut before
expansion): through ``LLM.score``, or with ``max_tokens_per_doc`` (which cuts the mark
away), a pair whose text fits ``truncate_prompt_tokens`` but whose vision tokens push it past
it is scored whole; with ``truncation_side="left"`` vLLM drops the system turn itself, not the
official way (``"right"`` is the default cut above).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from vllm.multimodal.inputs import PlaceholderRange

CLOSING = "<|im_end|>\n<|im_start|>assistant\n"
SYSTEM_TURN = "<|im_start|>system\n"
QUERY_TAG = "<Query>:"
# Marks the template and the hook put in a prompt in place of one of its tokens (same length,
# so vLLM's length checks count the real prompt); both are taken out again before the prompt
# reaches the engine. Special tokens of every Qwen3-VL vocabulary that no reranker prompt uses.
USER_MARK = "<|fim_pad|>"  # pre-formatted, not in the official shape: score as sent
CUT_MARK = "<|repo_name|>"  # around a limit N: the expanded prompt is cut to N

KEEP_TAIL = 5  # the closing turn's ids, as the official scorer counts them

# Tokenizers of the reranker models configured in this process (usually one).
_TOKENIZERS: dict[tuple[str, str | None, str, bool], None] = {}


class Markers(NamedTuple):
    system: tuple[int, ...]
    closing: tuple[int, ...]
    im_start: int
    newline: int
    user_mark: int
    cut_mark: int
    vision_start: int
    vision_end: int
    pads: dict[str, int]  # modality -> its pad id
    special: frozenset[int]
    tokenizer: Any


def register(model_config: Any) -> None:
    """Remember the model's tokenizer; it is loaded only when a score prompt is finished."""
    key = (
        str(model_config.tokenizer),
        model_config.tokenizer_revision,
        str(model_config.tokenizer_mode),
        bool(model_config.trust_remote_code),
    )
    _TOKENIZERS[key] = None


@functools.cache
def _markers(key: tuple[str, str | None, str, bool]) -> Markers:
    from vllm.tokenizers import get_tokenizer

    name, revision, mode, trust = key
    tok: Any = get_tokenizer(name, revision=revision, tokenizer_mode=mode, trust_remote_code=trust)

    def one(text: str) -> int:
        (token,) = tok.encode(text, add_special_tokens=False)
        return int(token)

    closing = tuple(tok.encode(CLOSING, add_special_tokens=False))
    return Markers(
        system=tuple(tok.encode(SYSTEM_TURN, add_special_tokens=False)),
        closing=closing,
        im_start=one("<|im_start|>"),
        newline=closing[-1],
        user_mark=one(USER_MARK),
        cut_mark=one(CUT_MARK),
        vision_start=one("<|vision_start|>"),
        vision_end=one("<|vision_end|>"),
        pads={"image": one("<|image_pad|>"), "video": one("<|video_pad|>")},
        special=frozenset(tok.all_special_ids),
        tokenizer=tok,
    )


def markers() -> list[Markers]:
    return [_markers(key) for key in list(_TOKENIZERS)]


def _error(message: str, parameter: str = "truncate_prompt_tokens") -> Exception:
    from vllm.exceptions import VLLMValidationError

    return VLLMValidationError(message, parameter=parameter)


def _count(items: object) -> int:
    if items is None:
        return 0
    return len(items) if isinstance(items, list) else 1


def limit_mark(limit: int) -> str:
    """The text that carries ``truncate_prompt_tokens`` in a document for the template (which
    moves it before the closing turn) and the model (which takes it out): stock vLLM tells no
    hook the limit when its own cut removed nothing, but vision tokens may still exceed it."""
    return f"{CUT_MARK}{limit}{CUT_MARK}"


def _limit_ids(limit: int, m: Markers) -> list[int]:
    return [m.cut_mark, *m.tokenizer.encode(str(limit), add_special_tokens=False), m.cut_mark]


def _take_limit(ids: list[int], m: Markers) -> tuple[list[int], int | None]:
    # (ids without the limit mark, the limit); a mark that vLLM's cut split goes, unread
    if m.cut_mark not in ids:
        return ids, None
    start = ids.index(m.cut_mark)
    if m.cut_mark not in ids[start + 1 :]:
        return ids[:start], None
    end = ids.index(m.cut_mark, start + 1)
    digits = m.tokenizer.decode(ids[start + 1 : end]).strip()
    if not digits.isdigit():
        raise _error(f"{CUT_MARK} is reserved by the reranker: remove it from the documents")
    return ids[:start] + ids[end + 1 :], int(digits)


def finish_prompt(ids: list[int], media: Mapping[str, object] | None) -> list[int] | None:
    """The prompt to score for ``ids`` as vLLM tokenized (and maybe cut) it, with ``media``
    (the prompt's ``multi_modal_data``); None when ``ids`` is right as it is."""
    for m in markers():
        if ids and ids[0] == m.user_mark:
            return [m.im_start, *ids[1:]]  # pre-formatted: as sent
        n = len(m.closing)
        if len(ids) <= len(m.system) or tuple(ids[: len(m.system)]) != m.system:
            continue
        media = dict(media or {})
        whole, limit = _take_limit(ids, m)
        if tuple(whole[-n:]) == m.closing:  # not cut
            if limit is None or not any(media.values()):
                return whole if len(whole) != len(ids) else None
            return [*whole, *_limit_ids(limit, m)]  # the processor may have to cut
        return _recut(whole, media, m, limit=len(ids))
    return None


def _recut(ids: list[int], media: dict[str, object], m: Markers, limit: int) -> list[int]:
    head = list(ids)
    for k in range(len(m.closing) - 1, 0, -1):  # the cut fell inside the closing turn
        if tuple(head[-k:]) == m.closing[:k]:
            del head[-k:]
            break
    # a placeholder the cut split (<|vision_start|>, or with its pad) goes back whole below
    if head and head[-1] == m.vision_start:
        del head[-1:]
    elif len(head) > 1 and head[-2] == m.vision_start and head[-1] in m.pads.values():
        del head[-2:]
    lost: list[int] = []
    for modality in ("video", "image"):  # the template's order within a side
        missing = _count(media.get(modality)) - head.count(m.pads[modality])
        lost += [m.vision_start, m.pads[modality], m.vision_end] * max(missing, 0)
    if lost and not _cut_after_query_media(head, m):
        raise _error(
            f"truncate_prompt_tokens={limit} cuts the prompt before the query's text, among "
            "its images or videos; the official truncation keeps every vision token: allow "
            "more tokens"
        )
    cut, _ = cut_expanded([*head, *lost, *m.closing], {}, m.special, limit)
    check_query_kept(cut, f"truncate_prompt_tokens={limit}", m)
    if not any(media.values()):
        return cut  # text only: finished here
    return [*cut, *_limit_ids(limit, m)]  # the processor cuts again once media are expanded


def _cut_after_query_media(head: list[int], m: Markers) -> bool:
    # A query's media come before its text, so text after "<Query>:" means every media
    # item the cut removed belongs to the document (official order: videos, then images).
    text = m.tokenizer.decode(head, skip_special_tokens=False)
    if QUERY_TAG not in text:
        return False
    rest = text.rsplit(QUERY_TAG, 1)[1]
    for token in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"):
        rest = rest.replace(token, "")
    return rest != ""


def check_query_kept(
    ids: list[int], what: str, m: Markers, parameter: str = "truncate_prompt_tokens"
) -> None:
    """400 unless the official cut ``ids`` (to ``what``: the limit, as the user set it) still
    holds the system turn, the instruction and ``<Query>:``: else the official rule would
    leave their special tokens only, or more tokens than the limit."""
    decode = functools.partial(m.tokenizer.decode, skip_special_tokens=False)
    if QUERY_TAG in decode(ids[:-KEEP_TAIL]):
        return
    raise _error(
        f"{what} is too small for this pair: the official truncation keeps every special and "
        "vision token and would leave no room for the system prompt, the instruction and "
        "the query; allow more tokens or send smaller images or videos",
        parameter=parameter,
    )


def take_limit(ids: list[int]) -> tuple[list[int], int | None]:
    """For a prompt that ``finish_prompt`` gave a limit (with media, to cut once they are
    expanded): the prompt without its mark, and the limit; else (ids, None)."""
    for m in markers():
        if ids and ids[-1] == m.cut_mark:
            return _take_limit(ids, m)
    return ids, None


def cut_expanded(
    ids: list[int],
    placeholders: Mapping[str, Sequence[PlaceholderRange]],
    special_ids: set[int] | frozenset[int],
    limit: int,
) -> tuple[list[int], dict[str, list[PlaceholderRange]]]:
    """The official cut of a prompt to ``limit`` ids, with its vision placeholders moved to
    their new offsets.

    As the official scorer does with ``max_length = limit - 5``: the closing turn is set
    aside, every special id (vision pads included) is kept, and only the first ordinary ids
    that fit (none if the special ids alone exceed the limit, as officially); then the closing
    turn goes back.
    """
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
                raise _error(
                    f"truncate_prompt_tokens={limit} would cut into a {modality}'s frame "
                    "sequence; allow more tokens"
                )
            moved[modality].append(
                dataclasses.replace(r, offset=r.offset - removed_before[r.offset])
            )
    return [t for t, k in zip(head, keep, strict=True) if k] + tail, moved


def is_reranker_prompt(ids: Sequence[int]) -> bool:
    """Whether ``ids`` has the official prompt's shape (system turn ... closing turn)."""
    for m in markers():
        if tuple(ids[: len(m.system)]) == m.system and tuple(ids[-len(m.closing) :]) == m.closing:
            return True
    return False


def for_ids(ids: Sequence[int]) -> Markers | None:
    """The markers of the registered tokenizer whose system turn starts ``ids``."""
    for m in markers():
        if tuple(ids[: len(m.system)]) == m.system:
            return m
    return None
