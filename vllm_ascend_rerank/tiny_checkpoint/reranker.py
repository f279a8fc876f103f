"""The tiny Qwen3-VL reranker checkpoint (the default model of examples and tests).

The weights are random but seeded (same seed -> byte-identical safetensors). The "yes" and
"no" rows of the output head are then rewritten so that the reranker score
`sigmoid(logit_yes - logit_no)` at the last position spreads over (0, 1) across inputs instead
of sitting at 0.5 (see `_spread_yes_no_rows`).
"""

from __future__ import annotations

import json
import os
import pathlib
import random

from vllm_ascend_rerank.tiny_checkpoint.tokenizer import (
    _WORDS,
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TOKENIZER_CONFIG,
    build_tokenizer,
)

# Image/video processor settings of the real Qwen3-VL checkpoints (patch 16, merge 2,
# temporal patch 2, mean/std 0.5); pixel bounds are those of Qwen3-VL-2B-Instruct.
_VISION_PROCESSOR_COMMON = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
}
PREPROCESSOR_CONFIG = {
    **_VISION_PROCESSOR_COMMON,
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "image_processor_type": "Qwen2VLImageProcessorFast",
}
VIDEO_PREPROCESSOR_CONFIG = {
    **_VISION_PROCESSOR_COMMON,
    "size": {"longest_edge": 25165824, "shortest_edge": 4096},
    "video_processor_type": "Qwen3VLVideoProcessor",
}


def tiny_config(
    vocab_size: int,
    token_ids: dict[str, int],
    *,
    tied: bool,
    hidden_size: int,
    num_layers: int,
    head_dim: int = 16,
    intermediate_size: int | None = None,
):
    """A Qwen3VLConfig shaped like Qwen3-VL-2B/8B's, shrunk."""
    from transformers import Qwen3VLConfig

    pairs = head_dim // 2  # rotary pairs, split t/h/w as the real [24, 20, 20] of 64
    hw = pairs * 20 // 64
    text_config = {
        "model_type": "qwen3_vl_text",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": hidden_size // head_dim,
        "num_key_value_heads": max(1, hidden_size // head_dim // 2),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "tie_word_embeddings": tied,
        # Real: mrope_section [24, 20, 20] over head_dim/2 = 64 rotary pairs, interleaved.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [pairs - 2 * hw, hw, hw],
            "mrope_interleaved": True,
        },
        "dtype": "float32",
    }
    vision_config = {
        "model_type": "qwen3_vl_vision",
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": hidden_size,
        "num_position_embeddings": 64,  # an 8x8 grid; real: 2304 = 48x48
        "deepstack_visual_indexes": [0, 1],
        "initializer_range": 0.02,
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=tied,
        architectures=["Qwen3VLForConditionalGeneration"],
        dtype="float32",
    )


def make_tiny_checkpoint(
    out_dir: str | os.PathLike,
    *,
    tied: bool = True,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_extra: int = 64,
    head_dim: int = 16,
    intermediate_size: int | None = None,
) -> pathlib.Path:
    """Write a tiny Qwen3-VL reranker checkpoint to `out_dir` and return its path.

    tied: share lm_head with embed_tokens (Qwen3-VL-Reranker-2B) or not (-8B).
    hidden_size: a multiple of 2 * head_dim (hidden_size / head_dim query heads, half as many
    KV heads). head_dim: 16 by default, 128 in the real models. intermediate_size: the MLP
    width, 2 * hidden_size by default (the real models: 3 * hidden_size).
    vocab_extra: unused embedding rows past the last tokenizer id (the real table has
    151,936 rows for 151,669 tokens).
    """
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    if head_dim < 16 or head_dim % 16:
        raise ValueError(f"head_dim must be a multiple of 16, got {head_dim}")
    if hidden_size % (2 * head_dim) or num_layers < 1:
        raise ValueError(
            f"hidden_size must be a multiple of 2 * head_dim ({2 * head_dim}) and "
            f"num_layers >= 1; got hidden_size={hidden_size}, num_layers={num_layers}"
        )
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer()  # the tokenizer does not depend on the weight seed
    token_ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    vocab_size = tok.get_vocab_size(with_added_tokens=True) + vocab_extra
    config = tiny_config(
        vocab_size,
        token_ids,
        tied=tied,
        hidden_size=hidden_size,
        num_layers=num_layers,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
    )

    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
    _spread_yes_no_rows(model, tok, seed)

    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    for name, cfg in (
        ("tokenizer_config.json", TOKENIZER_CONFIG),
        ("preprocessor_config.json", PREPROCESSOR_CONFIG),
        ("video_preprocessor_config.json", VIDEO_PREPROCESSOR_CONFIG),
    ):
        (out / name).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


