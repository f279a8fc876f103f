// Ascend cache ops, written as ATen compositions that torch_npu runs as aclnn kernels.
// Neither reads a device value back to the host, so both stay capturable in ACL graphs.
// (CANN's ScatterPaKvCache would be one launch, but it requires contiguous K and V caches
// and slots in [0, num_slots), while our cache interleaves K/V and pads with slot -1.)
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../ops.h"

namespace vllm_ascend_rerank {

void write_kv_npu(const at::Tensor& key, const at::Tensor& value, at::Tensor& kv_cache,
                  const at::Tensor& slot_mapping) {
  const int64_t n = slot_mapping.size(0);
  TORCH_CHECK(key.dim() == 3 && value.sizes() == key.sizes() && n <= key.size(0),
              "write_kv: key/value must be [tokens, kv_heads, head_size], tokens >= slots");
  TORCH_CHECK(kv_cache.dim() == 4 && kv_cache.size(3) == 2 * key.size(2),
              "write_kv: kv_cache must be [num_blocks, kv_heads, block_size, 2 * head_size]");
  const at::Tensor token_major = kv_cache.transpose(1, 2);
  TORCH_CHECK(token_major.is_contiguous(),
              "write_kv (NPU) expects the token-major (LBNHC) cache layout");
  at::Tensor rows = token_major.view({-1, kv_cache.size(1), kv_cache.size(3)});  // one per slot
  const at::Tensor fresh =
      at::cat({key.narrow(0, 0, n), value.narrow(0, 0, n)}, -1).to(kv_cache.scalar_type());
  const at::Tensor slots = slot_mapping.to(at::kLong);
  const at::Tensor valid = slots.ge(0);
  // Padding tokens (slot -1) are redirected to the first real token's slot, carrying that
  // token's row: every write is real or an exact duplicate of one, so the result does not
  // depend on write order. With no real token, row 0 is rewritten with its own value.
  const at::Tensor any = valid.any();
  const at::Tensor first = valid.to(at::kInt).argmax().view({1});
  const at::Tensor pad_slot = at::where(any, slots.index_select(0, first), at::zeros_like(first));
  const at::Tensor pad_row =
      at::where(any, fresh.index_select(0, first), rows.narrow(0, 0, 1));
  const at::Tensor target = at::where(valid, slots, pad_slot);
  const at::Tensor source = at::where(valid.view({n, 1, 1}), fresh, pad_row);
  rows.index_copy_(0, target, source);
}

void compute_slot_mapping_npu(const at::Tensor& query_start_loc, const at::Tensor& positions,
                              const at::Tensor& block_table, int64_t block_size,
                              at::Tensor& slot_mapping) {
  const int64_t total = slot_mapping.size(0);
  const int64_t num_reqs = query_start_loc.size(0) - 1;
  TORCH_CHECK(num_reqs >= 1 && positions.size(0) >= total,
              "compute_slot_mapping: need >= 1 request and a position per slot");
  const at::Tensor qsl = query_start_loc.to(at::kLong);
  const at::Tensor t = at::arange(total, qsl.options());
  // Request of each token: number of request ends at or before it.
  const at::Tensor req =
      at::searchsorted(qsl.narrow(0, 1, num_reqs), t, /*out_int32=*/false, /*right=*/true)
          .clamp_max(num_reqs - 1);
  const at::Tensor pos = positions.narrow(0, 0, total).to(at::kLong);
  const at::Tensor page = at::floor_divide(pos, block_size).clamp(0, block_table.size(1) - 1);
  const at::Tensor block = block_table.to(at::kLong).index({req, page});
  const at::Tensor slot = block * block_size + at::remainder(pos, block_size);
  const at::Tensor is_token = t.lt(qsl.narrow(0, num_reqs, 1));
  slot_mapping.copy_(at::where(is_token, slot, at::full_like(slot, -1)));
}

TORCH_LIBRARY_IMPL(vllm_ascend_rerank, PrivateUse1, m) {
  m.impl("write_kv", &write_kv_npu);
  m.impl("compute_slot_mapping", &compute_slot_mapping_npu);
}

}  // namespace vllm_ascend_rerank
