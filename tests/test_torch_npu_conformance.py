"""The torch_npu emulation (tests/npu_emulation) against the torch_npu wheel we pin.

The pin is read from pyproject's ``[npu]`` extra, so this moves with it. The wheel is fetched
with ``pip download --no-deps`` into the repo's ignored ``.cache/`` (reused when present; never
installed: it needs CANN) and read in place with ``zipfile``; nothing of it enters the repo.
It publishes three views of each op, all read here:

- ``torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml``: the schemas the wheel registers
  (``torch.ops.npu.*`` and the ``torch_npu.*`` bindings accept exactly these);
- ``torch_npu/_op_plugin_docs.py``: each op's documented prototype and constraints;
- ``torch_npu/op_plugin/meta/_meta_registrations.py`` (and ``_fake_registrations.py``): the
  output shapes/dtypes torch.compile sees. The meta functions are plain Python: the ones our ops
  need (and the helpers they call) are lifted out of the file by ``ast``, their decorators and
  imports dropped, and run in a private namespace on ``meta`` tensors.

For every op the plugin calls (found by reading its source) the emulation must exist and have
the registered signature (names, positional order, defaults, keyword-only markers; keyword-only
order is not compared: Python does not see it), agree with the documented prototype, produce
the meta function's outputs (count, shapes, dtypes) on representative inputs (its opaque fake
too), and every call site in the plugin must bind to the schema. A mismatch names the op and
the difference. Where the wheel disagrees with itself, the registered schema wins over a doc
prototype (e.g. ``self`` vs ``input``), and the eager op's documented output over the meta
function for the few outputs listed in ``EAGER_NOT_META``.

Without a registry (``pip download`` fails) the module skips, or fails when ``CI=true``. Reading
the wheel lives in ``torch_npu_wheel.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import pathlib
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
EMULATION = REPO / "tests" / "npu_emulation"
PLUGIN = REPO / "vllm_ascend_rerank"

_spec = importlib.util.find_spec("torch_npu")
if _spec is not None and EMULATION not in pathlib.Path(_spec.origin or "").parents:
    pytest.skip("a real torch_npu is installed: no emulation to check", allow_module_level=True)
sys.path.insert(0, str(EMULATION))

import torch_npu  # noqa: E402  (the emulation, from the path above)
from torch_npu_wheel import DOCS, REGISTERED, PinnedWheel, load_wheel, meta_functions  # noqa: E402

assert getattr(torch_npu, "__emulation__", False)


@pytest.fixture(scope="module")
def wheel() -> PinnedWheel:
    return load_wheel()


# ---- what the plugin calls ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CallSite:
    where: str
    op: str
    positional: int
    keywords: tuple[str, ...]
    unpacked: bool  # *args / **kwargs: not checkable statically


def plugin_call_sites() -> list[CallSite]:
    """Every ``<expr>.npu_*(...)`` call in the plugin's Python source."""
    sites = []
    for path in sorted(PLUGIN.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            op = node.func.attr
            if not op.startswith("npu_"):
                continue
            sites.append(
                CallSite(
                    where=f"{path.relative_to(REPO)}:{node.lineno}",
                    op=op,
                    positional=sum(not isinstance(a, ast.Starred) for a in node.args),
                    keywords=tuple(k.arg for k in node.keywords if k.arg is not None),
                    unpacked=any(isinstance(a, ast.Starred) for a in node.args)
                    or any(k.arg is None for k in node.keywords),
                )
            )
    return sites


SITES = plugin_call_sites()
CALLED = sorted({s.op for s in SITES if hasattr(torch_npu, s.op)})


def test_plugin_calls_only_emulated_ops(wheel: PinnedWheel) -> None:
    ops = {s.op for s in SITES if s.op in wheel.registered}
    assert ops, "found no torch_npu op call in the plugin: the scan is broken"
    missing = sorted(ops - set(CALLED))
    assert not missing, f"the plugin calls torch_npu ops the emulation lacks: {missing}"
    unknown = sorted({s.op for s in SITES if hasattr(torch_npu, s.op)} - set(wheel.registered))
    assert not unknown, f"torch_npu {wheel.version} registers no {unknown}"


# ---- signatures -----------------------------------------------------------------------------
_EMPTY = inspect.Parameter.empty
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _same_default(have: Any, want: Any) -> bool:
    if have is _EMPTY or want is _EMPTY:
        return have is want
    if isinstance(have, bool) or isinstance(want, bool):
        return type(have) is type(want) and have == want
    if isinstance(want, (list, tuple)):
        return isinstance(have, (list, tuple)) and list(have) == list(want)
    same_kind = type(have) is type(want) or {type(have), type(want)} <= {int, float}
    return same_kind and have == want


def schema_signature(schema: torch._C.FunctionSchema) -> inspect.Signature:
    """The Python signature a binding of ``schema`` has."""
    params = []
    for a in schema.arguments:
        kind = inspect.Parameter.KEYWORD_ONLY if a.kwarg_only else _POSITIONAL[1]
        default = a.default_value if a.has_default_value() else _EMPTY
        params.append(inspect.Parameter(a.name, kind, default=default))
    return inspect.Signature(params)


def signature_diffs(
    sig: inspect.Signature, schema: torch._C.FunctionSchema, *, documented: bool = False
) -> list[str]:
    """What differs between a Python signature and an op schema. ``documented``: the schema
    is a doc prototype, which may list fewer arguments than the registered one and may omit a
    default the registration has."""
    params = sig.parameters
    diffs = [
        f"takes a catch-all {'*' if p.kind == p.VAR_POSITIONAL else '**'}{p.name}: the op has none"
        for p in params.values()
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    want_pos = [a.name for a in schema.arguments if not a.kwarg_only]
    have_pos = [p.name for p in params.values() if p.kind in _POSITIONAL]
    if documented:  # a doc may stop early (later additions undocumented)
        have_pos = have_pos[: len(want_pos)]
    if have_pos != want_pos:
        diffs.append(f"positional arguments {have_pos}, wheel: {want_pos}")
    want_names = {a.name for a in schema.arguments}
    if missing := sorted(want_names - set(params)):
        diffs.append(f"missing arguments {missing}")
    if not documented and (extra := sorted(set(params) - want_names)):
        diffs.append(f"arguments the wheel does not have: {extra}")
    for a in schema.arguments:
        p = params.get(a.name)
        if p is None:
            continue
        if a.kwarg_only != (p.kind == inspect.Parameter.KEYWORD_ONLY):
            where = "keyword-only" if a.kwarg_only else "positional"
            diffs.append(f"{a.name}: must be {where}")
        want = a.default_value if a.has_default_value() else _EMPTY
        if documented and want is _EMPTY:
            continue
        if not _same_default(p.default, want):
            diffs.append(f"{a.name}: default {p.default!r}, wheel: {want!r}")
    return diffs


@pytest.mark.parametrize("op", CALLED)
def test_signature_matches_registered_schema(wheel: PinnedWheel, op: str) -> None:
    schema = wheel.registered.get(op)
    assert schema is not None, f"{op}: not registered by torch_npu {wheel.version}"
    diffs = signature_diffs(inspect.signature(getattr(torch_npu, op)), schema)
    assert not diffs, f"{op} vs torch_npu {wheel.version} ({REGISTERED}): " + "; ".join(diffs)


def documented_schema(op: str, doc: str) -> torch._C.FunctionSchema | None:
    """The prototype line(s) of an op's doc (``[torch_npu.]op(...) -> ...``), parsed."""
    m = re.search(rf"^\s*(?:func:\s*)?(?:torch_npu\.)?{re.escape(op)}\(", doc, flags=re.M)
    if m is None:
        return None
    start = m.end() - 1
    depth, i = 0, start
    for i in range(start, len(doc)):  # noqa: B007 - i is read after the loop
        depth += {"(": 1, ")": -1}.get(doc[i], 0)
        if depth == 0:
            break
    rest = re.match(r"\s*->\s*(\([^)]*\)|[^\n]+)", doc[i + 1 :])
    if rest is None:
        return None
    try:
        return torch._C.parse_schema(f"{op}{doc[start : i + 1]} -> {rest.group(1).strip()}")
    except RuntimeError:
        return None  # an untyped prototype ("op(self, p) -> Tensor")


@pytest.mark.parametrize("op", CALLED)
def test_signature_matches_documented_prototype(wheel: PinnedWheel, op: str) -> None:
    doc = wheel.documented.get(op)
    if doc is None:
        pytest.skip(f"{op}: no entry in {DOCS} of torch_npu {wheel.version} (registered only)")
    schema = documented_schema(op, doc)
    assert schema is not None, f"{op}: no typed prototype found in its {DOCS} entry"
    registered = wheel.registered[op]
    # Where the doc and the registration disagree, the registration is what a call meets (the
    # test above holds the emulation to it): only the doc's other statements are checked here.
    internal = set(signature_diffs(schema_signature(registered), schema, documented=True))
    diffs = [
        d
        for d in signature_diffs(inspect.signature(getattr(torch_npu, op)), schema, documented=True)
        if d not in internal
    ]
    if len(schema.returns) != len(registered.returns):
        documented, registered_n = len(schema.returns), len(registered.returns)
        diffs.append(f"{documented} documented outputs, {registered_n} registered")
    assert not diffs, f"{op} vs torch_npu {wheel.version} ({DOCS}): " + "; ".join(diffs)


@pytest.mark.parametrize("op", CALLED)
def test_plugin_call_sites_bind_to_the_schema(wheel: PinnedWheel, op: str) -> None:
    schema = wheel.registered[op]
    positional = [a for a in schema.arguments if not a.kwarg_only]
    names = {a.name for a in schema.arguments}
    errors = []
    for site in (s for s in SITES if s.op == op and not s.unpacked):
        given = {a.name for a in positional[: site.positional]} | set(site.keywords)
        if site.positional > len(positional):
            errors.append(f"{site.where}: {site.positional} positional arguments, op takes "
                          f"{len(positional)}")  # fmt: skip
        if unknown := sorted(set(site.keywords) - names):
            errors.append(f"{site.where}: unknown keywords {unknown}")
        if twice := sorted({a.name for a in positional[: site.positional]} & set(site.keywords)):
            errors.append(f"{site.where}: {twice} given twice")
        required = [a.name for a in schema.arguments if not a.has_default_value()]
        if missing := [n for n in required if n not in given]:
            errors.append(f"{site.where}: required {missing} not given")
    assert not errors, f"{op} (torch_npu {wheel.version}): " + "; ".join(errors)


# ---- outputs against the wheel's meta functions ---------------------------------------------


@pytest.fixture(scope="module")
def metas(wheel: PinnedWheel) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {}
    for source in wheel.meta_source.values():
        out.update(meta_functions(source, set(CALLED)))
    return out


def _t(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


def _causal_mask() -> torch.Tensor:
    return torch.ones(2048, 2048, dtype=torch.bool).triu(1)


# Representative inputs: the shapes and options the plugin passes (Qwen3-VL: 128-dim heads,
# GQA, [24, 20, 20] interleaved M-RoPE, the token-major KV cache, TND attention).
CASES: dict[str, tuple[str, Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]]] = {
    "rms_norm-bf16": ("npu_rms_norm", lambda: ((_t(7, 64), _t(64)), {"epsilon": 1e-6})),
    "rms_norm-qk-heads-fp32": (
        "npu_rms_norm",
        lambda: ((_t(7, 4, 128, dtype=torch.float32), _t(128, dtype=torch.float32)), {}),
    ),
    "add_rms_norm-bf16": (
        "npu_add_rms_norm",
        lambda: ((_t(7, 64), _t(7, 64), _t(64)), {"epsilon": 1e-6}),
    ),
    "swiglu-bf16": ("npu_swiglu", lambda: ((_t(5, 2, 96),), {"dim": -1})),
    "mrope-interleave-bf16": (
        "npu_mrope",
        lambda: (
            (torch.randint(0, 4096, (3, 9)), _t(9, 4 * 128), _t(9, 2 * 128), _t(4096, 128), 128),
            {"mrope_section": [24, 20, 20], "rotary_mode": "half", "cache_mode": "interleave"},
        ),
    ),
    "mrope-rope-fp32": (
        "npu_mrope",
        lambda: (
            (
                torch.randint(0, 64, (9,)),
                _t(9, 256, dtype=torch.float32),
                _t(9, 128, dtype=torch.float32),
                _t(64, 128, dtype=torch.float32),
                128,
            ),
            {"mrope_section": [0, 0, 0], "rotary_mode": "half", "cache_mode": "default"},
        ),  # fmt: skip
    ),
    "scatter_nd_update_-kv-rows": (
        "npu_scatter_nd_update_",
        lambda: ((_t(64, 2, 256), torch.tensor([[5], [9], [0]]), _t(3, 2, 256)), {}),
    ),
    "fia-tnd-causal-gqa": (
        "npu_fused_infer_attention_score",
        lambda: (
            (_t(9, 8, 128), _t(25, 2, 128), _t(25, 2, 128)),
            {
                "atten_mask": _causal_mask(),
                "actual_seq_lengths": [3, 9],
                "actual_seq_lengths_kv": [10, 25],
                "num_heads": 8,
                "num_key_value_heads": 2,
                "scale": 0.088,
                "input_layout": "TND",
                "sparse_mode": 3,
            },
        ),  # fmt: skip
    ),
    "fia-tnd-full": (
        "npu_fused_infer_attention_score",
        lambda: (
            (
                _t(9, 4, 128, dtype=torch.float16),
                _t(9, 4, 128, dtype=torch.float16),
                _t(9, 4, 128, dtype=torch.float16),
            ),
            {
                "actual_seq_lengths": [4, 9],
                "actual_seq_lengths_kv": [4, 9],
                "num_heads": 4,
                "scale": 0.088,
                "input_layout": "TND",
                "sparse_mode": 0,
            },
        ),  # fmt: skip
    ),
    "fusion_attention-tnd-vision": (
        "npu_fusion_attention",
        lambda: (
            (_t(12, 4, 72), _t(12, 4, 72), _t(12, 4, 72), 4, "TND"),
            {"scale": 0.12, "actual_seq_qlen": [5, 12], "actual_seq_kvlen": [5, 12]},
        ),
    ),
}

# Where the wheel disagrees with itself: its eager op (and its docs) return one thing, its meta
# function another. The emulation is an eager op, so it follows the docs; the sentence is
# checked to still be there, so a new wheel that changes it sends us back here.
EAGER_NOT_META = {
    ("npu_fused_infer_attention_score", 1): (
        "softmax_lse_flag为False时, 则输出shape为[1]的值为0的Tensor",
        ("Tensor", (1,), torch.float32),
    ),
}


def _describe(out: Any) -> list[tuple[Any, ...]]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    desc: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, torch.Tensor):
            desc.append(("Tensor", tuple(item.shape), item.dtype))
        else:
            desc.append((type(item).__name__,))
    return desc


def _to(value: Any, convert: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return convert(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, convert) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, convert) for k, v in value.items()}
    return value


