"""NpuKernels against TorchKernels on paged batches (cached context, GQA, padding slots), on
the CPU through the torch_npu emulation (tests/npu_emulation; see test_npu_emulation.py).

On a host with a real torch_npu these are skipped: tests/test_npu_hardware.py runs the same
kernel checks on the device.
"""

from __future__ import annotations

import math

import pytest
import torch
from npu_emulation_support import _calls, cum, torch_npu  # noqa: F401 - _calls: fixture

from vllm_ascend_rerank.attention import reference
from vllm_ascend_rerank.attention.backend import RerankAttentionMetadata
from vllm_ascend_rerank.attention.impls import TorchKernels
from vllm_ascend_rerank.attention.npu import NpuKernels


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
