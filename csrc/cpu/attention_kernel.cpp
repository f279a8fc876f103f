// Flash-style paged prefill attention for one work item (see attention_kernel.h).
//
// CMake compiles this file once per instruction set (generic / AVX2 / AVX-512) with
// VLLM_ASCEND_RERANK_ISA naming the variant; attention.cpp picks one at run time.
// The math is written with GCC/Clang vector extensions, which the compiler lowers to
// whatever the enabled instruction set offers (SSE2/NEON, AVX2+FMA, AVX-512).
//
// Per item (one request, one kv head, up to QB queries x G query heads = m rows):
//   Q^T [D][mp]  (scaled by scale * log2(e), so softmax uses exp2)
//   for each chunk of up to KC keys, addressed row by row through the block table (no
//   gather copy: fp32 caches are read in place, other dtypes converted chunk by chunk):
//     S^T[nk][mp] = K_chunk . Q^T          (keys x rows, rows contiguous: the
//                                           softmax then vectorizes across rows)
//     online softmax: running max / sum per row, rescale O by exp2(old - new max)
//     O[mp][Dp]  += P . V_chunk
//   out = O / sum
#include "attention_kernel.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

#ifndef VLLM_ASCEND_RERANK_ISA
#error "VLLM_ASCEND_RERANK_ISA must name the variant (set by CMakeLists.txt)"
#endif

#define VAR_CAT2(a, b) a##b
#define VAR_CAT(a, b) VAR_CAT2(a, b)

namespace vllm_ascend_rerank::cpu {
namespace VLLM_ASCEND_RERANK_ISA {
namespace {  // internal linkage: nothing here may be merged with another variant

#if defined(__AVX512F__)
constexpr int VW = 16;  // floats per vector register
constexpr int MR = 8;   // rows per micro-tile: MR x NV accumulators stay in registers
#elif defined(__AVX2__)
constexpr int VW = 8;
constexpr int MR = 4;
#else
constexpr int VW = 4;
constexpr int MR = 4;
#endif
constexpr int NV = 2;          // vectors per micro-tile row
constexpr int NR = NV * VW;    // columns per micro-tile
constexpr int64_t KC = 64;     // keys per chunk (measured: 32 and 128 are slower)

typedef float vec __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(VW * sizeof(int32_t))));

inline vec loadu(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void storeu(float* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
inline vec splat(float x) { return vec{} + x; }
inline vec vmax(vec a, vec b) { return a > b ? a : b; }

// 2^x for x <= 0 (softmax arguments); exactly 0 for x <= -127, including -inf.
// Degree-7 Taylor polynomial of 2^r on |r| <= 0.5: relative error < 1e-8.
inline vec exp2v(vec x) {
  x = vmax(x, splat(-127.0f));
  const vec magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vec n = (x + magic) - magic;
  const vec r = x - n;
  vec p = splat(1.5252734e-5f);
  p = p * r + 1.5403530e-4f;
  p = p * r + 1.3333558e-3f;
  p = p * r + 9.6181291e-3f;
  p = p * r + 5.5504109e-2f;
  p = p * r + 2.4022651e-1f;
  p = p * r + 6.9314718e-1f;
  p = p * r + 1.0f;
  // 2^n built in the exponent field; n = -127 gives the bit pattern of +0.
  const ivec e = (__builtin_convertvector(n, ivec) + 127) << 23;
  vec scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- dtype conversion (bit-exact with torch's round-to-nearest-even) ---------------
inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }
inline float f16_to_float(uint16_t h) {
  // Move exponent+mantissa into place and rebias by 2^112 (exact, also for subnormals).
  const uint32_t em = h & 0x7fffu;
  uint32_t u = float_to_bits(bits_to_float(em << 13) * 5.192296858534828e33f);
  u |= em >= 0x7c00u ? 0x7f800000u : 0u;  // inf / nan (branch-free: vectorizes)
  return bits_to_float(u | (uint32_t(h & 0x8000u) << 16));
}
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // nan
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline uint16_t float_to_f16(float f) {
  uint32_t x = float_to_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return sign | (x > 0x7f800000u ? 0x7e00 : 0x7c00);
  if (x >= 0x477ff000u) return sign | 0x7c00;  // rounds past 65504: inf
  if (x < 0x38800000u) {                        // half subnormal / zero: FPU rounds
    return sign | uint16_t(float_to_bits(bits_to_float(x) + 0.5f) - 0x3f000000u);
  }
  const uint32_t odd = (x >> 13) & 1u;
  x += (uint32_t(15 - 127) << 23) + 0xfffu + odd;
  return sign | uint16_t(x >> 13);
}

// dst[i] = f(src[i * stride]); the unit-stride loop is the one worth vectorizing.
template <class T, class F>
inline void convert(const T* src, int64_t stride, int64_t n, float* dst, F f) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = f(src[i * stride]);
  }
}

// n elements starting at element `off` of `base`, `stride` apart, into dst (fp32).
void load_row(const void* base, int64_t off, int64_t stride, DType dt, int64_t n, float* dst) {
  switch (dt) {
    case kF32:
      convert(static_cast<const float*>(base) + off, stride, n, dst, [](float x) { return x; });
      break;
    case kBF16:
      convert(static_cast<const uint16_t*>(base) + off, stride, n, dst, bf16_to_float);
      break;
    case kF16:
      convert(static_cast<const uint16_t*>(base) + off, stride, n, dst, f16_to_float);
      break;
  }
}

void store_row(void* base, int64_t off, int64_t stride, DType dt, int64_t n, const float* src,
               float mul) {
  switch (dt) {
    case kF32: {
      float* d = static_cast<float*>(base) + off;
      for (int64_t i = 0; i < n; ++i) d[i * stride] = src[i] * mul;
      break;
    }
    case kBF16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) d[i * stride] = float_to_bf16(src[i] * mul);
      break;
    }
    case kF16: {
      uint16_t* d = static_cast<uint16_t*>(base) + off;
      for (int64_t i = 0; i < n; ++i) d[i * stride] = float_to_f16(src[i] * mul);
      break;
    }
  }
}

