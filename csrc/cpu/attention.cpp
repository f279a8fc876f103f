// CPU paged prefill attention: argument checks, work split, threading and the choice
// of instruction set. The math is in attention_kernel.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "../ops.h"
#include "attention_kernel.h"

namespace vllm_ascend_rerank {
namespace {

using cpu::KernelTable;

// Rows (queries x query heads of one kv head) per work item: enough to amortise
// reading a key chunk, few enough that tiles stay in cache and the causal diagonal
// wastes little (measured on AVX-512: 64 beats 32, 128 and 256).
constexpr int64_t kRowsPerItem = 64;

std::vector<const KernelTable*> supported_kernels() {
  std::vector<const KernelTable*> out;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
#if defined(VLLM_ASCEND_RERANK_HAVE_AVX512)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    out.push_back(&cpu::kernel_avx512);
#endif
#if defined(VLLM_ASCEND_RERANK_HAVE_AVX2)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    out.push_back(&cpu::kernel_avx2);
#endif
#endif
  out.push_back(&cpu::kernel_generic);
  return out;
}

std::atomic<const KernelTable*>& active_kernel() {
  static std::atomic<const KernelTable*> k{supported_kernels().front()};
  return k;
}

cpu::DType kernel_dtype(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat:
      return cpu::kF32;
    case at::kHalf:
      return cpu::kF16;
    case at::kBFloat16:
      return cpu::kBF16;
    default:
      TORCH_CHECK(false, what, " must be float32, float16 or bfloat16, got ", t);
  }
}

std::vector<int64_t> host_longs(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 1, what, " must be 1-D");
  const at::Tensor c = t.to(at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

}  // namespace

std::string cpu_attention_isa() { return active_kernel().load()->isa; }

std::vector<std::string> cpu_attention_isas() {
  std::vector<std::string> names;
  for (const KernelTable* k : supported_kernels()) names.emplace_back(k->isa);
  return names;
}

bool set_cpu_attention_isa(const std::string& name) {
  for (const KernelTable* k : supported_kernels()) {
    if (name == k->isa) {
      active_kernel().store(k);
      return true;
    }
  }
  return false;
}

void paged_prefill_attention_cpu(const at::Tensor& query, const at::Tensor& kv_cache,
                                 const at::Tensor& block_table,
                                 const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                                 double scale, bool causal, at::Tensor& output) {
  TORCH_CHECK(query.dim() == 3, "query must be [tokens, num_heads, head_size]");
  TORCH_CHECK(kv_cache.dim() == 4,
              "kv_cache must be [num_blocks, num_kv_heads, block_size, 2 * head_size]");
  TORCH_CHECK(output.sizes() == query.sizes(), "output must have the shape of query");
  TORCH_CHECK(block_table.dim() == 2, "block_table must be [num_reqs, max_blocks]");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&query, &kv_cache, &output, &block_table})
    TORCH_CHECK(t->device().is_cpu(), "paged_prefill_attention (CPU): tensors must be on CPU");
  const int64_t H = query.size(1), D = query.size(2);
  const int64_t num_blocks = kv_cache.size(0), Hkv = kv_cache.size(1);
  const int64_t block_size = kv_cache.size(2);
  TORCH_CHECK(kv_cache.size(3) == 2 * D, "kv_cache last dim must be 2 * head_size");
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "num_heads must be a multiple of num_kv_heads");

  const std::vector<int64_t> qsl = host_longs(query_start_loc, "query_start_loc");
  const std::vector<int64_t> lens = host_longs(seq_lens, "seq_lens");
  const int64_t num_reqs = static_cast<int64_t>(lens.size());
  TORCH_CHECK(static_cast<int64_t>(qsl.size()) == num_reqs + 1,
              "query_start_loc must have num_reqs + 1 entries");
  TORCH_CHECK(qsl[0] >= 0 && qsl[num_reqs] <= query.size(0),
              "query_start_loc out of range of query");
  const at::Tensor table = block_table.to(at::kLong).contiguous();
  TORCH_CHECK(table.size(0) >= num_reqs, "block_table has fewer rows than requests");
  const int64_t* tbl = table.data_ptr<int64_t>();
  const int64_t tbl_stride = table.size(1);

  // Work items, after validating everything the kernel will dereference.
  const int64_t G = H / Hkv;
  const int64_t qb = std::max<int64_t>(1, kRowsPerItem / G);
  std::vector<cpu::WorkItem> items;
  int64_t max_nq = 0;
  for (int64_t r = 0; r < num_reqs; ++r) {
    const int64_t q_len = qsl[r + 1] - qsl[r], seq_len = lens[r];
    TORCH_CHECK(q_len >= 0 && q_len <= seq_len, "request ", r, ": query_len ", q_len,
                " must be in [0, seq_len = ", seq_len, "]");
    if (q_len == 0) continue;
    const int64_t used_blocks = (seq_len + block_size - 1) / block_size;
    TORCH_CHECK(used_blocks <= tbl_stride, "request ", r, " needs ", used_blocks,
                " blocks, block_table has ", tbl_stride);
    for (int64_t b = 0; b < used_blocks; ++b) {
      const int64_t id = tbl[r * tbl_stride + b];
      TORCH_CHECK(id >= 0 && id < num_blocks, "request ", r, ": block id ", id,
                  " out of range [0, ", num_blocks, ")");
    }
    const int64_t context = seq_len - q_len;
    for (int64_t h = 0; h < Hkv; ++h) {
      for (int64_t q0 = 0; q0 < q_len; q0 += qb) {
        const int64_t nq = std::min(qb, q_len - q0);
        const int64_t kv_len = causal ? std::min(seq_len, context + q0 + nq) : seq_len;
        items.push_back({r, h, qsl[r] + q0, q0, nq, context, kv_len});
        max_nq = std::max(max_nq, nq);
      }
    }
  }
  if (items.empty()) return;
  // Longest first + dynamic hand-out below: balanced threads for mixed lengths.
  std::stable_sort(items.begin(), items.end(), [](const cpu::WorkItem& a, const cpu::WorkItem& b) {
    return a.nq * a.kv_len > b.nq * b.kv_len;
  });

  cpu::AttnParams p{};
  p.query = query.data_ptr();
  for (int i = 0; i < 3; ++i) p.q_stride[i] = query.stride(i);
  p.q_dtype = kernel_dtype(query.scalar_type(), "query");
  p.kv_cache = kv_cache.data_ptr();
  for (int i = 0; i < 4; ++i) p.kv_stride[i] = kv_cache.stride(i);
  p.kv_dtype = kernel_dtype(kv_cache.scalar_type(), "kv_cache");
  p.out = output.data_ptr();
  for (int i = 0; i < 3; ++i) p.o_stride[i] = output.stride(i);
  p.o_dtype = kernel_dtype(output.scalar_type(), "output");
  p.block_table = tbl;
  p.block_table_stride = tbl_stride;
  p.num_heads = H;
  p.num_kv_heads = Hkv;
  p.head_size = D;
  p.block_size = block_size;
  p.scale = static_cast<float>(scale);
  p.causal = causal;
  p.max_rows = max_nq * G;

  const KernelTable& kernel = *active_kernel().load();
  const size_t scratch_floats = kernel.scratch_floats(p);
  const int64_t n_items = static_cast<int64_t>(items.size());
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    std::unique_ptr<float[]> scratch(new float[scratch_floats]());
    for (int64_t i = next.fetch_add(1); i < n_items; i = next.fetch_add(1))
      kernel.attend(p, items[i], scratch.get());
  };
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n_items);
  if (threads <= 1 || at::in_parallel_region()) {
    worker();
  } else {
    // One chunk per thread of torch's intra-op pool; items are pulled dynamically.
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) worker();
    });
  }
}

TORCH_LIBRARY_IMPL(vllm_ascend_rerank, CPU, m) {
  m.impl("paged_prefill_attention", &paged_prefill_attention_cpu);
}

}  // namespace vllm_ascend_rerank
