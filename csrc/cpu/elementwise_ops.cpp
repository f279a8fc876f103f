// Row-wise kernels for the CPU reference mode, each one pass over a row where vLLM's native
// path chains several elementwise torch ops, with the native arithmetic and roundings:
//  - rms_norm / fused_add_rms_norm (vLLM's IR ops, vllm/ir/ops/layernorm.py): sums and
//    scaling in fp32, the normalized row rounded to the input dtype before the weight
//    multiplies it (native: to fp32, square, mean, rsqrt, multiply, cast, multiply, cast);
//  - silu_and_mul (vLLM's SiluAndMul): silu(a) rounded to the input dtype, times b
//    (native: F.silu(a) * b).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../ops.h"

namespace vllm_ascend_rerank {

namespace {

// Leading dimensions of a tensor whose last dimension is unit-stride: row r's offset.
struct Rows {
  int64_t count = 1;
  std::vector<int64_t> sizes, strides;

  explicit Rows(const at::Tensor& t) {
    for (int64_t d = 0; d + 1 < t.dim(); ++d) {
      sizes.push_back(t.size(d));
      strides.push_back(t.stride(d));
      count *= t.size(d);
    }
  }
  int64_t offset(int64_t r) const {
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      off += (r % sizes[d]) * strides[d];
      r /= sizes[d];
    }
    return off;
  }
};

// Element conversions written as plain arithmetic so the row loops vectorize: fp32 as is;
// bf16 as its 16 high bits, rounded to nearest even as torch rounds (NaN -> torch's NaN).
struct F32 {
  using T = float;
  static inline float load(T v) { return v; }
  static inline T store(float f) { return f; }
};
struct BF16 {
  using T = uint16_t;
  static inline float load(T v) {
    const uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
  static inline T store(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return static_cast<T>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);  // torch's NaN
  }
};

void check_args(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
              ": x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.stride(-1) == 1, op, ": x must have a unit-stride last dim");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && weight.is_contiguous(), op,
              ": weight must be contiguous [", x.size(-1), "]");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
}

constexpr int64_t kGrain = 16;  // rows per parallel task

// Rows [begin, end): out <- rms_norm(x [+ residual]); with a residual, residual <- x +
// residual (x's dtype). Inlined into each instruction-set clone below.
template <typename C>
__attribute__((always_inline)) inline void norm_range(
    int64_t begin, int64_t end, const typename C::T* x, const Rows& xrows, typename C::T* out,
    const Rows* orows, typename C::T* residual, const Rows* rrows, const typename C::T* weight,
    int64_t n, float eps, float* b) {
  using T = typename C::T;
  for (int64_t r = begin; r < end; ++r) {
    const T* xr = x + xrows.offset(r);
    float ss = 0.0f;
    if (residual != nullptr) {
      T* rr = residual + rrows->offset(r);
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < n; ++i) {
        b[i] = C::load(xr[i]) + C::load(rr[i]);
        rr[i] = C::store(b[i]);
        ss += b[i] * b[i];
      }
    } else {
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < n; ++i) {
        b[i] = C::load(xr[i]);
        ss += b[i] * b[i];
      }
    }
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    T* o = out + (orows != nullptr ? orows->offset(r) : r * n);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i)
      o[i] = C::store(C::load(C::store(b[i] * inv)) * C::load(weight[i]));
  }
}

// One clone per instruction set, picked when the library loads (GCC function
// multiversioning): the same code, vectorized as wide as the CPU allows.
#if defined(__x86_64__) && defined(__GNUC__)
// x86-64-v4: AVX-512 F/BW/DQ/VL (BW for the 16-bit bf16 lanes); v3: AVX2 + FMA.
#define ISA_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ISA_CLONES
#endif

ISA_CLONES void norm_range_f32(int64_t begin, int64_t end, const float* x, const Rows& xrows,
                                float* out, const Rows* orows, float* residual,
                                const Rows* rrows, const float* weight, int64_t n, float eps,
                                float* b) {
  norm_range<F32>(begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps, b);
}

ISA_CLONES void norm_range_bf16(int64_t begin, int64_t end, const uint16_t* x,
                                 const Rows& xrows, uint16_t* out, const Rows* orows,
                                 uint16_t* residual, const Rows* rrows, const uint16_t* weight,
                                 int64_t n, float eps, float* b) {
  norm_range<BF16>(begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps, b);
}

