"""Qwen3-VL-Embedding offline (``LLM.embed``) and its configuration, against the official rule.

The reference (tests/reference_embedding.py) is transformers' Qwen3-VL on the same tiny
checkpoint, embedding exactly as the official ``Qwen3VLEmbedder`` does (fp32, 1e-4). The engine
runs with prefix caching on (vLLM's default); the server tests run it off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ATOL, close_llm, make_llm
from media_helpers import image, video_url, write_video
from PIL import Image
from reference_embedding import OfficialEmbedder, build_messages

from vllm_ascend_rerank import embedding
from vllm_ascend_rerank.embedding.prompt import (
    IMAGE_PLACEHOLDER,
    MessageError,
    embedding_input,
    format_prompt,
    instruction_text,
    official_messages,
)

TEXTS = ["a cat sits on the mat", "", "Gravity is a force that attracts two bodies."]
INSTRUCTIONS = [
    "Retrieve images that match the caption",  # gets a "."
    "  Find the answer?  ",  # stripped, ends with punctuation: kept
    "   ",  # blank: the default
    "Représente l'entrée « utilisateur »",  # non-ASCII; ends with a punctuation character
]


def rgba(h: int, w: int) -> Image.Image:
    out = image(h, w, 7).convert("RGBA")
    out.putalpha(Image.linear_gradient("L").resize((w, h)))
    return out


IMAGES = {
    "odd": image(50, 70, 1),  # off the 32-px grid, under the 4,096 px minimum
    "tall": image(333, 121, 4),
    "square": image(64, 64, 5),  # already official: no resampling
    "rgba": rgba(40, 90),  # alpha: pasted on white
}


@pytest.fixture(scope="module")
def ref(embedding_checkpoints) -> OfficialEmbedder:
    return OfficialEmbedder(embedding_checkpoints["plain"])


@pytest.fixture(scope="module")
def llm(embedding_checkpoints):
    engine = make_llm(embedding_checkpoints["plain"], hf_overrides=None, max_model_len=2048)
    yield engine
    close_llm(engine)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    # 4 s at 4 fps: the official 1 fps gives 4 frames (vLLM's own sampler: 2 fps, 8 frames).
    return write_video(tmp_path_factory.mktemp("embed-video") / "clip.mp4", 16, 4, 48, 64)


def vectors(outputs) -> torch.Tensor:
    return torch.tensor([o.outputs.embedding for o in outputs])


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    diff = (got - want).abs().max().item()
    assert diff < ATOL, f"max |vLLM - official| = {diff:.3g}"


# ---- the official prompt rules (no engine) ----------------------------------------------------
def test_prompt_rules_match_the_reference() -> None:
    from reference import render

    for instruction in [None, *INSTRUCTIONS]:
        for text in [*TEXTS, None, ["two ", "texts"]]:
            want = render(build_messages(text, instruction=instruction))
            assert format_prompt(text, instruction=instruction) == want
    want = render(build_messages("caption", image=["a", "b"], video=["v"]))
    assert format_prompt("caption", images=2, videos=1) == want
    assert instruction_text("Retrieve  ") == "Retrieve."
    assert instruction_text("Why?") == "Why?"
    assert instruction_text(" ") == embedding.prompt.DEFAULT_INSTRUCTION


def test_messages_become_the_official_conversation() -> None:
    image_part = {"type": "image_url", "image_url": {"url": "x"}}
    video_part = {"type": "video_url", "video_url": {"url": "v"}}
    out = official_messages(
        [
            {"role": "system", "content": "Find it"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a "}, image_part, "b", video_part],
            },
        ]
    )
    assert out[0]["content"] == [{"type": "text", "text": "Find it."}]
    assert out[1]["content"] == [video_part, image_part, {"type": "text", "text": "a b"}]
    given = official_messages([{"role": "user", "content": "x"}], instruction="Find it")
    assert given[0]["content"][0]["text"] == "Find it."
    with pytest.raises(MessageError, match="twice"):
        official_messages([{"role": "system", "content": "a"}, *given[1:]], instruction="b")
    empty = official_messages([{"role": "user", "content": []}])
    assert empty[1]["content"] == [{"type": "text", "text": "NULL"}]
    assert empty[0]["content"][0]["text"] == "Represent the user's input."
    for bad, parameter in [
        ([{"role": "assistant", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages[1]"),
        ([{"role": "system", "content": "a"}], "messages"),
        ([{"role": "user", "content": [{"type": "audio_url"}]}], "messages.content[0].type"),
    ]:
        with pytest.raises(MessageError) as info:
            official_messages(bad)
        assert info.value.parameter == parameter


def test_a_chat_template_is_refused() -> None:
    from vllm.exceptions import VLLMValidationError
    from vllm.renderers import ChatParams

    from vllm_ascend_rerank.embedding.renderer import EmbeddingRenderer

    messages = [{"role": "user", "content": "a"}]
    _, params = EmbeddingRenderer._official(messages, ChatParams())
    assert params.chat_template == embedding.prompt.CHAT_TEMPLATE
    with pytest.raises(VLLMValidationError, match="--tokenizer-mode hf"):
        EmbeddingRenderer._official(messages, ChatParams(chat_template="{{ 'x' }}"))


def _config(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(model), dtype="float32", **kwargs).create_engine_config()


def test_only_pooling_without_overrides_is_the_embedder(embedding_checkpoints, monkeypatch):
    plain = embedding_checkpoints["plain"]
    config = _config(plain, runner="pooling")
    assert config.model_config.hf_config.architectures == [embedding.MODEL_ARCH]
    assert config.model_config.tokenizer_mode == embedding.TOKENIZER_MODE
    mm = config.model_config.multimodal_config.mm_processor_kwargs
    assert mm["images_kwargs"]["size"] == {"shortest_edge": 4096, "longest_edge": 1843200}
    # With the sentence-transformers files vLLM picks the pooling runner by itself.
    st = _config(embedding_checkpoints["st"])
    assert st.model_config.hf_config.architectures == [embedding.MODEL_ARCH]
    assert st.model_config.pooler_config.seq_pooling_type == "LAST"
    # Generation, the reranker overrides and the switch leave vLLM's choices alone.
    generate = _config(plain, runner="generate")
    assert generate.model_config.hf_config.architectures == [embedding.SOURCE_ARCH]
    assert generate.model_config.tokenizer_mode == "auto"
    from conftest import HF_OVERRIDES

    reranker = _config(plain, runner="pooling", hf_overrides=HF_OVERRIDES)
    assert reranker.model_config.hf_config.architectures == HF_OVERRIDES["architectures"]
    own_template = _config(plain, runner="pooling", tokenizer_mode="hf")
    assert own_template.model_config.tokenizer_mode == "hf"
    monkeypatch.setenv("VLLM_ASCEND_RERANK_QWEN3_VL_EMBEDDING", "off")
    off = _config(plain, runner="pooling")
    assert off.model_config.hf_config.architectures == [embedding.SOURCE_ARCH]
    assert not off.model_config.is_matryoshka


# ---- LLM.embed -----------------------------------------------------------------------------
def test_plain_strings_get_the_official_prompt(llm, ref) -> None:
    want = ref.embed([{"text": t} for t in TEXTS])
    assert_close(vectors(llm.embed(TEXTS)), want)
    # Formatted by the client: sent as it is, the same vector.
    assert_close(vectors(llm.embed([format_prompt(t) for t in TEXTS])), want)
    # The test can fail: without the official prompt the vectors are far off.
    raw = vectors(llm.embed([{"prompt_token_ids": ref.tokenizer(t or "x")["input_ids"]}
                             for t in TEXTS]))  # fmt: skip
    assert (raw - want).abs().max() > 100 * ATOL


def test_instructions(llm, ref) -> None:
    items = [{"text": TEXTS[0], "instruction": i} for i in INSTRUCTIONS]
    want = ref.embed(items)
    got = vectors(llm.embed([format_prompt(TEXTS[0], instruction=i) for i in INSTRUCTIONS]))
    assert_close(got, want)
    default = ref.embed([{"text": TEXTS[0]}])
    assert (want[0] - default[0]).abs().max() > 100 * ATOL
    assert (want[2] - default[0]).abs().max() < ATOL  # a blank instruction is the default


def test_images_of_many_shapes(llm, ref) -> None:
    items = [{"text": "a photo", "image": img} for img in IMAGES.values()]
    items.append({"image": [IMAGES["odd"], IMAGES["tall"]]})  # two images, no text
    prompts = [
        {"prompt": IMAGE_PLACEHOLDER + "a photo", "multi_modal_data": {"image": img}}
        for img in IMAGES.values()
    ]
    prompts.append(
        {
            "prompt": IMAGE_PLACEHOLDER * 2,
            "multi_modal_data": {"image": [IMAGES["odd"], IMAGES["tall"]]},
        }
    )
    got = vectors(llm.embed(prompts))
    assert_close(got, ref.embed(items))


def test_matryoshka_and_batch(llm, ref) -> None:
    from vllm import PoolingParams
    from vllm.exceptions import VLLMValidationError

    items = [{"text": t} for t in TEXTS]
    for d in (64, 128):
        got = vectors(llm.embed(TEXTS, pooling_params=PoolingParams(dimensions=d)))
        assert_close(got, ref.embed(items, dimensions=d))
    for d in (32, 129):
        with pytest.raises(VLLMValidationError, match="64 to 128|1, 128"):
            llm.embed(TEXTS, pooling_params=PoolingParams(dimensions=d))
    mixed = [TEXTS[0], {"prompt": IMAGE_PLACEHOLDER, "multi_modal_data": {"image": IMAGES["odd"]}}]
    batch = vectors(llm.embed(mixed * 2))
    alone = torch.cat([vectors(llm.embed([p])) for p in mixed])
    assert_close(batch[:2], alone)
    assert_close(batch[2:], alone)  # prefix-cached repeats
    assert_close(alone, ref.embed([{"text": TEXTS[0]}, {"image": IMAGES["odd"]}]))


def test_videos_offline(llm, ref, clip: Path) -> None:
    """``embedding_input(videos=...)`` reads a file or URL with the server's reader (the
    official 1 fps sampler); the engine sizes the frames by the official per-frame bounds."""
    mixed = {"text": ["a red ", "car"], "image": [IMAGES["odd"], IMAGES["rgba"]]}
    want = ref.embed([{"video": str(clip)}, {**mixed, "video": str(clip)}])
    prompts = [
        embedding_input(videos=[clip]),  # a path
        embedding_input(mixed["text"], images=mixed["image"], videos=[video_url(clip)]),
    ]
    assert_close(vectors(llm.embed(prompts)), want)
    # The test can fail: sampled at 2 fps (8 frames, vLLM's default rate) the vector moves.
    other = vectors(llm.embed([embedding_input(videos=[clip], video_options={"fps": 2})]))
    assert (other[0] - want[0]).abs().max() > 100 * ATOL
    with pytest.raises(TypeError, match="single one"):
        embedding_input(videos=clip)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="file path or URL"):
        embedding_input(videos=[torch.zeros(4, 48, 64, 3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="video_options: unknown"):
        embedding_input(videos=[clip], video_options={"video_backend": "opencv"})
