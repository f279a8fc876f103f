"""The real `vllm serve` on 127.0.0.1 via the plugin: rerank, score, bad input, bench."""

from __future__ import annotations

import concurrent.futures as cf
import http.server
import io
import threading
from collections.abc import Iterator

import pytest
import requests
import torch
from bad_inputs import MediaHost, bad_requests, image_doc, red_png, red_png_url
from conftest import ATOL, Server, make_pairs, run_bench_serve, serve_args

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def server(checkpoints) -> Iterator[Server]:
    """One server for the module; per-request media kwargs allowed, so that bad values of
    them reach the plugin's checks. Started without ``--chat-template``: the model renders
    the official prompt itself (vLLM's ``get_score_template``), the path of a stock command
    line; test_multimodal.py's server has the flag."""
    args = serve_args(["--trust-request-mm-kwargs"])
    at = args.index("--chat-template")
    srv = Server(checkpoints["tied"], args[:at] + args[at + 2 :])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def media_host() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MediaHost)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def ref(checkpoints, reference_factory):
    return reference_factory(checkpoints["tied"])


def model_name(checkpoints) -> str:
    return str(checkpoints["tied"])


def test_rerank_matches_official_sorted_top_n(server, checkpoints, ref) -> None:
    query, docs = make_pairs(20, seed=5)
    want = ref.score({"text": query}, [{"text": d} for d in docs])
    r = server.post(
        "/v1/rerank",
        {"model": model_name(checkpoints), "query": query, "documents": docs, "top_n": 5},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert len(results) == 5
    got = [x["relevance_score"] for x in results]
    assert got == sorted(got, reverse=True)
    for x in results:
        assert x["relevance_score"] == pytest.approx(want[x["index"]], abs=ATOL)
        assert x["document"]["text"] == docs[x["index"]]
    best = sorted(range(len(docs)), key=lambda i: -want[i])[:5]
    assert [x["index"] for x in results] == best
    assert body["usage"]["prompt_tokens"] > 0


def test_score_endpoint_matches_official(server, checkpoints, ref) -> None:
    query, docs = make_pairs(8, seed=6)
    want = ref.score({"text": query}, [{"text": d} for d in docs])
    r = server.post(
        "/v1/score", {"model": model_name(checkpoints), "queries": query, "documents": docs}
    )
    assert r.status_code == 200, r.text
    got = [d["score"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    assert got == pytest.approx(want, abs=ATOL)


def _score_raw_prompt(ref, text: str) -> tuple[float, int]:
    """Official rule on an exact prompt string (no template applied)."""
    ids = torch.tensor([ref.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        ref.model.rope_deltas = None
        h = ref.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=torch.zeros_like(ids),
        ).last_hidden_state
    return torch.sigmoid(h[0, -1] @ ref.score_weight).item(), ids.shape[1]


def test_preformatted_request_is_not_templated_twice(server, checkpoints, ref) -> None:
    # The way the seed tutorial sends requests: prefix/suffix already applied.
    instruction = "Given a search query, retrieve relevant candidates that answer the query."
    query = f"{PREFIX}<Instruct>: {instruction}\n<Query>: cat\n"
    docs = [f"<Document>: {d}{SUFFIX}" for d in ("a cat is an animal", "stock market")]
    r = server.post(
        "/v1/rerank", {"model": model_name(checkpoints), "query": query, "documents": docs}
    )
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    total = 0
    for i, d in enumerate(docs):
        want, n_tokens = _score_raw_prompt(ref, query + d)
        assert got[i] == pytest.approx(want, abs=ATOL)
        total += n_tokens
    assert r.json()["usage"]["prompt_tokens"] == total  # one system prompt per pair, not two


def test_preformatted_prompt_not_in_official_shape_is_scored_as_sent(
    server, checkpoints, ref
) -> None:
    # issue 12 (5): one newline more than the official closing; nothing was truncated (its
    # last tokens used to be replaced by the closing turn: 4.9e-3 off)
    query = f"{PREFIX}<Instruct>: x\n<Query>: cat\n"
    docs = [f"<Document>: a cat{SUFFIX}\n", f"<Document>: a dog{SUFFIX}\n\n"]
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": query,
                                   "documents": docs})  # fmt: skip
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    for i, d in enumerate(docs):
        assert got[i] == pytest.approx(_score_raw_prompt(ref, query + d)[0], abs=ATOL)


def test_text_parts_and_empty_documents_score_officially(server, checkpoints, ref) -> None:
    # issue 12 (12 b, c): text parts joined with nothing, an empty document is "NULL"; the
    # results still show the documents as sent
    text = [{"type": "text", "text": "a red"}, {"type": "text", "text": " car"}]
    docs = [{"content": []}, {"content": text}, "a red car"]
    want = ref.score({"text": "city"}, [{}, {"text": ["a red", " car"]}, {"text": "a red car"}])
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": "city",
                                   "documents": docs})  # fmt: skip
    assert r.status_code == 200, r.text
    results = {x["index"]: x for x in r.json()["results"]}
    assert [results[i]["relevance_score"] for i in range(3)] == pytest.approx(want, abs=ATOL)
    assert [results[i]["document"]["multi_modal"] for i in range(2)] == [[], text]
    assert abs(want[1] - ref.score({"text": "city"}, [{"text": "a red\n car"}])[0]) > 1e-3