def output_diffs(
    op: str, have: list[tuple[Any, ...]], want: list[tuple[Any, ...]], docs: dict[str, str]
) -> list[str]:
    if len(have) != len(want):
        return [f"{len(have)} outputs, wheel's meta: {len(want)}"]
    diffs = []
    for i, (h, w) in enumerate(zip(have, want, strict=True)):
        exception = EAGER_NOT_META.get((op, i))
        if exception is not None:
            sentence, eager = exception
            assert sentence in docs.get(op, ""), f"{op}: the wheel no longer documents {sentence!r}"
            w = eager
        if h != w:
            diffs.append(f"output {i}: {h}, wheel: {w}")
    return diffs


def test_every_called_op_has_a_case() -> None:
    covered = {op for op, _ in CASES.values()}
    assert set(CALLED) <= covered, f"add a case for {sorted(set(CALLED) - covered)}"


@pytest.mark.parametrize("case", CASES)
def test_outputs_match_the_meta_function(
    wheel: PinnedWheel, metas: dict[str, Callable[..., Any]], case: str
) -> None:
    op, make = CASES[case]
    assert op in metas, f"{op}: no meta function in torch_npu {wheel.version}"
    torch.manual_seed(0)
    args, kwargs = make()
    want = _describe(metas[op](*_to(args, lambda t: t.to("meta")),
                               **_to(kwargs, lambda t: t.to("meta"))))  # fmt: skip
    have = _describe(getattr(torch_npu, op)(*args, **kwargs))
    if len(have) != len(wheel.registered[op].returns):
        pytest.fail(f"{op}: {len(have)} outputs, registered: {len(wheel.registered[op].returns)}")
    diffs = output_diffs(op, have, want, wheel.documented)
    assert not diffs, f"{op} [{case}] vs torch_npu {wheel.version} meta: " + "; ".join(diffs)


OPAQUE = sorted(op for op in CALLED if hasattr(torch.ops.npu_emulation, op))


@pytest.mark.parametrize("case", [c for c, (op, _) in CASES.items() if op in OPAQUE])
def test_opaque_fake_matches_the_meta_function(
    wheel: PinnedWheel, metas: dict[str, Callable[..., Any]], case: str
) -> None:
    """torch.compile traces the opaque ops through their fake impls: those must agree too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op, make = CASES[case]
    torch.manual_seed(0)
    args, kwargs = make()
    want = _describe(metas[op](*_to(args, lambda t: t.to("meta")),
                               **_to(kwargs, lambda t: t.to("meta"))))  # fmt: skip
    with FakeTensorMode() as mode:
        out = getattr(torch_npu, op)(*_to(args, mode.from_tensor), **_to(kwargs, mode.from_tensor))
    diffs = output_diffs(op, _describe(out), want, wheel.documented)
    assert not diffs, f"{op} [{case}] fake vs torch_npu {wheel.version} meta: " + "; ".join(diffs)