template <typename C>
void norm_rows(const typename C::T* x, const Rows& xrows, typename C::T* out,
               const Rows* orows, typename C::T* residual, const Rows* rrows,
               const typename C::T* weight, int64_t n, float eps) {
  at::parallel_for(0, xrows.count, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(n);
    if constexpr (std::is_same_v<C, F32>) {
      norm_range_f32(begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps,
                     buf.data());
    } else {
      norm_range_bf16(begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps,
                      buf.data());
    }
  });
}

// e^x in fp32 (Cephes expf: range reduction by ln 2, degree-6 polynomial; ~1 ulp), written
// so that loops over it vectorize. Arguments are clamped to where e^x is a normal float.
inline float exp_f(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  // n = round(x / ln 2), by truncating a positive value (floor without a libm call)
  const int32_t k = static_cast<int32_t>(x * 1.44269504088896341f + 128.5f) - 128;
  const float n = static_cast<float>(k);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Rows [begin, end) of out [rows, d] <- silu(x[..., :d]) * x[..., d:].
template <typename C>
__attribute__((always_inline)) inline void silu_range(int64_t begin, int64_t end,
                                                      const typename C::T* x, const Rows& xrows,
                                                      typename C::T* out, int64_t d) {
  using T = typename C::T;
  for (int64_t r = begin; r < end; ++r) {
    const T* a = x + xrows.offset(r);
    const T* b = a + d;
    T* o = out + r * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) {
      const float v = C::load(a[i]);
      o[i] = C::store(C::load(C::store(v / (1.0f + exp_f(-v)))) * C::load(b[i]));
    }
  }
}

ISA_CLONES void silu_range_f32(int64_t begin, int64_t end, const float* x, const Rows& xrows,
                                float* out, int64_t d) {
  silu_range<F32>(begin, end, x, xrows, out, d);
}

ISA_CLONES void silu_range_bf16(int64_t begin, int64_t end, const uint16_t* x,
                                 const Rows& xrows, uint16_t* out, int64_t d) {
  silu_range<BF16>(begin, end, x, xrows, out, d);
}

template <typename F>
void with_dtype(at::ScalarType t, F f) {
  if (t == at::kFloat) {
    f(F32{});
  } else {
    f(BF16{});
  }
}

}  // namespace

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double epsilon) {
  check_args(x, weight, "rms_norm");
  at::Tensor out = at::empty(x.sizes(), x.options());  // contiguous
  const Rows rows(x);
  with_dtype(x.scalar_type(), [&](auto c) {
    using C = decltype(c);
    using T = typename C::T;
    norm_rows<C>(static_cast<const T*>(x.data_ptr()), rows, static_cast<T*>(out.data_ptr()),
                 nullptr, nullptr, nullptr, static_cast<const T*>(weight.data_ptr()), x.size(-1),
                 static_cast<float>(epsilon));
  });
  return out;
}

void fused_add_rms_norm_cpu(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                            double epsilon) {
  check_args(x, weight, "fused_add_rms_norm");
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type() &&
                  residual.stride(-1) == 1,
              "fused_add_rms_norm: residual must match x in shape and dtype");
  const Rows xrows(x), rrows(residual);
  with_dtype(x.scalar_type(), [&](auto c) {
    using C = decltype(c);
    using T = typename C::T;
    T* xp = static_cast<T*>(x.data_ptr());
    // In place: row r is read whole into the fp32 buffer before it is written.
    norm_rows<C>(xp, xrows, xp, &xrows, static_cast<T*>(residual.data_ptr()), &rrows,
                 static_cast<const T*>(weight.data_ptr()), x.size(-1),
                 static_cast<float>(epsilon));
  });
}

at::Tensor silu_and_mul_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "silu_and_mul: x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.stride(-1) == 1 && x.size(-1) % 2 == 0,
              "silu_and_mul: x must have a unit-stride last dim of even size");
  const int64_t d = x.size(-1) / 2;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = d;
  at::Tensor out = at::empty(shape, x.options());
  const Rows rows(x);
  with_dtype(x.scalar_type(), [&](auto c) {
    using C = decltype(c);
    using T = typename C::T;
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* op = static_cast<T*>(out.data_ptr());
    at::parallel_for(0, rows.count, kGrain, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<C, F32>) {
        silu_range_f32(begin, end, xp, rows, op, d);
      } else {
        silu_range_bf16(begin, end, xp, rows, op, d);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(vllm_ascend_rerank, CPU, m) {
  m.impl("silu_and_mul", &silu_and_mul_cpu);
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm_cpu);
}

}  // namespace vllm_ascend_rerank
