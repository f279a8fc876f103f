"""Sphinx configuration for the vllm-ascend-rerank documentation (MyST markdown sources).

Build: ``make docs`` (warnings are errors), output in docs/_build/html.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "vllm-ascend-rerank"
author = "vllm-ascend-rerank contributors"
copyright = "vllm-ascend-rerank contributors"
release = version = "0.1.0"

extensions = ["myst_parser", "legacy_redirects"]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "Thumbs.db", ".DS_Store"]

# MyST: ``:::`` fences for admonitions, heading anchors for ``page.md#section`` links.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "vllm-ascend-rerank"
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False
pygments_style = "sphinx"

# Old flat tutorial URLs -> their pages in the sectioned layout (docname -> docname).
# Each one becomes a small HTML page that forwards to the new page (see _ext/).
legacy_redirects = {
    "tutorials/index": "tutorials/models/index",
    "tutorials/Qwen3-VL-Reranker": "tutorials/models/Qwen3-VL-Reranker",
}
