"""The NPU code paths, proved on the CPU against the torch_npu emulation (tests/npu_emulation).

(a) each emulated op against an oracle that is not the emulation's own formula (vLLM's
    native layers, attention written out densely; output shapes against the wheel's meta
    functions in test_torch_npu_conformance.py), and its argument checks;
(b) NpuKernels against TorchKernels on paged batches (cached context, GQA, padding slots);
(c) the npu_ops CustomOp subclasses against vLLM's forward_native.
(NPUGraph and ACLGraphWrapper: tests/test_acl_graph.py.)

On a host with a real torch_npu these are skipped: tests/test_npu_hardware.py runs the same
kernel checks on the device.
"""

from __future__ import annotations

import importlib.util
import math
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

from vllm_ascend_rerank.attention import reference  # noqa: E402
from vllm_ascend_rerank.attention.backend import RerankAttentionMetadata  # noqa: E402
from vllm_ascend_rerank.attention.impls import TorchKernels  # noqa: E402
from vllm_ascend_rerank.attention.npu import NpuKernels  # noqa: E402

assert getattr(torch_npu, "__emulation__", False)
NpuOpError = torch_npu.NpuOpError


@pytest.fixture(autouse=True)
def _calls() -> None:
    torch_npu.calls.clear()


@pytest.fixture(scope="module")
def vllm_config() -> VllmConfig:
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


@pytest.fixture()
def native(vllm_config):
    """vLLM's own layers (their ``forward_native`` is the oracle); built under a config."""
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.layernorm import RMSNorm
    from vllm.model_executor.layers.rotary_embedding.mrope import MRotaryEmbedding

    with set_current_vllm_config(vllm_config):
        yield {"RMSNorm": RMSNorm, "SiluAndMul": SiluAndMul, "MRotaryEmbedding": MRotaryEmbedding}


def _close(a, b, dtype):
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)


# ---- (a) emulated ops ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_vllm_native(native, dtype) -> None:
    # A large epsilon against small inputs: where epsilon goes changes the answer visibly.
    layer = native["RMSNorm"](64, eps=0.1).to(dtype)
    layer.weight.data.normal_()
    for shape in ((5, 64), (5, 3, 64)):  # 2D and Qwen3's per-head q/k norm
        x = (0.3 * torch.randn(shape)).to(dtype)
        y, rstd = torch_npu.npu_rms_norm(x, layer.weight.data, epsilon=0.1)
        _close(y, layer.forward_native(x.clone()), dtype)
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
    _close(s, want_sum, dtype)
    _close(y, want, dtype)
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


