"""Forwarding pages for URLs the documentation used to have.

``legacy_redirects`` in conf.py maps an old docname (``tutorials/Qwen3-VL-Reranker``) to
the docname that replaced it. For each entry an HTML builder writes ``<old>.html``: a
meta refresh and a canonical link to the new page, a script that keeps the ``#anchor``,
and a plain link for readers without either. A target that is not a document of this
build, or an old name that is still a document, is a build warning (an error with -W).
"""

from __future__ import annotations

import html
import json
import posixpath
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Moved: {title}</title>
<link rel="canonical" href="{canonical}">
<meta name="robots" content="noindex">
<meta http-equiv="refresh" content="0; url={url}">
<script>window.location.replace({url_js} + window.location.hash);</script>
</head>
<body>
<p>This page has moved to <a href="{url}">{title}</a>.</p>
</body>
</html>
"""


def _check(app: Sphinx, env) -> None:  # env-check-consistency
    for old, new in app.config.legacy_redirects.items():
        if new not in env.found_docs:
            logger.warning("legacy_redirects: %r -> %r: no such document", old, new)
        if old in env.found_docs:
            logger.warning("legacy_redirects: %r is still a document; drop the redirect", old)


def _write(app: Sphinx, exception: Exception | None) -> None:  # build-finished
    if exception is not None or app.builder.format != "html":
        return
    suffix = app.builder.out_suffix
    base = app.config.html_baseurl.rstrip("/")
    for old, new in sorted(app.config.legacy_redirects.items()):
        url = posixpath.relpath(new + suffix, posixpath.dirname(old) or ".")
        canonical = f"{base}/{new}{suffix}" if base else url
        title = app.env.titles[new].astext() if new in app.env.titles else new
        out = Path(app.outdir, old + suffix)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            PAGE.format(
                title=html.escape(title),
                url=html.escape(url, quote=True),
                url_js=json.dumps(url).replace("</", "<\\/"),
                canonical=html.escape(canonical, quote=True),
            ),
            encoding="utf-8",
        )


def setup(app: Sphinx) -> dict:
    app.add_config_value("legacy_redirects", {}, "env", types=[dict])
    app.connect("env-check-consistency", _check)
    app.connect("build-finished", _write)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
