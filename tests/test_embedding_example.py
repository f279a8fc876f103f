"""examples/retrieve_then_rerank.py, run as a user runs it, on the tiny checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

from test_examples import run_example

HIT = re.compile(r"^  ([+-]\d\.\d{4})  (.+)$", re.M)
SCORE = re.compile(r"^  (\d\.\d{4})  (.+)$", re.M)


def test_retrieve_then_rerank(
    embedding_checkpoints: dict[str, Path], checkpoints: dict[str, Path]
) -> None:
    out = run_example(
        "retrieve_then_rerank.py",
        "--embedding-model-dir", str(embedding_checkpoints["plain"]),
        "--model-dir", str(checkpoints["tied"]),
        "--top-k", "3",
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "terminate called" not in out.stderr
    retrieved_text, reranked_text = out.stdout.split("reranked:")
    hits = [(float(c), doc) for c, doc in HIT.findall(retrieved_text)]
    scores = [(float(s), doc) for s, doc in SCORE.findall(reranked_text)]
    assert len(hits) == 3 and len(scores) == 3, out.stdout
    assert [c for c, _ in hits] == sorted((c for c, _ in hits), reverse=True)
    assert [s for s, _ in scores] == sorted((s for s, _ in scores), reverse=True)
    assert {d for _, d in hits} == {d for _, d in scores}  # the reranker ranks the recalled
    assert all(0 < s < 1 for s, _ in scores)
