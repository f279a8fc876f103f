"""The NPU code paths on a real Ascend NPU (skipped anywhere else).

Run on an Ascend host (CANN, torch_npu 2.14.0 and triton-ascend installed, one free NPU):

    VLLM_ASCEND_RERANK_DEVICE=npu python -m pytest tests/test_npu_hardware.py -m npu -v

The same kernel checks as tests/test_npu_emulation*.py, on the device: each torch_npu op our
code calls against a plain torch computation, NpuKernels against TorchKernels, the CustomOp
replacements against vLLM's forward_native, an ACL graph capture/replay, the Triton kernel
compiled by triton-ascend, and ``vllm serve`` answering /v1/rerank with the official rule's
scores (the reference runs on the host CPU).
"""

from __future__ import annotations

import os

import pytest
import torch

from vllm_ascend_rerank import device


def _real_npu() -> bool:
    if not device.npu_available():
        return False
    return not getattr(device.torch_npu(), "__emulation__", False)


pytestmark = [
    pytest.mark.npu,
    pytest.mark.skipif(not _real_npu(), reason="needs an Ascend NPU with the real torch_npu"),
]

DEV = "npu"
CAUSAL = 2048


@pytest.fixture(scope="module")
def tnpu():
    return device.torch_npu()


@pytest.fixture(scope="module")
def vllm_config():
    from vllm.config import VllmConfig

    return VllmConfig()


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), rtol=tol, atol=tol)


# ---- ops -----------------------------------------------------------------------------------------
def test_norms_and_swiglu(tnpu) -> None:
    x, r, w = (torch.randn(6, 128, device=DEV) for _ in range(3))
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    _close(tnpu.npu_rms_norm(x, w, epsilon=1e-6)[0], want, 1e-4)
    y, _, s = tnpu.npu_add_rms_norm(x, r, w, epsilon=1e-6)
    _close(s, x + r, 1e-5)
    _close(y, (x + r) / torch.sqrt((x + r).pow(2).mean(-1, keepdim=True) + 1e-6) * w, 1e-4)
    g = torch.randn(6, 256, device=DEV)
    _close(tnpu.npu_swiglu(g, dim=-1), torch.nn.functional.silu(g[:, :128]) * g[:, 128:], 1e-4)


def _paged_batch(dtype: torch.dtype):
    """Same shape of test as the emulation's: cached context, GQA, padding slots."""
    from vllm_ascend_rerank.attention.backend import RerankAttentionMetadata

    torch.manual_seed(0)
    query_lens, context_lens, block_size = [5, 17, 1], [20, 0, 33], 128
    heads, kv_heads, head = 8, 2, 128
    seq_lens = [c + q for c, q in zip(context_lens, query_lens, strict=True)]
    table = torch.tensor([[1], [2], [3]], dtype=torch.int32, device=DEV)
    phys = torch.zeros(4, block_size, kv_heads, 2 * head, dtype=dtype, device=DEV)
    cache = phys.permute(0, 2, 1, 3)
    ctx_slots = [r * block_size + block_size + p for r, c in enumerate(context_lens)
                 for p in range(c)]  # fmt: skip
    from vllm_ascend_rerank.attention import reference

    n_ctx = len(ctx_slots)
    reference.write_kv(
        torch.randn(n_ctx, kv_heads, head, device=DEV).to(dtype),
        torch.randn(n_ctx, kv_heads, head, device=DEV).to(dtype),
        cache,
        torch.tensor(ctx_slots, device=DEV),
    )
    new_slots = [(r + 1) * block_size + p for r in range(3)
                 for p in range(context_lens[r], seq_lens[r])]  # fmt: skip
    n, pad = sum(query_lens), 2
    q = torch.randn(n + pad, heads, head, device=DEV).to(dtype)
    k = torch.randn(n + pad, kv_heads, head, device=DEV).to(dtype)
    v = torch.randn(n + pad, kv_heads, head, device=DEV).to(dtype)
    slots = torch.tensor(new_slots + [-1] * pad, device=DEV)
    qsl = [0, 5, 22, 23]
    md = RerankAttentionMetadata(
        num_actual_tokens=n, query_start_loc=qsl, seq_lens=seq_lens, max_query_len=17,
        max_seq_len=max(seq_lens), block_table=table, slot_mapping=slots[:n], causal=True,
        query_start_loc_tensor=torch.tensor(qsl, device=DEV),
        seq_lens_tensor=torch.tensor(seq_lens, device=DEV),
    )  # fmt: skip
    return cache, q, k, v, slots, md


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_npu_kernels_match_reference(dtype: torch.dtype) -> None:
    from vllm_ascend_rerank.attention.impls import TorchKernels
    from vllm_ascend_rerank.attention.npu import NpuKernels

    cache, q, k, v, slots, md = _paged_batch(dtype)
    ref_cache = cache.clone()
    n = md.num_actual_tokens
    outs = []
    for kernels, c in ((TorchKernels(), ref_cache), (NpuKernels(), cache)):
        kernels.write_kv(k, v, c, slots)
        out = torch.empty(n, q.shape[1], q.shape[2], dtype=dtype, device=DEV)
        kernels.paged_attention(q[:n], k[:n], v[:n], c, md, 0.09, out)
        outs.append(out)
    _close(cache[1:], ref_cache[1:], 0)
    _close(outs[1], outs[0], 2e-3 if dtype == torch.float16 else 1.6e-2)


