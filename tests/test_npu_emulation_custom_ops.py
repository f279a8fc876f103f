"""The npu_ops CustomOp subclasses against vLLM's forward_native, on the CPU through the
torch_npu emulation (tests/npu_emulation; see test_npu_emulation.py).

On a host with a real torch_npu these are skipped: tests/test_npu_hardware.py runs the NPU
checks on the device.
"""

from __future__ import annotations

import pytest
import torch
from npu_emulation_support import (  # noqa: F401 - fixtures
    _calls,
    close,
    thw_positions,
    torch_npu,
    vllm_config_fixture,
)
from vllm.config import set_current_vllm_config


@pytest.fixture()
def ops(vllm_config):
    from vllm_ascend_rerank.ops import npu_ops

    with set_current_vllm_config(vllm_config):
        yield npu_ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_op(ops, dtype) -> None:
    layer = ops.NpuRMSNorm(64, eps=1e-6).to(dtype)
    layer.weight.data.normal_()
    x, res = torch.randn(7, 64).to(dtype), torch.randn(7, 64).to(dtype)
    close(layer.forward_oot(x), layer.forward_native(x), dtype)
    heads = torch.randn(7, 4, 64).to(dtype)  # Qwen3's per-head q/k norm
    close(layer.forward_oot(heads), layer.forward_native(heads), dtype)
    got, got_res = layer.forward_oot(x.clone(), res.clone())
    want, want_res = layer.forward_native(x.clone(), res.clone())
    close(got, want, dtype)
    close(got_res, want_res, dtype)
    assert torch_npu.calls["npu_rms_norm"] == 2 and torch_npu.calls["npu_add_rms_norm"] == 1


def test_rms_norm_op_falls_back_outside_the_op(ops) -> None:
    layer = ops.NpuRMSNorm(64, var_hidden_size=32)
    x = torch.randn(3, 64)
    close(layer.forward_oot(x), layer.forward_native(x), torch.float32)
    assert torch_npu.calls["npu_rms_norm"] == 0


def test_silu_and_mul_op(ops) -> None:
    layer = ops.NpuSiluAndMul()
    x = torch.randn(5, 2, 32)
    close(layer.forward_oot(x), layer.forward_native(x), torch.float32)
    strided = torch.randn(32, 5).t()
    close(layer.forward_oot(strided), layer.forward_native(strided), torch.float32)
    assert torch_npu.calls["npu_swiglu"] == 1  # the non-contiguous input fell back


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("section,interleaved", [([24, 20, 20], True), ([16, 24, 24], False)])
def test_mrope_op(ops, dtype, section, interleaved) -> None:
    layer = ops.NpuMRotaryEmbedding(
        128, 128, 4096, 5e6, True, dtype, mrope_section=section, mrope_interleaved=interleaved
    )
    tokens = 9
    positions = torch.randint(0, 4000, (3, tokens))
    q, k = torch.randn(tokens, 4 * 128).to(dtype), torch.randn(tokens, 2 * 128).to(dtype)
    got_q, got_k = layer.forward_oot(positions, q.clone(), k.clone())
    want_q, want_k = layer.forward_native(positions, q.clone(), k.clone())
    close(got_q, want_q, dtype)
    close(got_k, want_k, dtype)
    text_pos = torch.arange(tokens)  # text only: plain RoPE mode
    close(layer.forward_oot(text_pos, q, k)[0], layer.forward_native(text_pos, q, k)[0], dtype)
    assert torch_npu.calls["npu_mrope"] == 2


def test_mrope_op_falls_back_for_the_tiny_checkpoint(ops) -> None:
    layer = ops.NpuMRotaryEmbedding(
        16, 16, 4096, 5e6, True, torch.float32, mrope_section=[4, 2, 2], mrope_interleaved=True
    )
    positions = torch.randint(0, 100, (3, 4))
    q, k = torch.randn(4, 32), torch.randn(4, 16)
    got, want = layer.forward_oot(positions, q, k), layer.forward_native(positions, q, k)
    close(got[0], want[0], torch.float32)
    assert torch_npu.calls["npu_mrope"] == 0


def test_mrope_op_on_a_cann_without_the_v2_kernel(ops, monkeypatch) -> None:
    """CANN < 8.5.0 has no aclnnRopeWithSinCosCacheV2: interleaved M-RoPE (Qwen3-VL) runs
    vLLM's native code; chunked sections and text-only positions keep the NPU op."""
    monkeypatch.setattr(ops, "_mrope_interleave_ok", False)
    positions = thw_positions(5)
    q, k = torch.randn(5, 2 * 128), torch.randn(5, 128)
    for section, interleaved, npu_calls in (([24, 20, 20], True, 0), ([16, 24, 24], False, 1)):
        torch_npu.calls.clear()
        layer = ops.NpuMRotaryEmbedding(
            128, 128, 4096, 5e6, True, torch.float32,
            mrope_section=section, mrope_interleaved=interleaved,
        )  # fmt: skip
        got = layer.forward_oot(positions, q.clone(), k.clone())
        close(got[0], layer.forward_native(positions, q.clone(), k.clone())[0], torch.float32)
        assert torch_npu.calls["npu_mrope"] == npu_calls, section
        layer.forward_oot(positions[0], q.clone(), k.clone())  # text only: RoPE mode, no V2
        assert torch_npu.calls["npu_mrope"] == npu_calls + 1, section


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vision_attention_op(ops, dtype) -> None:
    layer = ops.NpuMMEncoderAttention(num_heads=4, head_size=16, scale=0.3)
    seq = 12
    q, k, v = (torch.randn(1, seq, 4, 16).to(dtype) for _ in range(3))
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)  # two images
    close(layer.forward_oot(q, k, v, cu_seqlens=cu), layer.forward_native(q, k, v, cu), dtype)
    q3, k3, v3 = (t.reshape(2, 6, 64) for t in (q, k, v))  # [b, s, h*d], one sequence per row
    close(layer.forward_oot(q3, k3, v3), layer.forward_native(q3, k3, v3), dtype)
    assert torch_npu.calls["npu_fusion_attention"] == 2


def test_register_swaps_layers_and_is_idempotent(ops) -> None:
    from vllm.model_executor.custom_op import op_registry_oot
    from vllm.model_executor.layers.layernorm import RMSNorm

    saved = dict(op_registry_oot)  # registration is process-wide: undo it afterwards
    try:
        # An engine of this test process (CPU reference mode) registered the CPU kernels'
        # replacements; a real process is either an NPU one or a CPU one.
        for name, cls in saved.items():
            if cls.__module__ == "vllm_ascend_rerank.ops.cpu_ops":
                del op_registry_oot[name]
        ops.register()
        ops.register()
        layer = RMSNorm(64)
        assert type(layer) is ops.NpuRMSNorm
        assert ops.NpuRMSNorm.name == "rms_norm"  # custom_ops "-rms_norm" still applies
    finally:
        op_registry_oot.clear()
        op_registry_oot.update(saved)
