// RMSNorm kernels for the CPU reference mode: vLLM's IR ops rms_norm and fused_add_rms_norm
// (vllm/ir/ops/layernorm.py) in one pass over each row instead of vLLM's native chain of
// elementwise torch ops (to fp32, square, mean, rsqrt, multiply, cast, multiply, cast).
// The arithmetic and its roundings are the native ones: sums and scaling in fp32, the
// normalized row rounded to the input dtype before the weight multiplies it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
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

// One clone per instruction set, picked when the library loads (GCC/Clang function
// multiversioning): the same code, vectorized as wide as the CPU allows.
#if defined(__x86_64__) && defined(__GNUC__)
#define NORM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NORM_CLONES
#endif

NORM_CLONES void norm_range_f32(int64_t begin, int64_t end, const float* x, const Rows& xrows,
                                float* out, const Rows* orows, float* residual,
                                const Rows* rrows, const float* weight, int64_t n, float eps,
                                float* b) {
  norm_range<F32>(begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps, b);
}

NORM_CLONES void norm_range_bf16(int64_t begin, int64_t end, const uint16_t* x,
                                 const Rows& xrows, uint16_t* out, const Rows* orows,
                                 uint16_t* residual, const Rows* rrows, const uint16_t* weight,
                                 int64_t n, float eps, float* b) {
  norm_range<BF16>(begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps, b);
}

inline void norm_range_any(F32, int64_t begin, int64_t end, const float* x, const Rows& xrows,
                           float* out, const Rows* orows, float* residual, const Rows* rrows,
                           const float* weight, int64_t n, float eps, float* b) {
  norm_range_f32(begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps, b);
}
inline void norm_range_any(BF16, int64_t begin, int64_t end, const uint16_t* x,
                           const Rows& xrows, uint16_t* out, const Rows* orows,
                           uint16_t* residual, const Rows* rrows, const uint16_t* weight,
                           int64_t n, float eps, float* b) {
  norm_range_bf16(begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps, b);
}

template <typename C>
void norm_rows(const typename C::T* x, const Rows& xrows, typename C::T* out,
               const Rows* orows, typename C::T* residual, const Rows* rrows,
               const typename C::T* weight, int64_t n, float eps) {
  at::parallel_for(0, xrows.count, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(n);
    norm_range_any(C{}, begin, end, x, xrows, out, orows, residual, rrows, weight, n, eps,
                   buf.data());
  });
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

TORCH_LIBRARY_IMPL(vllm_ascend_rerank, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm_cpu);
}

}  // namespace vllm_ascend_rerank
