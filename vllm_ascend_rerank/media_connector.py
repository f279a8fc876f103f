"""vLLM media connector ``qwen3_vl_reranker``: how the reranker and embedder fetch media.

vLLM's own connector (``http``) with two changes, both about the client hearing exactly what
is wrong with its input:

- every failure to fetch or decode an item is a 4xx naming the item (``media_error``); a
  media host that may recover (5xx, 429, timeout, DNS) gives a retryable 503 instead, as in
  stock vLLM;
- with ``--allowed-media-domains``, every redirect hop is checked against the list (stock
  vLLM checks only the URL the client sent).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Any

MEDIA_CONNECTOR = "qwen3_vl_reranker"


def register_media_connector() -> None:
    """Register vLLM media connector ``qwen3_vl_reranker``: vLLM's own (``http``) whose every
    failure is a client error that names the media item and what went wrong, and which holds
    ``--allowed-media-domains`` across HTTP redirects.

    Stock vLLM answers 500 with the bare exception when a media host fails in a way a retry
    may cure. For a reranker the item is the request's input: the client must hear which one
    failed, and the other requests in flight must not notice. See ``media_error`` for the
    statuses (422 permanent download failure, 503 retryable one, 400 anything else).

    Stock vLLM checks the allow-list against the URL the client sent only, then lets its HTTP
    clients follow redirects (``VLLM_MEDIA_URL_ALLOW_REDIRECTS=1``, the default) to any host.
    With an allow-list this connector fetches through ``allow_list_connection``, which checks
    every request, each redirect hop included, before it is sent.
    """
    from vllm.connections import global_http_connection
    from vllm.multimodal.media.connector import MEDIA_CONNECTOR_REGISTRY, MediaConnector

    if MEDIA_CONNECTOR in MEDIA_CONNECTOR_REGISTRY.name2class:
        return

    @MEDIA_CONNECTOR_REGISTRY.register(MEDIA_CONNECTOR)
    class RerankMediaConnector(MediaConnector):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Only vLLM's shared connection is swapped: a caller's own connection is theirs.
            if self.allowed_media_domains and self.connection is global_http_connection:
                self.connection = allow_list_connection(tuple(self.allowed_media_domains))

        def load_from_url(self, url, media_io, *, fetch_timeout=None):
            try:
                return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)
            except Exception as exc:
                raise media_error(url, media_io, exc) from exc

        async def load_from_url_async(self, url, media_io, *, fetch_timeout=None):
            try:
                return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
            except Exception as exc:
                raise media_error(url, media_io, exc) from exc


def refused_hosts(url: str, allowed: Sequence[str]) -> list[str]:
    """The hosts fetching ``url`` may reach that ``allowed`` does not name (empty: allowed).

    vLLM compares urllib3's ``parse_url(url).hostname`` with the list; requests connects to
    the stdlib ``urlsplit`` host of a redirect URL, which differs for odd URLs
    (``http://a.com\\@b.com/``: a.com for one, b.com for the other), so both must pass.
    """
    from urllib.parse import urlsplit

    from urllib3.util import parse_url

    hosts: set[str | None] = set()
    for split in (lambda u: parse_url(u).hostname, lambda u: urlsplit(u).hostname):
        try:
            host = split(url)
        except ValueError:  # urllib3's LocationParseError is one too
            host = None
        # urlsplit drops an IPv6 address's brackets, which vLLM's comparison keeps.
        hosts.add(f"[{host}]" if host and ":" in host and not host.startswith("[") else host)
    return sorted(h or "(none: unparsable URL)" for h in hosts if h not in allowed)


def _check_hop(url: str, allowed: Sequence[str]) -> None:
    from vllm.exceptions import VLLMValidationError

    refused = refused_hosts(url, allowed)
    if refused:
        # A client error (400 through media_error), never retried by vLLM's fetch loop.
        raise VLLMValidationError(
            f"redirected to host {', '.join(map(repr, refused))}, which is not in "
            f"--allowed-media-domains {list(allowed)} (every redirect hop must be an "
            "allowed domain)"
        )


@functools.cache
def allow_list_connection(allowed: tuple[str, ...]) -> Any:
    """vLLM's ``HTTPConnection`` (retries, size limits and download budget unchanged) whose
    HTTP clients refuse any request to a host outside ``allowed``: the first URL (vLLM has
    checked it the same way already) and every redirect hop, before it is sent. Whether
    redirects are followed stays vLLM's call (``VLLM_MEDIA_URL_ALLOW_REDIRECTS``). One per
    allow-list and process, like vLLM's ``global_http_connection``."""
    return _allow_list_connection_class()(allowed)


@functools.cache
def _allow_list_connection_class() -> type:
    # Built on first use: vLLM, requests and aiohttp are imported lazily in this module.
    import asyncio

    import aiohttp
    import requests
    from requests.adapters import HTTPAdapter
    from vllm.connections import HTTPConnection

    class HopCheckAdapter(HTTPAdapter):
        """requests' adapter sends every request of a session, each redirect hop included
        (``Session.resolve_redirects`` calls ``send`` per hop): check the URL it is given."""

        def __init__(self, allowed: tuple[str, ...]) -> None:
            super().__init__()
            self.allowed = allowed

        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any):
            _check_hop(request.url or "", self.allowed)
            return super().send(request, *args, **kwargs)

    class AllowListConnection(HTTPConnection):
        def __init__(self, allowed: tuple[str, ...]) -> None:
            super().__init__()
            self.allowed = allowed
            self._async_loop: asyncio.AbstractEventLoop | None = None

        def get_sync_client(self) -> requests.Session:
            session = super().get_sync_client()
            if not isinstance(session.get_adapter("http://"), HopCheckAdapter):
                adapter = HopCheckAdapter(self.allowed)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
            return session

        async def _check_middleware(
            self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
        ) -> aiohttp.ClientResponse:
            # aiohttp runs a session's middlewares for each request it sends, redirects too.
            _check_hop(str(request.url), self.allowed)
            return await handler(request)

        async def get_async_client(self) -> aiohttp.ClientSession:
            # vLLM's session (trust_env) plus the hop check. A session belongs to one event
            # loop: a new loop (LLM, tests: one asyncio.run each) gets a new session.
            loop = asyncio.get_running_loop()
            if self._async_client is None or self._async_loop is not loop:
                self._async_client = aiohttp.ClientSession(
                    trust_env=True, middlewares=(self._check_middleware,)
                )
                self._async_loop = loop
            return self._async_client

    return AllowListConnection


