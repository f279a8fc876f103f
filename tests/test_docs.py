"""The documentation site: it builds with warnings as errors, old URLs forward to their new
pages, no internal link or anchor is broken, and every snippet is either run here (against the
embedded tiny checkpoint), a verbatim include of an example another test runs, or marked as
needing what a test machine lacks (``# needs: ascend|weights|network``).

Snippets of one page run in order in one scratch directory, as a reader would type them. A
block that starts with ``vllm serve`` is started in the background (and stopped after the
page); ``localhost:8000`` / ``--port 8000`` are rewritten to a free port.
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests
from conftest import REPO, free_port

DOCS = REPO / "docs"
BIN = Path(sys.executable).parent

# Old flat URLs -> the page that replaced them (the contract; conf.py's ``redirects``, read by
# sphinx-reredirects, implements it).
OLD_URLS = {
    "tutorials/Qwen3-VL-Reranker.html": "tutorials/models/Qwen3-VL-Reranker.html",
    "tutorials/index.html": "tutorials/models/index.html",
}
NEEDS = {"ascend", "weights", "network"}
RUN_LANGS = {"bash", "python"}
DATA_LANGS = {"text", "json"}
SERVE_TIMEOUT_S = 300
BLOCK_TIMEOUT_S = 600


# ---- reading the markdown sources -----------------------------------------------------------
@dataclass
class Block:
    page: Path
    line: int
    kind: str  # "run", "needs", "include", "output", "data"
    lang: str
    body: str
    options: dict[str, str] = field(default_factory=dict)
    arg: str = ""

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def source_pages() -> list[Path]:
    exclude = {DOCS / "README.md"}
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts and p not in exclude)


def _split_options(text: str) -> tuple[dict[str, str], str]:
    """MyST directive options (``:key: value`` lines at the top) and the remaining body."""
    options: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines) and re.match(r"^:[\w-]+:", lines[i]):
        key, _, value = lines[i][1:].partition(":")
        options[key] = value.strip()
        i += 1
    if i < len(lines) and not lines[i].strip():
        i += 1
    return options, "\n".join(lines[i:]) + ("\n" if text.endswith("\n") else "")


def blocks(page: Path) -> list[Block]:
    from markdown_it import MarkdownIt

    out = []
    for tok in MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8")):
        if tok.type != "fence":
            continue
        info = tok.info.strip()
        line = tok.map[0] + 1 if tok.map else 0
        directive = re.match(r"^\{([\w-]+)\}\s*(.*)$", info)
        if directive:
            name, arg = directive.groups()
            options, body = _split_options(tok.content)
            if name == "literalinclude":
                out.append(Block(page, line, "include", "", body, options, arg.strip()))
                continue
            if name not in ("code-block", "code"):
                continue  # toctree, admonitions, ...: not code
            lang = arg.strip()
        else:
            options, body, lang = {}, tok.content, info.split()[0] if info else ""
        if lang in RUN_LANGS:
            first = body.lstrip().splitlines()[0] if body.strip() else ""
            kind = "needs" if first.startswith("# needs:") else "run"
        elif lang in DATA_LANGS:
            kind = "output" if "caption" in options else "data"
        else:
            kind = "unknown"
        out.append(Block(page, line, kind, lang, body, options))
    return out


ALL_BLOCKS = [b for p in source_pages() for b in blocks(p)]


# ---- building the site ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import myst_parser  # noqa: F401
        import sphinx  # noqa: F401
        import sphinx_reredirects  # noqa: F401
    except ImportError:
        pytest.fail("the docs toolchain is missing: pip install -r requirements/docs.txt")
    out = tmp_path_factory.mktemp("docs") / "html"
    t0 = time.time()
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    print(f"docs built in {time.time() - t0:.1f} s")
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.meta_refresh: str | None = None
        self.scripts: list[str] = []  # inline <script> bodies
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.meta_refresh = a.get("content", "").split("url=", 1)[-1]
        if tag == "script" and "src" not in a:
            self._in_script = True
            self.scripts.append("")
        for key in ("href", "src"):
            if key in a and tag in ("a", "link", "script", "img", "iframe", "source"):
                self.links.append(a[key])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_site_builds(site: Path) -> None:
    assert (site / "index.html").is_file()
    for section in ("models", "features", "hardwares"):
        assert (site / "tutorials" / section / "index.html").is_file()
    assert (site / "tutorials/models/Qwen3-VL-Reranker.html").is_file()
    assert (site / "configuration.html").is_file()


def conf_redirects() -> dict[str, str]:
    """conf.py's ``redirects``: old docname -> URL relative to the old page's folder."""
    return runpy.run_path(str(DOCS / "conf.py"))["redirects"]


def forwards_to(stub: Path) -> list[str]:
    """The URLs a sphinx-reredirects page sends the reader to: its meta refresh (readers
    without JavaScript) and its script's ``var target``."""
    page = parse(stub)
    urls = [page.meta_refresh] if page.meta_refresh else []
    for script in page.scripts:
        urls += re.findall(r'var target = "([^"]*)"', script)
    return urls


@pytest.mark.parametrize("old", sorted(OLD_URLS))
def test_old_url_forwards_to_new_page(site: Path, old: str) -> None:
    stub = site / old
    assert stub.is_file(), f"{old} is not in the built site"
    urls = forwards_to(stub)
    assert len(urls) == 2, f"{old}: want a meta refresh and a script target, got {urls}"
    for url in urls:
        assert not urlsplit(url).scheme, url
        target = (stub.parent / unquote(urlsplit(url).path)).resolve()
        assert target == (site / OLD_URLS[old]).resolve(), (old, url)
        assert target.is_file()


