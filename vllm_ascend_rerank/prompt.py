"""The official Qwen3-VL-Reranker prompt, from the one template file the server also uses."""

from __future__ import annotations

import functools
from importlib.resources import files

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
