// Element helpers of the CPU kernels' fp32 / bf16 loops (internal to kernels/): load and store
// either type as fp32 (scalar and 8-lane), and their exp: Cephes' expf (range reduction by ln 2 in
// two parts, a degree-5 polynomial, the exponent set by integer add), within 0.7 ulp of the true
// value on [-87.3, 88] and clamped outside, in a scalar and an 8-lane AVX2 form that agree bit for
// bit, so a kernel's vector and scalar paths give the same results (cpu_isa.h).
//
//   float e = exp_scalar(to_f(x[i]));      put(y + i, e);        // any CPU, T = float or bf16
//   __m256 e8 = exp8(load8_fp32(x + i));  store8(y + i, e8);     // RAMSTREAM_TARGET_AVX2 code only
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/bf16.h"
#include "kernels/parallel.h"
#include "kernels/simd_avx2.h"

#if RAMSTREAM_KERNELS_X86
#include <immintrin.h>
#endif

namespace ramstream::kernels {

inline float to_f(float x) {
  return x;
}
inline float to_f(bf16 x) {
  return to_float(x);
}
inline void put(float* p, float x) {
  *p = x;
}
inline void put(bf16* p, float x) {
  *p = to_bf16(x);
}

// Cephes expf constants.
// kExpHi keeps floor(x log2 e + 0.5) <= 127, so that 2^fx is a normal float.
constexpr float kExpHi = 88.0f, kExpLo = -87.3365447504f;
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// Every step is one correctly rounded operation (std::fma where the vector path uses vfmadd), so
// exp_scalar and exp8 agree bit for bit.
inline float exp_scalar(float x) {
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

#if RAMSTREAM_KERNELS_X86
RAMSTREAM_TARGET_AVX2 inline void store8(float* p, __m256 x) {
  _mm256_storeu_ps(p, x);
}
RAMSTREAM_TARGET_AVX2 inline void store8(bf16* p, __m256 x) {
  store8_bf16(p, x);
}

RAMSTREAM_TARGET_AVX2 inline __m256 exp8(__m256 x) {
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
#endif

}  // namespace ramstream::kernels
