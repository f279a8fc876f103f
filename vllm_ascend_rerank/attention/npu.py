"""Attention kernels on torch_npu's fused ops (``VLLM_ASCEND_RERANK_ATTN_IMPL=npu``).

Same interface as ``TorchKernels`` (impls.py), same cache: the logical
``kv_cache[num_blocks, num_kv_heads, block_size, 2 * head_size]`` stored token-major
(LBNHC), K and V side by side in each (token, head) row.

- ``write_kv``: ``npu_scatter_nd_update_`` writes one ``[K | V]`` row per token into the
  token-major view of the cache. A padding slot (-1) is redirected to the null block
  (block 0, which vLLM never hands to a request), since the op allows no out-of-range index
  and skipping rows would need a host sync.
- ``paged_attention`` / ``varlen_attention``: ``npu_fused_infer_attention_score`` in the TND
  layout (tokens of all requests back to back, cumulative ``actual_seq_lengths``),
  ``sparse_mode=3`` (right-down causal: a query at the tail of a longer cached sequence sees
  the whole context) with the op's 2048x2048 mask, or ``sparse_mode=0`` without a mask.
  When some request has cached context, its K/V rows are first gathered from the cache into
  one TND tensor: the op's PageAttention path wants separate contiguous K and V caches, which
  the interleaved ``[K | V]`` rows are not.

The op takes float16/bfloat16 only and, in TND, head size 128 or 192 and at most 65536
tokens; anything else (float32, other head sizes) runs the pure-torch reference instead,
logged once. (The torch_npu 2.14.0 docs' TND paragraph names only head size 192 with equal
head counts; vllm-ascend drives 128-dim GQA models through this same TND call on CANN 9.1,
which is what is followed here until hardware says otherwise.)

torch_npu is imported through ``device.torch_npu()`` on first use, never at module import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.logger import init_logger

from vllm_ascend_rerank import device
from vllm_ascend_rerank.attention import reference
from vllm_ascend_rerank.attention.impls import TorchKernels

if TYPE_CHECKING:
    from vllm_ascend_rerank.attention.backend import RerankAttentionMetadata

logger = init_logger(f"vllm.{__name__}")  # vLLM configures only "vllm.*"

# npu_fused_infer_attention_score limits (torch_npu 2.14.0 docs, TND layout without rope).
FIA_DTYPES = (torch.float16, torch.bfloat16)
FIA_TND_HEAD_SIZES = (128, 192)
FIA_TND_MAX_TOKENS = 65536
FIA_MAX_BATCH = 4096
FIA_MAX_GQA_RATIO = 64
FIA_MASK_SIZE = 2048  # sparse_mode 2/3/4 take this "optimised" mask
SPARSE_NONE, SPARSE_RIGHT_DOWN_CAUSAL = 0, 3
NULL_BLOCK_SLOT = 0  # a slot of vLLM's null block: never read by attention


class NpuKernels:
    name = "npu"

    def __init__(self) -> None:
        self._reference = TorchKernels()
        self._masks: dict[torch.device, torch.Tensor] = {}
        self._logged: set[str] = set()

    # ---- cache write -----------------------------------------------------------------------
    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        rows = reference.token_major(kv_cache)  # [num_slots, num_kv_heads, 2 * head_size]
        if rows.data_ptr() != kv_cache.data_ptr() or not rows.is_contiguous():
            # A copy would silently drop the write.
            raise RuntimeError("NPU write_kv needs the token-major (LBNHC) KV cache layout")
        n = slot_mapping.shape[0]
        slots = slot_mapping.to(torch.int64).clamp(min=NULL_BLOCK_SLOT).unsqueeze(1)
        rows_in = torch.cat((key[:n], value[:n]), dim=-1).to(kv_cache.dtype)
        device.torch_npu().npu_scatter_nd_update_(rows, slots, rows_in)

    # ---- attention -------------------------------------------------------------------------
    def paged_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        md: RerankAttentionMetadata,
        scale: float,
        output: torch.Tensor,
    ) -> None:
        if not self._supported(query, key, len(md.seq_lens)):
            self._reference.paged_attention(query, key, value, kv_cache, md, scale, output)
            return
        q_cum = md.query_start_loc[1:]
        if md.has_cached_context:
            key, value = gather_kv(kv_cache, md.block_table, md.seq_lens)
            kv_cum = _cumsum(md.seq_lens)
        else:  # this step's K/V are the whole sequences
            kv_cum = q_cum
        self._fia(query, key, value, q_cum, kv_cum, scale, md.causal, output)

    def varlen_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        md: RerankAttentionMetadata,
        scale: float,
        output: torch.Tensor,
    ) -> None:
        if not self._supported(query, key, len(md.seq_lens)):
            self._reference.varlen_attention(query, key, value, md, scale, output)
            return
        q_cum = md.query_start_loc[1:]
        self._fia(query, key, value, q_cum, q_cum, scale, md.causal, output)

    def _fia(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        q_cum: list[int],
        kv_cum: list[int],
        scale: float,
        causal: bool,
        output: torch.Tensor,
    ) -> None:
        num_heads = query.shape[1]
        out, _ = device.torch_npu().npu_fused_infer_attention_score(
            query.contiguous(),
            key.to(query.dtype).contiguous(),
            value.to(query.dtype).contiguous(),
            atten_mask=self._causal_mask(query.device) if causal else None,
            actual_seq_lengths=list(q_cum),
            actual_seq_lengths_kv=list(kv_cum),
            num_heads=num_heads,
            num_key_value_heads=key.shape[1],
            scale=float(scale),
            input_layout="TND",
            sparse_mode=SPARSE_RIGHT_DOWN_CAUSAL if causal else SPARSE_NONE,
        )
        output[: out.shape[0]] = out.to(output.dtype)

    def _causal_mask(self, dev: torch.device) -> torch.Tensor:
        """The op's fixed 2048x2048 mask, 1 strictly above the diagonal; it derives each
        request's offset causal window from the lengths."""
        mask = self._masks.get(dev)
        if mask is None:
            mask = torch.ones(FIA_MASK_SIZE, FIA_MASK_SIZE, dtype=torch.bool, device=dev).triu(1)
            self._masks[dev] = mask
        return mask

    def _supported(self, query: torch.Tensor, key: torch.Tensor, num_reqs: int) -> bool:
        num_heads, head_size = query.shape[1], query.shape[2]
        reasons = []
        if query.dtype not in FIA_DTYPES:
            reasons.append(f"dtype {query.dtype} (needs float16/bfloat16)")
        if head_size not in FIA_TND_HEAD_SIZES:
            reasons.append(f"head size {head_size} (needs {FIA_TND_HEAD_SIZES})")
        if num_heads % key.shape[1] or num_heads // key.shape[1] > FIA_MAX_GQA_RATIO:
            reasons.append(f"{num_heads} query heads over {key.shape[1]} KV heads")
        if num_reqs > FIA_MAX_BATCH:
            reasons.append(f"{num_reqs} requests in one step (max {FIA_MAX_BATCH})")
        if query.shape[0] > FIA_TND_MAX_TOKENS:
            reasons.append(f"{query.shape[0]} tokens in one step (max {FIA_TND_MAX_TOKENS})")
        if not reasons:
            return True
        why = ", ".join(reasons)
        if why not in self._logged:
            self._logged.add(why)
            logger.info(
                "vllm-ascend-rerank: npu_fused_infer_attention_score does not take %s; "
                "running the pure-torch attention for these calls.",
                why,
            )
        return False


def gather_kv(
    kv_cache: torch.Tensor, block_table: torch.Tensor, seq_lens: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of every request's whole sequence, back to back: ``[sum(seq_lens), H, D]``.

    Slot of token p of request r = ``block_table[r, p // bs] * bs + p % bs``; the per-token
    request/position indices are built on the host (lengths are host ints) and copied once.
    """
    block_size = kv_cache.shape[2]
    head_size = kv_cache.shape[-1] // 2
    lens = torch.tensor(seq_lens, dtype=torch.int64)
    req = torch.repeat_interleave(torch.arange(len(seq_lens)), lens)
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(req.numel()) - starts[req]
    dev = kv_cache.device
    req, pos = req.to(dev, non_blocking=True), pos.to(dev, non_blocking=True)
    slots = block_table[req, pos // block_size].to(torch.int64) * block_size + pos % block_size
    rows = reference.token_major(kv_cache).index_select(0, slots)
    return rows[..., :head_size], rows[..., head_size:]


def _cumsum(lengths: list[int]) -> list[int]:
    out, total = [], 0
    for n in lengths:
        total += n
        out.append(total)
    return out
