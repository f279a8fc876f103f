"""``truncation.cut_expanded``: the official cut of an expanded prompt, on synthetic ids
(special ids >= 100), with the vision placeholders moved to where their tokens end up."""

from __future__ import annotations

import pytest
import torch
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
    with pytest.raises(ValueError, match="video's frame sequence"):
        cut_expanded(ids, {"video": [video]}, SPECIAL, limit=11)
