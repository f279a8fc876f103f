"""The torch_npu emulation (tests/npu_emulation) put in place for the test_npu_emulation*.py
modules, with their shared fixtures and independent oracles.

Importing this module skips the importing test module on a host with a real torch_npu
(tests/test_npu_hardware.py runs the same kernel checks on the device); otherwise it puts the
emulation first on ``sys.path`` and imports it. A test module imports the fixtures it uses:
``_calls`` (autouse: clears the op counts before each test), ``vllm_config_fixture`` and
``native_fixture`` (the fixtures ``vllm_config`` and ``native``).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch

EMULATION = pathlib.Path(__file__).parent / "npu_emulation"
_spec = importlib.util.find_spec("torch_npu")
if _spec is not None and EMULATION not in pathlib.Path(_spec.origin or "").parents:
    pytest.skip("a real torch_npu is installed: see test_npu_hardware.py", allow_module_level=True)
sys.path.insert(0, str(EMULATION))

import torch_npu  # noqa: E402  (the emulation, from the path above)
from vllm.config import VllmConfig, set_current_vllm_config  # noqa: E402

assert getattr(torch_npu, "__emulation__", False)
NpuOpError = torch_npu.NpuOpError


@pytest.fixture(autouse=True)
def _calls() -> None:
    torch_npu.calls.clear()


@pytest.fixture(name="vllm_config", scope="module")
def vllm_config_fixture() -> VllmConfig:
    return VllmConfig()


# ---- independent oracles ------------------------------------------------------------------------
# None of these repeats the emulation's own reading of the docs: attention is written out by
# hand (einsum scores, an explicit causal offset mask, GQA by head index, softmax spelled out,
# float64), norms/activations/rotary come from vLLM's native layers, and output shapes are
# checked against the wheel's meta functions in test_torch_npu_conformance.py.
def dense_attention(q, k, v, q_lens, kv_lens, scale, causal):
    """q [T, N, D], k/v [T_kv, N_kv, D] back to back per request -> [T, N, Dv] (float64).
    Query head h reads KV head h // (N / N_kv); with ``causal`` query i of a request with Sq
    queries and Skv keys sees key j iff j <= i + (Skv - Sq)."""
    n, group = q.shape[1], q.shape[1] // k.shape[1]
    out = torch.zeros(q.shape[0], n, v.shape[2], dtype=torch.float64)
    qs = ks = 0
    for ql, kl in zip(q_lens, kv_lens, strict=True):
        i, j = torch.arange(ql)[:, None], torch.arange(kl)[None, :]
        for h in range(n):
            qh = q[qs : qs + ql, h].double()
            kh, vh = k[ks : ks + kl, h // group].double(), v[ks : ks + kl, h // group].double()
            scores = torch.einsum("id,jd->ij", qh, kh) * scale
            if causal:
                scores = scores.masked_fill(j > i + (kl - ql), float("-inf"))
            weights = torch.exp(scores - scores.amax(-1, keepdim=True))
            out[qs : qs + ql, h] = (weights / weights.sum(-1, keepdim=True)) @ vh
        qs, ks = qs + ql, ks + kl
    return out


def cum(lengths):
    return [sum(lengths[: i + 1]) for i in range(len(lengths))]


CAUSAL_MASK = torch.ones(2048, 2048, dtype=torch.bool).triu(1)


@pytest.fixture(name="native")
def native_fixture(vllm_config):
    """vLLM's own layers (their ``forward_native`` is the oracle); built under a config."""
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.layers.rotary_embedding.mrope import MRotaryEmbedding

    with set_current_vllm_config(vllm_config):
        yield {"RMSNorm": RMSNorm, "SiluAndMul": SiluAndMul, "MRotaryEmbedding": MRotaryEmbedding}


def close(a, b, dtype):
    """Assert ``a`` and ``b`` agree within the tolerance of ``dtype``."""
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)


def thw_positions(tokens: int) -> torch.Tensor:
    """T, H and W rows that differ everywhere, so a channel read from the wrong axis shows."""
    g = torch.Generator().manual_seed(3)
    return torch.stack([torch.randperm(4000, generator=g)[:tokens] for _ in range(3)])