// ---- GEMM micro-kernels ---------------------------------------------------------------
// Both keep an R x NVC tile of C in registers for the whole k loop and broadcast the A
// element from memory. Keys come as row pointers because a chunk of keys spans cache
// blocks that lie anywhere in the cache.

// S^T tile: C[r][:] = sum_p K_r[p] * QT[p][:]   (K_r = krows[r], QT rows ldb apart)
template <int R, int NVC>
inline void micro_qk(const float* const* krows, const float* B, int64_t ldb, float* C,
                     int64_t ldc, int64_t kdim) {
  vec c[R][NVC] = {};
  for (int64_t p = 0; p < kdim; ++p) {
    vec b[NVC];
    for (int v = 0; v < NVC; ++v) b[v] = loadu(B + p * ldb + v * VW);
    for (int r = 0; r < R; ++r) {
      const float a = krows[r][p];
      for (int v = 0; v < NVC; ++v) c[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NVC; ++v) storeu(C + r * ldc + v * VW, c[r][v]);
}

// O tile: C[r][:] += sum_p P[p][r] * V_p[col:]   (P = S^T, rows ldp apart; V_p = vrows[p])
template <int R, int NVC>
inline void micro_pv(const float* P, int64_t ldp, const float* const* vrows, int64_t col,
                     float* C, int64_t ldc, int64_t kdim) {
  vec c[R][NVC];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NVC; ++v) c[r][v] = loadu(C + r * ldc + v * VW);
  for (int64_t p = 0; p < kdim; ++p) {
    const float* vp = vrows[p] + col;
    vec b[NVC];
    for (int v = 0; v < NVC; ++v) b[v] = loadu(vp + v * VW);
    for (int r = 0; r < R; ++r) {
      const float a = P[p * ldp + r];
      for (int v = 0; v < NVC; ++v) c[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NVC; ++v) storeu(C + r * ldc + v * VW, c[r][v]);
}

struct Scratch {
  float* qt;     // [D][mp]
  float* s;      // [KC][mp]
  float* o;      // [mp][Dp]
  float* mx;     // [mp] running max
  float* sum;    // [mp] running sum
  float* alpha;  // [mp] rescale factor of this chunk
  float* kt;     // [KC][Dp] converted K chunk (non-fp32 or strided caches)
  float* vt;     // [KC][Dp] converted V chunk
  float* row;    // [Dp]
};

Scratch carve(float* base, int64_t D, int64_t Dp, int64_t mp_max) {
  Scratch s;
  s.qt = base;
  s.s = s.qt + D * mp_max;
  s.o = s.s + KC * mp_max;
  s.mx = s.o + mp_max * Dp;
  s.sum = s.mx + mp_max;
  s.alpha = s.sum + mp_max;
  s.kt = s.alpha + mp_max;
  s.vt = s.kt + KC * Dp;
  s.row = s.vt + KC * Dp;
  return s;
}

size_t scratch_floats(const AttnParams& p) {
  const int64_t D = p.head_size, Dp = round_up(D, VW), mp = round_up(p.max_rows, NR);
  return size_t(D * mp + KC * mp + mp * Dp + 3 * mp + 2 * KC * Dp + Dp);
}

void attend(const AttnParams& p, const WorkItem& w, float* scratch) {
  const int64_t G = p.num_heads / p.num_kv_heads;
  const int64_t D = p.head_size, Dp = round_up(D, VW);
  const int64_t m = w.nq * G, mp = round_up(m, NR);
  // Same layout for every item of the call: the zero padding columns of s.vt stay zero.
  Scratch s = carve(scratch, D, Dp, round_up(p.max_rows, NR));

  // Q^T, pre-scaled so that exp2 gives the softmax: 2^(x * log2 e) = e^x.
  const float qscale = p.scale * 1.4426950408889634f;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t t = w.token0 + i / G, h = w.kv_head * G + i % G;
    load_row(p.query, t * p.q_stride[0] + h * p.q_stride[1], p.q_stride[2], p.q_dtype, D, s.row);
    for (int64_t d = 0; d < D; ++d) s.qt[d * mp + i] = s.row[d] * qscale;
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = m; i < mp; ++i) s.qt[d * mp + i] = 0.0f;  // padding rows: finite
  for (int64_t i = 0; i < mp * Dp; ++i) s.o[i] = 0.0f;
  for (int64_t i = 0; i < mp; ++i) {
    s.mx[i] = -__builtin_inff();
    s.sum[i] = 0.0f;
  }

  // fp32 caches with unit channel stride are read in place; others chunk-converted.
  const int64_t* st = p.kv_stride;
  const bool in_place = p.kv_dtype == kF32 && st[3] == 1 && D % VW == 0;
  const int64_t ncols = in_place ? D : Dp;  // V columns fed to the PV product
  const int64_t* table = p.block_table + w.req * p.block_table_stride;
  const int64_t first_pos = w.context + w.q0;  // absolute position of row 0's query
  const float* krows[KC];
  const float* vrows[KC];

  for (int64_t k0 = 0; k0 < w.kv_len; k0 += KC) {
    const int64_t nk = w.kv_len - k0 < KC ? w.kv_len - k0 : KC;
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t pos = k0 + j;
      const int64_t at = table[pos / p.block_size] * st[0] + w.kv_head * st[1] +
                         (pos % p.block_size) * st[2];
      if (in_place) {
        krows[j] = static_cast<const float*>(p.kv_cache) + at;
        vrows[j] = krows[j] + D;
      } else {
        load_row(p.kv_cache, at, st[3], p.kv_dtype, D, s.kt + j * Dp);
        load_row(p.kv_cache, at + D * st[3], st[3], p.kv_dtype, D, s.vt + j * Dp);
        krows[j] = s.kt + j * Dp;
        vrows[j] = s.vt + j * Dp;
      }
    }

    // S^T = K . Q^T (keys x rows). Under the causal mask, key k0 + j is hidden from
    // rows [0, (k0 + j - first_pos) * G); tiles hidden entirely are not computed.
    for (int64_t j0 = 0; j0 < nk; j0 += MR) {
      const int64_t nr = nk - j0 < MR ? nk - j0 : MR;
      const int64_t hidden = p.causal ? (k0 + j0 - first_pos) * G : 0;
      for (int64_t c0 = 0; c0 < mp; c0 += NR) {
        if (c0 + NR <= hidden) continue;
        float* c = s.s + j0 * mp + c0;
        switch (nr) {
#define VAR_CASE(R) \
  case R:           \
    if constexpr (R <= MR) micro_qk<R, NV>(krows + j0, s.qt + c0, mp, c, mp, D); \
    break;
          VAR_CASE(1) VAR_CASE(2) VAR_CASE(3) VAR_CASE(4)
          VAR_CASE(5) VAR_CASE(6) VAR_CASE(7) VAR_CASE(8)
#undef VAR_CASE
        }
      }
    }
    if (p.causal) {
      for (int64_t j = 0; j < nk; ++j) {
        int64_t hidden = (k0 + j - first_pos) * G;
        if (hidden <= 0) continue;
        if (hidden > mp) hidden = mp;
        for (int64_t i = 0; i < hidden; ++i) s.s[j * mp + i] = -__builtin_inff();
      }
    }

    // Online softmax, vectorized across rows. Key 0 (first chunk) is visible to every
    // row, so each running max is finite from the first chunk on.
    for (int64_t c = 0; c < mp; c += VW) {
      const vec old_max = loadu(s.mx + c);
      vec new_max = old_max;
      for (int64_t j = 0; j < nk; ++j) new_max = vmax(new_max, loadu(s.s + j * mp + c));
      vec total = vec{};
      for (int64_t j = 0; j < nk; ++j) {
        const vec e = exp2v(loadu(s.s + j * mp + c) - new_max);
        storeu(s.s + j * mp + c, e);
        total += e;
      }
      const vec a = exp2v(old_max - new_max);  // old_max = -inf on the first chunk: 0
      storeu(s.sum + c, loadu(s.sum + c) * a + total);
      storeu(s.mx + c, new_max);
      storeu(s.alpha + c, a);
    }
    for (int64_t i = 0; i < mp; ++i) {
      const vec a = splat(s.alpha[i]);
      float* o = s.o + i * Dp;
      for (int64_t d = 0; d < Dp; d += VW) storeu(o + d, loadu(o + d) * a);
    }

    // O += P . V with P(i, j) = S^T[j][i]; rows i0.. only need the keys their last
    // row can see (the rest of P is exactly 0).
    for (int64_t i0 = 0; i0 < mp; i0 += MR) {
      int64_t kdim = nk;
      if (p.causal) {
        const int64_t last_visible = first_pos + (i0 + MR - 1) / G - k0;
        if (last_visible < 0) continue;
        if (last_visible + 1 < kdim) kdim = last_visible + 1;
      }
      const float* P = s.s + i0;
      float* o = s.o + i0 * Dp;
      int64_t c0 = 0;
      for (; c0 + NR <= ncols; c0 += NR) micro_pv<MR, NV>(P, mp, vrows, c0, o + c0, Dp, kdim);
      for (; c0 < ncols; c0 += VW) micro_pv<MR, 1>(P, mp, vrows, c0, o + c0, Dp, kdim);
    }
  }

  for (int64_t i = 0; i < m; ++i) {
    const int64_t t = w.token0 + i / G, h = w.kv_head * G + i % G;
    store_row(p.out, t * p.o_stride[0] + h * p.o_stride[1], p.o_stride[2], p.o_dtype, D,
              s.o + i * Dp, 1.0f / s.sum[i]);
  }
}

}  // namespace
}  // namespace VLLM_ASCEND_RERANK_ISA

#define VAR_STR2(x) #x
#define VAR_STR(x) VAR_STR2(x)
extern const KernelTable VAR_CAT(kernel_, VLLM_ASCEND_RERANK_ISA) = {
    VAR_STR(VLLM_ASCEND_RERANK_ISA),
    &VLLM_ASCEND_RERANK_ISA::scratch_floats,
    &VLLM_ASCEND_RERANK_ISA::attend,
};

}  // namespace vllm_ascend_rerank::cpu
