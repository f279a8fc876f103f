"""The pairs a scenario scores, and the language model's shape and FLOPs."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_WORDS = (
    "the a of to in and for with on is are was what which how why where cat dog bird fish river "
    "city music film book paper science history art sport food water fire earth light sound red "
    "green blue black white big small new old good first last people time year day world life "
    "market price stock bank money tree forest house piano game team score search find answer "
    "question model rank query document image video picture photo car mountain"
).split()


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    groups: list[tuple[str, list[str]]]  # (query, documents)
    prompt_tokens: list[int] = field(default_factory=list)  # per pair, official prompt

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(q, d) for q, docs in self.groups for d in docs]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def tokens_text(rng: random.Random, tokenizer: Any, n: int) -> str:
    """Text of exactly ``n`` tokens (alone; a neighbour can merge one token at the edge)."""
    text = words(rng, n)
    ids = tokenizer.encode(text, add_special_tokens=False)
    while len(ids) < n:
        text += " " + words(rng, n)
        ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids[:n])


def short_long(rng: random.Random, queries: int, docs: int) -> Workload:
    groups = [
        (words(rng, rng.randint(24, 36)), [words(rng, rng.randint(160, 240)) for _ in range(docs)])
        for _ in range(queries)
    ]
    return Workload("short-long", groups)


def shared_prefix(rng: random.Random, tokenizer: Any, q_tokens: int, docs: int, d_tokens: int):
    query = tokens_text(rng, tokenizer, q_tokens)
    return Workload(
        "shared-prefix", [(query, [tokens_text(rng, tokenizer, d_tokens) for _ in range(docs)])]
    )


def count_prompt_tokens(w: Workload, tokenizer: Any) -> None:
    from vllm_ascend_rerank.prompt import render

    w.prompt_tokens = [len(tokenizer.encode(render(q, d))) for q, d in w.pairs]


# ---------------------------------------------------------------------------------------------
# FLOPs of the language model
# ---------------------------------------------------------------------------------------------
@dataclass
class LMShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, checkpoint: Path) -> LMShape:
        t = json.loads((checkpoint / "config.json").read_text())["text_config"]
        return cls(
            t["hidden_size"],
            t["intermediate_size"],
            t["num_hidden_layers"],
            t["num_attention_heads"],
            t["num_key_value_heads"],
            t["head_dim"],
        )

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of one decoder layer's GEMMs, fused as vLLM runs them."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [(h, q + 2 * kv), (q, h), (h, 2 * i), (i, h)]  # qkv, o, gate_up, down

    @property
    def linear_params(self) -> int:
        """Weights every token multiplies (decoder layers; embedding lookup excluded)."""
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    def flops(self, new_tokens: list[int], cached: list[int] | None = None) -> float:
        """2 * linear_params * tokens  +  attention  +  score head.

        Attention per layer and request with c cached and n new tokens (causal, useful work
        only): QK^T and PV, each 2 * heads * head_dim * sum_{i=1..n} (c + i) FLOPs.
        RMSNorm, RoPE, SiLU and residual adds are not counted.
        """
        cached = cached or [0] * len(new_tokens)
        total = 0.0
        for n, c in zip(new_tokens, cached, strict=True):
            attn = 4 * self.heads * self.head_dim * (n * c + n * (n + 1) / 2) * self.layers
            total += 2 * self.linear_params * n + attn + 2 * self.hidden
        return total
