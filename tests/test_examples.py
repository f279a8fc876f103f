"""The README's main job and the offline example, run as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, free_port

SCORE_LINE = re.compile(r"^\d\.\d{4}  ", re.M)


def run_example(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def test_offline_score_exits_cleanly_every_time(checkpoints: dict[str, Path]) -> None:
    # Stock vLLM can crash at interpreter exit after printing scores (exit 134);
    # users' scripts read exit codes, so prove it does not happen here.
    outputs = set()
    for _ in range(3):
        out = run_example("offline_score.py", "--model-dir", str(checkpoints["tied"]))
        assert out.returncode == 0, out.stderr[-3000:]
        lines = SCORE_LINE.findall(out.stdout)
        assert len(lines) == 2, out.stdout
        assert "terminate called" not in out.stderr
        outputs.add(tuple(lines))
    assert len(outputs) == 1  # same scores every run


def test_main_job_serves_and_ranks(checkpoints: dict[str, Path]) -> None:
    out = run_example(
        "serve_and_rerank.py", "--model-dir", str(checkpoints["tied"]), "--port", str(free_port())
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    ranked = re.findall(r"^(\d)\. (\d\.\d{4})  (.+)$", out.stdout, re.M)
    assert [r[0] for r in ranked] == ["1", "2", "3", "4"], out.stdout
    scores = [float(r[1]) for r in ranked]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] < scores[0] < 1


def test_multimodal_examples_run(checkpoints: dict[str, Path]) -> None:
    offline = run_example("multimodal_offline.py", "--model-dir", str(checkpoints["tied"]))
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert len(SCORE_LINE.findall(offline.stdout)) >= 4, offline.stdout
    online = run_example(
        "multimodal_online.py", "--model-dir", str(checkpoints["tied"]), "--port", str(free_port())
    )
    assert online.returncode == 0, online.stdout[-2000:] + online.stderr[-3000:]
    assert re.search(r"^1\. \d\.\d{4}  ", online.stdout, re.M), online.stdout
    assert "undecodable image -> 400" in online.stdout, online.stdout
