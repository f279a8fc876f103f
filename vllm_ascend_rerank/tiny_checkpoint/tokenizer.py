"""The tiny checkpoints' tokenizer: a byte-level BPE trained here with Qwen's added tokens.

Its chat template renders system/user/assistant turns as the Qwen3-VL Instruct template does.
"""

from __future__ import annotations

import random

# Qwen2/Qwen3 added tokens, in the order (and so with the relative ids) of the real
# tokenizer, whose ids start at 151643. The first 14 are "special" (kept by the official
# reranker's truncation); the rest are ordinary added tokens, as in Qwen3-VL.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
NON_SPECIAL_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

BPE_VOCAB_SIZE = (
    1000  # upper bound: the small corpus gives ~700 (256 bytes + merges), then added tokens
)

# Same rendering as the Qwen3-VL Instruct template for system/user/assistant turns: a text part
# is emitted as is, an image as <|vision_start|><|image_pad|><|vision_end|>, a video likewise
# with <|video_pad|>; nothing is put between parts. Tools and reasoning are left out.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


# Words for the tokenizer corpus. "yes", "no" and the chat roles are frequent so that BPE learns
# each as one token, as in Qwen's vocabulary (the official truncation keeps the last 5 tokens,
# "<|im_end|>", "\n", "<|im_start|>", "assistant", "\n").
_WORDS = (
    "the a an of to in on for with and or but is are was were be been it this that these those "
    "what which who where when why how query document search find retrieve relevant candidates "
    "answer answers question given judge whether meets requirements based provided note can only "
    "instruct image video picture photo frame cat dog bird car city river mountain music film book "
    "paper science history art sport food water fire earth light sound color red green blue black "
    "white big small new old good bad first last many few people time year day world life hand "
    "part place case week company system program number group problem fact"
).split()


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    """Deterministic English-like lines, with the prompt's own markers and yes/no answers."""
    out = [
        "Judge whether the Document meets the requirements based on the Query and the Instruct "
        'provided. Note that the answer can only be "yes" or "no".',
        "<Instruct>: Given a search query, retrieve relevant candidates that answer the query.",
        "<Query>: <Document>: NULL",
    ]
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":"])
        if rng.random() < 0.3:
            sentence += f" {rng.randint(0, 2025)}"
        out.append(sentence)
        out.append(rng.choice(["yes", "no", "Yes", "No"]))
        out.append(rng.choice(["system", "user", "assistant"]))
    return out


def build_tokenizer(seed: int = 0):
    """Train a byte-level BPE with Qwen2's pre-tokenizer; added tokens get the next ids."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(random.Random(seed)), trainer)
    for word in ("yes", "no", "system", "user", "assistant"):
        if tok.token_to_id(word) is None:  # the score reads these vocabulary entries
            raise RuntimeError(f"BPE did not learn {word!r} as one token")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED_TOKENS]
    )
    return tok


# tokenizer_config.json as in the real Qwen3-VL checkpoints (transformers 4.x keys; 5.x maps
# additional_special_tokens to extra_special_tokens). all_special_ids is then the 14 SPECIAL_TOKENS.
TOKENIZER_CONFIG = {
    "tokenizer_class": "Qwen2Tokenizer",
    "bos_token": None,
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "unk_token": None,
    "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
    "add_bos_token": False,
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
    "errors": "replace",
    "model_max_length": 262144,
    "split_special_tokens": False,
}