def shown_url(url: str) -> str:
    """How an error message names a media URL (data URLs are long)."""
    return url if len(url) <= 80 else f"{url[:48]}...({len(url)} characters)"


# vLLM's ``sanitize_message`` turns path-like text of an HTTP error into "<path>", and a long
# URL is shown shortened, so the text of a message cannot say exactly which URL failed. The
# message ends with this tag (a digest of the whole URL); the serve middleware finds the
# input holding that URL, puts the URL back and drops the tag.
MEDIA_REF = re.compile(r" \[media ([0-9a-f]{16})\]")


def media_ref(url: str) -> str:
    """The tag that names ``url`` exactly in an error message (see ``MEDIA_REF``)."""
    return f" [media {hashlib.sha256(url.encode()).hexdigest()[:16]}]"


def _is_fetch_error(exc: Exception) -> bool:
    import aiohttp
    import requests

    fetch = (requests.exceptions.RequestException, aiohttp.ClientError, TimeoutError)
    return isinstance(exc, fetch) or isinstance(exc, ConnectionError)


def _too_many_redirects(exc: BaseException) -> bool:
    """Whether a fetch hit its HTTP client's redirect limit. Stock vLLM makes requests' a
    retryable 503 and aiohttp's a 422 "HTTP 0 error" (wrapped: the original is the cause);
    a redirect loop is neither retryable nor an HTTP status."""
    import aiohttp
    import requests

    limit = (requests.exceptions.TooManyRedirects, aiohttp.TooManyRedirects)
    return isinstance(exc, limit) or isinstance(exc.__cause__, limit)


def media_error(url: str, media_io: object, exc: Exception) -> Exception:
    """The error for a media item that could not be loaded, naming it.

    What vLLM's own connector calls permanent (a 4xx from the media host, a malformed URL,
    a download over the size limit), and too many redirects, is 422; the failures it leaves
    as they are because a retry may succeed (5xx, 408 and 429 from the host, timeouts, DNS
    and connection errors) are 503 (``RetryableRequestError``), which clients and SDKs retry;
    anything else wrong with the item (not decodable, not allowed...) is 400.
    """
    from vllm.exceptions import (
        RetryableRequestError,
        VLLMClientError,
        VLLMUnprocessableEntityError,
        VLLMValidationError,
    )

    kind = type(media_io).__name__.removesuffix("MediaIO").lower() or "media"
    parameter = f"{kind}_url"
    shown = shown_url(url)
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, VLLMClientError):
        reason = reason.split(" (parameter=")[0]
    ref = media_ref(url)
    if url[:5].lower() != "data:":
        if _too_many_redirects(exc):
            return VLLMUnprocessableEntityError(
                f"{parameter} {shown!r} could not be fetched: too many redirects (a redirect "
                f"loop, or a chain longer than the HTTP client follows){ref}",
                parameter=parameter,
            )
        if isinstance(exc, VLLMUnprocessableEntityError):
            return VLLMUnprocessableEntityError(
                f"{parameter} {shown!r} could not be fetched: {reason}{ref}", parameter=parameter
            )
        if _is_fetch_error(exc):
            return RetryableRequestError(
                f"{parameter} {shown!r} could not be fetched, a retry may succeed: {reason}{ref}"
            )
    return VLLMValidationError(f"{parameter} {shown!r}: {reason}{ref}", parameter=parameter)
