"""HTTP middleware the platform adds to ``vllm serve``: bad-media errors name the input.

vLLM renders every (query, document) pair separately and loads its media without knowing
the pair's index, so the error for an image or video that cannot be loaded names the media
item (``multimodal.media_error``) but not which document holds it. The request body does: on
an error from a rerank/score route whose message carries a media tag (``[media <digest>]``,
a digest of the whole URL), this middleware finds the inputs that hold that exact URL, puts
them in front of the message and in ``param`` (``documents[2]: image_url '...': cannot
identify image file``), shows the URL as sent (vLLM's ``sanitize_message`` would have turned
its path into "<path>") and drops the tag. Everything else passes through untouched.

It is a pure ASGI middleware that reads nothing itself: it keeps a reference to the body
chunks the route reads, as the route reads them. A request that vLLM refuses before reading
its body (``--api-key`` authentication, unknown route or method) is never read or held
here, uploads stream to the route as they arrive, and a client that disconnects mid-upload
is the route's business, as without this middleware. Responses other than JSON errors of
those routes are passed on chunk by chunk.

The platform adds it as a default ``--middleware`` (``Platform.pre_register_and_update``), so
stock ``vllm serve`` commands get it; a user's own ``--middleware`` values are added after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from vllm_ascend_rerank.multimodal import MEDIA_REF, shown_url

PATH = "vllm_ascend_rerank.middleware.NameFailingMedia"
ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score", "/v1/embeddings")
# Request fields that hold queries and documents (RerankRequest and every ScoreRequest form)
# and embedding inputs (``input``; ``messages``: a conversation, or a batch of them).
INPUT_FIELDS = (
    "query", "documents", "queries", "items", "data_1", "data_2", "text_1", "text_2",
    "input", "messages",
)  # fmt: skip


def _urls(value: Any) -> Iterator[str]:
    # An explicit stack: a body nested thousands of levels deep must not overflow Python's.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if key == "url" and isinstance(sub, str):
                    yield sub
                else:
                    stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


def failing_inputs(body: Any, digest: str) -> tuple[list[str], str | None]:
    """The inputs of a rerank/score request body (``documents[1]``, ``query``...) holding the
    media URL whose ``multimodal.media_ref`` digest is ``digest``, and that URL."""
    if not isinstance(body, dict):
        return [], None
    found, url = [], None
    for field in INPUT_FIELDS:
        value = body.get(field)
        entries = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, entry in entries:
            for candidate in _urls(entry):
                if hashlib.sha256(candidate.encode()).hexdigest()[:16] == digest:
                    found.append(field if index is None else f"{field}[{index}]")
                    url = candidate
                    break
    return found, url


def _sanitized(text: str) -> str:
    try:
        from vllm.entrypoints.serve.exception_handling.utils import sanitize_message
    except ImportError:  # a vLLM without it left the text as it was
        return text
    return sanitize_message(text)


def amend(body: bytes, error: bytes) -> bytes | None:
    """The error response with the failing inputs named, or None to leave it as it is."""
    try:
        payload = json.loads(error)
        message = payload["error"]["message"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(message, str) or not (tag := MEDIA_REF.search(message)):
        return None
    try:  # parsed only now: a body is read for nothing else
        request = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json allows
        request = None
    where, url = failing_inputs(request, tag.group(1))
    message = message[: tag.start()] + message[tag.end() :]
    if url is not None:  # the URL as sent, in place of its sanitized form (the reason, e.g.
        # an HTTP error's text, may hold the URL again)
        for text in dict.fromkeys((repr(shown_url(url)), url)):
            message = message.replace(_sanitized(text), text)
    if where:
        message = f"{', '.join(where)}: {message}"
        payload["error"]["param"] = ", ".join(where)
    payload["error"]["message"] = message
    return json.dumps(payload).encode()


Scope = dict[str, Any]
Message = dict[str, Any]


class NameFailingMedia:
    """ASGI middleware (see the module docstring); vLLM adds a class with ``add_middleware``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in ROUTES:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []  # references to what the route read, nothing more
        held: Message | None = None  # the start of a JSON error response, sent once amended
        error: list[bytes] = []

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def send_amended(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] >= 400 and is_json:
                    held = message
                    return
                chunks.clear()  # a success: the body is not needed any more
            elif message["type"] == "http.response.body" and held is not None:
                error.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                content = b"".join(error)
                content = amend(b"".join(chunks), content) or content
                chunks.clear()
                headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(content)).encode()))
                start, held = {**held, "headers": headers}, None
                await send(start)
                await send({"type": "http.response.body", "body": content})
                return
            await send(message)

        await self.app(scope, receive_and_keep, send_amended)
