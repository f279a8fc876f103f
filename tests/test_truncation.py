"""``truncation.cut_expanded``: the official cut of an expanded prompt, on synthetic ids
(special ids >= 100), with the vision placeholders moved to where their tokens end up."""

from __future__ import annotations

import pytest
import torch
from vllm.exceptions import VLLMValidationError
from vllm.multimodal.inputs import PlaceholderRange

from vllm_ascend_rerank.truncation import cut_expanded

SPECIAL = {100, 101, 102, 103}  # 101/102: vision start/end, 103: image pad
CLOSE = [100, 7, 100, 8, 7]  # stands for <|im_end|> \n <|im_start|> assistant \n


def test_text_tail_goes_first_and_placeholders_move() -> None:
    # 3 ordinary ids, an image (start, 4 pads, end), 6 ordinary ids, the closing turn
    ids = [1, 2, 3, 101, 103, 103, 103, 103, 102, 4, 5, 6, 9, 9, 9, *CLOSE]
    image = PlaceholderRange(offset=4, length=4)
    out, moved = cut_expanded(ids, {"image": [image]}, SPECIAL, limit=16)
    # 16 - 5 closing = 11 = 6 specials + the first 5 ordinary ids (1, 2, 3, 4, 5)
    assert out == [1, 2, 3, 101, 103, 103, 103, 103, 102, 4, 5, *CLOSE]
    assert moved == {"image": [image]}  # nothing before the image was removed


def test_cut_reaching_before_an_image_moves_it() -> None:
    # the official rule keeps the *first* ordinary ids, so a tight limit also removes text
    # that sits before an image: the image's placeholder moves left
    ids = [1, 2, 3, 101, 103, 103, 102, 4, 101, 103, 103, 102, *CLOSE]
    first, second = PlaceholderRange(offset=4, length=2), PlaceholderRange(offset=9, length=2)
    out, moved = cut_expanded(ids, {"image": [first, second]}, SPECIAL, limit=13)
    # 13 - 5 = 8 = 8 specials: no ordinary id fits, all four go; the images shift left by 3, 4
    assert out == [101, 103, 103, 102, 101, 103, 103, 102, *CLOSE]
    assert [(r.offset, r.length) for r in moved["image"]] == [(1, 2), (5, 2)]


