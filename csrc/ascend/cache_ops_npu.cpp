// Ascend cache ops, written as ATen compositions that torch_npu runs as aclnn kernels.
// It reads no device value back to the host, so it stays capturable in ACL graphs.
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

TORCH_LIBRARY_IMPL(vllm_ascend_rerank, PrivateUse1, m) {
  m.impl("write_kv", &write_kv_npu);
}

}  // namespace vllm_ascend_rerank
