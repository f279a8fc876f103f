// aten kernels of the emulated npu.
//
// Tensor creation, copies, storage and view ops are the device's own (views use at::native's
// device-agnostic code). Every other aten op goes through `npu_fallback`, which runs the op's
// CPU kernel on CPU tensors over the npu tensors' memory (no copies):
// - each npu argument (also inside Tensor[] and Tensor?[]) becomes a CPU alias of its storage
//   (one alias storage per npu storage, so the kernel sees which arguments overlap);
// - while the CPU kernel runs, its host allocations are npu memory of the arguments' device
//   (accounted, and from the capturing graph pool during a capture);
// - an argument the kernel mutated in place keeps its npu storage (a resize by the kernel moves
//   the npu storage onto the new memory) and gets the kernel's sizes/strides;
// - a result the schema marks as written into an argument (in-place, out=) is that npu
//   argument itself; a result that aliases an argument's memory is a view of its npu storage;
//   a fresh result's storage becomes npu-owned as it is (no copy).
// An npu generator passed to the op (or the device's default one when none is) is replaced by
// its CPU twin, so random ops draw from the npu generator's state.
#include "npu_emulation.h"

#include <ATen/EmptyTensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/resize_native.h>
#include <ATen/ops/set_native.h>
#include <ATen/ops/unfold_native.h>
#include <ATen/ops/view_as_complex_native.h>
#include <ATen/ops/view_as_real_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/impl/InlineDeviceGuard.h>
#include <torch/library.h>

#include <unordered_map>
#include <vector>

namespace npu_emulation {
namespace {

c10::DeviceIndex index_of(std::optional<c10::Device> device) {
  if (!device.has_value()) {
    return current_device();
  }
  TORCH_CHECK(device->type() == kNpu, "expected an npu device, got ", *device);
  return resolve(device->index());
}

// ---- creation, copies, storage -------------------------------------------------------------
at::Tensor empty_memory_format(c10::SymIntArrayRef size, std::optional<at::ScalarType> dtype,
                               std::optional<at::Layout> layout,
                               std::optional<at::Device> device, std::optional<bool> pin_memory,
                               std::optional<at::MemoryFormat> memory_format) {
  TORCH_CHECK(!pin_memory.value_or(false), "only dense CPU tensors can be pinned");
  TORCH_CHECK(layout.value_or(at::kStrided) == at::kStrided, "npu: only strided tensors");
  const c10::DeviceGuard guard(c10::Device(kNpu, index_of(device)));
  return at::detail::empty_generic(C10_AS_INTARRAYREF_SLOW(size), device_allocator(),
                                   c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                   c10::dtype_or_default(dtype), memory_format);
}

at::Tensor empty_strided(c10::SymIntArrayRef size, c10::SymIntArrayRef stride,
                         std::optional<at::ScalarType> dtype, std::optional<at::Layout> layout,
                         std::optional<at::Device> device, std::optional<bool> pin_memory) {
  TORCH_CHECK(!pin_memory.value_or(false), "only dense CPU tensors can be pinned");
  TORCH_CHECK(layout.value_or(at::kStrided) == at::kStrided, "npu: only strided tensors");
  const c10::DeviceGuard guard(c10::Device(kNpu, index_of(device)));
  return at::detail::empty_strided_generic(
      C10_AS_INTARRAYREF_SLOW(size), C10_AS_INTARRAYREF_SLOW(stride), device_allocator(),
      c10::DispatchKeySet(c10::DispatchKey::PrivateUse1), c10::dtype_or_default(dtype));
}

at::Tensor host_view(const at::Tensor& t) {
  return t.device().type() == kNpu ? kernel_cpu_alias(t) : t;
}

c10::DeviceIndex npu_index(const at::Tensor& a, const at::Tensor& b) {
  if (a.device().type() == kNpu) {
    return a.device().index();
  }
  return b.device().index();
}

at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool non_blocking) {
  // Both sides are host memory: the CPU copy (dtype conversion, strides, broadcast) does it.
  at::Tensor dst_host = host_view(dst);
  const at::Tensor src_host = host_view(self);
  {
    const at::AutoDispatchBelowADInplaceOrView below;
    const KernelAllocationScope scope(npu_index(self, dst));
    dst_host.copy_(src_host, non_blocking);
  }
  return dst;
}

at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  dst.resize_(self.sizes());
  return copy_from(self, dst, false);
}

