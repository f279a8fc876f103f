"""The pinned torch_npu wheel, read in place: how tests/test_torch_npu_conformance.py sees it.

Fetched with ``pip download --no-deps`` into the repo's ignored ``.cache/`` (reused when
present; never installed: it needs CANN) and read with ``zipfile``; nothing of it enters the
repo. ``meta_functions`` lifts the wheel's meta/fake registrations (plain Python) out of their
file with ``ast`` and runs them in a private namespace on ``meta`` tensors.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "torch_npu"

REGISTERED = "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"
DOCS = "torch_npu/_op_plugin_docs.py"
META = ("torch_npu/op_plugin/meta/_meta_registrations.py",
        "torch_npu/op_plugin/meta/_fake_registrations.py")  # fmt: skip
ASCEND910B1 = 220  # c10_npu::SocVersion of an Atlas A2 chip, the hardware this plugin targets


# ---- the pin and the wheel ------------------------------------------------------------------
def pinned_version() -> str:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["npu"]
    for req in extras:
        m = re.fullmatch(r"torch[_-]npu\s*==\s*([\w.+!-]+)", req.strip(), flags=re.IGNORECASE)
        if m:
            return m.group(1)
    raise AssertionError(f"pyproject's [npu] extra pins no torch_npu==<version>: {extras}")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"torch_npu wheel unavailable in CI: {reason}")
    pytest.skip(f"torch_npu wheel unavailable: {reason}")


def fetch_wheel(version: str) -> pathlib.Path:
    """The cached wheel, downloaded first when absent (atomically: a temp dir, then a move)."""
    where = CACHE / version
    found = sorted(where.glob(f"torch_npu-{version}-*.whl"))
    if found:
        return found[0]
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        # Any Linux build carries the same Python files; a fixed one lets any host fetch it.
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--platform", "manylinux_2_28_x86_64", "--implementation", "cp",
            "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
            f"torch_npu=={version}", "-d", tmp,
        ]  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"{' '.join(cmd)}: {exc}")
        if out.returncode != 0:
            _unavailable(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()[-800:]}")
        wheels = list(pathlib.Path(tmp).glob("torch_npu-*.whl"))
        assert len(wheels) == 1, f"pip download gave {wheels}"
        target = where / wheels[0].name
        shutil.move(wheels[0], target)
        return target


@dataclasses.dataclass
class PinnedWheel:
    version: str
    path: pathlib.Path
    registered: dict[str, torch._C.FunctionSchema] = dataclasses.field(repr=False)
    documented: dict[str, str] = dataclasses.field(repr=False)  # op -> its _op_plugin_docs entry
    meta_source: dict[str, str] = dataclasses.field(repr=False)  # file -> source


def _yaml_funcs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "func" and isinstance(value, str):
                yield value
            else:
                yield from _yaml_funcs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _yaml_funcs(item)


def _registered(text: str) -> dict[str, torch._C.FunctionSchema]:
    out: dict[str, torch._C.FunctionSchema] = {}
    for func in _yaml_funcs(yaml.safe_load(text)):
        name = func.split("(", 1)[0]
        if "." in name:  # overloads: the plugin calls only the default ones
            continue
        try:
            out[name] = torch._C.parse_schema(func)
        except RuntimeError:
            continue  # a type torch's parser does not know; none of our ops
    return out


def _documented(source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "_add_torch_npu_docstr"
            and len(node.args) == 2
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)
        ):
            out[node.args[0].value] = node.args[1].value
    return out


def load_wheel() -> PinnedWheel:
    """The pinned wheel's schemas, docs and meta sources (skips, or fails in CI, offline)."""
    version = pinned_version()
    path = fetch_wheel(version)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        missing = [n for n in (REGISTERED, DOCS, *META) if n not in names]
        assert not missing, f"torch_npu {version} wheel lacks {missing}: update the tests"
        registered = _registered(z.read(REGISTERED).decode())
        documented = _documented(z.read(DOCS).decode())
        meta_source = {n: z.read(n).decode() for n in META}
    return PinnedWheel(version, path, registered, documented, meta_source)


class _OffDevice:
    """Stands for what a meta function may touch but cannot have off-device."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        raise RuntimeError(f"the meta function reads {self._name}.{attr}, absent off-device")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"the meta function calls {self._name}(), absent off-device")


class _ErrCode:
    def __getattr__(self, attr: str) -> str:
        return attr


def _sandbox() -> dict[str, Any]:
    return {
        "__builtins__": __builtins__,
        "torch": torch,
        "math": math,
        "os": os,
        "warnings": warnings,
        "torch_npu": _OffDevice("torch_npu"),
        "get_cann_version": _OffDevice("get_cann_version"),
        "get_soc_version": lambda: ASCEND910B1,
        "ErrCode": _ErrCode(),
        "ops_error": lambda *args, **kwargs: "",
    }


def _registered_name(fn: ast.FunctionDef) -> str | None:
    """The op a meta/fake function registers: ``@impl(m, "op")`` or
    ``@torch.library.register_fake("npu::op")``."""
    for dec in fn.decorator_list:
        if isinstance(dec, ast.Call) and dec.args and isinstance(dec.args[-1], ast.Constant):
            name = dec.args[-1].value
            if isinstance(name, str):
                return name.removeprefix("npu::")
    return None


def _free_names(node: ast.stmt) -> set[str]:
    """Names a statement reads that it does not bind itself (its parameters and locals);
    a function's decorators (the registration, dropped) are not read."""
    parts: list[ast.AST] = [node]
    if isinstance(node, ast.FunctionDef):
        parts = [node.args, *node.body]
    nodes = [sub for part in parts for sub in ast.walk(part)]
    local = {sub.arg for sub in nodes if isinstance(sub, ast.arg)}
    if not isinstance(node, ast.Assign):  # a constant's own targets are what it defines
        local |= {s.id for s in nodes if isinstance(s, ast.Name) and isinstance(s.ctx, ast.Store)}
    module = {name for s in nodes if isinstance(s, ast.Global) for name in s.names}
    return module | {
        s.id
        for s in nodes
        if isinstance(s, ast.Name) and isinstance(s.ctx, ast.Load) and s.id not in local
    }


def meta_functions(source: str, ops: set[str]) -> dict[str, Callable[..., Any]]:
    """The meta functions of ``ops`` from a registration file, with the module-level helpers
    and constants they reach, run in a fresh namespace (no torch library is touched)."""
    tree = ast.parse(source)
    top: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            top.setdefault(node.name, node)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    top.setdefault(target.id, node)
    wanted = {
        node.name: op
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and (op := _registered_name(node)) in ops
    }
    keep: list[str] = []
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.append(name)
        todo.extend(n for n in _free_names(top[name]) if n in top and n not in keep)
    body = []
    for node in tree.body:  # source order, so constants exist before use
        if any(top.get(k) is node for k in keep):
            if isinstance(node, ast.FunctionDef):
                node.decorator_list = []
            body.append(node)
    namespace = _sandbox()
    exec(compile(ast.Module(body=body, type_ignores=[]), "<torch_npu meta>", "exec"), namespace)
    return {op: namespace[fn] for fn, op in wanted.items()}
