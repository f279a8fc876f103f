"""Images and videos through the plugin against the official scorer (fp32, 1e-4).

Queries and documents mix text, images and videos, through ``LLM.score`` (prefix caching off)
and the real ``vllm serve`` (prefix caching on): the extended reference (tests/reference.py)
reproduces the official resize, frame sampling, placeholder layout and truncation. Bad media
must be a clear 4xx while other requests keep being served.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math

import pytest
from conftest import ATOL, Server, close_llm, make_llm, serve_args
from media_helpers import bad_media, image, img, txt, vid, write_video

QUERY = "a red car in the city"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("media")
    return {
        "odd": image(50, 70, 1),  # sides not multiples of 32, below the 4,096 px minimum
        "narrow": image(12, 300, 2),  # one side under 16 px: official max(32, ...) step
        "tiny": image(17, 23, 3),  # both sides under 32 px
        "tall": image(333, 121, 4),
        "square": image(64, 64, 5),  # already official: no resampling at all
        "query": image(90, 60, 6),
        # 5 s at 10 fps: 1 fps gives 5 frames, the official even count is 4 (vLLM's own: 5)
        "video": write_video(root / "clip.mp4", frames=50, fps=10, h=72, w=96),
    }


@pytest.fixture(scope="module")
def docs(media) -> dict[str, tuple[object, dict]]:
    """name -> (vLLM document, reference document). Content parts are given in the client's
    order; the official order (videos, images, text) is the plugin's job."""
    m = media
    return {
        "image": ({"content": [img(m["odd"])]}, {"image": m["odd"]}),
        "text+image": (
            {"content": [txt("a red car"), img(m["odd"])]},
            {"text": "a red car", "image": m["odd"]},
        ),
        "text": ("a blue river", {"text": "a blue river"}),
        "narrow": (
            {"content": [img(m["narrow"]), txt("strip")]},
            {"image": m["narrow"], "text": "strip"},
        ),
        "tiny": ({"content": [img(m["tiny"])]}, {"image": m["tiny"]}),
        "two images": (
            {"content": [img(m["tall"]), txt("two"), img(m["square"])]},
            {"image": [m["tall"], m["square"]], "text": "two"},
        ),
        "video": ({"content": [vid(m["video"])]}, {"video": m["video"]}),
        "text+image+video": (
            {"content": [txt("a clip"), img(m["square"]), vid(m["video"])]},
            {"text": "a clip", "image": m["square"], "video": m["video"]},
        ),
        # issue 12 (12 a): a video and an image paired with their embeddings whatever the order
        "video+image": (
            {"content": [vid(m["video"]), img(m["tall"])]},
            {"image": m["tall"], "video": m["video"]},
        ),
    }


@pytest.fixture(scope="module")
def ref(checkpoints, reference_factory):
    return reference_factory(checkpoints["tied"])


@pytest.fixture(scope="module")
def expected(ref, docs) -> dict[str, float]:
    return {name: ref.score({"text": QUERY}, [r])[0] for name, (_, r) in docs.items()}


def test_reference_media_rules(ref, media) -> None:
    """The reference follows the official rules the plugin must match (sizes, frames)."""
    import reference

    assert reference.smart_resize(12, 300) == (32, 288)  # max(32, round(12/32)*32) = 32
    assert reference.smart_resize(17, 23) == (64, 96)
    assert reference.smart_nframes(50, 10.0) == 4  # 5 s at 1 fps, even count
    assert reference.smart_nframes(300, 10.0) == 30
    assert reference.smart_nframes(3000, 10.0) == 64
    enc = ref.encode({"text": "q"}, {"video": media["video"]})
    assert enc["video_grid_thw"].tolist() == [[2, 20, 28]]  # 4 frames of 320 x 448 px
    text = ref.tokenizer.decode(enc["input_ids"][0])
    # frames 0, 16, 33, 49 of 50 at 10 fps; no outer <|vision_start|> around the video
    assert "<Document>:<0.8 seconds><|vision_start|>" in text
    assert text.count("<|vision_start|>") == 2


