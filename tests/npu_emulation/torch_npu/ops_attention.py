"""Attention ops: ``npu_fused_infer_attention_score`` and ``npu_fusion_attention``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

from ._common import _FLOATS, _HALF, _INT_MAX, _check, _count, _cumulative, _int_list
from .ops_cache import _paged_kv


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    right_down_causal: bool,
) -> torch.Tensor:
    """One sequence in fp32: q [Sq, N, D], k/v [Skv, Nkv, D] -> [Sq, N, Dv]. With
    ``right_down_causal`` query i sees key j <= i + (Skv - Sq); a row that sees nothing
    outputs zeros. The mask and the GQA head mapping are built here; torch's SDPA only does
    the softmax(QK^T)V arithmetic (memory-efficiently: vLLM profiles with long sequences)."""
    sq, skv = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    # [1, N, S, D]: the 4D form takes torch's memory-efficient CPU kernel
    qf = q.float().transpose(0, 1).unsqueeze(0)
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)  # h -> h // group
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0)
    mask = None
    if right_down_causal:
        rows = torch.arange(sq, device=q.device).unsqueeze(1)
        mask = torch.arange(skv, device=q.device).unsqueeze(0) <= rows + (skv - sq)
    out = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=scale)[0]
    if mask is not None:
        out = out.masked_fill(~mask.any(-1).view(1, sq, 1), 0.0)  # rows with no visible key
    return out.transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# npu_fused_infer_attention_score
# ---------------------------------------------------------------------------------------------
# input_layout values the torch_npu 2.14.0 docs name for Atlas A2/A3.
_FIA_LAYOUTS = ("BSH", "BSND", "BNSD", "BNSD_BSND", "TND", "TND_NTD", "NTD_TND")
_FIA_SPARSE_MODES = (0, 1, 2, 3, 4, 9)  # "only 0, 1, 2, 3, 4 and 9 are supported"
_FIA_MAX_TND_TOKENS = 65536
# Keyword arguments of the registered schema that the plugin never passes: not emulated.
_FIA_UNEMULATED = (
    "pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2",
    "quant_offset2", "antiquant_scale", "antiquant_offset", "key_antiquant_scale",
    "key_antiquant_offset", "value_antiquant_scale", "value_antiquant_offset",
    "query_padding_size", "kv_padding_size", "key_shared_prefix", "value_shared_prefix",
    "actual_shared_prefix_len", "query_rope", "key_rope", "key_rope_antiquant_scale",
)  # fmt: skip


def _check_causal_mask(mask: torch.Tensor | None, op: str) -> None:
    """sparse_mode 2/3/4 take the optimised 2048 x 2048 mask (1 = masked, strictly above the
    diagonal; the 2.14.0 docs leave the user to guarantee the triangle): the emulation checks
    its content too."""
    _check(mask is not None, op, "sparse_mode 3 needs the optimised 2048x2048 atten_mask")
    assert mask is not None
    _check(
        tuple(mask.shape) in ((2048, 2048), (1, 2048, 2048), (1, 1, 2048, 2048)),
        op,
        f"optimised atten_mask must be 2048x2048, got {tuple(mask.shape)}",
    )
    _check(mask.dtype in (torch.bool, torch.int8, torch.uint8), op, "atten_mask dtype")
    want = torch.ones(2048, 2048, dtype=torch.bool, device=mask.device).triu(1)
    _check(torch.equal(mask.reshape(2048, 2048).bool(), want), op, "atten_mask is not triu(1)")


def npu_fused_infer_attention_score(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    pse_shift: torch.Tensor | None = None,
    atten_mask: torch.Tensor | None = None,
    actual_seq_lengths: Sequence[int] | None = None,
    actual_seq_lengths_kv: Sequence[int] | None = None,
    dequant_scale1: torch.Tensor | None = None,
    quant_scale1: torch.Tensor | None = None,
    dequant_scale2: torch.Tensor | None = None,
    quant_scale2: torch.Tensor | None = None,
    quant_offset2: torch.Tensor | None = None,
    antiquant_scale: torch.Tensor | None = None,
    antiquant_offset: torch.Tensor | None = None,
    key_antiquant_scale: torch.Tensor | None = None,
    key_antiquant_offset: torch.Tensor | None = None,
    value_antiquant_scale: torch.Tensor | None = None,
    value_antiquant_offset: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    query_padding_size: torch.Tensor | None = None,
    kv_padding_size: torch.Tensor | None = None,
    key_shared_prefix: torch.Tensor | None = None,
    value_shared_prefix: torch.Tensor | None = None,
    actual_shared_prefix_len: Sequence[int] | None = None,
    query_rope: torch.Tensor | None = None,
    key_rope: torch.Tensor | None = None,
    key_rope_antiquant_scale: torch.Tensor | None = None,
    num_heads: int = 1,
    scale: float = 1.0,
    pre_tokens: int = _INT_MAX,
    next_tokens: int = _INT_MAX,
    input_layout: str = "BSH",
    num_key_value_heads: int = 0,
    sparse_mode: int = 0,
    inner_precise: int = 0,
    block_size: int = 0,
    antiquant_mode: int = 0,
    key_antiquant_mode: int = 0,
    value_antiquant_mode: int = 0,
    softmax_lse_flag: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch_npu.npu_fused_infer_attention_score(query, key, value, *, ...) -> (out, lse)``.

    Source: the torch_npu 2.14.0 wheel (schema, in its order: ``csrc/aten/
    npu_native_functions_by_codegen.yaml``; rules: ``_op_plugin_docs.py``; outputs:
    ``op_plugin/meta/_meta_registrations.py``; checked by tests/test_torch_npu_conformance.py).
    Emulated: the TND layout (query [T, N, D], T <= 65536, T >= the last cumulative query
    length) with ``actual_seq_lengths`` = cumulative query lengths (required; its length is the
    batch, <= 4096), GQA through ``num_key_value_heads`` (divides ``num_heads``, ratio <= 64,
    at most 256 heads), ``scale``, and ``sparse_mode`` 0 (TND: no mask) or 3 (rightDownCausal:
    query i of a batch with Sq queries and Skv >= Sq keys sees keys j <= i + Skv - Sq; needs
    the optimised 2048x2048 lower-triangular mask). Without ``block_table`` key/value are
    [T_kv, KV_N, D] and ``actual_seq_lengths_kv`` is cumulative. With ``block_table`` (int32
    [B, >= max blocks], PageAttention) key/value are the paged caches [num_blocks, block_size,
    KV_N*D] or [num_blocks, KV_N, block_size, D], ``block_size`` in 128..512 by 128, and
    ``actual_seq_lengths_kv`` holds each batch's own KV length. float16/bfloat16 only,
    contiguous. Returns (attention_out [T, N, D] in query's dtype, softmax_lse): with
    ``softmax_lse_flag`` False the eager op returns a [1] zero tensor, as its docs say (its meta
    function says [0]: the conformance test pins this disagreement).

    One departure, on purpose: the 2.14.0 docs' TND paragraph allows only Q/K head dim 192,
    equal Q/K/V head counts and bfloat16, a DeepSeek-MLA shape; vllm-ascend (torch_npu
    2.10.0.post4, CANN 9.1) runs every GQA model with 128-dim heads, float16 or bfloat16,
    through this TND path, so the emulation takes head dim 128 or 192 and GQA. Only hardware
    can settle it (tests/test_npu_hardware.py).
    """
    op = "npu_fused_infer_attention_score"
    _count(op)
    given = locals()
    for name in _FIA_UNEMULATED:
        if given[name] is not None:
            raise NotImplementedError(f"{op}: {name} is not emulated")
    if softmax_lse_flag:
        raise NotImplementedError(f"{op}: softmax_lse_flag=True is not emulated")
    _check(num_heads > 0, op, f"num_heads must be > 0, got {num_heads}")
    _check(input_layout in _FIA_LAYOUTS, op, f"input_layout {input_layout!r} is not supported")
    if input_layout != "TND":
        raise NotImplementedError(f"{op}: input_layout {input_layout!r} is not emulated")
    if query.dtype == torch.int8:
        raise NotImplementedError(f"{op}: int8 (quantised) attention is not emulated")
    _check(query.dtype in _HALF, op, f"query dtype {query.dtype} is not supported")
    _check(key.dtype == query.dtype and value.dtype == query.dtype, op, "key/value dtype")
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check(t.is_contiguous(), op, f"{name} must be contiguous")
    _check(query.dim() == 3, op, f"TND query must be 3D [T, N, D], got {tuple(query.shape)}")
    total_q, n, d = query.shape
    _check(total_q <= _FIA_MAX_TND_TOKENS, op, f"TND takes at most {_FIA_MAX_TND_TOKENS} tokens")
    nkv = num_key_value_heads or num_heads
    _check(num_heads == n, op, f"num_heads {num_heads} != query heads {n}")
    _check(n <= 256 and nkv <= 256, op, "at most 256 heads")
    _check(n % nkv == 0 and n // nkv <= 64, op, f"num_heads {n} / num_key_value_heads {nkv}")
    _check(d in (128, 192), op, f"TND without rope needs head dim 128 or 192, got {d}")
    _check(isinstance(scale, float), op, "scale must be a float")
    _check(sparse_mode in _FIA_SPARSE_MODES, op, f"sparse_mode {sparse_mode} is not supported")
    if sparse_mode == 4:
        raise NotImplementedError(f"{op}: sparse_mode 4 (band) is not emulated")
    _check(sparse_mode in (0, 3), op, "TND supports sparse_mode 0 (no mask) or 3 (with mask)")
    if sparse_mode == 0:
        _check(atten_mask is None, op, "TND with sparse_mode 0 takes no atten_mask")
    else:
        _check_causal_mask(atten_mask, op)
    _check(actual_seq_lengths is not None, op, "TND needs actual_seq_lengths")
    _check(actual_seq_lengths_kv is not None, op, "TND needs actual_seq_lengths_kv")
    q_cum = _int_list(actual_seq_lengths, op, "actual_seq_lengths")
    kv_lens = _int_list(actual_seq_lengths_kv, op, "actual_seq_lengths_kv")
    _cumulative(q_cum, op, "actual_seq_lengths")
    batch = len(q_cum)
    _check(batch <= 4096, op, "at most 4096 batches")
    _check(len(kv_lens) == batch, op, "actual_seq_lengths_kv must have one entry per batch")
    _check(q_cum[-1] <= total_q, op, f"actual_seq_lengths exceed T={total_q}")

    if block_table is None:
        _check(key.dim() == 3 and key.shape[1:] == (nkv, d), op, f"key {tuple(key.shape)}")
        _check(value.shape[:2] == key.shape[:2], op, "value rows/heads must match key")
        _cumulative(kv_lens, op, "actual_seq_lengths_kv")
        _check(kv_lens[-1] <= key.shape[0], op, "actual_seq_lengths_kv exceed key rows")
        kv_starts = [0] + kv_lens[:-1]
        kv_rows = [(key[s:e], value[s:e]) for s, e in zip(kv_starts, kv_lens, strict=True)]
    else:
        kv_rows = _paged_kv(key, value, block_table, block_size, kv_lens, nkv, d, op)

    out = torch.zeros(total_q, n, d, dtype=query.dtype, device=query.device)
    context = False
    for b, (ks, vs) in enumerate(kv_rows):
        qs, qe = (q_cum[b - 1] if b else 0), q_cum[b]
        # rightDownCausal with more queries than keys would leave rows seeing nothing; the
        # docs ask for fewer queries than keys per batch (equal is what every prefill passes).
        _check(
            sparse_mode != 3 or qe - qs <= ks.shape[0],
            op,
            f"batch {b}: {qe - qs} queries over {ks.shape[0]} keys with sparse_mode 3",
        )
        context |= ks.shape[0] > qe - qs
        if qe > qs:
            out[qs:qe] = _attend(query[qs:qe], ks, vs, scale, sparse_mode == 3).to(query.dtype)
    if context:  # lets end-to-end tests see that the prefix-cache path ran
        _count(f"{op}:cached_context")
    return out, torch.zeros(1, dtype=torch.float32, device=query.device)


# ---------------------------------------------------------------------------------------------
# npu_fusion_attention
# ---------------------------------------------------------------------------------------------
def npu_fusion_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    head_num: int,
    input_layout: str,
    pse: torch.Tensor | None = None,
    padding_mask: torch.Tensor | None = None,
    atten_mask: torch.Tensor | None = None,
    scale: float = 1.0,
    keep_prob: float = 1.0,
    pre_tockens: int = _INT_MAX,
    next_tockens: int = _INT_MAX,
    inner_precise: int = 0,
    prefix: Sequence[int] | None = None,
    actual_seq_qlen: Sequence[int] | None = None,
    actual_seq_kvlen: Sequence[int] | None = None,
    sparse_mode: int = 0,
    gen_mask_parallel: bool = True,
    sync: bool = False,
    softmax_layout: str = "",
    sink: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    seed: int = 0,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int, int]:
    """``torch_npu.npu_fusion_attention(query, key, value, head_num, input_layout, ...)``.

    Source: the torch_npu 2.14.0 wheel (schema: ``csrc/aten/npu_native_functions_by_codegen
    .yaml``, whose last four arguments its ``_op_plugin_docs.py`` prototype omits; rules: the
    docs; outputs: ``op_plugin/meta/_meta_registrations.py``; checked by
    tests/test_torch_npu_conformance.py). Emulated: input_layout "TND" (varlen): query
    [T, N, D], key/value [T_kv, N_kv, D] (N divisible by N_kv, N <= 256, D <= 768, Dk >= Dv),
    float16/bfloat16/float32 with one dtype for all; actual_seq_qlen and actual_seq_kvlen are
    required cumulative lengths (at most 1024 batches in varlen); no atten_mask means full
    attention (sparse_mode has no effect), keep_prob 1 (no dropout). Returns the 7-tuple with
    the meta function's shapes: attention_out [T, N, Dv], softmax_max and softmax_sum
    [T, N, 8] float32 (zeros here: only the backward pass reads them), softmax_out [0], then
    seed, offset and the dropout-mask length as ints. The docs call it a training op without
    graph-mode support: the plugin runs it only in the eager vision tower.
    """
    op = "npu_fusion_attention"
    _count(op)
    _check(input_layout in ("BSH", "SBH", "BSND", "BNSD", "TND"), op, f"layout {input_layout!r}")
    if input_layout != "TND":
        raise NotImplementedError(f"{op}: input_layout {input_layout!r} is not emulated")
    _check(padding_mask is None, op, "padding_mask is not supported")
    for name, val in (("pse", pse), ("atten_mask", atten_mask), ("prefix", prefix),
                      ("sink", sink), ("dropout_mask", dropout_mask)):  # fmt: skip
        if val is not None:
            raise NotImplementedError(f"{op}: {name} is not emulated")
    if keep_prob != 1.0:
        raise NotImplementedError(f"{op}: dropout (keep_prob < 1) is not emulated")
    _check(query.dtype in _FLOATS, op, f"dtype {query.dtype} is not supported")
    _check(key.dtype == query.dtype and value.dtype == query.dtype, op, "q/k/v dtypes differ")
    _check(query.dim() == 3 and key.dim() == 3 and value.dim() == 3, op, "TND tensors are 3D")
    total_q, n, d = query.shape
    _check(head_num == n, op, f"head_num {head_num} != query heads {n}")
    nkv = key.shape[1]
    _check(value.shape[:2] == key.shape[:2], op, "key/value rows and heads must match")
    _check(n <= 256 and nkv > 0 and n % nkv == 0, op, f"heads {n} / kv heads {nkv}")
    _check(key.shape[2] == d and value.shape[2] <= d and d <= 768, op, "head dims")
    _check(actual_seq_qlen is not None and actual_seq_kvlen is not None, op, "TND needs lengths")
    q_cum = _int_list(actual_seq_qlen, op, "actual_seq_qlen")
    kv_cum = _int_list(actual_seq_kvlen, op, "actual_seq_kvlen")
    _cumulative(q_cum, op, "actual_seq_qlen")
    _cumulative(kv_cum, op, "actual_seq_kvlen")
    _check(len(q_cum) == len(kv_cum) and len(q_cum) <= 1024, op, "batch count")
    _check(q_cum[-1] <= total_q and kv_cum[-1] <= key.shape[0], op, "lengths exceed T")
    out = torch.zeros(total_q, n, value.shape[-1], dtype=query.dtype, device=query.device)
    for b in range(len(q_cum)):
        qs, qe = (q_cum[b - 1] if b else 0), q_cum[b]
        ks, ke = (kv_cum[b - 1] if b else 0), kv_cum[b]
        if qe > qs:
            out[qs:qe] = _attend(query[qs:qe], key[ks:ke], value[ks:ke], scale, False).to(
                query.dtype
            )
    stats = torch.zeros(total_q, n, 8, dtype=torch.float32, device=query.device)
    softmax_out = torch.empty(0, dtype=query.dtype, device=query.device)
    return out, stats, stats.clone(), softmax_out, seed, offset, 0
