"""CPU reference mode: linear layers through oneDNN with prepacked weights
(``vllm_ascend_rerank.ops.cpu_linear``) give what ``F.linear`` gives, through vLLM's own
``UnquantizedLinearMethod``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from vllm.model_executor.layers.linear import UnquantizedLinearMethod

from vllm_ascend_rerank.ops import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.onednn_available(), reason="torch without oneDNN")


def layer(out_features: int, in_features: int, dtype: torch.dtype, bias: bool) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(out_features * 7 + in_features)
    m = torch.nn.Module()
    m.weight = torch.nn.Parameter(
        (torch.randn(out_features, in_features, generator=gen) / in_features**0.5).to(dtype),
        requires_grad=False,
    )
    m.bias = (
        torch.nn.Parameter(torch.randn(out_features, generator=gen).to(dtype), requires_grad=False)
        if bias
        else None
    )
    m.quant_method = UnquantizedLinearMethod()
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 96), (3, 5, 96), (1, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_prepacked_matches_f_linear(dtype: torch.dtype, shape: tuple[int, ...], bias: bool) -> None:
    m = layer(192, 96, dtype, bias)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = F.linear(x, m.weight, m.bias)
    assert cpu_linear.prepack_linears(m, rows_hint=64) == 1
    assert m.weight.numel() == 0  # the plain weight is released
    got = m.quant_method.apply(m, x, m.bias)
    assert got.shape == want.shape and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_small_heads_and_other_layers_are_left_alone() -> None:
    head = layer(1, 96, torch.float32, bias=False)  # the score head: one output
    model = torch.nn.Sequential(head, torch.nn.Linear(96, 192))  # not a vLLM linear layer
    assert cpu_linear.prepack_linears(model, rows_hint=64) == 0
    assert head.weight.shape == (1, 96)
