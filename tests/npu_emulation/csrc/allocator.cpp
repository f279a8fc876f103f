// Device memory of the emulated npu: host memory with the device allocator's bookkeeping.
//
// - Outside graph capture every allocation is its own host block (no cache: reserved ==
//   allocated), so leaks and peaks show exactly.
// - Graph pools behave as the caching allocators' private pools: blocks are carved from pool
//   segments (best fit, split, coalesced on free), a freed block stays reserved in its pool and
//   is reused by later allocations to that pool, and a pool's segments go back to the host
//   only when its last user released it.
// - The capacity is finite (TORCH_NPU_EMULATION_MEMORY_MB, default 32 GiB) and exceeding it
//   raises torch.OutOfMemoryError, as the device does.
#include "npu_emulation.h"

#include <ATen/core/CachingHostAllocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace npu_emulation {
namespace {

using c10::CachingAllocator::Stat;
using c10::CachingAllocator::StatArray;
using c10::CachingDeviceAllocator::DeviceStats;

constexpr size_t kRound = 512;              // block granularity, as the caching allocators
constexpr size_t kAlign = 64;               // at least what the CPU kernels expect
constexpr size_t kSmallSize = size_t{1} << 20;  // small/large pool split of the stats

size_t round_size(size_t n) {
  return n < kRound ? kRound : (n + kRound - 1) / kRound * kRound;
}

char* host_malloc(size_t n) {
  void* p = std::aligned_alloc(kAlign, n);  // n is a multiple of kRound, hence of kAlign
  TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "npu emulation: the host has no ", n,
                   " bytes left for emulated device memory");
  return static_cast<char*>(p);
}

struct Pool;
struct Segment;

struct Block {
  char* ptr;
  size_t size;
  bool allocated = false;
  Block* prev = nullptr;  // neighbours inside the segment, in address order
  Block* next = nullptr;
  Segment* segment;
};

struct Segment {
  char* base;
  size_t size;
  Pool* pool;
};

struct Pool {
  c10::MempoolId_t id;
  std::set<std::pair<size_t, Block*>> free_blocks;  // best fit: smallest size first
  std::unordered_set<Segment*> segments;
  int64_t reserved = 0;
  int64_t allocated = 0;
  int64_t peak_reserved = 0;
  int use_count = 0;
};

struct Allocation {
  c10::DeviceIndex device;
  size_t size;       // bytes taken from the device (rounded)
  size_t requested;  // bytes asked for
  Block* block;      // the pool block, or null for a plain allocation
};

struct DeviceState {
  DeviceStats stats;
  std::map<c10::MempoolId_t, std::unique_ptr<Pool>> pools;
  // Pools being allocated to, and by which thread (the capturing one; the caching allocators
  // filter by the capturing stream, and here a stream is a thread's current stream).
  std::vector<std::pair<c10::MempoolId_t, std::thread::id>> routes;
};

void stat_increase(StatArray& s, size_t n, bool small) {
  s[0].increase(n);
  s[small ? 1 : 2].increase(n);
}

void stat_decrease(StatArray& s, size_t n, bool small) {
  s[0].decrease(n);
  s[small ? 1 : 2].decrease(n);
}

size_t capacity_bytes() {
  static const size_t capacity = [] {
    const char* env = std::getenv("TORCH_NPU_EMULATION_MEMORY_MB");
    size_t mb = 32 * 1024;
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(env, &end, 10);
      TORCH_CHECK(end != nullptr && *end == '\0' && v > 0,
                  "TORCH_NPU_EMULATION_MEMORY_MB must be a positive integer, got '", env, "'");
      mb = static_cast<size_t>(v);
    }
    return mb * 1024 * 1024;
  }();
  return capacity;
}

class Memory {
 public:
  static Memory& get() {
    static Memory* m = new Memory();  // never destroyed: tensors may be freed at exit
    return *m;
  }