def test_every_redirect_target_is_a_page(site: Path) -> None:
    """sphinx-reredirects writes a target as-is: one that is not a page of this build (or
    an anchor that page lacks) would forward readers to a 404."""
    redirects = conf_redirects()
    assert redirects
    bad = []
    for old, new in sorted(redirects.items()):
        stub = site / f"{old}.html"
        if not stub.is_file():
            bad.append(f"{old}: no {stub.relative_to(site)} was written")
            continue
        for url in dict.fromkeys(forwards_to(stub)) or [""]:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                continue  # another site: not ours to check
            target = (stub.parent / unquote(parts.path)).resolve()
            if not parts.path or not target.is_file():
                bad.append(f"{old} -> {new!r}: {url!r} is not a page of the build")
            elif parts.fragment and unquote(parts.fragment) not in parse(target).ids:
                bad.append(f"{old} -> {new!r}: {target.name} has no #{parts.fragment}")
    assert not bad, "\n".join(bad)


def test_no_redirect_from_a_document() -> None:
    """sphinx-reredirects silently overwrites a real page with its forwarding page."""
    docnames = {p.relative_to(DOCS).with_suffix("").as_posix() for p in source_pages()}
    clash = [
        f"{old}: {d}.md is still a document; drop the redirect"
        for old in sorted(conf_redirects())
        for d in sorted(docnames)
        if fnmatch(d, old)
    ]
    assert not clash, "\n".join(clash)


def test_no_broken_internal_links(site: Path) -> None:
    pages = {p.resolve(): parse(p) for p in site.rglob("*.html")}
    broken = []
    checked = 0
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:")):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.exists():
                broken.append(f"{path.relative_to(site)}: {link} (no file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: {link} (no anchor)")
    assert checked > 100
    assert not broken, "\n".join(broken)


# ---- the snippets ---------------------------------------------------------------------------
def test_every_block_is_classified() -> None:
    assert ALL_BLOCKS, "no code blocks found"
    bad = [f"{b.where()}: ```{b.lang}``` is neither run, marked, included nor output"
           for b in ALL_BLOCKS if b.kind == "unknown"]  # fmt: skip
    for b in ALL_BLOCKS:
        if b.kind == "needs":
            reason = b.body.lstrip().splitlines()[0].removeprefix("# needs:").strip()
            if reason not in NEEDS:
                bad.append(f"{b.where()}: '# needs: {reason}' (known: {sorted(NEEDS)})")
        if b.kind == "data" and b.lang == "text" and "Output" in b.body[:40]:
            bad.append(f"{b.where()}: output block without a caption saying where it ran")
    assert not bad, "\n".join(bad)


def test_outputs_say_where_they_were_produced() -> None:
    outputs = [b for b in ALL_BLOCKS if b.kind == "output"]
    assert outputs
    for b in outputs:
        caption = b.options["caption"]
        assert caption.startswith("Output"), (b.where(), caption)
        assert "CPU reference mode" in caption or "NPU" in caption, (b.where(), caption)


def _tests_text() -> str:
    return "\n".join(
        p.read_text(encoding="utf-8") for p in (REPO / "tests").glob("test_*.py")
        if p.name != "test_docs.py"
    )  # fmt: skip


def test_included_examples_are_run_by_tests() -> None:
    tests = _tests_text()
    includes = [b for b in ALL_BLOCKS if b.kind == "include"]
    assert includes
    for b in includes:
        path = (b.page.parent / b.arg).resolve()
        assert path.is_file(), f"{b.where()}: {b.arg} does not exist"
        rel = path.relative_to(REPO)
        if rel.parts[0] == "examples":
            assert path.name in tests, f"{b.where()}: no test runs {rel}"


def test_configuration_lists_every_env_var() -> None:
    from vllm_ascend_rerank import envs

    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [name for name in dir(envs) if f"`{name}`" not in page]
    assert not missing, f"configuration.md lacks {missing}"


RUN_PAGES = sorted({b.page for b in ALL_BLOCKS if b.kind == "run"})


def _port_rewrite(text: str, port: int) -> str:
    return re.sub(r"(localhost:|--port )8000\b", rf"\g<1>{port}", text)


def _start_server(block: Block, cwd: Path, env: dict[str, str], port: int, log: Path):
    # exec: the shell becomes vllm, so stopping it stops the server.
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + _port_rewrite(block.body, port)],
        cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + SERVE_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{block.where()}: vllm serve exited; log:\n"
                                 + log.read_text()[-4000:])  # fmt: skip
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{block.where()}: server not healthy after {SERVE_TIMEOUT_S} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(DOCS)) for p in RUN_PAGES])
def test_page_snippets_run(page: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    port = free_port()
    servers: list[subprocess.Popen] = []
    try:
        for i, block in enumerate(b for b in blocks(page) if b.kind == "run"):
            t0 = time.time()
            if block.lang == "bash" and block.body.lstrip().startswith("vllm serve"):
                servers.append(
                    _start_server(block, tmp_path, env, port, tmp_path / f"serve-{i}.log")
                )
                continue
            if block.lang == "python":
                script = tmp_path / f"snippet_{i}.py"
                script.write_text(block.body)
                cmd = [sys.executable, str(script)]
            else:
                cmd = ["bash", "-euo", "pipefail", "-c", _port_rewrite(block.body, port)]
            out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=BLOCK_TIMEOUT_S)  # fmt: skip
            print(f"--- {block.where()} ({time.time() - t0:.1f} s)\n{out.stdout}")
            assert out.returncode == 0, (
                f"{block.where()} exited {out.returncode}\n{out.stdout[-3000:]}\n"
                f"{out.stderr[-3000:]}"
            )
            assert "terminate called" not in out.stderr, block.where()
    finally:
        for proc in servers:
            _stop(proc)