# ---- offline: LLM.score, prefix caching off -------------------------------------------------
@pytest.fixture(scope="module")
def llm(checkpoints):
    engine = make_llm(checkpoints["tied"], enable_prefix_caching=False)
    yield engine
    close_llm(engine)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def _scores(outputs) -> list[float]:
    return [o.outputs.score for o in outputs]


def test_mixed_batch_matches_official(llm, docs, expected) -> None:
    names = list(docs)
    outs = llm.score(QUERY, [docs[n][0] for n in names])
    assert len(outs) == len(names)  # a document with text + image + video is ONE score
    got = dict(zip(names, _scores(outs), strict=True))
    for name in names:
        assert got[name] == pytest.approx(expected[name], abs=ATOL), name
        # Near 0 or 1 a score hides its logit: compare logits too.
        assert logit(got[name]) == pytest.approx(logit(expected[name]), abs=1e-2), name
    spread = [expected[n] for n in names]
    assert max(spread) - min(spread) > 0.05, spread  # media change the scores


def test_alone_equals_in_batch(llm, docs) -> None:
    names = ["video", "text", "two images", "tiny"]
    batch = _scores(llm.score(QUERY, [docs[n][0] for n in names]))
    for name, in_batch in zip(names, batch, strict=True):
        alone = _scores(llm.score(QUERY, docs[name][0]))[0]
        assert alone == pytest.approx(in_batch, abs=1e-6), name


def test_image_query_vs_text_documents(llm, media, ref) -> None:
    query = {"content": [img(media["query"]), txt("which one?")]}
    texts = ["a red car", "a green tree", "yes", "a picture of a city street at night"]
    want = ref.score({"image": media["query"], "text": "which one?"}, [{"text": t} for t in texts])
    got = _scores(llm.score(query, texts))
    assert got == pytest.approx(want, abs=ATOL)


def test_official_prompt_once_media_first(llm, media, ref) -> None:
    """Token ids equal the official ones: one system prompt, media before text."""
    doc = {"content": [txt("words first"), img(media["odd"]), vid(media["video"])]}
    out = llm.score(QUERY, doc)[0]
    enc = ref.encode(
        {"text": QUERY}, {"text": "words first", "image": media["odd"], "video": media["video"]}
    )
    assert out.prompt_token_ids == enc["input_ids"][0].tolist()


def test_truncation_keeps_closing_turn_and_media(llm, media, ref, checkpoints) -> None:
    from reference import OfficialReranker

    long_doc = " ".join(["many words about a city"] * 60)
    n = 150
    image_doc = {"content": [img(media["odd"]), txt(long_doc)]}
    outs = llm.score(
        QUERY,
        [long_doc, image_doc, image_doc],  # the same pair twice: each is cut the same way
        tokenization_kwargs={"truncate_prompt_tokens": n},
    )
    text_out, image_out, again = outs
    assert again.prompt_token_ids == image_out.prompt_token_ids
    assert again.outputs.score == pytest.approx(image_out.outputs.score, abs=1e-6)  # batch position
    assert len(text_out.prompt_token_ids) == n
    closing = ref.tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n")
    assert text_out.prompt_token_ids[-5:] == closing == image_out.prompt_token_ids[-5:]
    # text only: the official result with max_length = n - 5
    want = OfficialReranker(checkpoints["tied"], max_length=n - 5)
    assert text_out.outputs.score == pytest.approx(
        want.score({"text": QUERY}, [{"text": long_doc}])[0], abs=ATOL
    )
    # with an image: the official max_length counts its vision tokens, so the pair is n too
    assert len(image_out.prompt_token_ids) == n
    want = OfficialReranker(checkpoints["tied"], max_length=n - 5)
    assert image_out.outputs.score == pytest.approx(
        want.score({"text": QUERY}, [{"image": media["odd"], "text": long_doc}])[0], abs=ATOL
    )


