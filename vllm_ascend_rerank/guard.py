"""HTTP middleware the platform adds to ``vllm serve``: the scoring routes' key and size limit.

Two gaps of stock vLLM 0.34 that a reranker server meets first:

- ``--api-key`` (or ``VLLM_API_KEY``) guards only paths under ``/v1``, ``/v2``,
  ``/inference`` and ``/cohere``: the unversioned aliases ``/rerank`` and ``/score`` answer
  anyone. Here they ask for the same ``Authorization: Bearer`` key, with vLLM's answer (401,
  ``{"error": "Unauthorized"}``), before their body is read.
- ``VLLM_HTTP_MAX_REQUEST_BODY_SIZE`` (32 MiB by default) is declared by vLLM but read by
  nothing: a 100 MB body was accepted and tokenized. Here a scoring request whose body is
  larger is a 413 naming the variable: at once when ``Content-Length`` says so, else as soon
  as the received bytes pass the limit (the route is told the client left, and never sees
  the rest).

Other routes pass through untouched. Both read vLLM's own settings (the parsed arguments that
``vllm serve`` keeps in ``app.state.args``, vLLM's ``envs``), so nothing new to configure.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from vllm_ascend_rerank.middleware import ROUTES

PATH = "vllm_ascend_rerank.guard.GuardScoringRoutes"
# The routes stock vLLM leaves open whatever --api-key says.
UNGUARDED_ALIASES = ("/rerank", "/score")

Scope = dict[str, Any]
Message = dict[str, Any]


def _api_key_hashes(app: Any) -> list[bytes]:
    """SHA-256 of each key vLLM's own authentication accepts (--api-key wins over the env)."""
    from vllm import envs

    args = getattr(getattr(app, "state", None), "args", None)
    keys = [k for k in (getattr(args, "api_key", None) or [envs.VLLM_API_KEY]) if k]
    return [hashlib.sha256(k.encode()).digest() for k in keys]


def authorized(headers: list[tuple[bytes, bytes]], key_hashes: list[bytes]) -> bool:
    value = dict(headers).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    digest = hashlib.sha256(token.encode("latin-1")).digest()
    match = False
    for expected in key_hashes:  # no early exit: the time taken says nothing about the keys
        match |= secrets.compare_digest(digest, expected)
    return match


async def _answer(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> dict[str, Any]:
    return {
        "error": {
            "message": f"request body larger than {limit} bytes "
            "(VLLM_HTTP_MAX_REQUEST_BODY_SIZE on the server)",
            "type": "RequestEntityTooLarge",
            "param": None,
            "code": 413,
        }
    }


class GuardScoringRoutes:
    """ASGI middleware (see the module docstring); vLLM adds a class with ``add_middleware``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._key_hashes: list[bytes] | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or path not in ROUTES or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        if path in UNGUARDED_ALIASES:
            if self._key_hashes is None:  # app.state.args exists only once serving
                self._key_hashes = _api_key_hashes(scope.get("app"))
            if self._key_hashes and not authorized(scope.get("headers", []), self._key_hashes):
                await _answer(send, 401, {"error": "Unauthorized"})
                return
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        from vllm import envs

        limit = envs.VLLM_HTTP_MAX_REQUEST_BODY_SIZE
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(send, 413, too_large(limit))
            return
        received, refused = 0, False

        async def receive_within_limit() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not refused:
                    refused = True
                    await _answer(send, 413, too_large(limit))
                    return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message: Message) -> None:
            if not refused:  # the 413 went out: the route's own answer has nowhere to go
                await send(message)

        try:
            await self.app(scope, receive_within_limit, send_unless_refused)
        except Exception:
            if not refused:
                raise
            # The route failed on the disconnect it was told of; the 413 is the answer.
