"""Convert an original Qwen3-VL-Reranker checkpoint into a sequence-classification one.

The converted checkpoint has ``score.weight = lm_head[yes] - lm_head[no]`` (fp32, shape
``[1, hidden]``), no ``lm_head``, ``architectures: ["Qwen3VLForSequenceClassification"]``
and ``num_labels: 1``, so it serves with no ``--hf_overrides`` and scores exactly like
the original with the overrides::

    vllm-ascend-rerank-convert Qwen3-VL-Reranker-2B/ Qwen3-VL-Reranker-2B-seq-cls/
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_ascend_rerank.models.qwen3_vl_reranker import check_head, resolve_token_id
from vllm_ascend_rerank.registration import MODEL_ARCH

_LM_HEAD = "lm_head.weight"
_EMBED = "model.language_model.embed_tokens.weight"


def convert(src: str | Path, dst: str | Path, tokens: tuple[str, str] = ("no", "yes")) -> Path:
    from transformers import AutoTokenizer

    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty")
    config = json.loads((src / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(src)
    false_id, true_id = (resolve_token_id(tokenizer, t) for t in tokens)

    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(src.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensors[name] = f.get_tensor(name)
    tied = config.get("tie_word_embeddings") or config.get("text_config", {}).get(
        "tie_word_embeddings"
    )
    source = _LM_HEAD if _LM_HEAD in tensors else (_EMBED if tied else None)
    if source is None:
        raise ValueError(f"{src}: no lm_head.weight and tie_word_embeddings is false")
    rows = tensors[source].to(torch.float32)
    head = (rows[true_id] - rows[false_id]).unsqueeze(0).contiguous()
    check_head(head, f"{src} ({source})")
    tensors.pop(_LM_HEAD, None)
    tensors["score.weight"] = head

    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for f in src.iterdir():
        if (
            f.is_file()
            and f.suffix != ".safetensors"
            and f.name
            not in (
                "config.json",
                "model.safetensors.index.json",
            )
        ):
            shutil.copy2(f, dst / f.name)
    config["architectures"] = [MODEL_ARCH]
    config["num_labels"] = 1
    for key in ("classifier_from_token", "is_original_qwen3_reranker", "method"):
        config.pop(key, None)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="original checkpoint directory")
    parser.add_argument("dst", help="output directory (new or empty)")
    parser.add_argument("--tokens", nargs=2, default=["no", "yes"], metavar=("FALSE", "TRUE"))
    args = parser.parse_args(argv)
    print(convert(args.src, args.dst, tuple(args.tokens)))


if __name__ == "__main__":
    main()
