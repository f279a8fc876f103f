"""The emulated torch_npu ops (tests/npu_emulation), proved on the CPU: each against an
oracle that is not the emulation's own formula (vLLM's native layers, attention written out
densely; output shapes against the wheel's meta functions in test_torch_npu_conformance.py),
and its argument checks.

The rest of the NPU code paths on the emulation: NpuKernels against TorchKernels in
test_npu_emulation_kernels.py, the npu_ops CustomOp subclasses in
test_npu_emulation_custom_ops.py, the NPU worker and communicator in
test_npu_emulation_worker.py; NPUGraph and ACLGraphWrapper in test_acl_graph.py. Shared
fixtures and oracles: npu_emulation_support.py.

On a host with a real torch_npu these are skipped: tests/test_npu_hardware.py runs the same
kernel checks on the device.
"""

from __future__ import annotations

import pytest
import torch
from npu_emulation_support import (  # noqa: F401 - fixtures
    CAUSAL_MASK,
    NpuOpError,
    _calls,
    close,
    cum,
    dense_attention,
    native_fixture,
    thw_positions,
    torch_npu,
    vllm_config_fixture,
)


# ---- emulated ops -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_vllm_native(native, dtype) -> None:
    # A large epsilon against small inputs: where epsilon goes changes the answer visibly.
    layer = native["RMSNorm"](64, eps=0.1).to(dtype)
    layer.weight.data.normal_()
    for shape in ((5, 64), (5, 3, 64)):  # 2D and Qwen3's per-head q/k norm
        x = (0.3 * torch.randn(shape)).to(dtype)
        y, rstd = torch_npu.npu_rms_norm(x, layer.weight.data, epsilon=0.1)
        close(y, layer.forward_native(x.clone()), dtype)
        want_rstd = (x.double().pow(2).mean(-1, keepdim=True) + 0.1).rsqrt()
        assert rstd.dtype == torch.float32
        torch.testing.assert_close(rstd.double(), want_rstd, rtol=1e-5, atol=1e-6)


