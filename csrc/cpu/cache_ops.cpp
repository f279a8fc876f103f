// CPU cache op: write_kv (store K/V rows at their slots).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <initializer_list>
#include <vector>

#include "../ops.h"

namespace vllm_ascend_rerank {

namespace {

std::vector<int64_t> host_longs(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// n elements, `ss`/`ds` apart; memcpy when both are unit-stride.
template <typename T>
inline void copy_strided(T* dst, int64_t ds, const T* src, int64_t ss, int64_t n) {
  if (ds == 1 && ss == 1) {
    std::memcpy(dst, src, n * sizeof(T));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * ds] = src[i * ss];
  }
}

}  // namespace

void write_kv_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& kv_cache,
                  const at::Tensor& slot_mapping) {
  TORCH_CHECK(key.dim() == 3 && value.sizes() == key.sizes(),
              "key and value must be [tokens, num_kv_heads, head_size]");
  TORCH_CHECK(kv_cache.dim() == 4,
              "kv_cache must be [num_blocks, num_kv_heads, block_size, 2 * head_size]");
  TORCH_CHECK(slot_mapping.dim() == 1, "slot_mapping must be 1-D");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&key, &value, &kv_cache, &slot_mapping})
    TORCH_CHECK(t->device().is_cpu(), "write_kv (CPU): tensors must be on CPU");
  const int64_t n = slot_mapping.size(0), Hkv = key.size(1), D = key.size(2);
  TORCH_CHECK(n <= key.size(0), "slot_mapping is longer than key");
  TORCH_CHECK(kv_cache.size(1) == Hkv && kv_cache.size(3) == 2 * D,
              "kv_cache does not match key's heads / head size");
  const int64_t block_size = kv_cache.size(2);
  const int64_t num_slots = kv_cache.size(0) * block_size;

  // Every slot is checked before anything is written: -1 marks a padding token (skipped
  // below); any other negative value is a corrupt mapping, not padding.
  const std::vector<int64_t> slots = host_longs(slot_mapping);
  for (int64_t s : slots)
    TORCH_CHECK(s >= -1 && s < num_slots, "slot ", s, " out of range: the cache has ", num_slots,
                " slots (-1 marks padding)");
  // Convert once (no-op when the dtypes match) so the copy loop below is a memcpy.
  const at::Tensor k = key.narrow(0, 0, n).to(kv_cache.scalar_type());
  const at::Tensor v = value.narrow(0, 0, n).to(kv_cache.scalar_type());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, kv_cache.scalar_type(), "write_kv", [&] {
    scalar_t* cache = kv_cache.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const int64_t c0 = kv_cache.stride(0), c1 = kv_cache.stride(1), c2 = kv_cache.stride(2),
                  c3 = kv_cache.stride(3);
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t s = slots[t];
        if (s == -1) continue;  // padding
        scalar_t* row = cache + (s / block_size) * c0 + (s % block_size) * c2;
        for (int64_t h = 0; h < Hkv; ++h) {
          scalar_t* dst = row + h * c1;
          copy_strided(dst, c3, kp + t * k.stride(0) + h * k.stride(1), k.stride(2), D);
          copy_strided(dst + D * c3, c3, vp + t * v.stride(0) + h * v.stride(1), v.stride(2), D);
        }
      }
    });
  });
}

TORCH_LIBRARY_IMPL(vllm_ascend_rerank, CPU, m) {
  m.impl("write_kv", &write_kv_cpu);
}

}  // namespace vllm_ascend_rerank
