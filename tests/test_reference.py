"""Tiny checkpoints and the independent official-scorer reference (tests/reference.py)."""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import reference
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

from vllm_ascend_rerank import tiny_checkpoint
from vllm_ascend_rerank.tiny_checkpoint import (
    NON_SPECIAL_ADDED_TOKENS,
    SPECIAL_TOKENS,
    make_tiny_checkpoint,
)

# Varied text pairs: related and unrelated, empty and missing sides, numbers, bare yes/no.
PAIRS: list[tuple[str | None, str | None]] = [
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("Explain gravity", "Gravity is a force that attracts two bodies towards each other."),
    ("cat", "A small dog runs in the park."),
    ("best music of the year", "The new film won many awards this week."),
    ("how do birds fly", "Birds fly by flapping their wings."),
    ("red car", "blue river under the old mountain"),
    ("yes", "no"),
    ("no", "yes yes yes"),
    ("", "empty query"),
    (None, "missing query"),
    ("query with a missing document", None),
    (
        "history of art",
        "Art history is the study of objects of art in their historical development.",
    ),
    ("1234 5678", "numbers 42 and 2025"),
    ("Where is the river?", "The river flows through the city to the sea."),
    ("What color is the sky?", "The sky is blue during a clear day."),
    ("water", "fire"),
    ("a long question about science and the history of many people in the world", "short"),
    ("short", "a long document about science and the history of many people in the world and life"),
    ("Why?", "Because."),
    ("people", "people"),
]

# The official prompt, written out from DESIGN.md ("The reranker, exactly").
SYSTEM = (
    "<|im_start|>system\n"
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
)
USER = (
    "<|im_start|>user\n<Instruct>: {}<Query>:{}\n<Document>:{}<|im_end|>\n<|im_start|>assistant\n"
)
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        "tied": make_tiny_checkpoint(root / "tied", tied=True),
        "untied": make_tiny_checkpoint(root / "untied", tied=False),
    }


@pytest.fixture(scope="module")
def rerankers(ckpts) -> dict[str, reference.OfficialReranker]:
    return {name: reference.OfficialReranker(path) for name, path in ckpts.items()}


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_yes_no_are_single_tokens(ckpts, kind):
    tok = AutoTokenizer.from_pretrained(ckpts[kind])
    ids = {}
    for word in ("yes", "no"):
        (ids[word],) = tok.encode(word, add_special_tokens=False)
        assert tok.convert_tokens_to_ids(word) == ids[word] == tok.get_vocab()[word]
    assert ids["yes"] != ids["no"]


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_config_matches_tokenizer(ckpts, kind):
    path = ckpts[kind]
    tok = AutoTokenizer.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert config["model_type"] == "qwen3_vl"
    for key, token in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ):
        assert config[key] == tok.convert_tokens_to_ids(token)
    assert config["text_config"]["vocab_size"] >= len(tok)
    assert config["tie_word_embeddings"] is (kind == "tied")
    assert config["text_config"]["tie_word_embeddings"] is (kind == "tied")
    rope = config["text_config"]["rope_parameters"]
    assert (
        rope["mrope_interleaved"]
        and sum(rope["mrope_section"]) == config["text_config"]["head_dim"] // 2
    )
    vision = config["vision_config"]
    assert vision["out_hidden_size"] == config["text_config"]["hidden_size"]
    assert math.isqrt(vision["num_position_embeddings"]) ** 2 == vision["num_position_embeddings"]

    # Added tokens follow the BPE vocabulary in Qwen's order; only the first 14 are special.
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS + NON_SPECIAL_ADDED_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert sorted(tok.all_special_ids) == ids[: len(SPECIAL_TOKENS)]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"

    with safe_open(path / "model.safetensors", "pt") as f:
        names = set(f.keys())
        assert {f.get_tensor(n).dtype for n in names} == {torch.float32}
    assert ("lm_head.weight" in names) is (kind == "untied")


def test_processor_loads_and_renders_official_messages(ckpts):
    processor = AutoProcessor.from_pretrained(ckpts["tied"])
    assert processor.image_processor.patch_size == 16 and processor.image_processor.merge_size == 2
    assert processor.video_processor.temporal_patch_size == 2
    image = Image.new("RGB", (64, 64))
    messages = reference.build_messages(
        {"text": ["a", "b"]}, {"text": "d", "image": [image, image]}, "inst"
    )
    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == reference.render(messages)


