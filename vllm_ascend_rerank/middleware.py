"""HTTP middleware the platform adds to ``vllm serve``: bad-media errors name the input, and
score requests reach vLLM in the official form.

vLLM renders every (query, document) pair separately and loads its media without knowing
the pair's index, so the error for an image or video that cannot be loaded names the media
item (``media_connector.media_error``) but not which document holds it. The request body does: on
an error from a rerank/score route whose message carries a media tag (``[media <digest>]``,
a digest of the whole URL), this middleware finds the inputs that hold that exact URL, puts
them in front of the message and in ``param`` (``documents[2]: image_url '...': cannot
identify image file``), shows the URL as sent (vLLM's ``sanitize_message`` would have turned
its path into "<path>") and drops the tag. Everything else passes through untouched.

On the score routes it also makes the request exact before vLLM parses it (vLLM's request
parser is out of reach of every model hook; ``LLM.score``, which has no middleware, keeps the
differences of the first point):

- several text parts of one side are joined with nothing (vLLM would put "\\n" between
  them); a document with no content at all (``{"content": []}``) is the official "NULL" (vLLM
  would render ""); ``truncate_prompt_tokens`` is also written at the end of each document
  (``truncation.limit_mark``), so that a pair whose vision tokens alone push it past the limit
  is cut too (vLLM tells no model hook the limit). Rerank results still show each document as
  it was sent;
- on ``/v1/embeddings`` a top-level ``instruction`` becomes ``chat_template_kwargs.instruction``
  (vLLM would drop the unknown field; the embedding renderer applies it officially);
- a request with an ``instruction`` (or ``chat_template_kwargs.instruction``) to a server
  started without ``--chat-template`` is a 400 saying to pass it: vLLM 0.34 renders such a
  server's prompts with the model's own template and no request arguments, so the
  instruction would be dropped without a word.

It is a pure ASGI middleware that reads nothing itself: it keeps a reference to the body
chunks the route reads, as the route reads them, and holds back only the closing ``}`` (and
white space) of each chunk until the next one, so that it can add the exact fields at the
end of the object (the last of duplicate names wins, as Python's ``json``, which FastAPI
parses bodies with, documents). A request that vLLM refuses before reading
its body (``--api-key`` authentication, unknown route or method) is never read or held
here, uploads stream to the route as they arrive, and a client that disconnects mid-upload
is the route's business, as without this middleware. Responses other than JSON errors of
those routes (and rerank results that show a changed document) are passed on chunk by chunk.

The platform adds it as a default ``--middleware`` (``Platform.pre_register_and_update``), so
stock ``vllm serve`` commands get it; a user's own ``--middleware`` values are added after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from vllm_ascend_rerank.compat import served_chat_template
from vllm_ascend_rerank.media_connector import MEDIA_REF, shown_url
from vllm_ascend_rerank.truncation import limit_mark

PATH = "vllm_ascend_rerank.middleware.NameFailingMedia"
ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score", "/v1/embeddings")
# Request fields that hold queries and documents (RerankRequest and every ScoreRequest form)
# and embedding inputs (``input``; ``messages``: a conversation, or a batch of them).
INPUT_FIELDS = (
    "query", "documents", "queries", "items", "data_1", "data_2", "text_1", "text_2",
    "input", "messages",
)  # fmt: skip
# The reranker's routes, whose request bodies are made exact (``official_fields``).
SCORE_ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank", "/score", "/v1/score")
# The embedder's route, whose top-level ``instruction`` is handed on (``embedding_fields``).
EMBEDDINGS_ROUTE = "/v1/embeddings"
DOCUMENT_FIELDS = ("documents", "items", "data_2", "text_2")
QUERY_FIELDS = ("query", "queries", "data_1", "text_1")
_HELD = b"} \t\r\n"  # the end of a JSON object, held back until the body's end is known


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


def _official_side(item: Any, document: bool, mark: str) -> Any:
    """``item`` (one query or document) as the official scorer reads it (a document with the
    truncation limit ``mark`` at its end), or ``item`` itself."""
    if isinstance(item, str):
        return item + mark if document and mark else item
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    parts = item["content"]
    if not parts and document:  # official: a side with no text, image or video is "NULL"
        parts = [{"type": "text", "text": "NULL"}]
    if document and mark:
        parts = [*parts, {"type": "text", "text": mark}]
    texts = [
        i
        for i, part in enumerate(parts)
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    ]
    if len(texts) > 1:
        joined = {**parts[texts[0]], "text": "".join(parts[i]["text"] for i in texts)}
        parts = [
            joined if i == texts[0] else part
            for i, part in enumerate(parts)
            if i == texts[0] or i not in texts
        ]
    return item if parts is item["content"] else {**item, "content": parts}


def official_fields(request: Any) -> dict[str, Any]:
    """The query/document fields of a score request that must change for the official
    prompt (several text parts of a side joined with nothing, an empty document "NULL", a
    ``truncate_prompt_tokens`` limit carried in each document: ``truncation.limit_mark``),
    with their new values; {} when the request is exact as sent."""
    if not isinstance(request, dict):
        return {}
    limit = request.get("truncate_prompt_tokens")
    # max_tokens_per_doc cuts document text, mark included: the limit cannot ride along then
    carries = isinstance(limit, int) and limit > 0 and not request.get("max_tokens_per_doc")
    mark = limit_mark(limit) if carries else ""
    out: dict[str, Any] = {}
    for field in QUERY_FIELDS + DOCUMENT_FIELDS:
        value = request.get(field)
        items = value if isinstance(value, list) else [value]
        fixed = [_official_side(item, field in DOCUMENT_FIELDS, mark) for item in items]
        if any(new is not old for new, old in zip(fixed, items, strict=True)):
            out[field] = fixed if isinstance(value, list) else fixed[0]
    return out


def requested_instruction(request: Any) -> str | None:
    """The request's instruction (``chat_template_kwargs`` wins, as in vLLM); None for the
    default (absent or empty, as the official scorer reads it)."""
    if not isinstance(request, dict):
        return None
    value = request.get("instruction")
    kwargs = request.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and "instruction" in kwargs:
        value = kwargs["instruction"]
    return value if isinstance(value, str) and value else None


def embedding_fields(request: Any) -> dict[str, Any]:
    """A top-level ``instruction`` of an embeddings request (the reranker's field name, and
    what users of the official embedder pass) as ``chat_template_kwargs.instruction``, the
    one place vLLM hands the embedding renderer; vLLM would drop the unknown field without a
    word. {} when there is none; an explicit ``chat_template_kwargs`` key wins, as for rerank."""
    if not isinstance(request, dict) or "instruction" not in request:
        return {}
    kwargs = request.get("chat_template_kwargs")
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    if "instruction" in kwargs:
        return {}
    return {"chat_template_kwargs": {**kwargs, "instruction": request["instruction"]}}


def instruction_error(template: str) -> bytes:
    """The 400 for an instruction sent to a server without ``--chat-template``."""
    message = (
        "instruction is only applied with the reranker's chat template, and this server was "
        f"started without one: restart it with --chat-template {template} (or leave "
        "instruction out for the official default)"
    )
    error = {"message": message, "type": "BadRequestError", "param": "instruction", "code": 400}
    return json.dumps({"error": error}).encode()


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
        exact = path in SCORE_ROUTES or path == EMBEDDINGS_ROUTE
        chunks: list[bytes] = []  # references to what the route read, nothing more
        held: Message | None = None  # the start of a response, sent once amended
        content: list[bytes] = []
        tail = b""  # the end of the body so far, not yet given to the route
        echo: dict[int, Any] = {}  # rerank results to show as sent: index -> document
        rejected: bytes | None = None  # the error to answer instead of the route's

        def finish(data: bytes) -> bytes:
            # The whole body is known: the last chunk, with the exact fields added.
            nonlocal rejected
            try:
                request = json.loads(b"".join(chunks))
            except (ValueError, RecursionError):
                return data  # vLLM answers it
            template = served_chat_template(scope)
            embedding = path == EMBEDDINGS_ROUTE
            if not embedding and requested_instruction(request) is not None and template is None:
                from vllm_ascend_rerank.prompt import template_path

                rejected = instruction_error(template_path())
                return data + b" null"  # invalid JSON: the route fails fast, answered below
            fields = embedding_fields(request) if embedding else official_fields(request)
            end = data.rstrip(b" \t\r\n")
            if not fields or not end.endswith(b"}") or not request:
                return data
            if path.endswith("rerank") and "documents" in fields:
                sent, new = request["documents"], fields["documents"]
                if not isinstance(sent, list):
                    sent, new = [sent], [new]
                echo.update(
                    {i: d for i, (d, n) in enumerate(zip(sent, new, strict=True)) if d is not n}
                )
            return end[:-1] + b", " + json.dumps(fields)[1:-1].encode() + b"}"

        async def receive_and_keep() -> Message:
            nonlocal tail
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            chunks.append(body)
            if not exact:
                return message
            data, tail = tail + body, b""
            if message.get("more_body", False):
                kept = data.rstrip(_HELD)
                tail = data[len(kept) :]
                return {**message, "body": kept}
            return {**message, "body": finish(data)}

        async def send_amended(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if is_json and (message["status"] >= 400 or echo or rejected is not None):
                    held = message
                    return
                chunks.clear()  # a success: the body is not needed any more
            elif message["type"] == "http.response.body" and held is not None:
                content.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, held = held, None
                out = b"".join(content)
                if rejected is not None:
                    start, out = {**start, "status": 400}, rejected
                elif start["status"] >= 400:
                    out = amend(b"".join(chunks), out) or out
                else:
                    out = shown_as_sent(out, echo) or out
                chunks.clear()
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(out)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": out})
                return
            await send(message)

        await self.app(scope, receive_and_keep, send_amended)


def shown_as_sent(response: bytes, echo: dict[int, Any]) -> bytes | None:
    """A rerank response with the documents in ``echo`` shown as the client sent them."""
    try:
        payload = json.loads(response)
        for result in payload["results"]:
            sent = echo.get(result["index"])
            if sent is None or not isinstance(result.get("document"), dict):
                continue
            if isinstance(sent, str):
                result["document"]["text"] = sent
            else:
                result["document"]["multi_modal"] = sent["content"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return json.dumps(payload).encode()