at::Scalar local_scalar_dense(const at::Tensor& self) {
  return at::_local_scalar_dense(kernel_cpu_alias(self));
}

const at::Tensor& resize_(const at::Tensor& self, c10::SymIntArrayRef size,
                          std::optional<at::MemoryFormat> memory_format) {
  // at::native's resize grows the storage through the storage's own allocator (the npu one)
  // and copies with memcpy: right for host-backed device memory.
  const c10::DeviceGuard guard(self.device());
  return at::native::resize_(self, C10_AS_INTARRAYREF_SLOW(size), memory_format);
}

at::Tensor& set_storage(at::Tensor& self, at::Storage source, c10::SymInt storage_offset,
                        c10::SymIntArrayRef size, c10::SymIntArrayRef stride) {
  return at::native::set_storage_cpu_(self, std::move(source), storage_offset.expect_int(),
                                      C10_AS_INTARRAYREF_SLOW(size),
                                      C10_AS_INTARRAYREF_SLOW(stride));
}

at::Tensor& set_source_storage(at::Tensor& self, at::Storage source) {
  return at::native::set_(self, std::move(source));
}

at::Tensor& set_source_tensor(at::Tensor& self, const at::Tensor& source) {
  return at::native::set_tensor_(self, source);
}

at::Tensor& set_empty(at::Tensor& self) {
  const c10::DeviceGuard guard(self.device());
  c10::Storage storage(c10::make_intrusive<c10::StorageImpl>(
      c10::StorageImpl::use_byte_size_t(), 0, device_allocator(), true));
  return self.set_(std::move(storage), 0, {0}, {});
}

// ---- views (at::native's device-agnostic implementations) ----------------------------------
at::Tensor view(const at::Tensor& self, c10::SymIntArrayRef size) {
  return at::native::view(self, C10_AS_INTARRAYREF_SLOW(size));
}

at::Tensor as_strided(const at::Tensor& self, c10::SymIntArrayRef size,
                      c10::SymIntArrayRef stride, std::optional<c10::SymInt> storage_offset) {
  std::optional<int64_t> offset;
  if (storage_offset.has_value()) {
    offset = storage_offset->expect_int();
  }
  return at::native::as_strided_tensorimpl(self, C10_AS_INTARRAYREF_SLOW(size),
                                           C10_AS_INTARRAYREF_SLOW(stride), offset);
}

at::Tensor reshape_alias(const at::Tensor& self, c10::SymIntArrayRef size,
                         c10::SymIntArrayRef stride) {
  return at::native::_reshape_alias(self, C10_AS_INTARRAYREF_SLOW(size),
                                    C10_AS_INTARRAYREF_SLOW(stride));
}

// Work is synchronous: memory used on another stream is free when its tensor is.
void record_stream(at::Tensor& /*self*/, c10::Stream /*stream*/) {}

// ---- the CPU fallback ----------------------------------------------------------------------
bool is_npu(const at::Tensor& t) {
  return t.defined() && t.device().type() == kNpu;
}

bool is_generator_type(const c10::TypePtr& type) {
  if (type->kind() == c10::TypeKind::GeneratorType) {
    return true;
  }
  if (type->kind() == c10::TypeKind::OptionalType) {
    return type->castRaw<c10::OptionalType>()->getElementType()->kind() ==
           c10::TypeKind::GeneratorType;
  }
  return false;
}

// Lists that may hold tensors (Tensor?[]); int lists and the like pass through untouched.
bool holds_tensors(const c10::IValue& list) {
  const c10::TypePtr& type = list.toList().elementType();
  if (type->kind() == c10::TypeKind::TensorType) {
    return true;
  }
  return type->kind() == c10::TypeKind::OptionalType &&
         type->castRaw<c10::OptionalType>()->getElementType()->kind() ==
             c10::TypeKind::TensorType;
}

