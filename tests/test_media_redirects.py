"""``--allowed-media-domains`` across HTTP redirects (the plugin's media connector).

Stock vLLM 0.34 checks the allow-list against the URL the client sent only and then follows
redirects anywhere (``test_stock_vllm_follows_a_redirect_off_the_list`` shows it). One local
media host is reached under two names: ``127.0.0.1`` (allowed) and ``localhost`` (not), so
the host of every request it receives says which name the client used.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from bad_inputs import image_doc, red_png

from vllm_ascend_rerank.media_connector import MEDIA_CONNECTOR, register_media_connector

ALLOWED = ["127.0.0.1"]


class RedirectHost(http.server.BaseHTTPRequestHandler):
    """/red.png: a PNG; /to?url=U: 302 to U; /loop: 302 to itself. ``seen`` logs the Host
    header and path of every request."""

    png = red_png()
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        self.seen.append((self.headers["Host"].rsplit(":", 1)[0], url.path))
        if url.path == "/red.png":
            self._send(200, {"Content-Type": "image/png"}, self.png)
        elif url.path == "/to":
            self._send(302, {"Location": parse_qs(url.query)["url"][0]})
        elif url.path == "/loop":
            self._send(302, {"Location": "/loop"})
        else:
            self._send(404, {})

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RedirectHost)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both HTTP clients trust the environment: no proxy may stand between them and the host.
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv("VLLM_MEDIA_URL_ALLOW_REDIRECTS", raising=False)
    RedirectHost.seen.clear()


def to(target: str, port: int, host: str = "127.0.0.1") -> str:
    """A URL on ``host`` that redirects to ``target``."""
    return f"http://{host}:{port}/to?url={quote(target, safe='')}"


def png(host: str, port: int) -> str:
    return f"http://{host}:{port}/red.png"


def connector(allowed: list[str] | None, name: str = MEDIA_CONNECTOR, **kwargs: Any) -> Any:
    from vllm.multimodal.media.connector import MEDIA_CONNECTOR_REGISTRY

    register_media_connector()
    return MEDIA_CONNECTOR_REGISTRY.load(name, allowed_media_domains=allowed, **kwargs)


def load(conn: Any, url: str, mode: str) -> Any:
    """``url`` through the sync or the async loader; an async run closes its session (one
    event loop per run)."""
    from vllm.multimodal.media import ImageMediaIO

    if mode == "sync":
        return conn.load_from_url(url, ImageMediaIO())

    async def run() -> Any:
        try:
            return await conn.load_from_url_async(url, ImageMediaIO())
        finally:
            if conn.connection._async_client is not None:
                await conn.connection._async_client.close()

    return asyncio.run(run())


def refusal(conn: Any, url: str, mode: str) -> tuple[int, str]:
    """The HTTP status and message ``vllm serve`` would answer for ``url``'s failure."""
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    with pytest.raises(Exception) as info:
        load(conn, url, mode)
    error = create_error_response(info.value).error
    return error.code, error.message


MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
def test_redirect_within_the_list_loads(port: int, mode: str) -> None:
    image = load(connector(ALLOWED), to(to(png("127.0.0.1", port), port), port), mode)
    assert image.size == (64, 48)
    assert [h for h, _ in RedirectHost.seen] == ["127.0.0.1"] * 3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hops", [1, 2])
def test_redirect_off_the_list_is_refused(port: int, mode: str, hops: int) -> None:
    url = png("localhost", port)
    for _ in range(hops):
        url = to(url, port)
    code, message = refusal(connector(ALLOWED), url, mode)
    assert code == 400, message
    assert "--allowed-media-domains ['127.0.0.1']" in message, message
    assert "redirected to host 'localhost'" in message, message
    # refused before it was sent: the outside host never heard from the connector
    assert RedirectHost.seen == [("127.0.0.1", "/to")] * hops


