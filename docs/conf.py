"""Sphinx configuration for the vllm-ascend-rerank documentation (MyST markdown sources).

Build: ``make docs`` (warnings are errors), output in docs/_build/html.
"""

from __future__ import annotations

project = "vllm-ascend-rerank"
author = "vllm-ascend-rerank contributors"
copyright = "vllm-ascend-rerank contributors"
release = version = "0.1.0"

extensions = ["myst_parser", "sphinx_reredirects"]

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

# Old flat tutorial URLs -> their pages in the sectioned layout (sphinx-reredirects: each key
# is an old docname, for which it writes <old>.html that forwards to the value; the value is
# used as-is as a URL relative to the old page's folder, so it carries the ``.html``).
# It checks neither side: tests/test_docs.py fails if a target is not a page of the build
# or an old name is still a document.
redirects = {
    "tutorials/index": "models/index.html",
    "tutorials/Qwen3-VL-Reranker": "models/Qwen3-VL-Reranker.html",
}