class FallbackCall {
 public:
  explicit FallbackCall(const c10::FunctionSchema& schema) : schema_(schema) {}

  void convert_arguments(torch::jit::Stack& stack, size_t begin);
  void run(const c10::OperatorHandle& op, torch::jit::Stack* stack);
  void convert_returns(torch::jit::Stack& stack, size_t begin);

 private:
  struct Alias {
    at::Tensor npu;
    at::Tensor cpu;
  };
  struct AliasStorage {
    c10::Storage npu;
    c10::Storage cpu;
    void* data;  // the memory at aliasing time (a kernel resize changes cpu's)
    size_t nbytes;
  };

  at::Tensor alias(const at::Tensor& npu);
  c10::IValue convert(const c10::IValue& value);
  void sync_back(const Alias& a);
  at::Tensor to_npu(const at::Tensor& cpu);
  c10::IValue to_npu(const c10::IValue& value);
  c10::Storage npu_storage_for(const c10::Storage& cpu);

  const c10::FunctionSchema& schema_;
  c10::DeviceIndex device_ = -1;
  std::vector<Alias> aliases_;
  std::unordered_map<c10::StorageImpl*, AliasStorage> by_npu_storage_;
  std::unordered_map<c10::StorageImpl*, c10::Storage> npu_of_cpu_storage_;
  std::vector<c10::StorageImpl*> host_arguments_;  // storages of genuine CPU arguments
  std::vector<c10::IValue> original_args_;
};

at::Tensor FallbackCall::alias(const at::Tensor& npu) {
  if (device_ < 0) {
    device_ = npu.device().index();
  }
  c10::StorageImpl* key = npu.storage().unsafeGetStorageImpl();
  auto it = by_npu_storage_.find(key);
  at::Tensor cpu;
  if (it == by_npu_storage_.end()) {
    cpu = kernel_cpu_alias(npu);
    by_npu_storage_.emplace(key, AliasStorage{npu.storage(), cpu.storage(),
                                              key->data_ptr().get(), key->nbytes()});
    npu_of_cpu_storage_.emplace(cpu.storage().unsafeGetStorageImpl(), npu.storage());
  } else {  // overlapping arguments share one alias storage, as they share one npu storage
    cpu = at::detail::make_tensor<c10::TensorImpl>(
        c10::Storage(it->second.cpu), c10::DispatchKeySet(c10::DispatchKey::CPU), npu.dtype());
    auto* impl = cpu.unsafeGetTensorImpl();
    impl->set_sizes_and_strides(npu.sizes(), npu.strides(), npu.storage_offset());
    impl->_set_conj(npu.is_conj());
    impl->_set_neg(npu.is_neg());
  }
  aliases_.push_back({npu, cpu});
  return cpu;
}

c10::IValue FallbackCall::convert(const c10::IValue& value) {
  if (value.isTensor()) {
    const at::Tensor& t = value.toTensor();
    if (is_npu(t)) {
      return alias(t);
    }
    if (t.defined() && t.device().type() == c10::DeviceType::CPU) {
      host_arguments_.push_back(t.storage().unsafeGetStorageImpl());
    }
    return value;
  }
  if (value.isTensorList()) {
    c10::List<at::Tensor> out;
    for (const at::Tensor& t : value.toTensorList()) {
      out.push_back(is_npu(t) ? alias(t) : t);
    }
    return out;
  }
  if (value.isList() && holds_tensors(value)) {  // Tensor?[] (e.g. index)
    auto list = value.toList();
    c10::impl::GenericList out(list.elementType());
    out.reserve(list.size());
    for (const c10::IValue& e : list) {
      out.push_back(convert(e));
    }
    return out;
  }
  if (value.isGenerator() && value.toGenerator().device().type() == kNpu) {
    return cpu_generator_of(value.toGenerator());
  }
  if (value.isDevice() && value.toDevice().type() == kNpu) {
    if (device_ < 0) {
      device_ = resolve(value.toDevice().index());
    }
    return c10::Device(c10::DeviceType::CPU);
  }
  return value;
}