def test_rms_norm_refuses_what_the_wheel_excludes() -> None:
    x, w = torch.randn(5, 3, 64), torch.randn(64)
    with pytest.raises(NpuOpError, match="dtypes"):  # 2.14.0: gamma takes self's dtype
        torch_npu.npu_rms_norm(x.half(), w)
    with pytest.raises(NpuOpError, match="2-8 dims"):
        torch_npu.npu_rms_norm(torch.randn(64), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_matches_vllm_native(native, dtype) -> None:
    layer = native["RMSNorm"](32, eps=0.1).to(dtype)
    layer.weight.data.normal_()
    a, b = (0.2 * torch.randn(4, 32)).to(dtype), (0.2 * torch.randn(4, 32)).to(dtype)
    y, rstd, s = torch_npu.npu_add_rms_norm(a, b, layer.weight.data, epsilon=0.1)
    want, want_sum = layer.forward_native(a.clone(), b.clone())
    close(s, want_sum, dtype)
    close(y, want, dtype)
    assert rstd.shape == (4, 1) and rstd.dtype == torch.float32
    with pytest.raises(NpuOpError, match="gamma dtype"):
        torch_npu.npu_add_rms_norm(a, b, layer.weight.data.half())


def test_swiglu_matches_vllm_native(native) -> None:
    x = torch.randn(3, 2, 10)
    want = native["SiluAndMul"]().forward_native(x)
    torch.testing.assert_close(torch_npu.npu_swiglu(x, dim=-1), want)
    with pytest.raises(NpuOpError, match="non-contiguous"):
        torch_npu.npu_swiglu(x.transpose(0, 1))
    with pytest.raises(NpuOpError, match="even"):
        torch_npu.npu_swiglu(torch.randn(3, 7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("section,interleaved", [([24, 20, 20], True), ([16, 24, 24], False)])
def test_mrope_matches_vllm_native(native, dtype, section, interleaved) -> None:
    layer = native["MRotaryEmbedding"](
        128, 128, 4096, 5e6, True, dtype, mrope_section=section, mrope_interleaved=interleaved
    )
    tokens = 7
    positions = thw_positions(tokens)
    q, k = torch.randn(tokens, 4 * 128).to(dtype), torch.randn(tokens, 2 * 128).to(dtype)
    got_q, got_k = torch_npu.npu_mrope(
        positions, q, k, layer.cos_sin_cache.to(dtype), 128, mrope_section=section,
        rotary_mode="half", cache_mode="interleave" if interleaved else "default",
    )  # fmt: skip
    want_q, want_k = layer.forward_native(positions, q.clone(), k.clone())
    close(got_q, want_q, dtype)
    close(got_k, want_k, dtype)


@pytest.mark.parametrize("neox", [True, False])
def test_rope_mode_matches_vllm_native(native, neox: bool) -> None:
    """Text-only positions (RoPE mode), both rotation styles, a partial rotary_dim."""
    layer = native["MRotaryEmbedding"](128, 64, 4096, 1e4, neox, torch.float32,
                                       mrope_section=[16, 8, 8])  # fmt: skip
    positions = torch.randperm(4000)[:6]
    q, k = torch.randn(6, 2 * 128), torch.randn(6, 128)
    got_q, got_k = torch_npu.npu_mrope(
        positions, q, k, layer.cos_sin_cache, 128, mrope_section=[0, 0, 0],
        rotary_mode="half" if neox else "interleave",
    )  # fmt: skip
    want_q, want_k = layer.forward_native(positions, q.clone(), k.clone())
    close(got_q, want_q, torch.float32)
    close(got_k, want_k, torch.float32)


def test_mrope_takes_views() -> None:
    """The 2.14.0 docs allow non-contiguous query/key: a strided view rotates like a copy."""
    positions, cache = thw_positions(5), torch.randn(4096, 128)
    qk = torch.randn(5, 3 * 128)
    q, k = qk[:, : 2 * 128], qk[:, 2 * 128 :]  # views into one fused projection
    kw = dict(mrope_section=[24, 20, 20], cache_mode="interleave")
    got = torch_npu.npu_mrope(positions, q, k, cache, 128, **kw)
    want = torch_npu.npu_mrope(positions, q.contiguous(), k.contiguous(), cache, 128, **kw)
    torch.testing.assert_close(got, want)


def test_mrope_refuses_what_the_wheel_excludes(monkeypatch) -> None:
    pos3, pos1 = torch.zeros(3, 4, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    q = torch.randn(4, 32)
    mrope = torch_npu.npu_mrope
    with pytest.raises(NpuOpError, match="mrope_section"):  # not a kernel section
        mrope(pos3, q, q, torch.randn(8, 16), 16, mrope_section=[4, 2, 2])
    with pytest.raises(NpuOpError, match="mrope_section"):  # 2.14.0: three sections only
        mrope(torch.zeros(4, 4, dtype=torch.long), q, q, torch.randn(8, 16), 16,
              mrope_section=[16, 16, 16, 16])  # fmt: skip
    with pytest.raises(NpuOpError, match="multiple of 32"):  # rotary_dim 16 in half precision
        mrope(pos1, q.half(), q.half(), torch.randn(8, 16).half(), 16)
    with pytest.raises(NpuOpError, match="2D"):
        mrope(pos1, q.view(4, 2, 16), q, torch.randn(8, 16), 16)
    with pytest.raises(NpuOpError, match="RoPE mode"):
        mrope(pos1, q, q, torch.randn(8, 16), 16, cache_mode="interleave")
    with pytest.raises(NpuOpError, match="rotary_mode"):  # 2.14.0 spells it 'interleave'
        mrope(pos1, q, q, torch.randn(8, 16), 16, rotary_mode="interleaved")
    monkeypatch.setenv("TORCH_NPU_EMULATION_CANN_VERSION", "8.3.RC1")
    q128 = torch.randn(4, 128)
    with pytest.raises(NpuOpError, match="aclnnRopeWithSinCosCacheV2"):
        mrope(pos3, q128, q128, torch.randn(8, 128), 128, mrope_section=[24, 20, 20],
              cache_mode="interleave")  # fmt: skip
    mrope(pos3, q128, q128, torch.randn(8, 128), 128, mrope_section=[24, 20, 20])  # default: ok


@pytest.mark.parametrize(
    "version,ok", [("9.1.0", True), ("8.5.0", True), ("8.5.0.alpha003", False),
                   ("8.3.RC1", False), ("8.5.1", True), ("10.0.RC1", True)],
)  # fmt: skip
def test_cann_version_gate(monkeypatch, version: str, ok: bool) -> None:
    from vllm_ascend_rerank import device

    monkeypatch.setenv("TORCH_NPU_EMULATION_CANN_VERSION", version)
    assert device.cann_version() == version
    assert device.cann_at_least("8.5.0") is ok


def test_scatter_nd_update_writes_rows_in_place() -> None:
    base = torch.zeros(6, 2, 4)
    view = base[:, :, :2]  # non-contiguous input is allowed
    idx = torch.tensor([[4], [1]])
    upd = torch.randn(2, 2, 2)
    want = base.clone()
    for row, i in enumerate(idx[:, 0].tolist()):  # written out: one slice per index row
        want[i, :, :2] = upd[row]
    assert torch_npu.npu_scatter_nd_update_(view, idx, upd) is view
    torch.testing.assert_close(base, want, rtol=0, atol=0)
    with pytest.raises(NpuOpError, match="out of bounds"):
        torch_npu.npu_scatter_nd_update_(base, torch.tensor([[-1]]), torch.randn(1, 2, 4))
    with pytest.raises(NpuOpError, match="updates shape"):
        torch_npu.npu_scatter_nd_update_(base, idx, torch.randn(2, 4))


def _fia_inputs(dtype=torch.bfloat16, q_lens=(3, 5, 1), kv_lens=(7, 5, 9), n=4, nkv=2, d=128):
    torch.manual_seed(0)
    q = torch.randn(sum(q_lens), n, d).to(dtype)
    k = torch.randn(sum(kv_lens), nkv, d).to(dtype)
    v = torch.randn(sum(kv_lens), nkv, d).to(dtype)
    return q, k, v, list(q_lens), list(kv_lens)


@pytest.mark.parametrize("causal", [True, False])
def test_fia_tnd_matches_dense_attention(causal: bool) -> None:
    q, k, v, q_lens, kv_lens = _fia_inputs()
    out, lse = torch_npu.npu_fused_infer_attention_score(
        q, k, v, atten_mask=CAUSAL_MASK if causal else None,
        actual_seq_lengths=cum(q_lens), actual_seq_lengths_kv=cum(kv_lens),
        num_heads=4, num_key_value_heads=2, scale=0.1, input_layout="TND",
        sparse_mode=3 if causal else 0,
    )  # fmt: skip
    want = dense_attention(q, k, v, q_lens, kv_lens, 0.1, causal)
    assert out.dtype == torch.bfloat16 and lse.shape == (1,)
    torch.testing.assert_close(out.double(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("cache_form", ["BnBsH", "BnNBsD"])
def test_fia_page_attention_reads_through_block_table(cache_form: str) -> None:
    q, k, v, q_lens, kv_lens = _fia_inputs(q_lens=(3, 5, 1), kv_lens=(130, 5, 9))
    block_size, nkv, d = 128, 2, 128  # 2.14.0: PageAttention blocks of 128..512 by 128
    table = torch.tensor([[3, 0], [1, 0], [2, 4]], dtype=torch.int32)
    k_cache = torch.zeros(5, block_size, nkv, d, dtype=q.dtype)
    v_cache = torch.zeros_like(k_cache)
    start = 0
    for r, kl in enumerate(kv_lens):
        for p in range(kl):
            blk, off = int(table[r, p // block_size]), p % block_size
            k_cache[blk, off], v_cache[blk, off] = k[start + p], v[start + p]
        start += kl
    if cache_form == "BnBsH":
        kc, vc = k_cache.flatten(2), v_cache.flatten(2)
    else:
        kc, vc = k_cache.transpose(1, 2).contiguous(), v_cache.transpose(1, 2).contiguous()
    fia = torch_npu.npu_fused_infer_attention_score
    kw = dict(
        atten_mask=CAUSAL_MASK, block_table=table, actual_seq_lengths=cum(q_lens),
        actual_seq_lengths_kv=kv_lens, num_heads=4, num_key_value_heads=2, scale=0.1,
        input_layout="TND", sparse_mode=3,
    )  # fmt: skip
    out, _ = fia(q, kc, vc, block_size=block_size, **kw)
    want = dense_attention(q, k, v, q_lens, kv_lens, 0.1, True)
    torch.testing.assert_close(out.double(), want, rtol=1e-2, atol=1e-2)
    with pytest.raises(NpuOpError, match="block_size"):
        fia(q, kc, vc, block_size=16, **kw)


def test_fia_refuses_what_the_wheel_excludes() -> None:
    q, k, v, q_lens, kv_lens = _fia_inputs()
    ok = dict(
        atten_mask=CAUSAL_MASK, actual_seq_lengths=cum(q_lens), actual_seq_lengths_kv=cum(kv_lens),
        num_heads=4, num_key_value_heads=2, scale=0.1, input_layout="TND", sparse_mode=3,
    )  # fmt: skip
    fia = torch_npu.npu_fused_infer_attention_score
    with pytest.raises(NpuOpError, match="input_layout"):
        fia(q, k, v, **{**ok, "input_layout": "THD"})
    with pytest.raises(NotImplementedError, match="BSND"):
        fia(q, k, v, **{**ok, "input_layout": "BSND"})
    with pytest.raises(NpuOpError, match="query dtype"):
        fia(q.float(), k.float(), v.float(), **ok)
    with pytest.raises(NpuOpError, match="head dim"):
        fia(q[..., :64].contiguous(), k[..., :64].contiguous(), v[..., :64].contiguous(), **ok)
    with pytest.raises(NpuOpError, match="2048"):
        fia(q, k, v, **{**ok, "atten_mask": None})
    with pytest.raises(NpuOpError, match="triu"):
        fia(q, k, v, **{**ok, "atten_mask": CAUSAL_MASK.t().contiguous()})
    with pytest.raises(NpuOpError, match="cumulative"):
        fia(q, k, v, **{**ok, "actual_seq_lengths": q_lens})
    with pytest.raises(NpuOpError, match="contiguous"):
        fia(q.transpose(0, 1).contiguous().transpose(0, 1), k, v, **ok)
    with pytest.raises(NpuOpError, match="num_key_value_heads"):
        fia(q, k, v, **{**ok, "num_key_value_heads": 3})
    with pytest.raises(NpuOpError, match="sparse_mode 5"):
        fia(q, k, v, **{**ok, "sparse_mode": 5})
    with pytest.raises(NpuOpError, match="queries over"):  # rightDownCausal, Sq > Skv
        fia(q, k, v, **{**ok, "actual_seq_lengths_kv": cum([2, 5, 9])})
    with pytest.raises(NotImplementedError, match="pse_shift"):
        fia(q, k, v, **ok, pse_shift=torch.zeros(1))
    with pytest.raises(TypeError):  # not in the registered schema
        fia(q, k, v, **ok, learnable_sink=torch.zeros(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fusion_attention_tnd_matches_dense_attention(dtype) -> None:
    q, k, v, q_lens, _ = _fia_inputs(dtype=dtype, kv_lens=(3, 5, 1), d=72)
    out = torch_npu.npu_fusion_attention(
        q, k, v, 4, "TND", scale=0.2, actual_seq_qlen=cum(q_lens), actual_seq_kvlen=cum(q_lens)
    )
    assert len(out) == 7 and out[0].dtype == dtype
    want = dense_attention(q, k, v, q_lens, q_lens, 0.2, False)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out[0].double(), want, rtol=tol, atol=tol)
    with pytest.raises(NotImplementedError, match="BSND"):
        torch_npu.npu_fusion_attention(q, k, v, 4, "BSND")
    with pytest.raises(NpuOpError, match="layout"):
        torch_npu.npu_fusion_attention(q, k, v, 4, "TDN")
    with pytest.raises(NpuOpError, match="head_num"):
        torch_npu.npu_fusion_attention(
            q, k, v, 2, "TND", actual_seq_qlen=cum(q_lens), actual_seq_kvlen=cum(q_lens)
        )
