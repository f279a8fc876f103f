"""The middleware that names the input behind a bad-media error.

Pure functions, then vLLM's own FastAPI wiring (``init_entrypoints_middleware`` with
``--api-key``, vLLM's exception handlers, its ``RerankRequest``) driven as ASGI, so what the
middleware reads from the client is counted. The real server path is in test_multimodal.py
and test_server.py.
"""

from __future__ import annotations

import asyncio
import json
from argparse import Namespace
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Request
from vllm.entrypoints.pooling.scoring.protocol import RerankRequest

from vllm_ascend_rerank import guard, middleware
from vllm_ascend_rerank.media_connector import media_error, shown_url

LONG = "data:image/png;base64," + "A" * 500
KEY = "secret-key"


class ImageMediaIO:  # media_error names the item after the class, as vLLM's is named
    pass


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def error(url: str, exc: Exception | None = None) -> bytes:
    """The JSON a vLLM server sends for a media item that failed (vLLM's own error path)."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    exc = media_error(url, ImageMediaIO(), exc or ValueError("cannot identify image file"))
    return create_error_response(exc).model_dump_json().encode()


def amended(body: dict, url: str, exc: Exception | None = None) -> dict:
    out = middleware.amend(json.dumps(body).encode(), error(url, exc))
    assert out is not None
    payload = json.loads(out)["error"]
    # vLLM appends " (parameter=image_url)" to a validation error's text
    payload["message"] = payload["message"].split(" (parameter=")[0]
    return payload


def test_names_every_input_holding_the_url() -> None:
    body = {
        "query": "q",
        "documents": ["a", {"content": [{"type": "text", "text": "b"}, image(LONG)]}, image(LONG)],
    }
    out = amended(body, LONG)
    assert out["message"] == (
        f"documents[1], documents[2]: image_url {shown_url(LONG)!r}: cannot identify image file"
    )
    assert out["param"] == "documents[1], documents[2]"
    assert out["code"] == 400  # the rest of the error is kept


def test_urls_that_look_alike_are_told_apart() -> None:
    # Same first 48 characters and same length: the shortened form shown is the same.
    a, b = LONG[:-1] + "B", LONG[:-1] + "C"
    assert shown_url(a) == shown_url(b)
    body = {"query": "q", "documents": [image(a), image(b), "c"]}
    assert amended(body, b)["message"].startswith("documents[1]: image_url ")


@pytest.mark.parametrize(
    "url",
    [
        "http://media.example.com:9/img/cats/cat.png",  # a path sanitize_message rewrites
        "https://cdn.example.com/a/b/c/photo.jpeg?size=large",
        "file:///tmp/media/cat.png",
    ],
)
def test_real_world_urls_are_named_and_shown_as_sent(url: str) -> None:
    other = url.replace("cat", "dog").replace("photo", "other")  # sanitized the same way
    body = {"query": "q", "documents": [image(other), {"content": [image(url)]}]}
    out = amended(body, url)
    assert out["message"] == f"documents[1]: image_url {url!r}: cannot identify image file"
    assert "[media " not in out["message"]


def test_score_fields_and_a_single_query() -> None:
    body = {"data_1": {"content": [image("http://x/a.png")]}, "data_2": ["d"]}
    assert amended(body, "http://x/a.png")["message"].startswith(
        "data_1: image_url 'http://x/a.png'"
    )


def test_leaves_other_errors_alone() -> None:
    body = json.dumps({"query": "q", "documents": [image("http://x/a.png")]}).encode()
    assert middleware.amend(body, b"not json") is None
    other = json.dumps({"error": {"message": "At most 3 image(s)"}}).encode()
    assert middleware.amend(body, other) is None
    # a tagged error whose URL no input holds keeps its message, without the tag
    out = json.loads(middleware.amend(body, error("http://elsewhere/b.png")))["error"]
    assert out["message"].startswith("image_url 'http:/<path>': cannot identify image")
    assert "[media " not in out["message"] and out["param"] == "image_url"


def test_deeply_nested_body_is_no_recursion_error() -> None:
    deep = "[" * 3000 + "]" * 3000  # deeper than json.loads allows
    body = '{"query": "q", "documents": [' + deep + "]}"
    out = json.loads(middleware.amend(body.encode(), error("http://x/a.png")))["error"]
    assert out["message"].startswith("image_url ")
    nested: Any = image("http://x/a.png")  # deep, but parseable: walked without recursion
    for _ in range(900):
        nested = [nested]
    text = json.dumps({"query": "q", "documents": ["a", nested]})
    assert json.loads(middleware.amend(text.encode(), error("http://x/a.png")))["error"][
        "message"
    ].startswith("documents[1]: ")


def test_retryable_fetch_failures_are_503_and_named() -> None:
    import aiohttp
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    url = "http://media.example.com/img/cat.png"
    info = aiohttp.RequestInfo(url, "GET", {}, url)  # type: ignore[arg-type]

    def status(exc: Exception) -> int:
        return create_error_response(media_error(url, ImageMediaIO(), exc)).error.code

    for code in (500, 502, 503, 429, 408):
        assert status(aiohttp.ClientResponseError(info, (), status=code)) == 503, code
    assert status(TimeoutError()) == 503
    host = SimpleNamespace(host="media.example.com", port=80, ssl=True)
    assert status(aiohttp.ClientConnectorDNSError(host, OSError("no such host"))) == 503
    assert status(ConnectionRefusedError()) == 503
    from vllm.exceptions import VLLMUnprocessableEntityError

    permanent = VLLMUnprocessableEntityError("Failed to fetch media from URL: HTTP 404 error")
    assert status(permanent) == 422  # what vLLM's connector makes of a 4xx from the host
    out = amended({"query": "q", "documents": ["a", image(url)]}, url, TimeoutError())
    assert out["code"] == 503 and out["message"].startswith(f"documents[1]: image_url {url!r}")


# ---- vLLM's own app wiring, driven as ASGI ---------------------------------------------------
def vllm_app(plugin: bool = True) -> Any:
    """FastAPI with vLLM's middleware registration (``--api-key``, ``--middleware``), its
    exception handlers and a rerank route that parses vLLM's RerankRequest and loads media
    like the real one fails (through ``media_error``)."""
    from fastapi import FastAPI
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
    from vllm.entrypoints.serve.middleware.register import init_entrypoints_middleware

    app = FastAPI()
    app.state.args = Namespace(log_error_stack=False)
    init_exception_handler(app)

    @app.post("/v1/rerank")
    async def rerank(request: RerankRequest, raw_request: Request) -> dict:
        for document in (await raw_request.json())["documents"]:
            for url in middleware._urls(document):
                raise media_error(url, ImageMediaIO(), ValueError("cannot identify image file"))
        return {"results": []}

    @app.post("/v1/score")  # reads the first chunk only, as a route may
    async def score(raw_request: Request) -> dict:
        async for _ in raw_request.stream():
            break
        return {"data": []}

    args = Namespace(
        allowed_origins=["*"], allow_credentials=False, allowed_methods=["*"],
        allowed_headers=["*"], api_key=[KEY], enable_request_id_headers=False,
        middleware=[middleware.PATH] if plugin else [],
    )  # fmt: skip
    init_entrypoints_middleware(args, app, ("score",))
    return app


def call(
    app: Any, path: str, chunks: list[bytes], key: str | None = KEY, disconnect: bool = False
) -> tuple[int, dict, int]:
    """POST ``chunks`` to ``app``: (status, JSON body, number of chunks the app pulled)."""
    pulled = 0
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            last = pulled == len(chunks) and not disconnect
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": not last}
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # the client keeps the connection open
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    body = json.loads(out["body"]) if out["body"] else {}
    return out["status"], body, pulled


def body_chunks(body: dict, pad: int = 0, size: int = 65536) -> list[bytes]:
    data = json.dumps({**body, "pad": " " * pad}).encode()
    return [data[i : i + size] for i in range(0, len(data), size)]


REQUEST = {
    "model": "m",
    "query": "q",
    "documents": ["a", {"content": [image("http://h:9/img/cat.png")]}],
}


def test_unauthenticated_body_is_never_read() -> None:
    chunks = body_chunks(REQUEST, pad=2_000_000)  # ~31 chunks
    status, body, pulled = call(vllm_app(), "/v1/rerank", chunks, key="wrong")
    assert status == 401 and body == {"error": "Unauthorized"}
    assert pulled == 0  # stock vLLM reads nothing either


def test_the_route_reads_the_body_not_the_middleware() -> None:
    chunks = body_chunks(REQUEST, pad=2_000_000)
    status, _, pulled = call(vllm_app(), "/v1/score", chunks)
    assert status == 200 and pulled == 1  # the route took one chunk; nothing pulled ahead


def test_served_error_names_the_document() -> None:
    status, body, _ = call(vllm_app(), "/v1/rerank", body_chunks(REQUEST, pad=200_000))
    assert status == 400
    assert body["error"]["message"].startswith(
        "documents[1]: image_url 'http://h:9/img/cat.png': cannot identify image file"
    )
    assert body["error"]["param"] == "documents[1]"


def test_deeply_nested_request_is_a_4xx() -> None:
    deep = b'{"model": "m", "query": "q", "documents": [' + b"[" * 3000 + b"]" * 3000 + b"]}"
    status, body, _ = call(vllm_app(), "/v1/rerank", [deep])
    assert 400 <= status < 500, body


def test_client_gone_mid_upload_is_handled_as_without_the_middleware() -> None:
    chunks = body_chunks(REQUEST, pad=300_000)[:2]
    # nothing raises out of the middleware; the answer is the one vLLM gives without it
    with_it = call(vllm_app(), "/v1/rerank", chunks, disconnect=True)
    assert with_it[:2] == call(vllm_app(plugin=False), "/v1/rerank", chunks, disconnect=True)[:2]


def test_vllm_serve_parser_gets_it_by_default() -> None:
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    ours = [middleware.PATH, guard.PATH]  # the guard last: it runs first
    assert parser.parse_args(["m"]).middleware == ours
    assert parser.parse_args(["m", "--middleware", "a.b"]).middleware == [*ours, "a.b"]


# ---- the exact request: text parts, empty documents, instruction (issue 12: 3, 12) ---------
def exact_app(chat_template: str | None) -> Any:
    """vLLM's wiring again; the rerank route parses vLLM's RerankRequest and answers the
    documents it got, echoed as vLLM echoes them (``multi_modal`` = the content parts)."""
    from fastapi import FastAPI
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
    from vllm.entrypoints.serve.middleware.register import init_entrypoints_middleware

    app = FastAPI()
    app.state.args = Namespace(log_error_stack=False, chat_template=chat_template)
    init_exception_handler(app)

    @app.post("/v1/rerank")
    async def rerank(request: RerankRequest) -> dict:
        docs = request.documents if isinstance(request.documents, list) else [request.documents]
        return {
            "query": request.query,
            "results": [
                {"index": i, "document": {"multi_modal": d["content"]}}
                for i, d in enumerate(docs)
                if isinstance(d, dict)
            ],
        }

    args = Namespace(
        allowed_origins=["*"], allow_credentials=False, allowed_methods=["*"],
        allowed_headers=["*"], api_key=None, enable_request_id_headers=False,
        middleware=[middleware.PATH],
    )  # fmt: skip
    init_entrypoints_middleware(args, app, ("score",))
    return app


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def test_text_parts_join_with_nothing_and_empty_documents_are_null() -> None:
    query = {"content": [text("a red"), image("http://h/q.png"), text(" car")]}
    documents = [{"content": []}, {"content": [text("x"), text("y")]}, "plain", {"content": []}]
    fields = middleware.official_fields({"query": query, "documents": documents})
    assert fields["query"] == {"content": [text("a red car"), image("http://h/q.png")]}
    assert fields["documents"] == [
        {"content": [text("NULL")]}, {"content": [text("xy")]}, "plain", {"content": [text("NULL")]}
    ]  # fmt: skip
    assert middleware.official_fields({"query": {"content": []}, "documents": ["a"]}) == {}
    assert (
        middleware.official_fields({"query": "q", "documents": ["a", {"content": [text("b")]}]})
        == {}
    )


# the body in many chunks, in one, or with an empty last one (a server may send that)
@pytest.mark.parametrize(("size", "end"), [(7, []), (65536, []), (7, [b""])])
def test_route_gets_the_exact_request_and_results_show_documents_as_sent(
    size: int, end: list[bytes]
) -> None:
    documents = [{"content": [text("x"), text("y")]}, {"content": []}, "plain"]
    request = {"model": "m", "query": {"content": [text("a"), text("b")]}, "documents": documents}
    chunks = body_chunks(request, size=size) + end
    status, body, _ = call(exact_app(None), "/v1/rerank", chunks, None)
    assert status == 200, body
    assert body["query"] == {"content": [text("ab")]}  # what vLLM parsed
    # the route saw "xy" and "NULL"; the client sees its documents as it sent them
    assert [r["document"]["multi_modal"] for r in body["results"]] == [
        documents[0]["content"], documents[1]["content"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [{"instruction": "Find money."}, {"chat_template_kwargs": {"instruction": "Find money."}}],
)
def test_instruction_without_chat_template_is_a_400_saying_to_pass_it(extra: dict) -> None:
    from vllm_ascend_rerank.prompt import template_path

    request = {"model": "m", "query": "q", "documents": ["a"], **extra}
    status, body, _ = call(exact_app(None), "/v1/rerank", body_chunks(request, size=9), None)
    assert status == 400, body
    assert f"restart it with --chat-template {template_path()}" in body["error"]["message"]
    assert body["error"]["param"] == "instruction"
    # with a template it reaches the route; so does the default (empty) instruction
    assert call(exact_app("t.jinja"), "/v1/rerank", body_chunks(request), None)[0] == 200
    default = {**request, "instruction": ""} if "instruction" in extra else request
    if "instruction" in extra:
        assert call(exact_app(None), "/v1/rerank", body_chunks(default), None)[0] == 200


def test_truncation_limit_rides_in_each_document() -> None:
    # issue 12 (7): vLLM tells no model hook truncate_prompt_tokens unless its own cut removed
    # something; the documents carry it to the template (truncation.limit_mark)
    from vllm_ascend_rerank.truncation import limit_mark

    pic = image("http://h/d.png")
    request = {"query": "q", "documents": ["a", {"content": [pic]}], "truncate_prompt_tokens": 300}
    mark = limit_mark(300)
    assert middleware.official_fields(request) == {
        "documents": ["a" + mark, {"content": [pic, text(mark)]}]
    }
    for other in ({"truncate_prompt_tokens": -1}, {"max_tokens_per_doc": 20}):
        assert middleware.official_fields({**request, **other}) == {}
