"""The middleware that names the input behind a bad-media 4xx (pure functions; the server path
is in test_multimodal.py)."""

from __future__ import annotations

import json

from vllm_ascend_rerank import middleware
from vllm_ascend_rerank.multimodal import shown_url

LONG = "data:image/png;base64," + "A" * 500


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def error(url: str) -> bytes:
    message = f"image_url {shown_url(url)!r}: cannot identify image file"
    return json.dumps(
        {"error": {"message": message, "type": "BadRequestError", "code": 400}}
    ).encode()


def test_names_every_input_holding_the_url() -> None:
    body = {
        "query": "q",
        "documents": ["a", {"content": [{"type": "text", "text": "b"}, image(LONG)]}, image(LONG)],
    }
    out = json.loads(middleware.amend(json.dumps(body).encode(), error(LONG)))
    assert out["error"]["message"] == (
        f"documents[1], documents[2]: image_url {shown_url(LONG)!r}: cannot identify image file"
    )
    assert out["error"]["code"] == 400  # the rest of the error is kept


def test_score_fields_and_a_single_query() -> None:
    body = {"data_1": {"content": [image("http://x/a.png")]}, "data_2": ["d"]}
    out = json.loads(middleware.amend(json.dumps(body).encode(), error("http://x/a.png")))
    assert out["error"]["message"].startswith("data_1: image_url 'http://x/a.png'")


def test_leaves_other_errors_alone() -> None:
    body = json.dumps({"query": "q", "documents": [image("http://x/a.png")]}).encode()
    assert middleware.amend(body, error("http://elsewhere/b.png")) is None  # no input has it
    assert middleware.amend(body, b"not json") is None
    assert middleware.amend(b"not json", error("http://x/a.png")) is None
    other = json.dumps({"error": {"message": "At most 3 image(s)"}}).encode()
    assert middleware.amend(body, other) is None


def test_vllm_serve_parser_gets_it_by_default() -> None:
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    assert parser.parse_args(["m"]).middleware == [middleware.PATH]
    assert parser.parse_args(["m", "--middleware", "a.b"]).middleware == [middleware.PATH, "a.b"]