  c10::DataPtr malloc(c10::DeviceIndex device, size_t requested, c10::DeviceType ptr_device);
  static void free(void* ptr);
  void release(void* ptr);

  void begin_pool(c10::DeviceIndex device, c10::MempoolId_t id);
  void end_pool(c10::DeviceIndex device, c10::MempoolId_t id);
  void release_pool(c10::DeviceIndex device, c10::MempoolId_t id);
  PoolStats pool_stats(c10::DeviceIndex device, c10::MempoolId_t id);

  DeviceStats stats(c10::DeviceIndex device) {
    std::lock_guard<std::mutex> lock(mu_);
    return state(device).stats;
  }
  void reset_peak(c10::DeviceIndex device);
  void reset_accumulated(c10::DeviceIndex device);
  std::pair<size_t, size_t> info(c10::DeviceIndex device) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto reserved = static_cast<size_t>(state(device).stats.reserved_bytes[0].current);
    const size_t total = capacity_bytes();
    return {total > reserved ? total - reserved : 0, total};
  }
  c10::DeviceIndex owner(const void* ptr) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(const_cast<void*>(ptr));
    return it == live_.end() ? -1 : it->second.device;
  }
  bool owns(const void* ptr) { return owner(ptr) >= 0; }

 private:
  DeviceState& state(c10::DeviceIndex device) {
    check_device(device);
    if (devices_.size() <= static_cast<size_t>(device)) {
      devices_.resize(static_cast<size_t>(device_count()));
    }
    return devices_[static_cast<size_t>(device)];
  }
  void reserve(DeviceState& st, size_t n, c10::DeviceIndex device);
  Block* take_from_pool(DeviceState& st, Pool& pool, size_t size, c10::DeviceIndex device);
  // Returns a segment to free on the host (outside the lock), or null.
  Segment* return_to_pool(DeviceState& st, Block* block);
  Segment* drop_segment(DeviceState& st, Pool& pool, Segment* seg);
  Pool* routed_pool(DeviceState& st);

  std::mutex mu_;
  std::vector<DeviceState> devices_;
  std::unordered_map<void*, Allocation> live_;
};

void Memory::reserve(DeviceState& st, size_t n, c10::DeviceIndex device) {
  const auto reserved = static_cast<size_t>(st.stats.reserved_bytes[0].current);
  if (reserved + n > capacity_bytes()) {
    st.stats.num_ooms++;
    TORCH_CHECK_WITH(OutOfMemoryError, false, "NPU out of memory (emulated npu:", device,
                     "). Tried to allocate ", n, " bytes; ", reserved, " of ", capacity_bytes(),
                     " bytes reserved (TORCH_NPU_EMULATION_MEMORY_MB sets the capacity).");
  }
  stat_increase(st.stats.reserved_bytes, n, n <= kSmallSize);
  stat_increase(st.stats.segment, 1, n <= kSmallSize);
  st.stats.num_device_alloc++;
}

Pool* Memory::routed_pool(DeviceState& st) {
  if (st.routes.empty()) {
    return nullptr;
  }
  const auto me = std::this_thread::get_id();
  for (auto it = st.routes.rbegin(); it != st.routes.rend(); ++it) {
    if (it->second == me) {
      return st.pools.at(it->first).get();
    }
  }
  return nullptr;
}