def test_same_seed_same_bytes(ckpts, tmp_path):
    again = make_tiny_checkpoint(tmp_path / "again", tied=True, seed=0)
    other = make_tiny_checkpoint(tmp_path / "other", tied=True, seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (ckpts["tied"] / name).read_bytes()
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()


def test_cli(tmp_path, capsys):
    tiny_checkpoint.main([str(tmp_path / "cli"), "--untied", "--seed", "3", "--num-layers", "1"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (
        config["tie_word_embeddings"] is False and config["text_config"]["num_hidden_layers"] == 1
    )


def test_prompt_is_the_official_string():
    query, doc = "What is the capital of China?", "The capital of China is Beijing."
    expected = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
        'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n<Instruct>: Given a search query, retrieve relevant candidates that "
        "answer the query.<Query>:What is the capital of China?\n<Document>:The capital of China "
        "is Beijing.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert reference.format_text_prompt(query, doc) == expected
    assert expected == SYSTEM + USER.format(DEFAULT_INSTRUCTION, query, doc)
    # An empty or missing instruction means the default one.
    assert reference.format_text_prompt(query, doc, "") == expected


def test_prompt_edge_cases():
    def render(query: dict, doc: dict, instruction: str | None = "I") -> str:
        return reference.render(reference.build_messages(query, doc, instruction))

    assert render({}, {"text": None}) == SYSTEM + USER.format("I", "NULL", "NULL")
    assert render({"text": ""}, {"text": ""}) == SYSTEM + USER.format("I", "", "")  # "" is text
    assert render({"text": ["a", "b"]}, {"text": "d"}) == SYSTEM + USER.format("I", "ab", "d")
    # A (instruction, text) tuple as the query text overrides the instruction.
    assert render({"text": ("I2", "q")}, {"text": "d"}) == SYSTEM + USER.format("I2", "q", "d")
    # Images go before text within a side, whatever the dict order.
    image = Image.new("RGB", (32, 32))
    mixed = render({"text": "q"}, {"text": "d", "image": image})
    assert mixed == SYSTEM + USER.format("I", "q", "<|vision_start|><|image_pad|><|vision_end|>d")


def test_smart_resize_and_image_loading():
    assert reference.smart_resize(100, 150) == (96, 160)
    assert reference.smart_resize(10, 10) == (64, 64)  # each side >= 32, then up to 4096 px
    assert reference.smart_resize(2000, 3000) == (1088, 1632)  # floored under 1,843,200 px
    with pytest.raises(ValueError):
        reference.smart_resize(10, 2100)
    rgba = Image.new("RGBA", (50, 70), (0, 0, 0, 0))  # transparent -> white
    loaded = reference.load_image(rgba)
    assert (
        loaded.mode == "RGB"
        and loaded.size == (64, 64)
        and loaded.getpixel((10, 10)) == (255, 255, 255)
    )


def test_truncation_keeps_specials_and_tail():
    special = {100, 101}
    ids = [100, 1, 2, 101, 3, 4, 5, 6, 7, 100, 8, 9, 10, 11, 12]
    assert reference.truncate(ids, 10, special) == ids  # 10 before the tail: no cut
    assert reference.truncate(ids, 5, special) == [100, 1, 2, 101, 100, 8, 9, 10, 11, 12]


def test_truncation_end_to_end(ckpts, rerankers):
    rr = rerankers["tied"]
    rr_short = reference.OfficialReranker(ckpts["tied"], max_length=100)
    long_doc = " ".join(f"word{i}" for i in range(200))
    full = rr.encode({"text": "short query"}, {"text": long_doc})["input_ids"][0].tolist()
    cut = rr_short.encode({"text": "short query"}, {"text": long_doc})["input_ids"][0].tolist()
    tail = rr.tokenizer.convert_ids_to_tokens(full[-reference.KEEP_TAIL :])
    assert tail == [
        "<|im_end|>",
        "\u010a",
        "<|im_start|>",
        "assistant",
        "\u010a",
    ]  # \u010a: byte-level "\n"
    assert len(cut) == 100 + reference.KEEP_TAIL  # official: max_length + 5 ids at most
    assert cut[-reference.KEEP_TAIL :] == full[-reference.KEEP_TAIL :]
    assert cut[:100] == full[:100]  # system prompt and query intact: the document's tail went
    assert (
        rr_short.score({"text": "short query"}, [{"text": long_doc}])[0]
        != rr.score({"text": "short query"}, [{"text": long_doc}])[0]
    )


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_scores_spread_and_match_lm_logits(ckpts, rerankers, kind):
    rr = rerankers[kind]
    scores = [rr.score({"text": q}, [{"text": d}])[0] for q, d in PAIRS]
    assert all(0.0 < s < 1.0 for s in scores)
    assert min(scores) < 0.2 and max(scores) > 0.8, scores  # seed 0: ~0.09 and ~0.99
    assert sum(0.2 < s < 0.8 for s in scores) >= 4, scores  # not just two clusters at the ends

    # Same as softmax([no, yes])[yes] over the full LM head's logits at the last position.
    lm = Qwen3VLForConditionalGeneration.from_pretrained(ckpts[kind], dtype=torch.float32).eval()
    for (q, d), score in list(zip(PAIRS, scores, strict=True))[:5]:
        inputs = rr.encode({"text": q}, {"text": d})
        with torch.no_grad():
            logits = lm(**inputs).logits[0, -1]
        expected = torch.softmax(logits[[rr.no_id, rr.yes_id]], dim=0)[1].item()
        assert score == pytest.approx(expected, abs=1e-6)

    # Several documents in one call score like one at a time.
    batch = rr.score({"text": PAIRS[0][0]}, [{"text": d} for _, d in PAIRS[:4]])
    single = [rr.score({"text": PAIRS[0][0]}, [{"text": d}])[0] for _, d in PAIRS[:4]]
    assert batch == single


def test_image_scores(rerankers):
    rr = rerankers["tied"]
    gen = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy())
        for h, w in ((100, 150), (64, 64), (300, 256))
    ]
    inputs = rr.encode({"text": "q"}, {"text": "d", "image": images[0]})
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 10]]  # 96 x 160 px, 16-px patches
    n_pad = (inputs["input_ids"] == rr.image_token_id).sum().item()
    assert n_pad == 6 * 10 // 4
    scores = rr.score(
        {"text": "a picture"}, [{"image": img} for img in images] + [{"text": "d", "image": images}]
    )
    assert len(scores) == 4 and all(0.0 < s < 1.0 for s in scores)
    with pytest.raises(NotImplementedError):  # videos as frame lists are not reproduced
        rr.score({"text": "q"}, [{"video": [images]}])


