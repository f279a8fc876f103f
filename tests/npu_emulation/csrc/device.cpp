// Devices, streams, events, generators and the PrivateUse1 hooks of the emulated npu.
//
// Everything executes synchronously on the host, so a stream is only an id (the default
// stream of each device is 0, new streams count up), waits and synchronisations return at once,
// and an event records the host time at which it was recorded (all earlier work has finished
// by then), so elapsed_time measures what ran between two events.
#include "npu_emulation.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/GeneratorForPrivateuseone.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/Resize.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>

namespace npu_emulation {
namespace {

constexpr c10::DeviceIndex kMaxDevices = 64;

c10::DeviceIndex parse_device_count() {
  // As the Ascend runtime: ASCEND_RT_VISIBLE_DEVICES lists the devices this process sees
  // (digits and commas; parsing stops at anything else, as torch_npu's parser does).
  if (const char* visible = std::getenv("ASCEND_RT_VISIBLE_DEVICES")) {
    int count = 0;
    bool digit = false;
    for (const char* c = visible; *c != '\0'; ++c) {
      if (*c >= '0' && *c <= '9') {
        digit = true;
      } else if (*c == ',') {
        if (!digit) {
          break;
        }
        count++;
        digit = false;
      } else {
        break;
      }
    }
    count += digit ? 1 : 0;
    return static_cast<c10::DeviceIndex>(std::min<int>(count, kMaxDevices));
  }
  int count = 8;
  if (const char* env = std::getenv("TORCH_NPU_EMULATION_DEVICE_COUNT")) {
    count = std::atoi(env);
    TORCH_CHECK(count >= 0 && count <= kMaxDevices,
                "TORCH_NPU_EMULATION_DEVICE_COUNT must be in [0, 64], got '", env, "'");
  }
  return static_cast<c10::DeviceIndex>(count);
}

thread_local c10::DeviceIndex t_device = 0;
// The current stream id of each device on this thread (0: the default stream).
thread_local std::array<c10::StreamId, kMaxDevices> t_streams{};
std::atomic<c10::StreamId> g_next_stream{1};

struct Event {
  std::chrono::steady_clock::time_point time;
  bool recorded = false;
};

class NpuGuardImpl final : public c10::impl::DeviceGuardImplInterface {
 public:
  c10::DeviceType type() const override { return kNpu; }
  c10::Device exchangeDevice(c10::Device d) const override {
    const c10::Device old(kNpu, t_device);
    setDevice(d);
    return old;
  }
  c10::Device getDevice() const override { return c10::Device(kNpu, t_device); }
  void setDevice(c10::Device d) const override {
    TORCH_CHECK(d.type() == kNpu, "expected an npu device, got ", d);
    set_device(d.index());
  }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    if (d.index() >= 0 && d.index() < kMaxDevices) {
      t_device = d.index();
    }
  }
  c10::Stream getStream(c10::Device d) const override {
    const auto index = d.index() < 0 ? t_device : d.index();
    return c10::Stream(c10::Stream::UNSAFE, c10::Device(kNpu, index),
                       t_streams[static_cast<size_t>(index)]);
  }
  c10::Stream getDefaultStream(c10::Device d) const override {
    return c10::Stream(c10::Stream::DEFAULT, c10::Device(kNpu, d.index() < 0 ? t_device
                                                                              : d.index()));
  }
  c10::Stream getStreamFromGlobalPool(c10::Device d, bool /*high_priority*/) const override {
    return getNewStream(d, 0);
  }
  c10::Stream getNewStream(c10::Device d, int /*priority*/) const override {
    const auto index = d.index() < 0 ? t_device : d.index();
    check_device(index);
    return c10::Stream(c10::Stream::UNSAFE, c10::Device(kNpu, index), g_next_stream++);
  }
  c10::Stream exchangeStream(c10::Stream s) const override {
    const auto index = s.device_index();
    check_device(index);
    const c10::Stream old = getStream(s.device());
    t_streams[static_cast<size_t>(index)] = s.id();
    return old;
  }
  c10::DeviceIndex deviceCount() const noexcept override { return device_count(); }