Block* Memory::take_from_pool(DeviceState& st, Pool& pool, size_t size,
                              c10::DeviceIndex device) {
  auto it = pool.free_blocks.lower_bound({size, nullptr});
  Block* block = nullptr;
  if (it != pool.free_blocks.end()) {
    block = it->second;
    pool.free_blocks.erase(it);
    if (block->size > size) {  // split: the remainder (a multiple of kRound) stays free
      auto* rest = new Block{block->ptr + size, block->size - size, false, block, block->next,
                             block->segment};
      if (block->next != nullptr) {
        block->next->prev = rest;
      }
      block->next = rest;
      block->size = size;
      pool.free_blocks.insert({rest->size, rest});
    }
  } else {
    reserve(st, size, device);
    char* base = nullptr;
    try {
      base = host_malloc(size);
    } catch (...) {
      stat_decrease(st.stats.reserved_bytes, size, size <= kSmallSize);
      stat_decrease(st.stats.segment, 1, size <= kSmallSize);
      throw;
    }
    auto* seg = new Segment{base, size, &pool};
    block = new Block{base, size, false, nullptr, nullptr, seg};
    pool.segments.insert(seg);
    pool.reserved += static_cast<int64_t>(size);
    pool.peak_reserved = std::max(pool.peak_reserved, pool.reserved);
    stat_increase(st.stats.reserved_bytes_by_private_pools[pool.id], size, size <= kSmallSize);
  }
  block->allocated = true;
  pool.allocated += static_cast<int64_t>(block->size);
  return block;
}

Segment* Memory::drop_segment(DeviceState& st, Pool& pool, Segment* seg) {
  pool.segments.erase(seg);
  pool.reserved -= static_cast<int64_t>(seg->size);
  stat_decrease(st.stats.reserved_bytes_by_private_pools[pool.id], seg->size, seg->size <= kSmallSize);
  stat_decrease(st.stats.reserved_bytes, seg->size, seg->size <= kSmallSize);
  stat_decrease(st.stats.segment, 1, seg->size <= kSmallSize);
  st.stats.num_device_free++;
  return seg;
}

Segment* Memory::return_to_pool(DeviceState& st, Block* block) {
  Pool& pool = *block->segment->pool;
  block->allocated = false;
  pool.allocated -= static_cast<int64_t>(block->size);
  // Coalesce with free neighbours so that a larger request can reuse them.
  if (block->prev != nullptr && !block->prev->allocated) {
    Block* prev = block->prev;
    pool.free_blocks.erase({prev->size, prev});
    prev->size += block->size;
    prev->next = block->next;
    if (block->next != nullptr) {
      block->next->prev = prev;
    }
    delete block;
    block = prev;
  }
  if (block->next != nullptr && !block->next->allocated) {
    Block* next = block->next;
    pool.free_blocks.erase({next->size, next});
    block->size += next->size;
    block->next = next->next;
    if (next->next != nullptr) {
      next->next->prev = block;
    }
    delete next;
  }
  const bool whole_segment = block->prev == nullptr && block->next == nullptr;
  if (pool.use_count == 0 && whole_segment) {  // released pool: its memory goes back now
    Segment* seg = block->segment;
    delete block;
    drop_segment(st, pool, seg);
    if (pool.segments.empty()) {
      st.pools.erase(pool.id);
    }
    return seg;
  }
  pool.free_blocks.insert({block->size, block});
  return nullptr;
}

c10::DataPtr Memory::malloc(c10::DeviceIndex device, size_t requested,
                            c10::DeviceType ptr_device) {
  const c10::Device dev(ptr_device, ptr_device == kNpu ? device : -1);
  if (requested == 0) {
    return c10::DataPtr(nullptr, dev);
  }
  const size_t size = round_size(requested);
  const bool small = size <= kSmallSize;
  char* ptr = nullptr;
  Block* block = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceState& st = state(device);
    if (Pool* pool = routed_pool(st)) {
      block = take_from_pool(st, *pool, size, device);
      ptr = block->ptr;
    } else {
      reserve(st, size, device);
    }
    if (block == nullptr) {
      try {
        ptr = host_malloc(size);
      } catch (...) {
        stat_decrease(st.stats.reserved_bytes, size, small);
        stat_decrease(st.stats.segment, 1, small);
        throw;
      }
    }
    live_.emplace(ptr, Allocation{device, size, requested, block});
    stat_increase(st.stats.allocated_bytes, size, small);
    stat_increase(st.stats.active_bytes, size, small);
    stat_increase(st.stats.requested_bytes, requested, small);
    stat_increase(st.stats.allocation, 1, small);
    stat_increase(st.stats.active, 1, small);
    note_watermark(device, st.stats.allocated_bytes[0].current,
                   st.stats.reserved_bytes[0].current);  // the trace's marks (watermark.cpp)
  }
  return c10::DataPtr(ptr, ptr, &Memory::free, dev);
}