def _thw_positions(tokens: int) -> torch.Tensor:
    """T, H and W rows that differ everywhere, so a channel read from the wrong axis shows."""
    g = torch.Generator().manual_seed(3)
    return torch.stack([torch.randperm(4000, generator=g)[:tokens] for _ in range(3)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("section,interleaved", [([24, 20, 20], True), ([16, 24, 24], False)])
def test_mrope_matches_vllm_native(native, dtype, section, interleaved) -> None:
    layer = native["MRotaryEmbedding"](
        128, 128, 4096, 5e6, True, dtype, mrope_section=section, mrope_interleaved=interleaved
    )
    tokens = 7
    positions = _thw_positions(tokens)
    q, k = torch.randn(tokens, 4 * 128).to(dtype), torch.randn(tokens, 2 * 128).to(dtype)
    got_q, got_k = torch_npu.npu_mrope(
        positions, q, k, layer.cos_sin_cache.to(dtype), 128, mrope_section=section,
        rotary_mode="half", cache_mode="interleave" if interleaved else "default",
    )  # fmt: skip
    want_q, want_k = layer.forward_native(positions, q.clone(), k.clone())
    _close(got_q, want_q, dtype)
    _close(got_k, want_k, dtype)


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
    _close(got_q, want_q, torch.float32)
    _close(got_k, want_k, torch.float32)


def test_mrope_takes_views() -> None:
    """The 2.14.0 docs allow non-contiguous query/key: a strided view rotates like a copy."""
    positions, cache = _thw_positions(5), torch.randn(4096, 128)
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


# ---- (b) NpuKernels vs TorchKernels ------------------------------------------------------------
def make_paged_batch(
    query_lens: list[int],
    context_lens: list[int],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    dtype: torch.dtype,
    num_padding: int,
    seed: int = 0,
):
    """Caches holding each request's context, this step's tokens (+ padding rows, slot -1)
    and the metadata the backend would build. Block 0 is vLLM's null block: never used."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
    blocks_per_req = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = 1 + sum(blocks_per_req) + 3
    ids = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    table = torch.zeros(len(seq_lens), max(blocks_per_req), dtype=torch.int32)
    for r, nb in enumerate(blocks_per_req):
        table[r, :nb] = torch.tensor([ids.pop() for _ in range(nb)], dtype=torch.int32)

    def new_cache() -> torch.Tensor:  # LBNHC: physical [blocks, block_size, heads, 2D]
        phys = torch.zeros(num_blocks, block_size, num_kv_heads, 2 * head_size, dtype=dtype)
        return phys.permute(0, 2, 1, 3)

    def slots_for(r: int, positions: range) -> list[int]:
        return [int(table[r, p // block_size]) * block_size + p % block_size for p in positions]

    caches = new_cache(), new_cache()
    for r, c in enumerate(context_lens):  # the cached context, written once for both
        if c:
            kk = torch.randn(c, num_kv_heads, head_size, generator=g).to(dtype)
            vv = torch.randn(c, num_kv_heads, head_size, generator=g).to(dtype)
            slots = torch.tensor(slots_for(r, range(c)))
            for cache in caches:
                reference.write_kv(kk, vv, cache, slots)
    n = sum(query_lens)
    total = n + num_padding
    q = torch.randn(total, num_heads, head_size, generator=g).to(dtype)
    k = torch.randn(total, num_kv_heads, head_size, generator=g).to(dtype)
    v = torch.randn(total, num_kv_heads, head_size, generator=g).to(dtype)
    slot_list = [s for r, ql in enumerate(query_lens)
                 for s in slots_for(r, range(context_lens[r], seq_lens[r]))]  # fmt: skip
    slot_mapping = torch.tensor(slot_list + [-1] * num_padding)
    qsl = [0] + cum(query_lens)
    md = RerankAttentionMetadata(
        num_actual_tokens=n,
        query_start_loc=qsl,
        seq_lens=seq_lens,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        block_table=table,
        slot_mapping=slot_mapping[:n],
        causal=True,
        query_start_loc_tensor=torch.tensor(qsl, dtype=torch.int32),
        seq_lens_tensor=torch.tensor(seq_lens, dtype=torch.int32),
    )
    return caches, q, k, v, slot_mapping, md


def _run(kernels, cache, q, k, v, slot_mapping, md, scale, *, paged=True):
    kernels.write_kv(k, v, cache, slot_mapping)
    n = md.num_actual_tokens
    out = torch.full((n, q.shape[1], q.shape[2]), float("nan"), dtype=q.dtype)
    if paged:
        kernels.paged_attention(q[:n], k[:n], v[:n], cache, md, scale, out)
    else:
        kernels.varlen_attention(q[:n], k[:n], v[:n], md, scale, out)
    return out


CASES = {
    "cached-context-gqa": dict(query_lens=[5, 17, 1], context_lens=[20, 0, 33]),
    "no-context": dict(query_lens=[9, 4], context_lens=[0, 0]),
}


@pytest.mark.parametrize("case", CASES)
def test_npu_kernels_fp32_equal_reference(case: str) -> None:
    """float32 is outside npu_fused_infer_attention_score (float16/bfloat16 only): the cache
    write goes through the NPU op, attention through the documented fallback."""
    kw = CASES[case]
    (ref_cache, npu_cache), q, k, v, slots, md = make_paged_batch(
        **kw, num_heads=4, num_kv_heads=2, head_size=16, block_size=16,
        dtype=torch.float32, num_padding=3,
    )  # fmt: skip
    want = _run(TorchKernels(), ref_cache, q, k, v, slots, md, 0.25)
    got = _run(NpuKernels(), npu_cache, q, k, v, slots, md, 0.25)
    torch.testing.assert_close(npu_cache[1:], ref_cache[1:], rtol=0, atol=0)  # not block 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch_npu.calls["npu_scatter_nd_update_"] == 1
    assert torch_npu.calls["npu_fused_infer_attention_score"] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_npu_kernels_fia_match_reference(case: str, dtype: torch.dtype) -> None:
    """The fused-attention path (half precision, head size 128) against the reference run in
    float32 on the same half-precision values: only the output rounding may differ."""
    kw = CASES[case]
    (ref_cache, npu_cache), q, k, v, slots, md = make_paged_batch(
        **kw, num_heads=8, num_kv_heads=2, head_size=128, block_size=16, dtype=dtype,
        num_padding=2,
    )  # fmt: skip
    ref_cache = ref_cache.float()
    want = _run(TorchKernels(), ref_cache, q.float(), k.float(), v.float(), slots, md, 0.09)
    got = _run(NpuKernels(), npu_cache, q, k, v, slots, md, 0.09)
    torch.testing.assert_close(npu_cache[1:].float(), ref_cache[1:], rtol=0, atol=0)
    tol = 2e-3 if dtype == torch.float16 else 1.6e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    assert torch_npu.calls["npu_fused_infer_attention_score"] == 1


@pytest.mark.parametrize("causal", [True, False])
def test_npu_kernels_varlen_match_reference(causal: bool) -> None:
    (ref_cache, npu_cache), q, k, v, slots, md = make_paged_batch(
        [6, 11], [0, 0], num_heads=4, num_kv_heads=4, head_size=128, block_size=16,
        dtype=torch.float16, num_padding=0,
    )  # fmt: skip
    md.causal = causal
    want = _run(TorchKernels(), ref_cache.float(), q.float(), k.float(), v.float(), slots, md,
                0.1, paged=False)  # fmt: skip
    got = _run(NpuKernels(), npu_cache, q, k, v, slots, md, 0.1, paged=False)
    torch.testing.assert_close(got.float(), want, rtol=2e-3, atol=2e-3)


def test_npu_write_kv_refuses_a_non_token_major_cache() -> None:
    cache = torch.zeros(4, 2, 16, 32)  # contiguous [blocks, heads, block_size, 2D]: not LBNHC
    with pytest.raises(RuntimeError, match="token-major"):
        NpuKernels().write_kv(torch.randn(1, 2, 16), torch.randn(1, 2, 16), cache,
                              torch.tensor([5]))  # fmt: skip


# ---- (c) CustomOp subclasses vs forward_native ---------------------------------------------------
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
    _close(layer.forward_oot(x), layer.forward_native(x), dtype)
    heads = torch.randn(7, 4, 64).to(dtype)  # Qwen3's per-head q/k norm
    _close(layer.forward_oot(heads), layer.forward_native(heads), dtype)
    got, got_res = layer.forward_oot(x.clone(), res.clone())
    want, want_res = layer.forward_native(x.clone(), res.clone())
    _close(got, want, dtype)
    _close(got_res, want_res, dtype)
    assert torch_npu.calls["npu_rms_norm"] == 2 and torch_npu.calls["npu_add_rms_norm"] == 1


def test_rms_norm_op_falls_back_outside_the_op(ops) -> None:
    layer = ops.NpuRMSNorm(64, var_hidden_size=32)
    x = torch.randn(3, 64)
    _close(layer.forward_oot(x), layer.forward_native(x), torch.float32)
    assert torch_npu.calls["npu_rms_norm"] == 0


def test_silu_and_mul_op(ops) -> None:
    layer = ops.NpuSiluAndMul()
    x = torch.randn(5, 2, 32)
    _close(layer.forward_oot(x), layer.forward_native(x), torch.float32)
    strided = torch.randn(32, 5).t()
    _close(layer.forward_oot(strided), layer.forward_native(strided), torch.float32)
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
    _close(got_q, want_q, dtype)
    _close(got_k, want_k, dtype)
    text_pos = torch.arange(tokens)  # text only: plain RoPE mode
    _close(layer.forward_oot(text_pos, q, k)[0], layer.forward_native(text_pos, q, k)[0], dtype)
    assert torch_npu.calls["npu_mrope"] == 2


def test_mrope_op_falls_back_for_the_tiny_checkpoint(ops) -> None:
    layer = ops.NpuMRotaryEmbedding(
        16, 16, 4096, 5e6, True, torch.float32, mrope_section=[4, 2, 2], mrope_interleaved=True
    )
    positions = torch.randint(0, 100, (3, 4))
    q, k = torch.randn(4, 32), torch.randn(4, 16)
    got, want = layer.forward_oot(positions, q, k), layer.forward_native(positions, q, k)
    _close(got[0], want[0], torch.float32)
    assert torch_npu.calls["npu_mrope"] == 0


def test_mrope_op_on_a_cann_without_the_v2_kernel(ops, monkeypatch) -> None:
    """CANN < 8.5.0 has no aclnnRopeWithSinCosCacheV2: interleaved M-RoPE (Qwen3-VL) runs
    vLLM's native code; chunked sections and text-only positions keep the NPU op."""
    monkeypatch.setattr(ops, "_mrope_interleave_ok", False)
    positions = _thw_positions(5)
    q, k = torch.randn(5, 2 * 128), torch.randn(5, 128)
    for section, interleaved, npu_calls in (([24, 20, 20], True, 0), ([16, 24, 24], False, 1)):
        torch_npu.calls.clear()
        layer = ops.NpuMRotaryEmbedding(
            128, 128, 4096, 5e6, True, torch.float32,
            mrope_section=section, mrope_interleaved=interleaved,
        )  # fmt: skip
        got = layer.forward_oot(positions, q.clone(), k.clone())
        _close(got[0], layer.forward_native(positions, q.clone(), k.clone())[0], torch.float32)
        assert torch_npu.calls["npu_mrope"] == npu_calls, section
        layer.forward_oot(positions[0], q.clone(), k.clone())  # text only: RoPE mode, no V2
        assert torch_npu.calls["npu_mrope"] == npu_calls + 1, section


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vision_attention_op(ops, dtype) -> None:
    layer = ops.NpuMMEncoderAttention(num_heads=4, head_size=16, scale=0.3)
    seq = 12
    q, k, v = (torch.randn(1, seq, 4, 16).to(dtype) for _ in range(3))
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)  # two images
    _close(layer.forward_oot(q, k, v, cu_seqlens=cu), layer.forward_native(q, k, v, cu), dtype)
    q3, k3, v3 = (t.reshape(2, 6, 64) for t in (q, k, v))  # [b, s, h*d], one sequence per row
    _close(layer.forward_oot(q3, k3, v3), layer.forward_native(q3, k3, v3), dtype)
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


# ---- worker / communicator shape ----------------------------------------------------------------
def test_npu_runner_overrides_device_hooks_only() -> None:
    from vllm_ascend_rerank.worker.npu import RerankNPUModelRunner, RerankNPUWorker

    # vLLM's V2 runner as it is: only its construction is wrapped (streams, UVA buffers).
    assert {k for k in vars(RerankNPUModelRunner) if not k.startswith("__")} == set()
    assert "__init__" in vars(RerankNPUModelRunner)
    own = {k for k in vars(RerankNPUWorker) if not k.startswith("__")}
    assert own == {"init_device", "_make_model_runner", "_maybe_get_memory_pool_context"}


_CUDA_STREAM_API = ("Stream", "Event", "current_stream", "default_stream", "stream", "set_stream")


def test_npu_runner_uses_npu_streams_and_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.v1.worker.gpu import buffer_utils

    from vllm_ascend_rerank.worker.npu import use_copies_for_uva, use_npu_streams_for_cuda

    # Process-wide in a worker; undone here (monkeypatch restores what it saw first).
    for name in _CUDA_STREAM_API:
        monkeypatch.setattr(torch.cuda, name, getattr(torch.cuda, name))
    monkeypatch.setattr(buffer_utils, "UvaBuffer", buffer_utils.UvaBuffer)
    use_npu_streams_for_cuda()
    use_copies_for_uva()
    assert torch.cuda.Stream is torch.npu.Stream
    for name in _CUDA_STREAM_API[2:]:  # own callables, not torch.npu's objects (Dynamo)
        assert getattr(torch.cuda, name) is not getattr(torch.npu, name)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert torch.cuda.current_stream() is side or torch.cuda.current_stream() == side
    # vLLM passes CUDA-only keywords (external) that torch_npu's Event does not take.
    event = torch.cuda.Event(blocking=True, external=False)
    assert isinstance(event, torch.npu.Event)
    assert buffer_utils.UvaBuffer is buffer_utils.NonUvaBuffer


def test_npu_communicator_single_rank() -> None:
    import torch.distributed as dist

    from vllm_ascend_rerank.distributed import NpuCommunicator
    from vllm_ascend_rerank.serving import free_port

    url = f"tcp://127.0.0.1:{free_port()}"  # a fixed port collides with parallel runs
    dist.init_process_group("gloo", init_method=url, rank=0, world_size=1)
    try:
        group = dist.new_group([0], backend="gloo")
        comm = NpuCommunicator(group, device_group=group, unique_name="tp:0")
        x = torch.randn(3, 4)
        assert comm.all_reduce(x) is x and comm.all_gather(x, dim=0) is x
    finally:
        dist.destroy_process_group()
