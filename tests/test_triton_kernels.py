"""The Triton qkv-split + q/k RMSNorm + MRoPE kernel, run by Triton's interpreter on the CPU.

The interpreter executes the kernel body with numpy, so the indexing, masking and math are
checked here; code generation for triton-ascend is not (that needs an Ascend host). The
reference it is compared with is itself checked against vLLM's own layers (RMSNorm and
MRotaryEmbedding forward_native), i.e. against what Qwen3's attention computes eagerly.

TRITON_INTERPRET must be set before triton is first imported (triton.language's own jit
helpers are built at import), and vLLM imports triton: the kernel cases therefore run in a
child process (this file run as a script), which reports each case's largest error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vllm_ascend_rerank.ops import triton_qkv_norm_rope as mod


def _inputs(tokens, hq, hkv, d, rot, dtype, mrope, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, generator=g).to(dtype)
    q_w = (1 + 0.1 * torch.randn(d, generator=g)).to(dtype)
    k_w = (1 + 0.1 * torch.randn(d, generator=g)).to(dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    freqs = torch.arange(64).float()[:, None] * inv[None, :]
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(dtype)
    shape = (3, tokens) if mrope else (tokens,)
    positions = torch.randint(0, 64, shape, generator=g)
    return qkv, q_w, k_w, cache, positions


CASES = {
    # name: (tokens, q heads, kv heads, head size, rotary dim, section, interleaved)
    "qwen3vl-interleaved": (7, 4, 2, 128, 128, [24, 20, 20], True),
    "chunked-sections": (5, 2, 1, 64, 64, [8, 12, 12], False),
    "tiny-checkpoint": (6, 4, 2, 16, 16, [4, 2, 2], True),
    "partial-rotary": (3, 2, 2, 32, 16, [4, 2, 2], False),
    "text-only-rope": (4, 2, 1, 64, 64, None, False),
}


DTYPES = {"float32": (torch.float32, 1e-5), "float16": (torch.float16, 2e-3)}


def largest_error(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    """max |got - want| over every output, NaN if any output has one: Python's max() would
    keep the first value a NaN is compared with, so a NaN in K or V would pass."""
    errors = [(g.float() - w.float()).abs().max() for g, w in zip(got, want, strict=True)]
    return torch.stack(errors).max().item()


def _kernel_errors() -> dict[str, float]:
    """Child process: every case through the interpreted kernel and the reference."""
    errors = {}
    for case, (tokens, hq, hkv, d, rot, section, interleaved) in CASES.items():
        for name, (dtype, _) in DTYPES.items():
            qkv, q_w, k_w, cache, pos = _inputs(tokens, hq, hkv, d, rot, dtype, section is not None)
            kw = dict(num_q_heads=hq, num_kv_heads=hkv, head_size=d, eps=1e-6,
                      mrope_section=section or (), mrope_interleaved=interleaved)  # fmt: skip
            got = mod.qkv_norm_rope(qkv, q_w, k_w, cache, pos, **kw)
            want = mod.qkv_norm_rope_reference(qkv, q_w, k_w, cache, pos, **kw)
            errors[f"{case}/{name}"] = largest_error(got, want)
    try:
        mod.qkv_norm_rope(
            qkv, q_w, k_w, cache, pos.expand(3, -1), num_q_heads=hq, num_kv_heads=hkv,
            head_size=d, eps=1e-6, mrope_section=[8, 8, 8],
        )  # fmt: skip
        errors["bad-section-raises"] = 1.0
    except ValueError:
        errors["bad-section-raises"] = 0.0
    return errors


@pytest.fixture(scope="module")
def kernel_errors() -> dict[str, float]:
    pytest.importorskip("triton", reason="Triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_matches_reference(kernel_errors, case: str, dtype: str) -> None:
    assert kernel_errors[f"{case}/{dtype}"] <= DTYPES[dtype][1]


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_a_nan_in_any_output_fails_the_check(bad: int) -> None:
    want = (torch.zeros(3), torch.zeros(3), torch.zeros(3))
    got = tuple(t.clone() for t in want)
    got[bad][1] = float("nan")
    assert not largest_error(got, want) <= 1e-5


def test_kernel_rejects_bad_sections(kernel_errors) -> None:
    assert kernel_errors["bad-section-raises"] == 0.0


@pytest.mark.parametrize("case", ["qwen3vl-interleaved", "chunked-sections", "text-only-rope"])
def test_reference_matches_vllm_layers(case: str) -> None:
    """qkv split + vLLM RMSNorm per head + vLLM MRotaryEmbedding, as Qwen3Attention runs them."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.layers.rotary_embedding.mrope import MRotaryEmbedding

    tokens, hq, hkv, d, rot, section, interleaved = CASES[case]
    qkv, q_w, k_w, _, pos = _inputs(tokens, hq, hkv, d, rot, torch.float32, section is not None)
    with set_current_vllm_config(VllmConfig()):
        q_norm, k_norm = RMSNorm(d, eps=1e-6), RMSNorm(d, eps=1e-6)
        q_norm.weight.data.copy_(q_w)
        k_norm.weight.data.copy_(k_w)
        rope = MRotaryEmbedding(d, rot, 64, 10000.0, True, torch.float32,
                                mrope_section=section or [rot // 2, 0, 0],
                                mrope_interleaved=interleaved, positions_factor=1)  # fmt: skip
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    q = q_norm.forward_native(q.reshape(tokens, hq, d)).reshape(tokens, -1)
    k = k_norm.forward_native(k.reshape(tokens, hkv, d)).reshape(tokens, -1)
    want_q, want_k = rope.forward_native(pos, q, k)
    got = mod.qkv_norm_rope_reference(
        qkv, q_w, k_w, rope.cos_sin_cache, pos, num_q_heads=hq, num_kv_heads=hkv, head_size=d,
        eps=1e-6, mrope_section=section or (), mrope_interleaved=interleaved,
    )  # fmt: skip
    torch.testing.assert_close(got[0], want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want_k, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], v)


if __name__ == "__main__":
    print(json.dumps(_kernel_errors()))
