// Op implementations behind the schemas in torch_bindings.cpp.
// CPU kernels live in csrc/cpu/, Ascend (PrivateUse1) ones in csrc/ascend/ (CANN builds).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace vllm_ascend_rerank {

void write_kv_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& kv_cache,
                  const at::Tensor& slot_mapping);

void paged_prefill_attention_cpu(const at::Tensor& query, const at::Tensor& kv_cache,
                                 const at::Tensor& block_table,
                                 const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                                 double scale, bool causal, at::Tensor& output);

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double epsilon);
void fused_add_rms_norm_cpu(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                            double epsilon);

at::Tensor silu_and_mul_cpu(const at::Tensor& x);

#if defined(VLLM_ASCEND_RERANK_BUILD_ASCEND)
// PrivateUse1 (torch_npu) implementations, csrc/ascend/.
void write_kv_npu(const at::Tensor& key, const at::Tensor& value, at::Tensor& kv_cache,
                  const at::Tensor& slot_mapping);
void paged_prefill_attention_npu(const at::Tensor& query, const at::Tensor& kv_cache,
                                 const at::Tensor& block_table,
                                 const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                                 double scale, bool causal, at::Tensor& output);
#endif

// Instruction set of the CPU attention kernel ("avx512", "avx2" or "generic").
std::string cpu_attention_isa();
// Every variant this build and this CPU can run, best first.
std::vector<std::string> cpu_attention_isas();
// Force a variant (tests, benchmarks); false when this build/CPU lacks it.
bool set_cpu_attention_isa(const std::string& name);

}  // namespace vllm_ascend_rerank
