// The emulation's own API, as torch ops (torch.ops.npu_emulation_device.*), for the Python
// side of the emulation: graph pools (NPUGraph), zero-copy CPU <-> npu aliases (hccl backend,
// graph recorder) and non-owning tensors (torch_npu._C._weak_ref_tensor).
#include "npu_emulation.h"

#include <torch/library.h>

namespace npu_emulation {
namespace {

c10::MempoolId_t pool_id(int64_t a, int64_t b) {
  return {static_cast<c10::CaptureId_t>(a), static_cast<c10::CaptureId_t>(b)};
}

c10::DeviceIndex index(int64_t device) {
  return static_cast<c10::DeviceIndex>(device);
}

void begin_pool(int64_t device, int64_t a, int64_t b) {
  begin_allocate_to_pool(index(device), pool_id(a, b));
}

void end_pool(int64_t device, int64_t a, int64_t b) {
  end_allocate_to_pool(index(device), pool_id(a, b));
}

void release(int64_t device, int64_t a, int64_t b) {
  release_pool(index(device), pool_id(a, b));
}

std::vector<int64_t> stats_of_pool(int64_t device, int64_t a, int64_t b) {
  const PoolStats s = pool_stats(index(device), pool_id(a, b));
  return {s.reserved_bytes, s.allocated_bytes, s.peak_reserved_bytes, s.segments, s.use_count};
}

at::Tensor blob(int64_t data_ptr, at::IntArrayRef sizes, at::IntArrayRef strides,
                int64_t storage_offset, at::ScalarType dtype, int64_t device) {
  return from_blob(reinterpret_cast<void*>(data_ptr), sizes, strides, storage_offset, dtype,
                   index(device));
}

at::Tensor to_npu(const at::Tensor& cpu, int64_t device) {
  return as_npu(cpu, index(device));
}

int64_t count() {
  return device_count();
}

std::vector<int64_t> info(int64_t device) {
  const auto [free, total] = memory_info(index(device));
  return {static_cast<int64_t>(free), static_cast<int64_t>(total)};
}

}  // namespace

TORCH_LIBRARY(npu_emulation_device, m) {
  m.def("begin_allocate_to_pool(int device, int pool_a, int pool_b) -> ()", &begin_pool);
  m.def("end_allocate_to_pool(int device, int pool_a, int pool_b) -> ()", &end_pool);
  m.def("release_pool(int device, int pool_a, int pool_b) -> ()", &release);
  // [reserved_bytes, allocated_bytes, peak_reserved_bytes, segments, use_count]
  m.def("pool_stats(int device, int pool_a, int pool_b) -> int[]", &stats_of_pool);
  m.def("as_cpu(Tensor npu) -> Tensor", &as_cpu);
  m.def("as_npu(Tensor cpu, int device) -> Tensor", &to_npu);
  m.def(
      "from_blob(int data_ptr, int[] sizes, int[] strides, int storage_offset, ScalarType dtype,"
      " int device) -> Tensor",
      &blob);
  m.def("weak_ref_tensor(Tensor t) -> Tensor", &weak_ref_tensor);
  m.def("device_count() -> int", &count);
  m.def("mem_get_info(int device) -> int[]", &info);
}

}  // namespace npu_emulation
