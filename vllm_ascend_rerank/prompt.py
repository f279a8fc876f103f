"""The official Qwen3-VL-Reranker prompt, from the one template file the server also uses."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from jinja2 import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATE_NAME = "qwen3_vl_reranker.jinja"


def template_path() -> str:
    """Path of the packaged chat template (pass it to ``--chat-template``)."""
    return str(files("vllm_ascend_rerank") / "templates" / TEMPLATE_NAME)


def _raise(message: str) -> None:
    raise ValueError(message)


@functools.cache
def _template() -> Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string((files("vllm_ascend_rerank") / "templates" / TEMPLATE_NAME).read_text())


def render(query: str, document: str, instruction: str | None = None) -> str:
    """The full prompt for one pair; ``query``/``document`` as vLLM passes them
    (media placeholders first, then text)."""
    return _template().render(
        messages=[
            {"role": "query", "content": query},
            {"role": "document", "content": document},
        ],
        instruction=instruction,
    )


def check_instruction_applied(processed_inputs: Mapping[str, Any], params: object) -> None:
    """400 when ``params`` ask for an instruction (``extra_kwargs.chat_template_kwargs``, as
    ``LLM.score`` takes it) that the reranker prompt does not carry: vLLM 0.34 applies it only
    through a chat template given with ``chat_template=``; without one it would be dropped."""
    from vllm_ascend_rerank import truncation

    kwargs = (getattr(params, "extra_kwargs", None) or {}).get("chat_template_kwargs")
    instruction = kwargs.get("instruction") if isinstance(kwargs, Mapping) else None
    ids = processed_inputs.get("prompt_token_ids")
    if not isinstance(instruction, str) or not instruction or not ids:
        return
    markers = truncation.for_ids(ids)
    if markers is None:
        return  # not a reranker prompt
    text = markers.tokenizer.decode(ids, skip_special_tokens=False)
    if f"<Instruct>: {instruction}<Query>:" in text:
        return
    from vllm.exceptions import VLLMValidationError

    raise VLLMValidationError(
        "chat_template_kwargs.instruction is only applied with the reranker's chat template: "
        f"pass chat_template=open({template_path()!r}).read() to LLM.score (vllm serve: "
        f"--chat-template {template_path()}); a pre-formatted query keeps the instruction "
        "written in it",
        parameter="instruction",
    )