  void record(void** event, const c10::Stream& /*stream*/, const c10::DeviceIndex /*device*/,
              const c10::EventFlag /*flag*/) const override {
    if (*event == nullptr) {
      *event = new Event();
    }
    auto* e = static_cast<Event*>(*event);
    e->time = std::chrono::steady_clock::now();
    e->recorded = true;
  }
  void block(void* /*event*/, const c10::Stream& /*stream*/) const override {}
  bool queryEvent(void* /*event*/) const override { return true; }
  void destroyEvent(void* event, const c10::DeviceIndex /*device*/) const noexcept override {
    delete static_cast<Event*>(event);
  }
  bool queryStream(const c10::Stream& /*stream*/) const override { return true; }
  void synchronizeStream(const c10::Stream& /*stream*/) const override {}
  void synchronizeEvent(void* /*event*/) const override {}
  void synchronizeDevice(const c10::DeviceIndex /*device*/) const override {}
  void recordDataPtrOnStream(const c10::DataPtr& /*ptr*/,
                             const c10::Stream& /*stream*/) const override {}
  double elapsedTime(void* start, void* end, const c10::DeviceIndex /*device*/) const override {
    auto* a = static_cast<Event*>(start);
    auto* b = static_cast<Event*>(end);
    TORCH_CHECK(a != nullptr && b != nullptr && a->recorded && b->recorded,
                "elapsed_time: both events must have been recorded");
    return std::chrono::duration<double, std::milli>(b->time - a->time).count();
  }
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, NpuGuardImpl);

// ---- generators ----------------------------------------------------------------------------
// An npu generator is a CPU (mt19937) generator that reports the npu device; the CPU kernels
// draw from its CPU twin, which shares the state.
class NpuGenerator final : public c10::GeneratorImpl {
 public:
  NpuGenerator(c10::DeviceIndex index, at::Generator cpu)
      : c10::GeneratorImpl(c10::Device(kNpu, index), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1)),
        cpu_(std::move(cpu)) {}
  void set_current_seed(uint64_t seed) override { cpu_.set_current_seed(seed); }
  void set_offset(uint64_t offset) override { cpu_.set_offset(offset); }
  uint64_t get_offset() const override { return cpu_.get_offset(); }
  uint64_t current_seed() const override { return cpu_.current_seed(); }
  uint64_t seed() override { return cpu_.seed(); }
  void set_state(const c10::TensorImpl& state) override {
    cpu_.unsafeGetGeneratorImpl()->set_state(state);
  }
  c10::intrusive_ptr<c10::TensorImpl> get_state() const override {
    return cpu_.unsafeGetGeneratorImpl()->get_state();
  }
  const at::Generator& cpu() const { return cpu_; }

 private:
  NpuGenerator* clone_impl() const override {
    return new NpuGenerator(device_.index(), cpu_.clone());
  }
  at::Generator cpu_;
};

at::Generator make_generator(c10::DeviceIndex index) {
  return at::make_generator<NpuGenerator>(index, at::detail::createCPUGenerator());
}

const at::Generator& default_generator_of(c10::DeviceIndex index) {
  static std::once_flag once;
  static std::deque<at::Generator> gens;  // deque: stable references
  std::call_once(once, [] {
    for (c10::DeviceIndex i = 0; i < device_count(); ++i) {
      gens.push_back(make_generator(i));
    }
  });
  check_device(index);
  return gens[static_cast<size_t>(index)];
}

// ---- hooks ---------------------------------------------------------------------------------
struct NpuHooks final : public at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return device_count() > 0; }
  void init() const override {}
  bool hasPrimaryContext(c10::DeviceIndex index) const override {
    return index >= 0 && index < device_count();
  }
  c10::DeviceIndex deviceCount() const override { return device_count(); }
  void setCurrentDevice(c10::DeviceIndex index) const override { set_device(index); }
  c10::DeviceIndex getCurrentDevice() const override { return current_device(); }
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex index) const override {
    const auto old = current_device();
    set_device(index);
    return old;
  }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex index) const override {
    return exchangeDevice(index);
  }
  bool isPinnedPtr(const void* data) const override { return is_pinned(data); }
  at::Allocator* getPinnedMemoryAllocator() const override { return pinned_allocator(); }
  at::Device getDeviceFromPtr(void* data) const override {
    const auto index = device_of_ptr(data);
    return c10::Device(kNpu, index >= 0 ? index : current_device());
  }
  const at::Generator& getDefaultGenerator(c10::DeviceIndex index) const override {
    return default_generator_of(index < 0 ? current_device() : index);
  }
  at::Generator getNewGenerator(c10::DeviceIndex index) const override {
    return make_generator(index < 0 ? current_device() : index);
  }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const override {
    // The storage's allocator is the npu allocator; the copy is a host memcpy.
    at::native::resize_bytes_cpu(storage.unsafeGetStorageImpl(), newsize);
  }
};

struct HooksRegistration {
  HooksRegistration() { at::RegisterPrivateUse1HooksInterface(new NpuHooks()); }
};
HooksRegistration g_hooks_registration;

}  // namespace

c10::DeviceIndex device_count() {
  static const c10::DeviceIndex count = parse_device_count();
  return count;
}

c10::DeviceIndex current_device() {
  return t_device;
}

void check_device(c10::DeviceIndex index) {
  TORCH_CHECK(index >= 0 && index < device_count(), "npu:", static_cast<int>(index),
              " is not a device of the emulation (", static_cast<int>(device_count()),
              " visible; ASCEND_RT_VISIBLE_DEVICES / TORCH_NPU_EMULATION_DEVICE_COUNT)");
}

void set_device(c10::DeviceIndex index) {
  check_device(index);
  t_device = index;
}

c10::DeviceIndex resolve(c10::DeviceIndex index) {
  return index < 0 ? current_device() : index;
}

at::Generator cpu_generator_of(const at::Generator& npu_generator) {
  auto* impl = dynamic_cast<NpuGenerator*>(npu_generator.unsafeGetGeneratorImpl());
  TORCH_CHECK(impl != nullptr, "not an npu generator: ", npu_generator.device());
  return impl->cpu();
}

const at::Generator& default_generator(c10::DeviceIndex index) {
  return default_generator_of(resolve(index));
}

}  // namespace npu_emulation