void FallbackCall::convert_arguments(torch::jit::Stack& stack, size_t begin) {
  const auto& args = schema_.arguments();
  std::vector<size_t> default_generators;
  original_args_.reserve(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    c10::IValue& v = stack[begin + i];
    original_args_.push_back(v);
    if (v.isNone() && is_generator_type(args[i].type())) {
      default_generators.push_back(i);
      continue;
    }
    v = convert(v);
  }
  if (device_ < 0) {
    device_ = current_device();
  }
  for (size_t i : default_generators) {
    stack[begin + i] = cpu_generator_of(default_generator(device_));
  }
}

void FallbackCall::run(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const c10::DeviceGuard guard(c10::Device(kNpu, device_));
  // Below autograd, as a backend kernel always runs; the CPU kernel's own calls stay there.
  const at::AutoDispatchBelowADInplaceOrView below;
  const KernelAllocationScope scope(device_);
  op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
}

c10::Storage FallbackCall::npu_storage_for(const c10::Storage& cpu) {
  c10::StorageImpl* key = cpu.unsafeGetStorageImpl();
  auto it = npu_of_cpu_storage_.find(key);
  if (it != npu_of_cpu_storage_.end()) {
    return it->second;
  }
  c10::Storage npu = adopt_cpu_storage(cpu, device_);
  npu_of_cpu_storage_.emplace(key, npu);
  return npu;
}

void FallbackCall::sync_back(const Alias& a) {
  auto* npu_impl = a.npu.unsafeGetTensorImpl();
  auto* cpu_impl = a.cpu.unsafeGetTensorImpl();
  const c10::Storage& cpu_storage = cpu_impl->storage();
  AliasStorage& as = by_npu_storage_.at(a.npu.storage().unsafeGetStorageImpl());
  if (cpu_storage.unsafeGetStorageImpl() == as.cpu.unsafeGetStorageImpl()) {
    if (cpu_storage.unsafeGetStorageImpl()->data_ptr().get() != as.data ||
        cpu_storage.nbytes() != as.nbytes) {
      // The kernel resized the argument (an out= result of another shape): the npu storage
      // takes over the new memory (allocated as npu memory during the kernel).
      c10::Storage adopted = adopt_cpu_storage(cpu_storage, device_);
      as.npu.unsafeGetStorageImpl()->set_data_ptr_noswap(
          std::move(adopted.unsafeGetStorageImpl()->mutable_data_ptr()));
      as.npu.unsafeGetStorageImpl()->set_nbytes(cpu_storage.nbytes());
      as.data = cpu_storage.unsafeGetStorageImpl()->data_ptr().get();
      as.nbytes = cpu_storage.nbytes();
    }
  } else {  // the kernel pointed the argument at other memory
    npu_impl->set_storage_keep_dtype(npu_storage_for(cpu_storage));
  }
  if (npu_impl->sizes() != cpu_impl->sizes() || npu_impl->strides() != cpu_impl->strides() ||
      npu_impl->storage_offset() != cpu_impl->storage_offset()) {
    npu_impl->set_sizes_and_strides(cpu_impl->sizes(), cpu_impl->strides(),
                                    cpu_impl->storage_offset());
  }
}

