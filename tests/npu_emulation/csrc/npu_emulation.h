// The emulated Ascend device: PyTorch's PrivateUse1 backend (renamed "npu" from Python) over
// host memory. Test-only: built by `make npu-emulation`, loaded by tests/npu_emulation/torch_npu
// when VLLM_ASCEND_RERANK_DEVICE=npu. Everything runs synchronously on the host; the pieces
// mirror the real device's: a device allocator with graph pools, a device guard with streams
// and events, the PrivateUse1 hooks (pinned host memory, generators) and aten kernels served by
// the CPU kernels over the same memory (no copies).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace npu_emulation {

constexpr c10::DeviceType kNpu = c10::DeviceType::PrivateUse1;

// ---- devices (device.cpp) ----------------------------------------------------------------
// Visible devices: ASCEND_RT_VISIBLE_DEVICES when set (as on the real runtime), else
// TORCH_NPU_EMULATION_DEVICE_COUNT (default 8).
c10::DeviceIndex device_count();
c10::DeviceIndex current_device();
void set_device(c10::DeviceIndex index);
void check_device(c10::DeviceIndex index);
// The device of an explicit index, or the current one for -1.
c10::DeviceIndex resolve(c10::DeviceIndex index);
// The npu generator's CPU twin: the CPU kernels draw from it (same state, CPU device type).
at::Generator cpu_generator_of(const at::Generator& npu_generator);
const at::Generator& default_generator(c10::DeviceIndex index);

// ---- memory (allocator.cpp) --------------------------------------------------------------
// The PrivateUse1 allocator (a c10::DeviceAllocator, so torch.accelerator's memory API reaches
// it, as it reaches torch_npu 2.14's caching allocator).
c10::DeviceAllocator* device_allocator();
// The host allocator the CPU kernels get while they run on behalf of npu tensors: it hands out
// npu-accounted memory (device index from the fallback's scope) with a CPU DataPtr.
c10::Allocator* kernel_host_allocator();
// Pinned host memory (pin_memory(), is_pinned()).
c10::Allocator* pinned_allocator();
bool is_pinned(const void* ptr);
// The device that owns an allocation made by this allocator, or -1.
c10::DeviceIndex device_of_ptr(const void* ptr);

// RAII: while alive on this thread, CPU-allocator requests are served as npu memory of
// `device` (so outputs and workspaces of CPU kernels count as device memory and come from
// the capturing graph pool). Nests.
class KernelAllocationScope {
 public:
  explicit KernelAllocationScope(c10::DeviceIndex device);
  ~KernelAllocationScope();
  KernelAllocationScope(const KernelAllocationScope&) = delete;
  KernelAllocationScope& operator=(const KernelAllocationScope&) = delete;

 private:
  c10::DeviceIndex previous_;
};

// Graph memory pools (what NPUGraph capture uses): while `begin_allocate_to_pool` is in effect
// for a (device, pool) on the calling thread, that thread's npu allocations on the device come
// from the pool. Freed pool blocks stay reserved in the pool and are reused by later
// allocations to the same pool; the pool's memory goes back only when its last user releases
// it (`release_pool`, one per `begin_allocate_to_pool`, as CUDA's / torch_npu's allocators).
void begin_allocate_to_pool(c10::DeviceIndex device, c10::MempoolId_t pool);
void end_allocate_to_pool(c10::DeviceIndex device, c10::MempoolId_t pool);
void release_pool(c10::DeviceIndex device, c10::MempoolId_t pool);

struct PoolStats {
  int64_t reserved_bytes = 0;
  int64_t allocated_bytes = 0;
  int64_t peak_reserved_bytes = 0;
  int64_t segments = 0;
  int64_t use_count = 0;
};
PoolStats pool_stats(c10::DeviceIndex device, c10::MempoolId_t pool);
// (free, total) bytes: total is the emulated capacity (TORCH_NPU_EMULATION_MEMORY_MB, default
// 32 GiB); free is what this process has not reserved.
std::pair<size_t, size_t> memory_info(c10::DeviceIndex device);
// Raises the trace's high-water marks (watermark.cpp); the allocator calls it on each allocation.
void note_watermark(c10::DeviceIndex device, int64_t allocated, int64_t reserved);

// ---- tensors over existing memory (tensors.cpp) --------------------------------------------
// A CPU tensor over an npu tensor's memory (zero copy); it keeps the npu storage alive.
at::Tensor as_cpu(const at::Tensor& npu);
// An npu tensor over a CPU tensor's memory (zero copy); it keeps the CPU storage alive.
at::Tensor as_npu(const at::Tensor& cpu, c10::DeviceIndex device);
// A non-owning npu tensor over `data` (the caller keeps the memory alive).
at::Tensor from_blob(void* data, at::IntArrayRef sizes, at::IntArrayRef strides,
                     int64_t storage_offset, at::ScalarType dtype, c10::DeviceIndex device);
// An npu (or CPU) tensor with `t`'s view of its memory, not keeping the memory alive.
at::Tensor weak_ref_tensor(const at::Tensor& t);

// ---- internal helpers shared by the kernels ----------------------------------------------
// A CPU tensor over `npu`'s storage, for use inside a kernel: its storage is resizable (an out=
// argument may be resized by the CPU kernel) with kernel_host_allocator().
at::Tensor kernel_cpu_alias(const at::Tensor& npu);
// An npu Storage owning (keeping alive) a CPU storage; the bytes count as npu memory of
// `device` unless the allocation already does.
c10::Storage adopt_cpu_storage(const c10::Storage& cpu, c10::DeviceIndex device);
at::Tensor make_npu_tensor(c10::Storage storage, const at::Tensor& like_view);

}  // namespace npu_emulation
