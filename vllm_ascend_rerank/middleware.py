"""HTTP middleware the platform adds to ``vllm serve``: bad-media errors name the input.

vLLM 0.32 renders every (query, document) pair separately and loads its media without knowing
the pair's index, so the 4xx for an image or video that cannot be loaded names the media item
(``multimodal.media_error``) but not which document holds it. The request body does: on a
4xx from a rerank/score route whose message names a media URL, this middleware finds the
inputs that contain that URL and puts them in front of the message (``documents[2]: image_url
'...': cannot identify image file``). Everything else passes through untouched.

The platform adds it as a default ``--middleware`` (``Platform.pre_register_and_update``), so
stock ``vllm serve`` commands get it; a user's own ``--middleware`` values are added after it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from vllm_ascend_rerank.multimodal import shown_url

PATH = "vllm_ascend_rerank.middleware.name_failing_media"
ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score")
# Request fields that hold queries and documents (RerankRequest and every ScoreRequest form).
INPUT_FIELDS = ("query", "documents", "queries", "items", "data_1", "data_2", "text_1", "text_2")


def _urls(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "url" and isinstance(item, str):
                yield item
            else:
                yield from _urls(item)
    elif isinstance(value, list):
        for item in value:
            yield from _urls(item)


def failing_inputs(body: Any, message: str) -> list[str]:
    """The inputs of a rerank/score request body (``documents[1]``, ``query``...) holding a
    media URL that ``message`` names."""
    if not isinstance(body, dict):
        return []
    found = []
    for field in INPUT_FIELDS:
        value = body.get(field)
        entries = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, entry in entries:
            if any(repr(shown_url(url)) in message for url in _urls(entry)):
                found.append(field if index is None else f"{field}[{index}]")
    return found


def amend(body: bytes, error: bytes) -> bytes | None:
    """The error response with the failing inputs named, or None to leave it as it is."""
    try:
        payload = json.loads(error)
        message = payload["error"]["message"]
        request = json.loads(body)
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(message, str):
        return None
    where = failing_inputs(request, message)
    if not where:
        return None
    payload["error"]["message"] = f"{', '.join(where)}: {message}"
    return json.dumps(payload).encode()


async def name_failing_media(request: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
    """``@app.middleware("http")`` function (see the module docstring)."""
    if request.method != "POST" or request.url.path not in ROUTES:
        return await call_next(request)
    body = await request.body()  # Starlette caches it for the route
    response = await call_next(request)
    if not 400 <= response.status_code < 500:
        return response
    from starlette.responses import Response

    error = b"".join([chunk async for chunk in response.body_iterator])
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(
        content=amend(body, error) or error,
        status_code=response.status_code,
        headers=headers,
        media_type=response.media_type,
    )
