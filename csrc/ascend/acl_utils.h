// Helpers for calling CANN aclnn operators on torch_npu tensors (Ascend builds only).
// Compiled only when CMake finds CANN (ASCEND_HOME_PATH) and torch_npu.
#pragma once

#include <ATen/ATen.h>
#include <acl/acl.h>
#include <aclnn/acl_meta.h>

#include <vector>

#include "torch_npu/csrc/core/npu/NPUStream.h"

namespace vllm_ascend_rerank::ascend {

inline aclDataType acl_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return ACL_FLOAT;
    case at::kHalf:
      return ACL_FLOAT16;
    case at::kBFloat16:
      return ACL_BF16;
    case at::kInt:
      return ACL_INT32;
    case at::kLong:
      return ACL_INT64;
    case at::kBool:
      return ACL_BOOL;
    case at::kChar:
      return ACL_INT8;
    default:
      TORCH_CHECK(false, "vllm_ascend_rerank: no aclDataType for ", t);
  }
}

// An aclTensor describing `t` in place (shape, strides and storage offset kept).
struct AclTensor {
  aclTensor* ptr = nullptr;
  explicit AclTensor(const at::Tensor& t) {
    const std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
    const std::vector<int64_t> strides(t.strides().begin(), t.strides().end());
    const int64_t storage_elems =
        static_cast<int64_t>(t.storage().nbytes() / t.element_size());
    ptr = aclCreateTensor(sizes.data(), sizes.size(), acl_dtype(t.scalar_type()), strides.data(),
                          t.storage_offset(), ACL_FORMAT_ND, &storage_elems, 1,
                          const_cast<void*>(t.storage().data()));
    TORCH_CHECK(ptr != nullptr, "aclCreateTensor failed");
  }
  ~AclTensor() {
    if (ptr) aclDestroyTensor(ptr);
  }
  // Hand ownership over (an aclTensorList destroys its tensors).
  aclTensor* release() {
    aclTensor* p = ptr;
    ptr = nullptr;
    return p;
  }
  AclTensor(const AclTensor&) = delete;
  AclTensor& operator=(const AclTensor&) = delete;
};

struct AclTensorList {
  aclTensorList* ptr = nullptr;
  explicit AclTensorList(AclTensor& only) {
    const aclTensor* items[] = {only.release()};
    ptr = aclCreateTensorList(items, 1);
    TORCH_CHECK(ptr != nullptr, "aclCreateTensorList failed");
  }
  ~AclTensorList() {
    if (ptr) aclDestroyTensorList(ptr);
  }
  AclTensorList(const AclTensorList&) = delete;
  AclTensorList& operator=(const AclTensorList&) = delete;
};

struct AclIntArray {
  aclIntArray* ptr = nullptr;
  explicit AclIntArray(const std::vector<int64_t>& v) {
    ptr = aclCreateIntArray(v.data(), v.size());
    TORCH_CHECK(ptr != nullptr, "aclCreateIntArray failed");
  }
  ~AclIntArray() {
    if (ptr) aclDestroyIntArray(ptr);
  }
  AclIntArray(const AclIntArray&) = delete;
  AclIntArray& operator=(const AclIntArray&) = delete;
};

// Second phase of an aclnn call on torch_npu's current stream; the workspace comes
// from torch_npu's caching allocator and is freed in stream order.
template <typename Launch>
void launch(const at::Device& device, uint64_t workspace_size, aclOpExecutor* executor,
            Launch fn, const char* name) {
  at::Tensor workspace;
  void* ws = nullptr;
  if (workspace_size > 0) {
    workspace = at::empty({static_cast<int64_t>(workspace_size)},
                          at::TensorOptions().dtype(at::kByte).device(device));
    ws = workspace.data_ptr();
  }
  const aclrtStream stream = c10_npu::getCurrentNPUStream().stream();
  const aclnnStatus status = fn(ws, workspace_size, executor, stream);
  TORCH_CHECK(status == 0, name, " failed with status ", status);
}

}  // namespace vllm_ascend_rerank::ascend
