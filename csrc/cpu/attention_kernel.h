// Interface between the torch-facing op (attention.cpp) and the attention kernel
// (attention_kernel.cpp), which CMake compiles once per instruction set.
//
// This header and the kernel source include no torch (or other library) headers on
// purpose: an inline function compiled with AVX-512 enabled and merged by the linker
// into code that runs on an AVX2-only CPU would crash there. Everything the kernel
// needs arrives as raw pointers, element strides and host arrays.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vllm_ascend_rerank::cpu {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

struct AttnParams {
  const void* query;  // [tokens, num_heads, head_size]
  int64_t q_stride[3];
  DType q_dtype;
  // Logical cache view [num_blocks, num_kv_heads, block_size, 2 * head_size]:
  // K in channels [0, head_size), V in [head_size, 2 * head_size).
  const void* kv_cache;
  int64_t kv_stride[4];
  DType kv_dtype;
  void* out;  // [tokens, num_heads, head_size]
  int64_t o_stride[3];
  DType o_dtype;
  const int64_t* block_table;  // [num_reqs, block_table_stride], host int64 copy
  int64_t block_table_stride;
  int64_t num_heads, num_kv_heads, head_size, block_size;
  float scale;
  bool causal;
  int64_t max_rows;  // largest WorkItem::nq * (num_heads / num_kv_heads) of the call
};

// One unit of parallel work: `nq` consecutive queries of one request, all query
// heads that share kv head `kv_head` (GQA), against the request's visible keys.
struct WorkItem {
  int64_t req;
  int64_t kv_head;
  int64_t token0;   // first query row in `query`/`out`
  int64_t q0;       // index of that query inside the request's new tokens
  int64_t nq;
  int64_t context;  // cached tokens before the first new token (seq_len - query_len)
  int64_t kv_len;   // keys this item reads: causal ? min(seq_len, context + q0 + nq) : seq_len
};

struct KernelTable {
  const char* isa;
  // Floats of zero-initialised per-thread scratch that `attend` needs.
  size_t (*scratch_floats)(const AttnParams&);
  void (*attend)(const AttnParams&, const WorkItem&, float* scratch);
};

// Defined once per compiled instruction set (see CMakeLists.txt).
extern const KernelTable kernel_generic;
#if defined(VLLM_ASCEND_RERANK_HAVE_AVX2)
extern const KernelTable kernel_avx2;
#endif
#if defined(VLLM_ASCEND_RERANK_HAVE_AVX512)
extern const KernelTable kernel_avx512;
#endif

}  // namespace vllm_ascend_rerank::cpu