def test_vllm_processes_the_checkpoint(ckpts, rerankers):
    """vLLM's own config and Qwen3-VL processor accept the checkpoint (no engine needed)."""
    pytest.importorskip("vllm")
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    model_config = ModelConfig(model=str(ckpts["tied"]), runner="pooling", dtype="float32")
    assert model_config.hf_config.model_type == "qwen3_vl"
    assert model_config.get_hidden_size() == 64
    processor = MULTIMODAL_REGISTRY.create_processor(model_config)

    # 320 x 256 px is inside both vLLM's (checkpoint) and the official pixel bounds, and a
    # multiple of 32: both sides then expand the image to the same 80 placeholders.
    rr = rerankers["tied"]
    gen = torch.Generator().manual_seed(1)
    image = Image.fromarray((torch.rand(256, 320, 3, generator=gen) * 255).to(torch.uint8).numpy())
    query, doc = {"text": "a query"}, {"text": "a document", "image": image}
    prompt_ids = rr.tokenizer.encode(rr.prompt(query, doc))
    items = processor.info.parse_mm_data({"image": [image]})
    out = processor.apply(ProcessorInputs(prompt_ids, items), TimingContext())
    expected = rr.encode(query, doc)
    assert out["prompt_token_ids"] == expected["input_ids"][0].tolist()
    assert out["mm_placeholders"]["image"][0].length == 80
