"""Parity figures: the plugin's scores against the official rule, per kind of input.

Prints max |plugin - official| over text pairs, image documents, video documents and
mixed documents, for the plugin served in fp32 and bf16, against the official scorer in
fp32 (transformers' Qwen3-VL as ``Qwen3VLReranker`` runs it: tests/reference.py), on the
test suite's tiny random checkpoint. A script that prints figures, not a test; the tests
assert the fp32 bound (1e-4).

    .venv/bin/python benchmarks/parity.py [--dtypes float32 bfloat16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))


def cases(root: Path) -> dict[str, tuple[str, list, list]]:
    """kind -> (query, documents for LLM.score, documents for the reference)."""
    from conftest import make_pairs
    from media_helpers import image, img, txt, vid, write_video

    query, texts = make_pairs(16, seed=3)
    pics = [image(50, 70, 1), image(12, 300, 2), image(333, 121, 4), image(64, 64, 5)]
    clip = write_video(root / "clip.mp4", frames=50, fps=10, h=72, w=96)
    return {
        "text": (query, texts, [{"text": t} for t in texts]),
        "image": (
            query,
            [{"content": [img(p)]} for p in pics],
            [{"image": p} for p in pics],
        ),
        "video": (query, [{"content": [vid(clip)]}], [{"video": clip}]),
        "mixed": (
            query,
            [
                {"content": [txt("a red car"), img(pics[0])]},
                {"content": [img(pics[2]), txt("two"), img(pics[3])]},
                {"content": [txt("a clip"), img(pics[3]), vid(clip)]},
            ],
            [
                {"text": "a red car", "image": pics[0]},
                {"image": [pics[2], pics[3]], "text": "two"},
                {"text": "a clip", "image": pics[3], "video": clip},
            ],
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    from conftest import close_llm, make_llm
    from reference import OfficialReranker

    from vllm_ascend_rerank.tiny_checkpoint import make_tiny_checkpoint

    root = Path(tempfile.mkdtemp(prefix="parity-"))
    ckpt = make_tiny_checkpoint(root / "tied", tied=True, seed=0)
    ref = OfficialReranker(ckpt)
    inputs = cases(root)
    want = {k: ref.score({"text": q}, r) for k, (q, _, r) in inputs.items()}
    rows = []
    for dtype in args.dtypes:
        llm = make_llm(ckpt, dtype=dtype, enable_prefix_caching=False)
        for kind, (query, docs, _) in inputs.items():
            got = [o.outputs.score for o in llm.score(query, docs)]
            diffs = [abs(a - b) for a, b in zip(got, want[kind], strict=True)]
            mean = sum(diffs) / len(diffs)
            rows.append({"dtype": dtype, "input": kind, "n": len(docs),
                         "mean_abs_diff": mean, "max_abs_diff": max(diffs)})  # fmt: skip
        close_llm(llm)
    import vllm

    print(f"vLLM {vllm.__version__}; plugin vs official rule (fp32 transformers), tiny checkpoint")
    print(f"{'dtype':10} {'input':7} {'n':>3}  mean |diff|  max |diff|")
    for r in rows:
        print(f"{r['dtype']:10} {r['input']:7} {r['n']:>3}  {r['mean_abs_diff']:11.2e}  "
              f"{r['max_abs_diff']:.2e}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"vllm": vllm.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