# Reranker prompt shape used only to calibrate the yes/no rows (the real rule lives elsewhere).
_CALIBRATION_PROMPT = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: Given a search query, retrieve relevant candidates that answer "
    "the query.<Query>:{query}\n<Document>:{doc}<|im_end|>\n<|im_start|>assistant\n"
)
SCORE_LOGIT_STD = (
    2.5  # std of logit_yes - logit_no over calibration pairs: scores ~0.08..0.92 at 1 std
)


def _spread_yes_no_rows(model, tok, seed: int, rounds: int = 3) -> None:
    """Rewrite the "yes"/"no" head rows so that sigmoid(logit_yes - logit_no) spreads over (0, 1).

    With random weights the last position's hidden state is nearly the same for every prompt
    (all prompts end with the same tokens; the context adds ~15% on top), so a random yes-no
    direction gives a near-constant score. So d = W[yes] - W[no] is set to a seeded random
    direction made orthogonal to the mean last hidden state of reranker-shaped calibration
    prompts (mean logit difference ~0) and scaled so that the logit difference has std
    SCORE_LOGIT_STD over them. The direction is drawn independently of the weights: when tied,
    the old W[yes] - W[no] is also the difference of two input embeddings that every reranker
    prompt contains, and it gave skewed scores. The scale goes into the final RMSNorm's gain, not
    into d (a uniform gain scales every logit alike), so the yes/no rows keep their natural size
    and, when tied, do not swamp the embeddings. When tied the hidden states still move a little
    with d: a few rounds settle it.
    """
    import torch

    rng = random.Random(seed)

    def text(max_words: int) -> str:  # English-like: known words, some new words and numbers
        words = []
        for _ in range(rng.randint(1, max_words)):
            kind = rng.random()
            if kind < 0.85:
                words.append(rng.choice(_WORDS))
            elif kind < 0.95:
                letters = (
                    rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))
                )
                words.append("".join(letters))
            else:
                words.append(str(rng.randint(0, 2025)))
        return " ".join(words).capitalize() + rng.choice([".", "?", "!", ""])

    prompts = [
        torch.tensor([tok.encode(_CALIBRATION_PROMPT.format(query=text(10), doc=text(30))).ids])
        for _ in range(64)
    ]
    yes_id, no_id = tok.token_to_id("yes"), tok.token_to_id("no")
    weight = model.lm_head.weight  # the same tensor as embed_tokens.weight when tied
    gain = model.model.language_model.norm.weight  # final RMSNorm, just before the head
    with torch.no_grad():
        center = (weight[yes_id] + weight[no_id]) / 2
        size = (weight[yes_id] - weight[no_id]).norm()
        direction = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(seed))
        for _ in range(rounds):
            hidden = torch.cat([model.model(input_ids=i).last_hidden_state[:, -1] for i in prompts])
            mean = hidden.mean(0)
            d = direction - (direction @ mean) / (mean @ mean) * mean
            d = d * (SCORE_LOGIT_STD / (hidden @ d).std())
            gain *= d.norm() / size
            d = d * (size / d.norm())
            weight[yes_id] = center + d / 2
            weight[no_id] = center - d / 2