def test_cut_inside_a_placeholder_range_is_refused() -> None:
    # a video's range spans its timestamp text (ordinary ids 5, 6) between frames
    ids = [1, 101, 103, 102, 5, 101, 103, 102, 6, *CLOSE]
    video = PlaceholderRange(
        offset=1, length=8, is_embed=torch.tensor([0, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    )
    with pytest.raises(VLLMValidationError, match="video.s frame sequence"):
        cut_expanded(ids, {"video": [video]}, SPECIAL, limit=11)


# ---- finish_prompt: what post_process_tokens makes of the ids vLLM tokenized (and cut) ------
@pytest.fixture(scope="module")
def tok(checkpoints):
    """The tiny checkpoint's tokenizer, registered as the reranker's."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from vllm_ascend_rerank import truncation

    path = str(checkpoints["tied"])
    config = SimpleNamespace(
        tokenizer=path, tokenizer_revision=None, tokenizer_mode="auto", trust_remote_code=False
    )
    truncation.register(config)
    return AutoTokenizer.from_pretrained(path)


def _ids(tok, text: str) -> list[int]:
    return tok(text)["input_ids"]


def test_preformatted_prompt_is_scored_as_sent(tok) -> None:
    # issue 12 (5): one newline more than the official closing; nothing was truncated
    from reference import format_text_prompt

    from vllm_ascend_rerank.prompt import render
    from vllm_ascend_rerank.truncation import finish_prompt

    sent = format_text_prompt("cat", "a cat") + "\n"
    query, document = sent[:120], sent[120:]
    ids = _ids(tok, render(query, document))
    assert ids[1:] == _ids(tok, sent)[1:] and ids[0] != _ids(tok, sent)[0]  # marked
    assert finish_prompt(ids, None) == _ids(tok, sent)
    # the official shape, sent pre-formatted: as sent too
    exact = format_text_prompt("cat", "a cat")
    assert finish_prompt(_ids(tok, render(exact[:120], exact[120:])), None) is None


def test_cut_text_pair_follows_the_official_rule(tok) -> None:
    from reference import format_text_prompt, truncate

    from vllm_ascend_rerank.truncation import finish_prompt

    full = _ids(tok, format_text_prompt("cat", "word " * 200))
    special = set(tok.all_special_ids)
    for n in (100, len(full) - 3, len(full) - 1):  # in the text, in the closing turn
        assert finish_prompt(full[:n], None) == truncate(full, n - 5, special), n


def test_cut_that_removed_the_documents_image_puts_it_back(tok) -> None:
    # issue 12 (4): a long query, a document that is one image, a cut before the image
    from reference import IMAGE_PLACEHOLDER, format_text_prompt, truncate

    from vllm_ascend_rerank.truncation import finish_prompt, take_limit

    query = "many words about a city " * 40
    full = _ids(tok, format_text_prompt(query, IMAGE_PLACEHOLDER))
    n = 100
    out = finish_prompt(full[:n], {"image": ["an image"]})
    assert out is not None
    # the processor gets the prompt without its mark, and the length to cut to
    prompt, limit = take_limit(out)
    assert limit == n
    assert prompt == truncate(full, n - 5, set(tok.all_special_ids))  # image kept whole
    assert take_limit(prompt) == (prompt, None)  # the mark is the only record


def test_limit_below_the_template_is_a_400_naming_it(tok) -> None:
    from reference import format_text_prompt
    from vllm.exceptions import VLLMValidationError

    from vllm_ascend_rerank.truncation import finish_prompt

    full = _ids(tok, format_text_prompt("cat", "a dog"))
    with pytest.raises(VLLMValidationError, match="truncate_prompt_tokens=20 is too small"):
        finish_prompt(full[:20], None)


def test_a_cut_leaves_no_record_behind(tok) -> None:
    # issue 12 (6): the cut travels in the prompt; a request that fails after post_process_
    # tokens (before the processor) leaves nothing that could cut a later identical prompt
    from reference import IMAGE_PLACEHOLDER, format_text_prompt

    from vllm_ascend_rerank import truncation

    full = _ids(tok, format_text_prompt("a query " * 40, IMAGE_PLACEHOLDER))
    cut = truncation.finish_prompt(full[:100], {"image": ["an image"]})
    assert cut is not None
    again, _ = truncation.take_limit(cut)  # what an identical, uncut prompt looks like
    assert truncation.take_limit(again) == (again, None)
    state = [k for k, v in vars(truncation).items()
             if not k.startswith("__") and isinstance(v, (dict, list, set))]  # fmt: skip
    assert state == ["_TOKENIZERS"], state  # no per-request container at all


def test_limit_reaches_the_processor_when_nothing_was_cut(tok) -> None:
    # issue 12 (7): the text fits truncate_prompt_tokens, the vision tokens may not; the
    # server's middleware appends the limit to each document, the template moves it before
    # the closing turn, the model hands it to the processor (with media) or drops it
    from reference import IMAGE_PLACEHOLDER, format_text_prompt

    from vllm_ascend_rerank.prompt import render
    from vllm_ascend_rerank.truncation import finish_prompt, limit_mark, take_limit

    marked = _ids(tok, render("a query", IMAGE_PLACEHOLDER + "a doc" + limit_mark(300)))
    plain = _ids(tok, format_text_prompt("a query", IMAGE_PLACEHOLDER + "a doc"))
    out = finish_prompt(marked, {"image": ["an image"]})
    assert out is not None and take_limit(out) == (plain, 300)
    text_only = _ids(tok, render("a query", "a doc" + limit_mark(300)))
    assert finish_prompt(text_only, None) == _ids(tok, format_text_prompt("a query", "a doc"))


def test_requested_instruction_must_be_in_the_prompt(tok) -> None:
    # issue 12 (3): LLM.score without chat_template= renders the default instruction
    from types import SimpleNamespace

    from reference import format_text_prompt

    from vllm_ascend_rerank.prompt import check_instruction_applied

    def params(instruction: str) -> SimpleNamespace:
        return SimpleNamespace(extra_kwargs={"chat_template_kwargs": {"instruction": instruction}})

    ids = _ids(tok, format_text_prompt("cat", "a dog", "Find pets."))
    check_instruction_applied({"prompt_token_ids": ids}, params("Find pets."))
    check_instruction_applied({"prompt_token_ids": ids}, params(""))  # "": the default
    check_instruction_applied({"prompt_token_ids": ids}, SimpleNamespace(extra_kwargs=None))
    with pytest.raises(VLLMValidationError, match="pass chat_template="):
        check_instruction_applied({"prompt_token_ids": ids}, params("Find money."))