def test_vision_tokens_past_max_model_len_are_cut_officially(llm, checkpoints) -> None:
    """Text that fits, images that push the pair past max_model_len (1024 here): cut the
    official way rather than rejected, whether the cut is only the document's text tail or
    reaches the query, moving the image placeholders."""
    from reference import OfficialReranker

    big = image(800, 800, 7)  # 625 vision tokens
    long_text = " ".join(["many words about a city"] * 35)  # ~420 tokens
    outs = llm.score(
        [QUERY, long_text],
        [{"content": [img(big), txt(long_text)]}, {"content": [img(big)]}],
    )
    assert [len(o.prompt_token_ids) for o in outs] == [1024, 1024]
    want = OfficialReranker(checkpoints["tied"], max_length=1024 - 5)
    expected = [
        want.score({"text": QUERY}, [{"image": big, "text": long_text}])[0],
        want.score({"text": long_text}, [{"image": big}])[0],
    ]
    assert _scores(outs) == pytest.approx(expected, abs=ATOL)


# ---- online: vllm serve, prefix caching on -----------------------------------------------------
@pytest.fixture(scope="module")
def mm_server(checkpoints):
    limits = json.dumps({"image": 3, "video": 1})
    srv = Server(
        checkpoints["tied"],
        serve_args(["--limit-mm-per-prompt", limits, "--trust-request-mm-kwargs"]),
    )
    yield srv
    srv.stop()


def model_name(checkpoints) -> str:
    return str(checkpoints["tied"])


def test_rerank_mixed_documents(mm_server, checkpoints, docs, expected) -> None:
    names = list(docs)
    body = {
        "model": model_name(checkpoints),
        "query": QUERY,
        "documents": [docs[n][0] for n in names],
    }
    for _ in range(2):  # the second pass reads system prompt and query from the prefix cache
        r = mm_server.post("/v1/rerank", body)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(names)
        for x in results:
            assert x["relevance_score"] == pytest.approx(expected[names[x["index"]]], abs=ATOL)
        assert r.json()["usage"]["prompt_tokens"] > 0


def test_image_query_rerank_with_prefix_cache(mm_server, checkpoints, media, ref) -> None:
    texts = ["a red car", "a dog", "an old city map", "no"]
    want = ref.score({"image": media["query"]}, [{"text": t} for t in texts])
    body = {
        "model": model_name(checkpoints),
        "query": {"content": [img(media["query"])]},
        "documents": texts,
    }
    for _ in range(2):  # second pass: the query image's blocks come from the prefix cache
        r = mm_server.post("/v1/rerank", body)
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        assert [got[i] for i in range(len(texts))] == pytest.approx(want, abs=ATOL)