void Memory::free(void* ptr) {
  get().release(ptr);
}

void Memory::release(void* ptr) {
  Segment* to_free = nullptr;
  char* plain = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(ptr);
    TORCH_INTERNAL_ASSERT(it != live_.end(), "npu emulation: freeing an unknown pointer");
    const Allocation a = it->second;
    live_.erase(it);
    DeviceState& st = devices_[static_cast<size_t>(a.device)];
    const bool small = a.size <= kSmallSize;
    stat_decrease(st.stats.allocated_bytes, a.size, small);
    stat_decrease(st.stats.active_bytes, a.size, small);
    stat_decrease(st.stats.requested_bytes, a.requested, small);
    stat_decrease(st.stats.allocation, 1, small);
    stat_decrease(st.stats.active, 1, small);
    if (a.block != nullptr) {
      to_free = return_to_pool(st, a.block);
    } else {
      stat_decrease(st.stats.reserved_bytes, a.size, small);
      stat_decrease(st.stats.segment, 1, small);
      st.stats.num_device_free++;
      plain = static_cast<char*>(ptr);
    }
  }
  if (to_free != nullptr) {
    std::free(to_free->base);
    delete to_free;
  }
  std::free(plain);
}

void Memory::begin_pool(c10::DeviceIndex device, c10::MempoolId_t id) {
  TORCH_CHECK(id.first != 0 || id.second != 0, "graph pool id (0, 0) is the default pool");
  std::lock_guard<std::mutex> lock(mu_);
  DeviceState& st = state(device);
  auto& pool = st.pools[id];
  if (!pool) {
    pool = std::make_unique<Pool>();
    pool->id = id;
  }
  pool->use_count++;
  st.routes.emplace_back(id, std::this_thread::get_id());
}

void Memory::end_pool(c10::DeviceIndex device, c10::MempoolId_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  DeviceState& st = state(device);
  const auto me = std::this_thread::get_id();
  for (auto it = st.routes.rbegin(); it != st.routes.rend(); ++it) {
    if (it->first == id && it->second == me) {
      st.routes.erase(std::next(it).base());
      return;
    }
  }
  TORCH_CHECK(false, "end_allocate_to_pool: pool (", id.first, ", ", id.second,
              ") is not being allocated to by this thread on npu:", device);
}

void Memory::release_pool(c10::DeviceIndex device, c10::MempoolId_t id) {
  std::vector<Segment*> to_free;
  {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceState& st = state(device);
    auto it = st.pools.find(id);
    TORCH_CHECK(it != st.pools.end() && it->second->use_count > 0, "release_pool: pool (",
                id.first, ", ", id.second, ") has no user on npu:", device);
    Pool& pool = *it->second;
    if (--pool.use_count > 0) {
      return;
    }
    for (auto fit = pool.free_blocks.begin(); fit != pool.free_blocks.end();) {
      Block* b = fit->second;
      if (b->prev == nullptr && b->next == nullptr) {  // the whole segment is free
        fit = pool.free_blocks.erase(fit);
        Segment* seg = b->segment;
        delete b;
        to_free.push_back(drop_segment(st, pool, seg));
      } else {
        ++fit;
      }
    }
    // Segments with live blocks go back when their last block is freed.
    if (pool.segments.empty()) {
      st.pools.erase(it);
    }
  }
  for (Segment* seg : to_free) {
    std::free(seg->base);
    delete seg;
  }
}

