"""Qwen3-VL-Embedding through the real ``vllm serve`` (``/v1/embeddings``), every request form,
against the official rule (tests/reference_embedding.py, fp32, 1e-4).

One server for the module: the checkpoint with the sentence-transformers files (pooling read
from them), prefix caching off (the offline tests run it on), media by the official rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ATOL, Server
from media_helpers import img, txt, vid, write_video
from reference_embedding import OfficialEmbedder
from test_embedding import IMAGES, INSTRUCTIONS, TEXTS, assert_close


@pytest.fixture(scope="module")
def ref(embedding_checkpoints) -> OfficialEmbedder:
    return OfficialEmbedder(embedding_checkpoints["st"])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    # 4 s at 4 fps: the official 1 fps gives 4 frames (vLLM's own sampler: 2 fps, 8 frames).
    return write_video(tmp_path_factory.mktemp("embed-media") / "clip.mp4", 16, 4, 48, 64)


@pytest.fixture(scope="module")
def server(embedding_checkpoints):
    args = [
        "--dtype", "float32", "--max-model-len", "4096", "--no-enable-prefix-caching",
        "--limit-mm-per-prompt", json.dumps({"image": 3, "video": 1}),
    ]  # fmt: skip
    srv = Server(embedding_checkpoints["st"], args)  # no --runner: the ST files say pooling
    yield srv
    srv.stop()


def embed(server, **body) -> torch.Tensor:
    response = server.post("/v1/embeddings", body)
    assert response.status_code == 200, response.text
    data = sorted(response.json()["data"], key=lambda d: d["index"])
    return torch.tensor([d["embedding"] for d in data])


def refuse(server, status: int = 400, **body) -> str:
    response = server.post("/v1/embeddings", body)
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def test_input_strings(server, ref) -> None:
    want = ref.embed([{"text": t} for t in TEXTS])
    assert_close(embed(server, input=TEXTS), want)
    assert_close(embed(server, input=TEXTS[0]), want[:1])
    # Already formatted by the client: never templated twice.
    assert_close(embed(server, input=[ref.prompt({"text": t}) for t in TEXTS]), want)
    # A per-request instruction: chat_template_kwargs (vLLM passes it on for plain input too).
    kwargs = {"instruction": INSTRUCTIONS[0]}
    got = embed(server, input=TEXTS, chat_template_kwargs=kwargs)
    assert_close(got, ref.embed([{"text": t, **kwargs} for t in TEXTS]))
    message = refuse(server, input=ref.prompt({"text": "x"}), chat_template_kwargs=kwargs)
    assert "already formatted" in message


def test_top_level_instruction_is_honoured(server, ref) -> None:
    # The reranker's field name (and the official embedder's): vLLM would drop it silently.
    want = ref.embed([{"text": t, "instruction": INSTRUCTIONS[0]} for t in TEXTS])
    assert_close(embed(server, input=TEXTS, instruction=INSTRUCTIONS[0]), want)
    both = embed(server, input=TEXTS, instruction="ignored",
                 chat_template_kwargs={"instruction": INSTRUCTIONS[0]})  # fmt: skip
    assert_close(both, want)  # an explicit chat_template_kwargs key wins, as for rerank
    message = refuse(server, input=TEXTS, instruction=5)
    assert "instruction must be a string" in message


def test_chat_messages_with_instructions(server, ref) -> None:
    for instruction in INSTRUCTIONS:
        messages = [{"role": "system", "content": instruction}, *user(txt(TEXTS[0]))]
        want = ref.embed([{"text": TEXTS[0], "instruction": instruction}])
        assert_close(embed(server, messages=messages), want)
    # The instruction as a chat-template argument (as the reranker takes it).
    got = embed(
        server,
        messages=user(txt(TEXTS[0])),
        chat_template_kwargs={"instruction": INSTRUCTIONS[0]},
    )
    assert_close(got, ref.embed([{"text": TEXTS[0], "instruction": INSTRUCTIONS[0]}]))
    # A user-only conversation (as vLLM's example sends): the default instruction.
    assert_close(embed(server, messages=user(txt(TEXTS[2]))), ref.embed([{"text": TEXTS[2]}]))
    # Nothing in it: "NULL".
    assert_close(embed(server, messages=user()), ref.embed([{}]))


def test_parts_in_any_order(server, ref, clip) -> None:
    want = ref.embed(
        [{"text": ["a red ", "car"], "image": [IMAGES["odd"], IMAGES["rgba"]], "video": str(clip)}]
    )
    shuffled = user(txt("a red "), img(IMAGES["odd"]), vid(clip), txt("car"), img(IMAGES["rgba"]))
    got = embed(server, messages=shuffled, dimensions=64)
    assert_close(got, torch.nn.functional.normalize(want[:, :64], dim=-1))
    # Batched conversations, in "messages" and in "input"; a video alone; images of many shapes.
    items = [{"video": str(clip)}, *({"image": i, "text": "x"} for i in IMAGES.values())]
    conversations = [user(vid(clip))] + [user(txt("x"), img(i)) for i in IMAGES.values()]
    want = ref.embed(items)
    assert_close(embed(server, messages=conversations), want)
    assert_close(embed(server, input=conversations[:2]), want[:2])


def test_alone_equals_in_batch_and_dimensions(server, ref) -> None:
    batch = embed(server, input=TEXTS * 2, dimensions=128)
    alone = torch.cat([embed(server, input=t, dimensions=128) for t in TEXTS])
    assert_close(batch[:3], alone)
    assert_close(batch[3:], alone)
    assert_close(alone, ref.embed([{"text": t} for t in TEXTS], dimensions=128))
    assert_close(embed(server, input=TEXTS, dimensions=64), ref.embed(
        [{"text": t} for t in TEXTS], dimensions=64))  # fmt: skip
    for bad in (32, 129, 0):
        message = refuse(server, input=TEXTS[0], dimensions=bad)
        assert "64 to 128" in message or "[1, 128]" in message, message


def test_inputs_without_official_meaning_are_refused(server, clip) -> None:
    message = refuse(server, messages=[*user(txt("a")), {"role": "assistant", "content": "b"}])
    assert "messages[1].role" in message
    assert "one user message" in refuse(server, messages=user(txt("a")) + user(txt("b")))
    # vLLM refuses an untrusted template first; a trusted one is refused by the renderer
    # (test_embedding.py).
    message = refuse(server, messages=user(txt("a")), chat_template="{{ 'x' }}")
    assert "chat template" in message.lower()
    bad = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    # Bad media are named with the input that holds them (the middleware), as for /v1/rerank.
    message = refuse(server, messages=user(txt("a"), bad))
    assert message.startswith("messages[0]: image_url 'data:image/png;base64,AAAA'"), message
    message = refuse(server, input=[user(txt("a")), user(bad)])
    assert message.startswith("input[1]: image_url"), message
    # The server keeps serving.
    assert embed(server, input="still here").shape == (1, 128)


def test_truncation_is_the_official_right_cut(server, ref) -> None:
    # The official embedder cuts the tokenized prompt on the right at max_length (8192).
    long = " ".join(["music of the city"] * 20)
    ref.max_length = 30
    try:
        want = ref.embed([{"text": long}])
    finally:
        ref.max_length = 8192
    assert_close(embed(server, input=long, truncate_prompt_tokens=30), want)


def test_sensitivity(server, ref) -> None:
    """The comparisons above can fail: other prompts give vectors far from these."""
    got = embed(server, input=TEXTS[0])
    other = ref.embed([{"text": TEXTS[0], "instruction": INSTRUCTIONS[0]}])
    assert (got - other).abs().max() > 100 * ATOL
