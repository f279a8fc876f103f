// Tensors over existing memory: the zero-copy CPU <-> npu aliases that the kernels, the hccl
// backend and the graph recorder use, and non-owning views (from_blob, weak_ref_tensor).
#include "npu_emulation.h"

#include <ATen/EmptyTensor.h>

namespace npu_emulation {
namespace {

void delete_storage_holder(void* ctx) {
  delete static_cast<c10::Storage*>(ctx);
}

// A storage over `src`'s bytes on `device`; its DataPtr keeps `src` alive.
c10::Storage alias_storage(const c10::Storage& src, c10::Device device,
                           c10::Allocator* allocator, bool resizable) {
  void* data = src.unsafeGetStorageImpl()->data_ptr().get();
  auto* holder = new c10::Storage(src);
  c10::DataPtr dp(data, holder, &delete_storage_holder, device);
  return c10::Storage(c10::make_intrusive<c10::StorageImpl>(
      c10::StorageImpl::use_byte_size_t(), src.nbytes(), std::move(dp), allocator, resizable));
}

at::Tensor tensor_on(c10::Storage storage, c10::DispatchKey key, const at::Tensor& like) {
  auto t = at::detail::make_tensor<c10::TensorImpl>(std::move(storage),
                                                    c10::DispatchKeySet(key), like.dtype());
  auto* impl = t.unsafeGetTensorImpl();
  impl->set_sizes_and_strides(like.sizes(), like.strides(), like.storage_offset());
  impl->_set_conj(like.is_conj());
  impl->_set_neg(like.is_neg());
  return t;
}

}  // namespace

at::Tensor as_cpu(const at::Tensor& npu) {
  TORCH_CHECK(npu.device().type() == kNpu, "as_cpu: expected an npu tensor, got ",
              npu.device());
  return tensor_on(alias_storage(npu.storage(), c10::Device(c10::DeviceType::CPU), nullptr,
                                 false),
                   c10::DispatchKey::CPU, npu);
}

at::Tensor kernel_cpu_alias(const at::Tensor& npu) {
  return tensor_on(alias_storage(npu.storage(), c10::Device(c10::DeviceType::CPU),
                                 kernel_host_allocator(), true),
                   c10::DispatchKey::CPU, npu);
}

c10::Storage adopt_cpu_storage(const c10::Storage& cpu, c10::DeviceIndex device) {
  // Resizable with the device allocator: resize_ on the npu tensor reallocates npu memory.
  return alias_storage(cpu, c10::Device(kNpu, device), device_allocator(), true);
}

at::Tensor make_npu_tensor(c10::Storage storage, const at::Tensor& like_view) {
  return tensor_on(std::move(storage), c10::DispatchKey::PrivateUse1, like_view);
}

at::Tensor as_npu(const at::Tensor& cpu, c10::DeviceIndex device) {
  TORCH_CHECK(cpu.device().type() == c10::DeviceType::CPU, "as_npu: expected a CPU tensor, got ",
              cpu.device());
  const auto index = resolve(device);
  check_device(index);
  return make_npu_tensor(adopt_cpu_storage(cpu.storage(), index), cpu);
}

at::Tensor from_blob(void* data, at::IntArrayRef sizes, at::IntArrayRef strides,
                     int64_t storage_offset, at::ScalarType dtype, c10::DeviceIndex device) {
  TORCH_CHECK(sizes.size() == strides.size(), "from_blob: ", sizes.size(), " sizes but ",
              strides.size(), " strides");
  const auto index = resolve(device);
  check_device(index);
  const auto meta = c10::scalarTypeToTypeMeta(dtype);
  const size_t nbytes =
      at::detail::computeStorageNbytes(sizes, strides, meta.itemsize(), storage_offset);
  c10::DataPtr dp(data, c10::Device(kNpu, index));  // no context: the caller owns the memory
  c10::Storage storage(c10::make_intrusive<c10::StorageImpl>(
      c10::StorageImpl::use_byte_size_t(), nbytes, std::move(dp), nullptr, false));
  auto t = at::detail::make_tensor<c10::TensorImpl>(
      std::move(storage), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1), meta);
  t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, storage_offset);
  return t;
}

at::Tensor weak_ref_tensor(const at::Tensor& t) {
  // As torch_npu's _weak_ref_tensor: the same memory, sizes and strides from data_ptr(), and
  // no reference to the storage (the graph pool may reuse the block once the owner is gone).
  if (t.device().type() == kNpu) {
    return from_blob(t.data_ptr(), t.sizes(), t.strides(), 0, t.scalar_type(),
                     t.device().index());
  }
  return at::from_blob(t.data_ptr(), t.sizes(), t.strides(), t.options());
}

}  // namespace npu_emulation