at::Tensor FallbackCall::to_npu(const at::Tensor& cpu) {
  if (!cpu.defined() || cpu.device().type() == kNpu) {
    return cpu;
  }
  for (const Alias& a : aliases_) {
    if (a.cpu.unsafeGetTensorImpl() == cpu.unsafeGetTensorImpl()) {
      return a.npu;  // the kernel returned its argument itself
    }
  }
  c10::StorageImpl* key = cpu.storage().unsafeGetStorageImpl();
  auto it = npu_of_cpu_storage_.find(key);
  if (it != npu_of_cpu_storage_.end()) {  // a view of an argument
    return make_npu_tensor(it->second, cpu);
  }
  // A view of an argument's memory through another storage object (a kernel-made blob).
  const auto* data = static_cast<const char*>(key->data_ptr().get());
  for (const auto& kv : by_npu_storage_) {
    const auto* base = static_cast<const char*>(kv.second.data);
    if (data != nullptr && data >= base && data < base + kv.second.nbytes &&
        (data - base) % cpu.element_size() == 0) {
      at::Tensor out = make_npu_tensor(kv.second.npu, cpu);
      out.unsafeGetTensorImpl()->set_storage_offset(
          cpu.storage_offset() + (data - base) / static_cast<int64_t>(cpu.element_size()));
      return out;
    }
  }
  for (c10::StorageImpl* host : host_arguments_) {
    if (host == key) {  // a view of a genuine host argument: the device result is a copy
      const KernelAllocationScope scope(device_);
      const at::AutoDispatchBelowADInplaceOrView below;
      return to_npu(cpu.clone());
    }
  }
  return make_npu_tensor(npu_storage_for(cpu.storage()), cpu);
}

c10::IValue FallbackCall::to_npu(const c10::IValue& value) {
  if (value.isTensor()) {
    return to_npu(value.toTensor());
  }
  if (value.isTensorList()) {
    c10::List<at::Tensor> out;
    for (const at::Tensor& t : value.toTensorList()) {
      out.push_back(to_npu(t));
    }
    return out;
  }
  if (value.isList() && holds_tensors(value)) {
    auto list = value.toList();
    c10::impl::GenericList out(list.elementType());
    for (const c10::IValue& e : list) {
      out.push_back(to_npu(e));
    }
    return out;
  }
  if (value.isTuple()) {
    std::vector<c10::IValue> items;
    for (const c10::IValue& e : value.toTupleRef().elements()) {
      items.push_back(to_npu(e));
    }
    return c10::ivalue::Tuple::create(std::move(items));
  }
  return value;
}

void FallbackCall::convert_returns(torch::jit::Stack& stack, size_t begin) {
  for (const Alias& a : aliases_) {
    sync_back(a);
  }
  const auto& args = schema_.arguments();
  const auto& rets = schema_.returns();
  for (size_t r = 0; r < rets.size(); ++r) {
    c10::IValue& v = stack[begin + r];
    const c10::AliasInfo* ret_alias = rets[r].alias_info();
    bool replaced = false;
    if (ret_alias != nullptr && ret_alias->isWrite()) {
      // In-place / out=: the result is the npu argument written into.
      for (size_t i = 0; i < args.size(); ++i) {
        const c10::AliasInfo* arg_alias = args[i].alias_info();
        if (arg_alias != nullptr && arg_alias->isWrite() &&
            arg_alias->beforeSets() == ret_alias->beforeSets()) {
          v = original_args_[i];
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) {
      v = to_npu(v);
    }
  }
}

void npu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t begin = stack->size() - schema.arguments().size();
  FallbackCall call(schema);
  call.convert_arguments(*stack, begin);
  call.run(op, stack);
  call.convert_returns(*stack, stack->size() - schema.returns().size());
}

}  // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", empty_memory_format);
  m.impl("empty_strided", empty_strided);
  m.impl("_copy_from", copy_from);
  m.impl("_copy_from_and_resize", copy_from_and_resize);
  m.impl("_local_scalar_dense", local_scalar_dense);
  m.impl("resize_", resize_);
  m.impl("set_.source_Storage_storage_offset", set_storage);
  m.impl("set_.source_Storage", set_source_storage);
  m.impl("set_.source_Tensor", set_source_tensor);
  m.impl("set_", set_empty);
  m.impl("view", view);
  m.impl("as_strided", as_strided);
  m.impl("_reshape_alias", reshape_alias);
  m.impl("unfold", TORCH_FN(at::native::unfold));
  m.impl("view_as_real", TORCH_FN(at::native::view_as_real));
  m.impl("view_as_complex", TORCH_FN(at::native::view_as_complex));
  m.impl("record_stream", record_stream);
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&npu_fallback>());
}

}  // namespace npu_emulation