def test_truncation_counts_vision_tokens_when_the_text_fits(server, checkpoints, ref) -> None:
    # issue 12 (7): the text fits 300 tokens, the image's 144 vision tokens push the pair past
    # them: cut the official way (was scored whole)
    from PIL import Image
    from reference import KEEP_TAIL, OfficialReranker

    text = " ".join(["many words about a city"] * 12)
    png = Image.open(io.BytesIO(red_png(400, 400)))
    pair = ({"text": "city"}, {"image": png, "text": text})
    unexpanded = len(ref.tokenizer(ref.prompt(*pair))["input_ids"])
    expanded = OfficialReranker(checkpoints["tied"], max_length=10**6).encode(*pair)
    assert unexpanded < 300 < expanded["input_ids"].shape[1]
    image_part = {"type": "image_url", "image_url": {"url": red_png_url(400, 400)}}
    doc = {"content": [image_part, {"type": "text", "text": text}]}
    body = {"query": "city", "documents": [doc, text], "truncate_prompt_tokens": 300}
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), **body})
    assert r.status_code == 200, r.text
    text_only = len(ref.tokenizer(ref.prompt({"text": "city"}, {"text": text}))["input_ids"])
    assert r.json()["usage"]["prompt_tokens"] == 300 + text_only
    want = OfficialReranker(checkpoints["tied"], max_length=300 - KEEP_TAIL).score(
        {"text": "city"}, [pair[1], {"text": text}]
    )
    results = {x["index"]: x for x in r.json()["results"]}
    assert [results[i]["relevance_score"] for i in range(2)] == pytest.approx(want, abs=ATOL)
    assert results[1]["document"]["text"] == text  # shown as sent


def test_failed_truncated_request_leaves_nothing_behind(server, checkpoints, ref) -> None:
    # issue 12 (6): a truncated pair whose image then fails in the processor (aspect ratio)
    # used to leave its cut prompt recorded; a later pair whose prompt equals that cut one
    # (same query, the kept text, any image) was then cut by its vision tokens as well
    from PIL import Image
    from reference import KEEP_TAIL

    words = " ".join(["many words about a city"] * 20)
    full = ref.tokenizer(ref.prompt({"text": "city"}, {"image": "any", "text": words}))
    full = full["input_ids"]
    n = 90
    start = full.index(ref.tokenizer.convert_tokens_to_ids("<|vision_end|>")) + 1
    kept = ref.tokenizer.decode(full[start : n - KEEP_TAIL])
    again = ref.tokenizer(ref.prompt({"text": "city"}, {"image": "any", "text": kept}))
    assert again["input_ids"] == full[: n - KEEP_TAIL] + full[-KEEP_TAIL:]  # the cut prompt
    bad = {"type": "image_url", "image_url": {"url": red_png_url(1, 300)}}
    first = {"query": "city", "documents": [{"content": [bad, {"type": "text", "text": words}]}],
             "truncate_prompt_tokens": n}  # fmt: skip
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), **first})
    assert r.status_code == 400 and "aspect ratio" in r.text, r.text
    good = {"type": "image_url", "image_url": {"url": red_png_url(64, 64)}}
    doc = {"content": [good, {"type": "text", "text": kept}]}
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": "city",
                                   "documents": [doc]})  # fmt: skip
    assert r.status_code == 200, r.text
    png = Image.open(io.BytesIO(red_png(64, 64)))
    want = ref.score({"text": "city"}, [{"image": png, "text": kept}])
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(want[0], abs=ATOL)