def test_custom_ops_match_native(vllm_config) -> None:
    from vllm.config import set_current_vllm_config

    from vllm_ascend_rerank.ops import npu_ops

    with set_current_vllm_config(vllm_config):
        norm = npu_ops.NpuRMSNorm(128).to(DEV, torch.bfloat16)
        rope = npu_ops.NpuMRotaryEmbedding(128, 128, 4096, 5e6, True, torch.bfloat16,
                                           mrope_section=[24, 20, 20],
                                           mrope_interleaved=True).to(DEV)  # fmt: skip
        vit = npu_ops.NpuMMEncoderAttention(num_heads=16, head_size=64)
    x, res = (torch.randn(9, 128, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    _close(norm.forward_oot(x), norm.forward_native(x), 2e-2)
    for got, want in zip(norm.forward_oot(x, res), norm.forward_native(x, res), strict=True):
        _close(got, want, 2e-2)
    act = torch.randn(9, 256, device=DEV, dtype=torch.bfloat16)
    _close(npu_ops.NpuSiluAndMul().forward_oot(act), npu_ops.SiluAndMul.forward_native(act), 2e-2)
    pos = torch.randint(0, 4000, (3, 9), device=DEV)
    q, k = (torch.randn(9, n * 128, device=DEV, dtype=torch.bfloat16) for n in (4, 2))
    for got, want in zip(rope.forward_oot(pos, q, k), rope.forward_native(pos, q, k), strict=True):
        _close(got, want, 2e-2)
    qv, kv, vv = (torch.randn(1, 20, 16, 64, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    cu = torch.tensor([0, 8, 20], dtype=torch.int32, device=DEV)
    _close(vit.forward_oot(qv, kv, vv, cu), vit.forward_native(qv, kv, vv, cu), 2e-2)


def test_acl_graph_replay(vllm_config) -> None:
    from vllm.config import CUDAGraphMode
    from vllm.forward_context import BatchDescriptor, set_forward_context

    from vllm_ascend_rerank.graphs.acl_graph import ACLGraphWrapper

    vllm_config.compilation_config.cudagraph_capture_sizes = [8, 16]
    piece = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.SiLU()).to(DEV)
    wrapper = ACLGraphWrapper(piece, vllm_config, CUDAGraphMode.PIECEWISE)
    static = torch.zeros(16, 64, device=DEV)
    with torch.inference_mode():
        for n in (5, 7, 8):  # capture at 8, then two replays
            x = torch.randn(n, 64, device=DEV)
            static[:n], static[n:8] = x, 0
            with set_forward_context(None, vllm_config,
                                     cudagraph_runtime_mode=CUDAGraphMode.PIECEWISE,
                                     batch_descriptor=BatchDescriptor(num_tokens=8)):  # fmt: skip
                out = wrapper(static[:8])
            if n != 5:  # a capture records without computing on the device
                _close(out[:n], piece(x), 1e-4)


def test_triton_kernel_on_npu() -> None:
    pytest.importorskip("triton")
    from vllm_ascend_rerank.ops import triton_qkv_norm_rope as mod

    tokens, hq, hkv, d = 7, 4, 2, 128
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device=DEV, dtype=torch.bfloat16)
    w_q, w_k = (torch.randn(d, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    cache = torch.randn(64, d, device=DEV, dtype=torch.bfloat16)
    pos = torch.randint(0, 64, (3, tokens), device=DEV)
    kw = dict(num_q_heads=hq, num_kv_heads=hkv, head_size=d, eps=1e-6,
              mrope_section=[24, 20, 20], mrope_interleaved=True)  # fmt: skip
    got = mod.qkv_norm_rope(qkv, w_q, w_k, cache, pos, **kw)
    want = mod.qkv_norm_rope_reference(qkv, w_q, w_k, cache, pos, **kw)
    for g, w in zip(got, want, strict=True):
        _close(g, w, 2e-2)


# ---- vllm serve ----------------------------------------------------------------------------------
def test_vllm_serve_matches_official(tmp_path, heads128_checkpoint, reference_factory) -> None:
    """``vllm serve`` on the NPU, bfloat16, the checkpoint with Qwen3-VL's head geometry (head
    128, GQA, M-RoPE [24, 20, 20]: the fused attention and npu_mrope run, not their
    fallbacks): /v1/rerank scores against the official rule, run in float32 on the host CPU."""
    from conftest import make_pairs

    from vllm_ascend_rerank.serving import LocalServer, reranker_serve_args

    query, docs = make_pairs(12, seed=7)
    want = reference_factory(heads128_checkpoint).score(
        {"text": query}, [{"text": d} for d in docs]
    )
    args = reranker_serve_args(["--dtype", "bfloat16", "--max-model-len", "2048"])
    with open(tmp_path / "serve.log", "w") as log:
        server = LocalServer(heads128_checkpoint, args, log=log, env=os.environ.copy(),
                             timeout=600)  # fmt: skip
        try:
            body = {"model": str(heads128_checkpoint), "query": query, "documents": docs}
            r = server.post("/v1/rerank", body)
            assert r.status_code == 200, r.text
            results = r.json()["results"]
        finally:
            server.stop()
    assert sorted(x["index"] for x in results) == list(range(len(docs)))
    got = {x["index"]: x["relevance_score"] for x in results}
    assert [got[i] for i in range(len(docs))] == pytest.approx(want, abs=2e-2)  # bf16
