// Ascend paged prefill attention: CANN's FusedInferAttentionScoreV3 (flash attention with a
// block table) on torch_npu tensors. Built only in CANN builds; never compiled on CPU hosts.
//
// FIA reads K and V as separate contiguous caches ([blocks, block_size, kv_heads * D]),
// while our cache interleaves K and V per token ([blocks, block_size, kv_heads, 2 * D]
// physically). The blocks this batch references are therefore copied into contiguous
// K and V tensors first (one gather per call); a split-cache layout would avoid that.
#include <ATen/ATen.h>
#include <aclnnop/aclnn_fused_infer_attention_score_v3.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <vector>

#include "../ops.h"
#include "acl_utils.h"

namespace vllm_ascend_rerank {
namespace {

// sparse_mode 3 ("rightDownCausal") takes this fixed 2048 x 2048 mask (1 = hidden) and
// aligns the diagonal to the bottom right: query i of a request sees keys up to
// seq_len - query_len + i, our causal offset.
at::Tensor causal_mask(const at::Device& device) {
  static thread_local at::Tensor mask;
  if (!mask.defined() || mask.device() != device)
    mask = at::ones({2048, 2048}, at::TensorOptions().dtype(at::kBool).device(device)).triu(1);
  return mask;
}

}  // namespace

void paged_prefill_attention_npu(const at::Tensor& query, const at::Tensor& kv_cache,
                                 const at::Tensor& block_table,
                                 const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                                 double scale, bool causal, at::Tensor& output) {
  TORCH_CHECK(query.dim() == 3 && kv_cache.dim() == 4 && output.sizes() == query.sizes(),
              "paged_prefill_attention: bad shapes");
  TORCH_CHECK(kv_cache.size(3) == 2 * query.size(2), "kv_cache last dim must be 2 * head_size");
  TORCH_CHECK(output.scalar_type() == query.scalar_type() &&
                  kv_cache.scalar_type() == query.scalar_type(),
              "paged_prefill_attention (NPU): query, kv_cache and output must share a dtype");
  const int64_t H = query.size(1), D = query.size(2);
  const int64_t Hkv = kv_cache.size(1), block_size = kv_cache.size(2);
  // FIA takes the lengths as host arrays: TND wants cumulative query ends.
  const at::Tensor qsl = query_start_loc.to(at::kCPU, at::kLong);
  const at::Tensor lens = seq_lens.to(at::kCPU, at::kLong);
  const int64_t num_reqs = lens.numel();
  const int64_t* q = qsl.data_ptr<int64_t>();
  const int64_t* l = lens.data_ptr<int64_t>();
  std::vector<int64_t> q_ends(q + 1, q + num_reqs + 1), kv_lens(l, l + num_reqs);
  int64_t max_blocks = 1;
  for (int64_t s : kv_lens) max_blocks = std::max(max_blocks, (s + block_size - 1) / block_size);
  const int64_t tokens = q[num_reqs];
  TORCH_CHECK(q[0] == 0, "query_start_loc must start at 0");

  // Contiguous K and V copies of the referenced blocks, and a block table into them.
  const at::Tensor used = block_table.narrow(0, 0, num_reqs)
                              .narrow(1, 0, max_blocks)
                              .to(at::kLong)
                              .clamp(0, kv_cache.size(0) - 1)
                              .flatten();
  const at::Tensor blocks = kv_cache.transpose(1, 2).index_select(0, used);  // [U, bs, Hkv, 2D]
  const at::Tensor k = blocks.narrow(-1, 0, D).contiguous().view({-1, block_size, Hkv * D});
  const at::Tensor v = blocks.narrow(-1, D, D).contiguous().view({-1, block_size, Hkv * D});
  const at::Tensor table =
      at::arange(used.numel(), block_table.options().dtype(at::kInt)).view({num_reqs, max_blocks});

  // Tensors the aclTensors point into stay named (alive) until the launch.
  const at::Tensor q_view = query.narrow(0, 0, tokens).contiguous();
  at::Tensor out_view = output.narrow(0, 0, tokens);
  const bool out_contiguous = out_view.is_contiguous();
  const at::Tensor out_buf =
      out_contiguous ? out_view : at::empty_like(out_view, at::MemoryFormat::Contiguous);
  const at::Tensor mask = causal ? causal_mask(query.device()) : at::Tensor();

  ascend::AclTensor aq(q_view), ak(k), av(v), atable(table), aout(out_buf);
  std::unique_ptr<ascend::AclTensor> amask;
  if (causal) amask = std::make_unique<ascend::AclTensor>(mask);
  ascend::AclTensorList k_list(ak), v_list(av);
  ascend::AclIntArray a_q_ends(q_ends), a_kv_lens(kv_lens);
  char layout[] = "TND";

  uint64_t workspace_size = 0;
  aclOpExecutor* executor = nullptr;
  const aclnnStatus status = aclnnFusedInferAttentionScoreV3GetWorkspaceSize(
      aq.ptr, k_list.ptr, v_list.ptr, /*pseShift=*/nullptr, amask ? amask->ptr : nullptr,
      a_q_ends.ptr, a_kv_lens.ptr, /*deqScale1=*/nullptr, /*quantScale1=*/nullptr,
      /*deqScale2=*/nullptr, /*quantScale2=*/nullptr, /*quantOffset2=*/nullptr,
      /*antiquantScale=*/nullptr, /*antiquantOffset=*/nullptr, atable.ptr,
      /*queryPaddingSize=*/nullptr, /*kvPaddingSize=*/nullptr, /*keyAntiquantScale=*/nullptr,
      /*keyAntiquantOffset=*/nullptr, /*valueAntiquantScale=*/nullptr,
      /*valueAntiquantOffset=*/nullptr, /*keySharedPrefix=*/nullptr,
      /*valueSharedPrefix=*/nullptr, /*actualSharedPrefixLen=*/nullptr, /*queryRope=*/nullptr,
      /*keyRope=*/nullptr, /*keyRopeAntiquantScale=*/nullptr, /*numHeads=*/H, scale,
      /*preTokens=*/INT_MAX, /*nextTokens=*/causal ? 0 : INT_MAX, layout,
      /*numKeyValueHeads=*/Hkv, /*sparseMode=*/causal ? 3 : 0, /*innerPrecise=*/0,
      /*blockSize=*/block_size, /*antiquantMode=*/0, /*softmaxLseFlag=*/false,
      /*keyAntiquantMode=*/0, /*valueAntiquantMode=*/0, aout.ptr, /*softmaxLse=*/nullptr,
      &workspace_size, &executor);
  TORCH_CHECK(status == 0, "aclnnFusedInferAttentionScoreV3GetWorkspaceSize failed: ", status);
  ascend::launch(query.device(), workspace_size, executor, aclnnFusedInferAttentionScoreV3,
                 "aclnnFusedInferAttentionScoreV3");
  if (!out_contiguous) out_view.copy_(out_buf);
}

TORCH_LIBRARY_IMPL(vllm_ascend_rerank, PrivateUse1, m) {
  m.impl("paged_prefill_attention", &paged_prefill_attention_npu);
}

}  // namespace vllm_ascend_rerank