def test_truncation_keeps_an_image_the_cut_removed(server, checkpoints, media_host) -> None:
    # issue 12 (4): a ~600-word query, a document that is one image, 200 tokens: the cut
    # falls in the query, before the image (was a 500: "Failed to apply prompt replacement")
    from PIL import Image
    from reference import KEEP_TAIL, OfficialReranker

    query = " ".join(["many words about a city"] * 120)
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": query,
                                   "documents": [image_doc(media_host + "/img/cat.png")],
                                   "truncate_prompt_tokens": 200})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 200
    png = Image.open(io.BytesIO(red_png()))
    want = OfficialReranker(checkpoints["tied"], max_length=200 - KEEP_TAIL).score(
        {"text": query}, [{"image": png}]
    )
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(want[0], abs=ATOL)


BAD_NAMES = list(bad_requests("http://h"))


def post_bad(server, checkpoints, host: str, name: str) -> requests.Response:
    body, _, _ = bad_requests(host)[name]
    if isinstance(body, bytes):
        return requests.post(server.url + "/v1/rerank", data=body, timeout=120,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    return server.post("/v1/rerank", {"model": model_name(checkpoints), **body})


def check_bad(name: str, host: str, r: requests.Response) -> None:
    _, status, phrase = bad_requests(host)[name]
    assert r.status_code == status, (name, r.status_code, r.text)
    payload = r.json()
    # FastAPI's own body-parsing error keeps its {"detail": ...} form in stock vLLM
    message = payload["error"]["message"] if "error" in payload else payload["detail"]
    assert phrase in message, (name, message)
    assert "[media " not in message and "<path>" not in message, (name, message)
    if name.startswith("look-alike"):
        assert "documents[0]" not in message, message


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_input_is_a_clear_error_and_server_keeps_serving(
    server, checkpoints, media_host, name
) -> None:
    check_bad(name, media_host, post_bad(server, checkpoints, media_host, name))
    ok = server.post(
        "/v1/rerank", {"model": model_name(checkpoints), "query": "cat", "documents": ["a cat"]}
    )
    assert ok.status_code == 200


def test_bad_inputs_with_good_requests_in_flight_then_parity(
    server, checkpoints, media_host, ref
) -> None:
    """Every bad input at once, good requests in flight: each bad one gets its answer, every
    good one its official scores, and afterwards the server still scores exactly."""
    query, docs = make_pairs(6, seed=11)
    want = ref.score({"text": query}, [{"text": d} for d in docs])
    good = {"model": model_name(checkpoints), "query": query, "documents": docs}

    def scores(r: requests.Response) -> list[float]:
        assert r.status_code == 200, r.text
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        return [got[i] for i in range(len(docs))]

    with cf.ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(server.post, "/v1/rerank", good) for _ in range(6)]
        bads = {n: pool.submit(post_bad, server, checkpoints, media_host, n) for n in BAD_NAMES}
        goods += [pool.submit(server.post, "/v1/rerank", good) for _ in range(6)]
        for name, future in bads.items():
            check_bad(name, media_host, future.result())
        for future in goods:
            assert scores(future.result()) == pytest.approx(want, abs=ATOL)
    assert scores(server.post("/v1/rerank", good)) == pytest.approx(want, abs=ATOL)


def test_empty_query_is_rejected(server, checkpoints) -> None:
    r = server.post(
        "/v1/rerank", {"model": model_name(checkpoints), "query": "", "documents": ["a"]}
    )
    assert r.status_code == 400, r.text


def test_unknown_model_is_404(server) -> None:
    r = server.post("/v1/rerank", {"model": "no-such-model", "query": "q", "documents": ["d"]})
    assert r.status_code == 404, r.text


def test_over_long_input_with_truncation_is_scored(server, checkpoints) -> None:
    from reference import KEEP_TAIL, OfficialReranker

    doc = "word " * 3000
    r = server.post(
        "/v1/rerank",
        {
            "model": model_name(checkpoints),
            "query": "cat",
            "documents": [doc],
            "truncate_prompt_tokens": -1,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 1024  # cut to --max-model-len exactly
    # The official rule cut to the same length: max_length ids, then the 5-id closing turn.
    want = OfficialReranker(checkpoints["tied"], max_length=1024 - KEEP_TAIL).score(
        {"text": "cat"}, [{"text": doc}]
    )
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(want[0], abs=ATOL)


def test_concurrent_requests_agree_with_sequential(server, checkpoints) -> None:
    query, docs = make_pairs(6, seed=9)
    body = {"model": model_name(checkpoints), "query": query, "documents": docs}
    first = server.post("/v1/rerank", body).json()["results"]
    with cf.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: server.post("/v1/rerank", body), range(16)))
    for r in outs:
        assert r.status_code == 200
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        for x in first:
            assert got[x["index"]] == pytest.approx(x["relevance_score"], abs=1e-6)


def test_vllm_bench_serve_rerank(server, checkpoints) -> None:
    run_bench_serve(server, model_name(checkpoints), prompts=40)
