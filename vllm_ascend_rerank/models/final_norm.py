"""The text model's last RMSNorm, with a float32 output in a bf16/fp16 model.

The pooling heads read only this norm's output: the reranker's fp32 score row
(``W[yes] - W[no]``) and the embedder's fp32 L2 normalisation. vLLM's RMSNorm normalises in
fp32 and rounds its output to the model dtype, so that rounding is the last error added on
the way to a score. Kept in fp32 here (normalised and weighted in fp32, rounded nowhere).

Measured on the tiny checkpoints (96 pairs, bf16, mean |score - official fp32|; issue 12,
item 13): with the rounded output the plugin was 5-13% further from the fp32 scores than the
official scorer run in bf16, although its hidden states were closer at every layer (4-14%);
with this norm it is 3-7% closer (tests/test_bf16_fidelity.py).
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.layernorm import RMSNorm


class Fp32FinalNorm(nn.Module):
    """``RMSNorm(x + residual)`` in fp32; takes over ``norm``'s weight (same parameter, so
    checkpoints load into it under the same name)."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s = x.float() if residual is None else x.float() + residual.float()
        y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        y = y * self.weight.float()
        return y if residual is None else (y, s.to(x.dtype))


def keep_final_norm_fp32(language_model: nn.Module) -> None:
    """Give a Qwen3 text model (``Qwen3LLMForCausalLM``) an fp32-output final norm when its
    weights are narrower than fp32; fp32 models and pipeline stages without the norm keep
    vLLM's."""
    model = getattr(language_model, "model", None)
    norm = getattr(model, "norm", None)
    if isinstance(norm, RMSNorm) and norm.has_weight and norm.weight.dtype != torch.float32:
        model.norm = Fp32FinalNorm(norm)
