"""Offline ``LLM.score`` through the plugin against the official scoring rule (fp32, 1e-4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ATOL, close_llm, make_llm, make_pairs, pure_torch


def _scores(outputs) -> list[float]:
    return [o.outputs.score for o in outputs]


@pytest.fixture(scope="module")
def pairs() -> tuple[str, list[str]]:
    return make_pairs(24)


@pytest.fixture(scope="module")
def expected(checkpoints, reference_factory, pairs) -> dict[str, list[float]]:
    query, docs = pairs
    out = {}
    for name in ("tied", "untied"):
        ref = reference_factory(checkpoints[name])
        out[name] = ref.score({"text": query}, [{"text": d} for d in docs])
    return out


def test_reference_scores_spread(expected: dict[str, list[float]]) -> None:
    # A flat 0.5 would make every comparison below meaningless.
    for scores in expected.values():
        assert min(scores) < 0.3 and max(scores) > 0.7, scores


@pytest.fixture(scope="module")
def llm_tied(checkpoints):
    llm = make_llm(checkpoints["tied"])  # prefix caching + chunked prefill on (defaults)
    yield llm
    close_llm(llm)


def test_tied_matches_official(llm_tied, pairs, expected) -> None:
    query, docs = pairs
    got = _scores(llm_tied.score(query, docs))
    assert got == pytest.approx(expected["tied"], abs=ATOL)
    # Second pass: system prompt + query now come from the prefix cache.
    again = _scores(llm_tied.score(query, docs))
    assert again == pytest.approx(expected["tied"], abs=ATOL)


def test_template_flag_gives_same_prompt(llm_tied, pairs, expected) -> None:
    from conftest import TEMPLATE

    query, docs = pairs
    got = _scores(llm_tied.score(query, docs, chat_template=TEMPLATE.read_text()))
    assert got == pytest.approx(expected["tied"], abs=ATOL)


def test_single_equals_batch_of_32(llm_tied, pairs) -> None:
    query, docs = make_pairs(32, seed=3)
    batch = _scores(llm_tied.score(query, docs))
    for i in (0, 7, 31):
        alone = _scores(llm_tied.score(query, docs[i]))[0]
        assert alone == pytest.approx(batch[i], abs=1e-6)


def test_per_request_instruction(llm_tied, checkpoints, reference_factory) -> None:
    from conftest import TEMPLATE
    from vllm import PoolingParams

    instruction = "Judge whether the document is about animals."
    query, docs = "cat", ["a dog and a cat", "stock market price", "green tree"]
    ref = reference_factory(checkpoints["tied"])
    want = ref.score({"text": query}, [{"text": d} for d in docs], instruction=instruction)
    default = ref.score({"text": query}, [{"text": d} for d in docs])
    params = PoolingParams(extra_kwargs={"chat_template_kwargs": {"instruction": instruction}})
    got = _scores(
        llm_tied.score(query, docs, chat_template=TEMPLATE.read_text(), pooling_params=params)
    )
    assert got == pytest.approx(want, abs=ATOL)
    assert max(abs(a - b) for a, b in zip(want, default, strict=True)) > 1e-3
    # issue 12 (3): without chat_template= vLLM 0.34 would drop the instruction silently
    with pytest.raises(Exception, match=r"instruction is only applied .* pass chat_template="):
        llm_tied.score(query, docs, pooling_params=params)
    empty = PoolingParams(extra_kwargs={"chat_template_kwargs": {"instruction": ""}})
    assert _scores(llm_tied.score(query, docs, pooling_params=empty)) == pytest.approx(
        default, abs=ATOL
    )  # an empty instruction is the official default


@pytest.fixture(scope="module")
def llm_untied_no_prefix_small_chunks(checkpoints):
    # 32-token chunks force every prompt (system prompt alone is ~40 tokens) to be split;
    # this engine also covers the pure-torch reference kernels (attention, F.linear) end to end.
    with pure_torch():
        llm = make_llm(
            checkpoints["untied"],
            enable_prefix_caching=False,
            enable_chunked_prefill=True,
            max_num_batched_tokens=32,
            max_num_seqs=4,
        )
    yield llm
    close_llm(llm)


def test_untied_chunked_no_prefix_matches_official(
    llm_untied_no_prefix_small_chunks, pairs, expected
) -> None:
    query, docs = pairs
    got = _scores(llm_untied_no_prefix_small_chunks.score(query, docs))
    assert got == pytest.approx(expected["untied"], abs=ATOL)


def test_converted_checkpoint_same_scores(checkpoints: dict[str, Path], pairs, expected) -> None:
    query, docs = pairs
    llm = make_llm(checkpoints["converted"], hf_overrides=None)
    try:
        got = _scores(llm.score(query, docs))
    finally:
        close_llm(llm)
    assert got == pytest.approx(expected["tied"], abs=ATOL)
