#include "kernels/swiglu.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu_isa.h"
#include "kernels/simd_avx2.h"

namespace ramstream::kernels {
namespace {

// Cephes expf constants.
// kExpHi keeps floor(x log2 e + 0.5) <= 127, so that 2^fx is a normal float.
constexpr float kExpHi = 88.0f, kExpLo = -87.3365447504f;
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// Every step is one correctly rounded operation (std::fma where the vector path uses vfmadd), so
// exp_scalar and exp8 agree bit for bit.
float exp_scalar(float x) {
  x = std::fmin(std::fmax(x, kExpLo), kExpHi);
  const float fx = std::floor(x * kLog2e + 0.5f);
  x = std::fma(-fx, kLn2Hi, x);
  x = std::fma(-fx, kLn2Lo, x);
  const float z = x * x;
  float y = kP0;
  for (float c : {kP1, kP2, kP3, kP4, kP5}) y = std::fma(y, x, c);
  y = std::fma(y, z, x) + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

float to_f(float x) {
  return x;
}
float to_f(bf16 x) {
  return to_float(x);
}
void put(float* p, float x) {
  *p = x;
}
void put(bf16* p, float x) {
  *p = to_bf16(x);
}

template <class T>
void forward_scalar(const T* gu, T* out, int64_t rows, int64_t F, int64_t from) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = from; i < F; ++i) {
      const float g = to_f(gu[r * 2 * F + i]), u = to_f(gu[r * 2 * F + F + i]);
      put(out + r * F + i, g / (1.0f + exp_scalar(-g)) * u);
    }
  }
}

template <class T>
void backward_scalar(const T* dout, const T* gu, T* dgu, int64_t rows, int64_t F, int64_t from) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = from; i < F; ++i) {
      const float g = to_f(gu[r * 2 * F + i]), u = to_f(gu[r * 2 * F + F + i]);
      const float dy = to_f(dout[r * F + i]);
      const float sig = 1.0f / (1.0f + exp_scalar(-g));
      put(dgu + r * 2 * F + F + i, dy * (g * sig));
      put(dgu + r * 2 * F + i, dy * u * sig * (1.0f + g * (1.0f - sig)));
    }
  }
}

#if RAMSTREAM_KERNELS_X86

RAMSTREAM_TARGET_AVX2 __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
  const __m256 fx = _mm256_floor_ps(
      _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Hi), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Lo), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(kP0);
  for (float c : {kP1, kP2, kP3, kP4, kP5}) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, z, x), _mm256_set1_ps(1.0f));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

RAMSTREAM_TARGET_AVX2 inline void store8(float* p, __m256 x) {
  _mm256_storeu_ps(p, x);
}
RAMSTREAM_TARGET_AVX2 inline void store8(bf16* p, __m256 x) {
  store8_bf16(p, x);
}

template <class T>
RAMSTREAM_TARGET_AVX2 void forward_avx2(const T* gu, T* out, int64_t rows, int64_t F) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  const int64_t vec = F / 8 * 8;
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = gu + r * 2 * F;
    for (int64_t i = 0; i < vec; i += 8) {
      const __m256 gv = load8_fp32(g + i), uv = load8_fp32(g + F + i);
      const __m256 e = exp8(_mm256_sub_ps(zero, gv));
      store8(out + r * F + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), uv));
    }
  }
  if (vec < F) forward_scalar(gu, out, rows, F, vec);
}

template <class T>
RAMSTREAM_TARGET_AVX2 void backward_avx2(const T* dout, const T* gu, T* dgu, int64_t rows,
                                         int64_t F) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  const int64_t vec = F / 8 * 8;
  for (int64_t r = 0; r < rows; ++r) {
    const T* g = gu + r * 2 * F;
    T* dg = dgu + r * 2 * F;
    for (int64_t i = 0; i < vec; i += 8) {
      const __m256 gv = load8_fp32(g + i), uv = load8_fp32(g + F + i);
      const __m256 dy = load8_fp32(dout + r * F + i);
      const __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, gv))));
      store8(dg + F + i, _mm256_mul_ps(dy, _mm256_mul_ps(gv, sig)));
      const __m256 a = _mm256_mul_ps(_mm256_mul_ps(dy, uv), sig);
      const __m256 b = _mm256_add_ps(one, _mm256_mul_ps(gv, _mm256_sub_ps(one, sig)));
      store8(dg + i, _mm256_mul_ps(a, b));
    }
  }
  if (vec < F) backward_scalar(dout, gu, dgu, rows, F, vec);
}

#endif

template <class T>
void forward(const T* gu, T* out, int64_t rows, int64_t F) {
#if RAMSTREAM_KERNELS_X86
  if (kernel_isa() == Isa::kAvx2Fma) return forward_avx2(gu, out, rows, F);
#endif
  forward_scalar(gu, out, rows, F, 0);
}

template <class T>
void backward(const T* dout, const T* gu, T* dgu, int64_t rows, int64_t F) {
#if RAMSTREAM_KERNELS_X86
  if (kernel_isa() == Isa::kAvx2Fma) return backward_avx2(dout, gu, dgu, rows, F);
#endif
  backward_scalar(dout, gu, dgu, rows, F, 0);
}

}  // namespace

float exp_approx(float x) {
  return exp_scalar(x);
}

void swiglu_forward_rows(const float* gu, float* out, int64_t rows, int64_t F) {
  forward(gu, out, rows, F);
}
void swiglu_forward_rows(const bf16* gu, bf16* out, int64_t rows, int64_t F) {
  forward(gu, out, rows, F);
}
void swiglu_backward_rows(const float* dout, const float* gu, float* dgu, int64_t rows, int64_t F) {
  backward(dout, gu, dgu, rows, F);
}
void swiglu_backward_rows(const bf16* dout, const bf16* gu, bf16* dgu, int64_t rows, int64_t F) {
  backward(dout, gu, dgu, rows, F);
}

}  // namespace ramstream::kernels
