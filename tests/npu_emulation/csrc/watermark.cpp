// Memory high-water marks for the emulation's trace (TORCH_NPU_EMULATION_TRACE), kept apart from
// the allocator's peak statistics: vLLM resets those for its own memory profiling, while the
// trace wants one mark per phase of its own (graph capture, then steady state).
#include "npu_emulation.h"

#include <torch/library.h>

#include <atomic>

namespace npu_emulation {
namespace {

constexpr int kMaxDevices = 64;

struct Mark {
  std::atomic<int64_t> allocated{0};
  std::atomic<int64_t> reserved{0};
};
Mark g_marks[kMaxDevices];

void raise_to(std::atomic<int64_t>& mark, int64_t value) {
  int64_t seen = mark.load(std::memory_order_relaxed);
  while (value > seen && !mark.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

// [peak allocated, peak reserved] bytes since the last call (or the start), then a new phase
// starts from the current values.
std::vector<int64_t> take_watermark(int64_t device) {
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "take_watermark: bad device ", device);
  const auto stats = device_allocator()->getDeviceStats(static_cast<c10::DeviceIndex>(device));
  const int64_t allocated = stats.allocated_bytes[0].current;
  const int64_t reserved = stats.reserved_bytes[0].current;
  Mark& m = g_marks[device];
  const int64_t peak_allocated = std::max(m.allocated.exchange(allocated), allocated);
  const int64_t peak_reserved = std::max(m.reserved.exchange(reserved), reserved);
  return {peak_allocated, peak_reserved};
}

}  // namespace

void note_watermark(c10::DeviceIndex device, int64_t allocated, int64_t reserved) {
  if (device >= 0 && device < kMaxDevices) {
    raise_to(g_marks[device].allocated, allocated);
    raise_to(g_marks[device].reserved, reserved);
  }
}

TORCH_LIBRARY_FRAGMENT(npu_emulation_device, m) {
  m.def("take_watermark(int device) -> int[]", &take_watermark);
}

}  // namespace npu_emulation
