#include "kernels/softmax_rows.h"

#include <algorithm>
#include <limits>

#include "kernels/cpu_isa.h"
#include "kernels/elementwise.h"

namespace ramstream::kernels {
namespace {

// The 8 partial sums of both paths, added in one fixed order.
float reduce8(const float* acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// The elements after the last full group of 8, added one by one to `sum` (both paths).
template <class T>
float exp_sum_tail(T* x, int64_t from, int64_t n, float scale, float shift, float out_scale,
                   bool store, float sum) {
  for (int64_t j = from; j < n; ++j) {
    const float e = exp_scalar(to_f(x[j]) * scale - shift);
    sum += e;
    if (store) put(x + j, e * out_scale);
  }
  return sum;
}

template <class T>
float exp_dot_tail(T* p, const T* dp, int64_t from, int64_t n, float scale, float lse, float dot) {
  for (int64_t j = from; j < n; ++j) {
    const float e = exp_scalar(to_f(p[j]) * scale - lse);
    put(p + j, e);
    dot += e * to_f(dp[j]);
  }
  return dot;
}

template <class T>
float exp_sum_scalar(T* x, int64_t n, float scale, float shift, float out_scale, bool store) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t vec = n / 8 * 8;
  for (int64_t j = 0; j < vec; ++j) {
    const float e = exp_scalar(to_f(x[j]) * scale - shift);
    acc[j % 8] += e;
    if (store) put(x + j, e * out_scale);
  }
  float sum = reduce8(acc);
  return exp_sum_tail(x, vec, n, scale, shift, out_scale, store, sum);
}

template <class T>
float exp_dot_scalar(T* p, const T* dp, int64_t n, float scale, float lse) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t vec = n / 8 * 8;
  for (int64_t j = 0; j < vec; ++j) {
    const float e = exp_scalar(to_f(p[j]) * scale - lse);
    put(p + j, e);
    acc[j % 8] += e * to_f(dp[j]);
  }
  float dot = reduce8(acc);
  return exp_dot_tail(p, dp, vec, n, scale, lse, dot);
}

#if RAMSTREAM_KERNELS_X86

template <class T>
RAMSTREAM_TARGET_AVX2 float exp_sum_avx2(T* x, int64_t n, float scale, float shift, float out_scale,
                                         bool store) {
  const int64_t vec = n / 8 * 8;
  __m256 acc = _mm256_setzero_ps();
  const __m256 sc = _mm256_set1_ps(scale), sh = _mm256_set1_ps(shift),
               os = _mm256_set1_ps(out_scale);
  for (int64_t j = 0; j < vec; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_mul_ps(load8_fp32(x + j), sc), sh));
    acc = _mm256_add_ps(acc, e);
    if (store) store8(x + j, _mm256_mul_ps(e, os));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float sum = reduce8(lanes);
  return exp_sum_tail(x, vec, n, scale, shift, out_scale, store, sum);
}

template <class T>
RAMSTREAM_TARGET_AVX2 float exp_dot_avx2(T* p, const T* dp, int64_t n, float scale, float lse) {
  const int64_t vec = n / 8 * 8;
  __m256 acc = _mm256_setzero_ps();
  const __m256 sc = _mm256_set1_ps(scale), l = _mm256_set1_ps(lse);
  for (int64_t j = 0; j < vec; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_mul_ps(load8_fp32(p + j), sc), l));
    store8(p + j, e);
    acc = _mm256_add_ps(acc, _mm256_mul_ps(e, load8_fp32(dp + j)));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float dot = reduce8(lanes);
  return exp_dot_tail(p, dp, vec, n, scale, lse, dot);
}

#endif

bool avx2() {
#if RAMSTREAM_KERNELS_X86
  return kernel_isa() == Isa::kAvx2Fma;
#else
  return false;
#endif
}

template <class T>
float max_of(const T* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, to_f(x[j]));
  return m;
}

template <class T>
float exp_sum_any(T* x, int64_t n, float scale, float shift, float out_scale, bool store) {
#if RAMSTREAM_KERNELS_X86
  if (avx2()) return exp_sum_avx2(x, n, scale, shift, out_scale, store);
#endif
  return exp_sum_scalar(x, n, scale, shift, out_scale, store);
}

template <class T>
float exp_dot_any(T* p, const T* dp, int64_t n, float scale, float lse) {
#if RAMSTREAM_KERNELS_X86
  if (avx2()) return exp_dot_avx2(p, dp, n, scale, lse);
#endif
  return exp_dot_scalar(p, dp, n, scale, lse);
}

template <class T>
void scale_any(T* x, int64_t n, float s) {
  for (int64_t j = 0; j < n; ++j) put(x + j, to_f(x[j]) * s);
}

template <class T>
void grad_any(const T* p, T* dp, int64_t n, float dot, float scale) {
  for (int64_t j = 0; j < n; ++j) put(dp + j, to_f(p[j]) * (to_f(dp[j]) - dot) * scale);
}

}  // namespace

// max, scaling and the grad formula are one rounding per element whatever the order: plain loops
// that the compiler vectorises as it can give the same bits on every path.
float row_max(const float* x, int64_t n) {
  return max_of(x, n);
}
float row_max(const bf16* x, int64_t n) {
  return max_of(x, n);
}
float exp_sum(float* x, int64_t n, float scale, float shift, float out_scale, bool store) {
  return exp_sum_any(x, n, scale, shift, out_scale, store);
}
float exp_sum(bf16* x, int64_t n, float scale, float shift, float out_scale, bool store) {
  return exp_sum_any(x, n, scale, shift, out_scale, store);
}
void scale_row(float* x, int64_t n, float s) {
  scale_any(x, n, s);
}
void scale_row(bf16* x, int64_t n, float s) {
  scale_any(x, n, s);
}
float exp_dot(float* p, const float* dp, int64_t n, float scale, float lse) {
  return exp_dot_any(p, dp, n, scale, lse);
}
float exp_dot(bf16* p, const bf16* dp, int64_t n, float scale, float lse) {
  return exp_dot_any(p, dp, n, scale, lse);
}
void softmax_grad(const float* p, float* dp, int64_t n, float dot, float scale) {
  grad_any(p, dp, n, dot, scale);
}
void softmax_grad(const bf16* p, bf16* dp, int64_t n, float dot, float scale) {
  grad_any(p, dp, n, dot, scale);
}

}  // namespace ramstream::kernels
