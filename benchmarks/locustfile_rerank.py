"""Locust clients for ``benchmarks/load.py``: a mix of good, repeated and malformed
``/v1/rerank`` requests against one running ``vllm serve``.

Run by ``load.py`` (which starts the server and reads the results); by hand:

    LOAD_MODEL=.cache/tiny-qwen3-vl-reranker locust -f benchmarks/locustfile_rerank.py \
        --headless -u 64 -r 64 -t 60s --host http://127.0.0.1:8000

Each client sends, back to back (a closed loop, as an SDK would): good requests (a query and
its documents drawn from a pool, one in five with a small inline image), one fixed pair over
and over (its scores are written out, to measure their spread under load) and malformed
requests (each must be a 4xx: a 5xx or a hang is a failure). Counts per status, the repeated
pair's scores and each malformed kind's status go to the JSON file ``LOAD_RESULTS`` names.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
from collections import Counter, defaultdict
from typing import Any

from locust import HttpUser, constant, events, task

MODEL = os.environ.get("LOAD_MODEL", "")
RESULTS = os.environ.get("LOAD_RESULTS", "")
# The server's --max-model-len: the over-long request must exceed it.
MAX_MODEL_LEN = int(os.environ.get("LOAD_MAX_MODEL_LEN", "4096"))
WORDS = "cat dog fish river bank money loan tree forest city train music paper light".split()
# The pair every client repeats; load.py scores it before and after the load too.
REPEATED = json.loads(os.environ.get("LOAD_REPEATED", "null")) or {
    "query": "Which animal purrs?",
    "documents": ["The cat purrs on the warm windowsill.", "A train leaves the city at noon."],
}

_statuses: dict[str, Counter[int]] = defaultdict(Counter)
_repeated_scores: list[float] = []


def _png(size: int, seed: int) -> str:
    """A small RGB PNG as a data URL (decoded by the server's media path)."""
    from PIL import Image

    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


IMAGES = [_png(48 + 16 * i, i) for i in range(4)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _malformed() -> list[tuple[str, dict[str, Any] | bytes]]:
    """Wrong requests a careless or hostile client sends; every one must be a 4xx."""
    return [
        ("empty documents", {"query": "q", "documents": []}),
        ("missing query", {"documents": ["a"]}),
        ("documents wrong type", {"query": "q", "documents": 7}),
        ("negative top_n", {"query": "q", "documents": ["a"], "top_n": -1}),
        ("over-long document", {"query": "q", "documents": ["word " * (MAX_MODEL_LEN + 100)]}),
        ("undecodable image", {"query": "q", "documents": [
            {"content": [{"type": "image_url",
                          "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]}),
        ("not JSON", b'{"query": "q", "documents": ['),
        ("nested 3,000 deep", b'{"query": "q", "documents": [' + b"[" * 3000 + b"]" * 3000 + b"]}"),
    ]  # fmt: skip


MALFORMED = _malformed()


class RerankClient(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random(id(self))

    def _post(
        self, name: str, body: dict[str, Any] | bytes, want_4xx: bool = False, kind: str = ""
    ) -> Any:
        """POST one request; a wrong status, or a 200 without one result per document, is a
        failure in Locust's table."""
        kwargs: dict[str, Any] = {"name": name, "catch_response": True, "timeout": 300}
        if isinstance(body, bytes):
            kwargs |= {"data": body, "headers": {"Content-Type": "application/json"}}
        else:
            kwargs["json"] = {"model": MODEL, **body}
        with self.client.post("/v1/rerank", **kwargs) as r:
            _statuses[kind or name].update([r.status_code])
            ok = 400 <= r.status_code < 500 if want_4xx else r.status_code == 200
            if not ok:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
                return None
            if want_4xx:
                r.success()
                return None
            out = r.json()
            if isinstance(body, dict) and len(out.get("results", [])) != len(body["documents"]):
                r.failure("not one result per document")
                return None
            r.success()
            return out

    @task(8)
    def good(self) -> None:
        docs: list[Any] = [_text(self.rng, self.rng.randint(5, 60)) for _ in range(4)]
        if self.rng.random() < 0.2:
            url = self.rng.choice(IMAGES)
            docs.append({"content": [{"type": "image_url", "image_url": {"url": url}}]})
        body = {"query": _text(self.rng, self.rng.randint(3, 15)), "documents": docs}
        self._post("good", body)

    @task(1)
    def repeated(self) -> None:
        out = self._post("repeated", REPEATED)
        if out is not None:
            by_index = {r["index"]: r["relevance_score"] for r in out["results"]}
            _repeated_scores.append(by_index[0])

    @task(1)
    def malformed(self) -> None:
        kind, body = self.rng.choice(MALFORMED)
        self._post("malformed", body, want_4xx=True, kind=f"malformed: {kind}")


@events.test_stop.add_listener
def _write_results(**_: Any) -> None:
    if not RESULTS:
        return
    with open(RESULTS, "w") as f:
        json.dump(
            {
                "statuses": {k: {str(s): n for s, n in c.items()} for k, c in _statuses.items()},
                "repeated_scores": _repeated_scores,
            },
            f,
        )
