"""vLLM's HF renderer with the official Qwen3-VL-Embedding prompt for every input form.

Selected through ``tokenizer_mode`` (see ``embedding.configure``), so the same renderer runs
``/v1/embeddings`` (plain ``input``, chat-style ``messages``, batched conversations) and
offline ``LLM.embed``:

- a text prompt that is not a conversation yet (``input: "a cat"``, ``LLM.embed("a cat")``)
  becomes the official prompt with the default instruction, or the request's
  ``chat_template_kwargs.instruction`` (vLLM passes that field on); the text may begin with media
  placeholders (offline ``multi_modal_data``), which then stay in front of the text;
- a text prompt that already is one (begins with ``<|im_start|>``) and token ids are sent as
  they are: formatted by the client, never templated twice;
- chat messages become the official conversation (``prompt.official_messages``: the system
  message, or ``chat_template_kwargs.instruction``, is the instruction; videos, images,
  texts; texts joined with nothing; "NULL" when empty), rendered with the official layout
  whatever chat template the checkpoint ships, always ending with the generation prompt the
  vector is read at.

A chat template sent with the request or given with ``--chat-template`` would give other
vectors: it is refused (400) and the docs say how to turn the official formatting off.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.renderers.hf import HfRenderer

from vllm_ascend_rerank.embedding.prompt import (
    CHAT_TEMPLATE,
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    MessageError,
    format_prompt,
    is_formatted,
    official_messages,
)


def _instruction(kwargs: Any) -> str | None:
    """``chat_template_kwargs.instruction`` of a request, checked."""
    value = (kwargs or {}).get("instruction") if isinstance(kwargs, dict) else None
    if value is not None and not isinstance(value, str):
        raise VLLMValidationError(
            f"chat_template_kwargs.instruction must be a string, got {value!r}",
            parameter="chat_template_kwargs.instruction",
        )
    return value


def _official_text(prompt: Any, instruction: str | None = None) -> Any:
    """A text prompt in the official form (other prompts unchanged)."""
    text = prompt.get("prompt") if isinstance(prompt, dict) else None
    if (
        not isinstance(text, str)
        or "prompt_token_ids" in prompt
        or "prompt_embeds" in prompt
        or is_formatted(text)
    ):
        if instruction is not None:  # it would be dropped without a word
            raise VLLMValidationError(
                "chat_template_kwargs.instruction: this input is already formatted (a prompt "
                "starting with <|im_start|>, or token ids) and carries its own instruction",
                parameter="chat_template_kwargs.instruction",
            )
        return prompt
    # Leading placeholders are the input's media (offline multi_modal_data), in the client's
    # order; the official order is videos before images.
    videos = images = 0
    while True:
        if text.startswith(VIDEO_PLACEHOLDER):
            if images:
                raise VLLMValidationError(
                    "prompt: put video placeholders before image placeholders (the official "
                    "order is videos, images, text)",
                    parameter="prompt",
                )
            videos += 1
            text = text[len(VIDEO_PLACEHOLDER) :]
        elif text.startswith(IMAGE_PLACEHOLDER):
            images += 1
            text = text[len(IMAGE_PLACEHOLDER) :]
        else:
            break
    if "<|vision_start|>" in text:
        raise VLLMValidationError(
            "prompt: media placeholders must come before the text (the official order is "
            "videos, images, text)",
            parameter="prompt",
        )
    texts = [text] if text or not (images or videos) else []
    formatted = format_prompt(texts, images=images, videos=videos, instruction=instruction)
    return {**prompt, "prompt": formatted}


class EmbeddingRenderer(HfRenderer):
    """``HfRenderer`` whose prompts are the official embedder's (module docstring)."""

    def render_cmpl(self, prompts, tok_params=None, *, prompt_extras=None, skip_mm_cache=False):
        instruction = _instruction((prompt_extras or {}).get("chat_template_kwargs"))
        return super().render_cmpl(
            [_official_text(p, instruction) for p in prompts],
            tok_params,
            prompt_extras=prompt_extras,
            skip_mm_cache=skip_mm_cache,
        )

    async def render_cmpl_async(
        self, prompts, tok_params=None, *, prompt_extras=None, skip_mm_cache=False
    ):
        instruction = _instruction((prompt_extras or {}).get("chat_template_kwargs"))
        return await super().render_cmpl_async(
            [_official_text(p, instruction) for p in prompts],
            tok_params,
            prompt_extras=prompt_extras,
            skip_mm_cache=skip_mm_cache,
        )

    def render_prompt(self, prompt):
        return super().render_prompt(_official_text(prompt))

    async def _render_prompt_async(self, prompt):
        return await super()._render_prompt_async(_official_text(prompt))

    def render_messages(self, messages, params):
        return super().render_messages(*self._official(messages, params))

    async def render_messages_async(self, messages, params):
        return await super().render_messages_async(*self._official(messages, params))

    @staticmethod
    def _official(messages: list[Any], params: Any) -> tuple[list[Any], Any]:
        if params.chat_template is not None:
            raise VLLMValidationError(
                "chat_template: this server formats every input as the official "
                "Qwen3-VL-Embedding prompt; a chat template would give other vectors. Serve "
                "with --tokenizer-mode hf to use your own template instead.",
                parameter="chat_template",
            )
        instruction = _instruction(params.chat_template_kwargs)
        try:
            conversation = official_messages(messages, instruction)
        except MessageError as exc:
            raise VLLMValidationError(str(exc), parameter=exc.parameter) from exc
        # The official prompt always ends with the generation prompt.
        kwargs = {
            k: v
            for k, v in params.chat_template_kwargs.items()
            if k not in ("add_generation_prompt", "continue_final_message", "instruction")
        }
        params = dataclasses.replace(
            params,
            chat_template=CHAT_TEMPLATE,
            chat_template_content_format="openai",
            chat_template_kwargs=kwargs,
        )
        return conversation, params