PoolStats Memory::pool_stats(c10::DeviceIndex device, c10::MempoolId_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  DeviceState& st = state(device);
  auto it = st.pools.find(id);
  PoolStats out;
  if (it != st.pools.end()) {
    const Pool& p = *it->second;
    out = {p.reserved, p.allocated, p.peak_reserved, static_cast<int64_t>(p.segments.size()),
           p.use_count};
  }
  return out;
}

void Memory::reset_peak(c10::DeviceIndex device) {
  std::lock_guard<std::mutex> lock(mu_);
  DeviceStats& s = state(device).stats;
  for (StatArray* a : {&s.allocation, &s.segment, &s.active, &s.inactive_split,
                       &s.allocated_bytes, &s.reserved_bytes, &s.active_bytes,
                       &s.inactive_split_bytes, &s.requested_bytes}) {
    for (Stat& stat : *a) {
      stat.reset_peak();
    }
  }
  for (auto& kv : s.reserved_bytes_by_private_pools) {
    for (Stat& stat : kv.second) {
      stat.reset_peak();
    }
  }
  for (auto& kv : state(device).pools) {
    kv.second->peak_reserved = kv.second->reserved;
  }
}

void Memory::reset_accumulated(c10::DeviceIndex device) {
  std::lock_guard<std::mutex> lock(mu_);
  DeviceStats& s = state(device).stats;
  for (StatArray* a : {&s.allocation, &s.segment, &s.active, &s.inactive_split,
                       &s.allocated_bytes, &s.reserved_bytes, &s.active_bytes,
                       &s.inactive_split_bytes, &s.requested_bytes}) {
    for (Stat& stat : *a) {
      stat.reset_accumulated();
    }
  }
  s.num_alloc_retries = 0;
  s.num_ooms = 0;
  s.num_device_alloc = 0;
  s.num_device_free = 0;
}

// ---- the PrivateUse1 device allocator ------------------------------------------------------
class NpuDeviceAllocator final : public c10::DeviceAllocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    return Memory::get().malloc(current_device(), n, kNpu);
  }
  c10::DeleterFnPtr raw_deleter() const override { return &Memory::free; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
  bool initialized() override { return true; }
  // Nothing is cached outside graph pools, and a released pool is returned at once.
  void emptyCache(c10::MempoolId_t /*mempool_id*/) override {}
  // Work is synchronous: a block is free for reuse as soon as its tensor is.
  void recordStream(const c10::DataPtr& /*ptr*/, c10::Stream /*stream*/) override {}
  DeviceStats getDeviceStats(c10::DeviceIndex device) override {
    return Memory::get().stats(resolve(device));
  }
  void resetAccumulatedStats(c10::DeviceIndex device) override {
    Memory::get().reset_accumulated(resolve(device));
  }
  void resetPeakStats(c10::DeviceIndex device) override {
    Memory::get().reset_peak(resolve(device));
  }
  std::pair<size_t, size_t> getMemoryInfo(c10::DeviceIndex device) override {
    return Memory::get().info(resolve(device));
  }
};

// ---- the CPU allocator while CPU kernels run for npu tensors -------------------------------
thread_local c10::DeviceIndex t_kernel_device = -1;
c10::DeleterFnPtr g_base_raw_deleter = nullptr;

void kernel_raw_delete(void* ptr) {
  if (Memory::get().owns(ptr)) {
    Memory::free(ptr);
  } else {
    g_base_raw_deleter(ptr);
  }
}

class KernelHostAllocator final : public c10::Allocator {
 public:
  explicit KernelHostAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t n) override {
    if (t_kernel_device >= 0) {
      return Memory::get().malloc(t_kernel_device, n, c10::DeviceType::CPU);
    }
    return base_->allocate(n);
  }
  c10::DeleterFnPtr raw_deleter() const override {
    return g_base_raw_deleter != nullptr ? &kernel_raw_delete : nullptr;
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  c10::Allocator* base_;
};