def test_stock_vllm_follows_a_redirect_off_the_list(port: int) -> None:
    # Why the hop check exists: if vLLM starts checking redirects, this fails and
    # allow_list_connection can go.
    image = load(connector(ALLOWED, name="http"), to(png("localhost", port), port), "sync")
    assert image.size == (64, 48)
    assert RedirectHost.seen == [("127.0.0.1", "/to"), ("localhost", "/red.png")]


@pytest.mark.parametrize("mode", MODES)
def test_without_a_list_redirects_are_followed_as_before(port: int, mode: str) -> None:
    from vllm.connections import HTTPConnection, global_http_connection

    conn = connector(None)
    assert conn.connection is global_http_connection  # vLLM's own connection, untouched
    if mode == "async":  # vLLM's shared aiohttp session outlives no event loop: use a fresh one
        conn = connector(None, connection=HTTPConnection())
    image = load(conn, to(png("localhost", port), port), mode)
    assert image.size == (64, 48)
    assert RedirectHost.seen == [("127.0.0.1", "/to"), ("localhost", "/red.png")]


@pytest.mark.parametrize("mode", MODES)
def test_with_redirects_off_nothing_changes(
    port: int, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 302 itself is what gets decoded, as in stock vLLM: no second request, no hop check.
    monkeypatch.setenv("VLLM_MEDIA_URL_ALLOW_REDIRECTS", "0")
    code, message = refusal(connector(ALLOWED), to(png("localhost", port), port), mode)
    assert code == 400, message
    assert "allowed-media-domains" not in message, message
    assert RedirectHost.seen == [("127.0.0.1", "/to")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("allowed", [ALLOWED, None], ids=["list", "no-list"])
def test_redirect_loop_is_a_clear_client_error(
    port: int, mode: str, allowed: list[str] | None
) -> None:
    from vllm.connections import HTTPConnection

    kwargs = {"connection": HTTPConnection()} if allowed is None and mode == "async" else {}
    code, message = refusal(connector(allowed, **kwargs), f"http://127.0.0.1:{port}/loop", mode)
    assert code == 422, message  # not retryable: stock vLLM makes requests' limit a 503
    assert "too many redirects" in message, message
    # the HTTP client's limit: requests 30, aiohttp 10 redirects
    assert len(RedirectHost.seen) == (31 if mode == "sync" else 10)


def test_refused_hosts_parses_like_vllm_and_like_the_client() -> None:
    from vllm_ascend_rerank.media_connector import refused_hosts

    assert refused_hosts("http://127.0.0.1:8/x", ALLOWED) == []
    assert refused_hosts("http://LocalHost/x", ALLOWED) == ["localhost"]
    assert refused_hosts("http://[::1]:8/x", ["[::1]"]) == []  # vLLM keeps the brackets
    # urllib3 reads host a.com, requests would connect to b.com: both must be allowed
    assert refused_hosts("http://a.com\\@b.com/x", ["a.com"]) == ["b.com"]
    assert refused_hosts("http://b.com\\@a.com/x", ["a.com"]) == ["b.com"]


def test_served_redirect_off_the_list_is_a_400(checkpoints, port: int) -> None:
    # ``vllm serve`` builds the connector from --allowed-media-domains and loads async.
    from conftest import Server, serve_args

    srv = Server(checkpoints["tied"], serve_args(["--allowed-media-domains", "127.0.0.1"]),
                 env={"NO_PROXY": "*", "no_proxy": "*"})  # fmt: skip
    try:
        body = {"model": str(checkpoints["tied"]), "query": "a red picture"}
        ok = srv.post(
            "/v1/rerank", {**body, "documents": [image_doc(to(png("127.0.0.1", port), port))]}
        )
        assert ok.status_code == 200, ok.text
        bad = to(png("localhost", port), port)
        r = srv.post("/v1/rerank", {**body, "documents": ["text", image_doc(bad)]})
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert message.startswith(f"documents[1]: image_url {bad!r}"), message
        assert "--allowed-media-domains ['127.0.0.1']" in message, message
        assert "'localhost'" in message, message
        assert ("localhost", "/red.png") not in RedirectHost.seen
    finally:
        srv.stop()
