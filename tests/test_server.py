"""The real `vllm serve` on 127.0.0.1 via the plugin: rerank, score, bad input, bench."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ATOL, make_pairs

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def ref(checkpoints, reference_factory):
    return reference_factory(checkpoints["tied"])


def model_name(checkpoints) -> str:
    return str(checkpoints["tied"])


def test_rerank_matches_official_sorted_top_n(server, checkpoints, ref) -> None:
    query, docs = make_pairs(20, seed=5)
    want = ref.score({"text": query}, [{"text": d} for d in docs])
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": query,
                                   "documents": docs, "top_n": 5})
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
    r = server.post("/v1/score", {"model": model_name(checkpoints), "queries": query,
                                  "documents": docs})
    assert r.status_code == 200, r.text
    got = [d["score"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    assert got == pytest.approx(want, abs=ATOL)


def test_instruction_per_request(server, checkpoints, ref) -> None:
    instruction = "Find documents about money."
    query, docs = "bank", ["river bank water", "money in the bank", "music piano"]
    want = ref.score({"text": query}, [{"text": d} for d in docs], instruction=instruction)
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": query,
                                   "documents": docs, "instruction": instruction})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    assert [got[i] for i in range(3)] == pytest.approx(want, abs=ATOL)


def _score_raw_prompt(ref, text: str) -> tuple[float, int]:
    """Official rule on an exact prompt string (no template applied)."""
    ids = torch.tensor([ref.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        ref.model.rope_deltas = None
        h = ref.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                      mm_token_type_ids=torch.zeros_like(ids)).last_hidden_state
    return torch.sigmoid(h[0, -1] @ ref.score_weight).item(), ids.shape[1]


def test_preformatted_request_is_not_templated_twice(server, checkpoints, ref) -> None:
    # The way the seed tutorial sends requests: prefix/suffix already applied.
    instruction = "Given a search query, retrieve relevant candidates that answer the query."
    query = f"{PREFIX}<Instruct>: {instruction}\n<Query>: cat\n"
    docs = [f"<Document>: {d}{SUFFIX}" for d in ("a cat is an animal", "stock market")]
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": query,
                                   "documents": docs})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    total = 0
    for i, d in enumerate(docs):
        want, n_tokens = _score_raw_prompt(ref, query + d)
        assert got[i] == pytest.approx(want, abs=ATOL)
        total += n_tokens
    assert r.json()["usage"]["prompt_tokens"] == total  # one system prompt per pair, not two


BAD_REQUESTS = {
    "empty documents": {"query": "cat", "documents": []},
    "missing query": {"documents": ["a"]},
    "query wrong type": {"query": 5, "documents": ["a"]},
    "documents wrong type": {"query": "cat", "documents": "not-a-list-of-docs-" * 0 or 7},
    "over-long document": {"query": "cat", "documents": ["word " * 3000]},
    "negative top_n": {"query": "cat", "documents": ["a"], "top_n": "x"},
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_is_a_clear_4xx_and_server_keeps_serving(server, checkpoints, name) -> None:
    body = {"model": model_name(checkpoints), **BAD_REQUESTS[name]}
    r = server.post("/v1/rerank", body)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert r.json().get("error", {}).get("message") or r.json().get("message"), r.text
    ok = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": "cat",
                                    "documents": ["a cat"]})
    assert ok.status_code == 200


def test_empty_query_is_rejected(server, checkpoints) -> None:
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": "",
                                   "documents": ["a"]})
    assert r.status_code == 400, r.text


def test_unknown_model_is_404(server) -> None:
    r = server.post("/v1/rerank", {"model": "no-such-model", "query": "q", "documents": ["d"]})
    assert r.status_code == 404, r.text


def test_over_long_input_with_truncation_is_scored(server, checkpoints) -> None:
    r = server.post("/v1/rerank", {"model": model_name(checkpoints), "query": "cat",
                                   "documents": ["word " * 3000], "truncate_prompt_tokens": -1})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] <= 1024


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
    cmd = [
        str(Path(sys.executable).parent / "vllm"), "bench", "serve",
        "--backend", "vllm-rerank", "--dataset-name", "random-rerank",
        "--endpoint", "/v1/rerank", "--model", model_name(checkpoints),
        "--base-url", server.url, "--num-prompts", "40", "--random-input", "60",
        "--seed", "0",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "Successful requests:" in text, text[-2000:]
    ok = int(text.split("Successful requests:")[1].split()[0])
    failed = int(text.split("Failed requests:")[1].split()[0]) if "Failed requests:" in text else 0
    assert ok == 40 and failed == 0, text[-2000:]
