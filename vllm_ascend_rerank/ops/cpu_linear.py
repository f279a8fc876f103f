"""CPU reference mode: linear layers through oneDNN with prepacked weights.

On our OOT platform vLLM's ``UnquantizedLinearMethod`` calls ``F.linear``, which in fp32 runs
MKL's sgemm on the weight as stored: about half the rate of oneDNN on a weight reordered once
into its blocked layout (measured on AVX512 2 cores: 210 vs 476 GFLOP/s fp32, 934 vs 1022 bf16;
``benchmarks/bench_rerank.py``). vLLM's own CPU platform prepacks the same way (through its
compiled ``_C`` ops, which the CUDA wheel used here does not build): this gives the plugin the
same, using the oneDNN ops torch itself ships (``torch.ops.mkldnn``, what inductor's CPU
backend emits for linear layers).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.logger import init_logger

logger = init_logger(f"vllm.{__name__}")

# A head with a few outputs (the score head has one) gains nothing from a blocked layout.
MIN_OUT_FEATURES = 64


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def prepack_linears(model: torch.nn.Module, rows_hint: int) -> int:
    """Route every unquantized 2-D linear layer of ``model`` through oneDNN with its weight
    reordered once (``rows_hint``: the usual number of tokens per forward); the plain weight
    is released, as vLLM's CPU backend does. Returns the number of layers switched."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.utils import cpu_unquantized_gemm

    switched = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        weight = getattr(module, "weight", None)
        if not isinstance(method, UnquantizedLinearMethod) or not isinstance(weight, torch.Tensor):
            continue
        if weight.dim() != 2 or weight.shape[0] < MIN_OUT_FEATURES or weight.device.type != "cpu":
            continue
        if weight.dtype not in (torch.float32, torch.bfloat16):
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows_hint)
        module.cpu_linear = _packed_linear(packed)
        module.weight = torch.nn.Parameter(weight.new_empty(0), requires_grad=False)
        # vLLM's own CPU dispatch point: ``cpu_unquantized_gemm`` calls ``layer.cpu_linear``.
        method._gemm_impl = cpu_unquantized_gemm
        switched += 1
    return switched


def _packed_linear(packed: torch.Tensor) -> Any:
    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return linear
