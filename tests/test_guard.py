"""The scoring routes' API key and body limit (``vllm_ascend_rerank.guard``), in vLLM's own
app stack (``init_entrypoints_middleware`` with the platform's default ``--middleware``).

Stock vLLM 0.34 leaves ``/rerank`` and ``/score`` open under ``--api-key`` and never applies
``VLLM_HTTP_MAX_REQUEST_BODY_SIZE``: ``plugin=False`` below shows both, so each check here
fails without the guard.
"""

from __future__ import annotations

from argparse import Namespace

import pytest
from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from vllm_ascend_rerank import guard, middleware

KEY = "secret-key"
BODY = {"query": "q", "documents": ["a"]}


def app_with(api_key: list[str] | None, plugin: bool = True) -> tuple[FastAPI, list[int]]:
    """A FastAPI app with scoring routes behind vLLM's middleware; the list counts the bytes
    each route call read."""
    from vllm.entrypoints.serve.middleware.register import init_entrypoints_middleware

    app, reads = FastAPI(), []

    async def score(raw_request: Request) -> dict:
        body = b""
        async for chunk in raw_request.stream():
            body += chunk
        reads.append(len(body))
        return {"ok": True}

    for path in ("/rerank", "/v1/rerank", "/score", "/v1/score"):
        app.post(path)(score)
    args = Namespace(
        allowed_origins=["*"], allow_credentials=False, allowed_methods=["*"],
        allowed_headers=["*"], api_key=api_key, enable_request_id_headers=False,
        middleware=[middleware.PATH, guard.PATH] if plugin else [],
    )  # fmt: skip
    app.state.args = args  # as vllm serve keeps them
    init_entrypoints_middleware(args, app, ("score",))
    return app, reads


@pytest.mark.parametrize("path", ["/rerank", "/score", "/v1/rerank", "/v1/score"])
def test_every_scoring_route_asks_for_the_key(path: str) -> None:
    app, reads = app_with([KEY])
    client = TestClient(app)
    r = client.post(path, json=BODY)
    assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
    r = client.post(path, json=BODY, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert reads == []  # refused before the route read anything
    r = client.post(path, json=BODY, headers={"Authorization": f"Bearer {KEY}"})
    assert (r.status_code, r.json()) == (200, {"ok": True})


def test_stock_vllm_leaves_the_aliases_open() -> None:
    # Why the guard exists: if vLLM starts guarding them, this fails and the alias check can go.
    app, _ = app_with([KEY], plugin=False)
    assert TestClient(app).post("/rerank", json=BODY).status_code == 200


def test_key_from_the_environment_and_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    app, _ = app_with(None)
    assert TestClient(app).post("/score", json=BODY).status_code == 401
    monkeypatch.delenv("VLLM_API_KEY")
    app, _ = app_with(None)
    assert TestClient(app).post("/score", json=BODY).status_code == 200


def test_body_over_the_limit_is_a_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_HTTP_MAX_REQUEST_BODY_SIZE", "1000")
    app, reads = app_with(None)
    client = TestClient(app)
    big = b'{"query": "q", "documents": ["' + b"a" * 2000 + b'"]}'
    r = client.post("/v1/rerank", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "VLLM_HTTP_MAX_REQUEST_BODY_SIZE" in r.json()["error"]["message"]
    assert reads == []  # Content-Length said so: nothing read

    def chunks():  # no Content-Length: refused once 1000 bytes have arrived
        for _ in range(5):
            yield b"a" * 400

    r = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert reads == []  # the route never got a whole body
    small = client.post("/v1/rerank", json=BODY)
    assert small.status_code == 200 and reads == [len(small.request.content)]
    other, _ = app_with(None, plugin=False)  # stock vLLM: no limit at all
    stock = TestClient(other).post("/v1/rerank", content=big)
    assert stock.status_code == 200
