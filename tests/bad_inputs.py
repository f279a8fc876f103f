"""The maintained list of bad input that test_server.py sends its server, with the small
media host its URLs point at and the pictures it uses.
"""

from __future__ import annotations

import base64
import http.server
import io


def red_png(width: int = 64, height: int = 48) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def red_png_url(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(red_png(width, height)).decode()


class MediaHost(http.server.BaseHTTPRequestHandler):
    """/status/<code>/...: that status; a path ending in -missing.png: 404; anything else: a
    small PNG."""

    png = red_png()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = self.path.split("/")
        if parts[1] == "status":
            self.send_error(int(parts[2]))
            return
        if self.path.endswith("-missing.png"):
            self.send_error(404)
            return
        self._send(self.png, "image/png")

    def _send(self, data: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def image_doc(url: str) -> dict:
    return {"content": [{"type": "image_url", "image_url": {"url": url}}]}


# Long look-alike URLs: same first 48 characters and length, so shown the same shortened way.
LOOK_ALIKE = "/media/" + "x" * 70


def bad_requests(host: str) -> dict[str, tuple[dict | bytes, int, str]]:
    """The maintained list of bad input: name -> (request body, exact status, what the error
    message must contain). Media hosts that may recover answer 503 (retryable, as stock vLLM
    keeps them); everything else the client got wrong is a 4xx naming it."""
    deep = b'{"query": "q", "documents": [' + b"[" * 3000 + b"]" * 3000 + b"]}"
    return {
        "empty documents": ({"query": "cat", "documents": []}, 400, "At least one"),
        "missing query": ({"documents": ["a"]}, 400, "query"),
        "query wrong type": ({"query": 5, "documents": ["a"]}, 400, "query"),
        "documents wrong type": ({"query": "cat", "documents": 7}, 400, "documents"),
        "over-long document": (
            {"query": "cat", "documents": ["word " * 3000]},
            400,
            "maximum context length",
        ),
        "negative top_n": ({"query": "cat", "documents": ["a"], "top_n": -1}, 400, "top_n"),
        "top_n not a number": ({"query": "cat", "documents": ["a"], "top_n": "x"}, 400, "top_n"),
        "JSON nested 3,000 deep": (deep, 400, "error parsing the body"),
        "media host 404": (
            {"query": "q", "documents": ["a", image_doc(host + "/status/404/img/cat.png")]},
            422,
            f"documents[1]: image_url '{host}/status/404/img/cat.png' could not be fetched",
        ),
        "media host 503": (
            {"query": "q", "documents": ["a", image_doc(host + "/status/503/img/cat.png")]},
            503,
            f"documents[1]: image_url '{host}/status/503/img/cat.png' could not be fetched, "
            "a retry may succeed",
        ),
        "media host 429": (
            {"query": "q", "documents": [image_doc(host + "/status/429/a/b.png")]},
            503,
            "documents[0]: image_url ",
        ),
        "look-alike URLs, one missing": (
            {
                "query": "q",
                "documents": [
                    image_doc(host + LOOK_ALIKE + "-present.png"),
                    image_doc(host + LOOK_ALIKE + "-missing.png"),
                ],
            },
            422,
            "documents[1]: image_url ",  # and not documents[0]
        ),  # fmt: skip
        "instruction without --chat-template": (
            {"query": "q", "documents": ["a"], "instruction": "Find money."},
            400,
            "restart it with --chat-template ",
        ),
        "truncate_prompt_tokens below the template": (
            {"query": "cat", "documents": ["a dog"], "truncate_prompt_tokens": 20},
            400,
            "truncate_prompt_tokens=20 is too small for this pair",
        ),
        "vision tokens above truncate_prompt_tokens": (  # issue 12 (7): 625 of them
            {
                "query": "q",
                "documents": [
                    {
                        "content": [
                            {"type": "image_url", "image_url": {"url": red_png_url(800, 800)}},
                            {"type": "text", "text": "short"},
                        ]
                    }
                ],
                "truncate_prompt_tokens": 300,
            },
            400,
            "truncate_prompt_tokens=300 is too small for this pair",
        ),  # fmt: skip
        "reserved mark in a document": (
            {"query": "q", "documents": ["a <|fim_pad|> b"]},
            400,
            "reserved by the reranker",
        ),
        "truncated pair whose image fails": (  # issue 12 (6): leaves no record behind
            {
                "query": "q " * 300,
                "documents": [
                    {
                        "content": [
                            {"type": "image_url", "image_url": {"url": red_png_url(1, 300)}},
                            {"type": "text", "text": "t"},
                        ]
                    }
                ],
                "truncate_prompt_tokens": 150,
            },
            400,
            "aspect ratio",
        ),  # fmt: skip
        "max_pixels 0": (
            {
                "query": "q",
                "documents": [image_doc(host + "/img/ok.png")],
                "mm_processor_kwargs": {"max_pixels": 0},
            },
            400,
            "mm_processor_kwargs.max_pixels",
        ),  # fmt: skip
    }