def test_score_endpoint_media(mm_server, checkpoints, docs, expected) -> None:
    names = ["text+image", "video", "text"]
    r = mm_server.post(
        "/v1/score",
        {
            "model": model_name(checkpoints),
            "queries": QUERY,
            "documents": [docs[n][0] for n in names],
        },
    )
    assert r.status_code == 200, r.text
    got = [d["score"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    assert got == pytest.approx([expected[n] for n in names], abs=ATOL)


def test_instruction_per_request(mm_server, checkpoints, ref, media) -> None:
    # This server has --chat-template, which applies a request's instruction (test_server.py:
    # without the flag it is a 400).
    instruction = "Find documents about money."
    docs = ["river bank water", {"content": [img(media["square"]), txt("money in the bank")]}]
    want = ref.score({"text": "bank"}, [{"text": docs[0]},
                     {"image": media["square"], "text": "money in the bank"}],
                     instruction=instruction)  # fmt: skip
    r = mm_server.post("/v1/rerank", {"model": model_name(checkpoints), "query": "bank",
                                      "documents": docs, "instruction": instruction})  # fmt: skip
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert [got[0], got[1]] == pytest.approx(want, abs=ATOL)


def test_request_overrides_pixel_bounds(mm_server, checkpoints, media, reference_factory) -> None:
    """Official bounds are defaults: a request's mm_processor_kwargs still win."""
    from reference import OfficialReranker

    big = media["tall"]  # 333 x 121 px: 40,293 px, above the 8,192 px asked for here
    r = mm_server.post(
        "/v1/rerank",
        {
            "model": model_name(checkpoints),
            "query": QUERY,
            "documents": [{"content": [img(big)]}],
            "mm_processor_kwargs": {"max_pixels": 8192},
        },
    )
    assert r.status_code == 200, r.text
    want = OfficialReranker(checkpoints["tied"], max_pixels=8192).score(
        {"text": QUERY}, [{"image": big}]
    )
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(want[0], abs=ATOL)
    default = reference_factory(checkpoints["tied"]).score({"text": QUERY}, [{"image": big}])
    assert abs(default[0] - want[0]) > 1e-4  # the override did change the input


def test_bad_media_is_a_clear_4xx_and_others_are_served(
    mm_server, checkpoints, media, docs, expected, tmp_path
) -> None:
    cases = bad_media(media, tmp_path)
    good = {
        "model": model_name(checkpoints),
        "query": QUERY,
        "documents": [docs["text+image"][0], docs["video"][0]],
    }

    def bad(name: str):
        doc = cases[name][0]
        doc = doc if "content" in doc else {"content": [doc]}
        body = {"model": model_name(checkpoints), "query": QUERY, "documents": ["fine", doc]}
        return name, mm_server.post("/v1/rerank", body, timeout=60)

    with cf.ThreadPoolExecutor(6) as pool:  # good requests in flight alongside the bad ones
        good_futures = [pool.submit(mm_server.post, "/v1/rerank", good) for _ in range(4)]
        results = list(pool.map(bad, cases))
        good_results = [f.result() for f in good_futures]
    for name, r in results:
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        message = r.json()["error"]["message"]
        assert cases[name][1] in message, (name, message)
        # failures of a media URL name the document holding it; the other two are found
        # after loading (vLLM's item count, the official aspect-ratio limit) and name no URL
        if name not in ("too many images", "extreme aspect"):
            assert message.startswith("documents[1]: "), (name, message)
    for r in good_results:
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        assert got[0] == pytest.approx(expected["text+image"], abs=ATOL)
        assert got[1] == pytest.approx(expected["video"], abs=ATOL)
    assert mm_server.post("/v1/rerank", good).status_code == 200  # still serving


def test_unreachable_media_host_is_a_retryable_503(mm_server, checkpoints) -> None:
    # Nothing listens on port 9: stock vLLM keeps such a failure retryable (5xx), so does
    # the plugin, with the document named and the URL as sent (its path is not "<path>").
    url = "http://127.0.0.1:9/img/cats/cat.png"
    doc = {"content": [{"type": "image_url", "image_url": {"url": url}}]}
    body = {"model": model_name(checkpoints), "query": QUERY, "documents": ["fine", doc]}
    r = mm_server.post("/v1/rerank", body)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["message"].startswith(
        f"documents[1]: image_url {url!r} could not be fetched, a retry may succeed: "
    ), r.text


def test_bad_media_in_score_names_the_input(mm_server, checkpoints, media) -> None:
    broken = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}
    body = {
        "model": model_name(checkpoints),
        "queries": {"content": [img(media["query"]), txt("a car")]},
        "documents": ["fine", "also fine", {"content": [txt("x"), broken]}],
    }
    r = mm_server.post("/v1/score", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("documents[2]: image_url "), r.text
    body["queries"] = {"content": [broken]}  # the query itself
    body["documents"] = ["fine"]
    r = mm_server.post("/v1/score", body)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("queries: "), r.text