// ---- pinned host memory --------------------------------------------------------------------
class PinnedAllocator final : public at::HostAllocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) {
      return c10::DataPtr(nullptr, c10::Device(c10::DeviceType::CPU));
    }
    char* p = host_malloc(round_size(n));
    {
      std::lock_guard<std::mutex> lock(mu_);
      ranges_.emplace(reinterpret_cast<uintptr_t>(p), n);
    }
    return c10::DataPtr(p, p, &PinnedAllocator::free, c10::Device(c10::DeviceType::CPU));
  }
  c10::DeleterFnPtr raw_deleter() const override { return &PinnedAllocator::free; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
  bool record_event(void* /*ptr*/, void* /*ctx*/, c10::Stream /*stream*/) override {
    return true;
  }
  void empty_cache() override {}
  at::HostStats get_stats() override { return {}; }
  void reset_accumulated_stats() override {}
  void reset_peak_stats() override {}

  bool contains(const void* ptr) {
    const auto p = reinterpret_cast<uintptr_t>(ptr);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ranges_.upper_bound(p);
    if (it == ranges_.begin()) {
      return false;
    }
    --it;
    return p < it->first + it->second;
  }
  static PinnedAllocator& get() {
    static PinnedAllocator* a = new PinnedAllocator();
    return *a;
  }

 private:
  static void free(void* ptr) {
    PinnedAllocator& self = get();
    {
      std::lock_guard<std::mutex> lock(self.mu_);
      self.ranges_.erase(reinterpret_cast<uintptr_t>(ptr));
    }
    std::free(ptr);
  }
  std::mutex mu_;
  std::map<uintptr_t, size_t> ranges_;  // base -> bytes: is_pinned() sees views too
};

NpuDeviceAllocator g_device_allocator;
KernelHostAllocator* g_kernel_allocator = nullptr;

struct Registration {
  Registration() {
    c10::SetAllocator(kNpu, &g_device_allocator);
    c10::Allocator* base = c10::GetCPUAllocator();
    g_base_raw_deleter = base->raw_deleter();
    g_kernel_allocator = new KernelHostAllocator(base);
    // Above the default CPU allocator's priority (0): the kernels' allocations need the hook.
    c10::SetAllocator(c10::DeviceType::CPU, g_kernel_allocator, /*priority=*/1);
    at::setHostAllocator(kNpu, &PinnedAllocator::get());
  }
};
Registration g_registration;

}  // namespace

c10::DeviceAllocator* device_allocator() {
  return &g_device_allocator;
}
c10::Allocator* kernel_host_allocator() {
  return g_kernel_allocator;
}
c10::Allocator* pinned_allocator() {
  return &PinnedAllocator::get();
}
bool is_pinned(const void* ptr) {
  return ptr != nullptr && PinnedAllocator::get().contains(ptr);
}
c10::DeviceIndex device_of_ptr(const void* ptr) {
  return Memory::get().owner(ptr);
}

KernelAllocationScope::KernelAllocationScope(c10::DeviceIndex device)
    : previous_(t_kernel_device) {
  t_kernel_device = device;
}
KernelAllocationScope::~KernelAllocationScope() {
  t_kernel_device = previous_;
}

void begin_allocate_to_pool(c10::DeviceIndex device, c10::MempoolId_t pool) {
  Memory::get().begin_pool(resolve(device), pool);
}
void end_allocate_to_pool(c10::DeviceIndex device, c10::MempoolId_t pool) {
  Memory::get().end_pool(resolve(device), pool);
}
void release_pool(c10::DeviceIndex device, c10::MempoolId_t pool) {
  Memory::get().release_pool(resolve(device), pool);
}
PoolStats pool_stats(c10::DeviceIndex device, c10::MempoolId_t pool) {
  return Memory::get().pool_stats(resolve(device), pool);
}
std::pair<size_t, size_t> memory_info(c10::DeviceIndex device) {
  return Memory::get().info(resolve(device));
}

}  // namespace npu_emulation
