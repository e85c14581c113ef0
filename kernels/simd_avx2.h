// AVX2 building blocks shared by the kernels' vector paths (internal to kernels/).
//
// Every function carries RAMSTREAM_TARGET_AVX2, so it compiles in a baseline x86-64 build and may
// only run after cpu_isa.h chose Isa::kAvx2Fma.
//
//   __m256 x = load8_fp32(src + i);              // or load8_fp32(bf16_src + i): widen by shift
//   store8_bf16(dst + i, x);                     // round-to-nearest-even, NaN -> 0x7fc0
#pragma once

#include "kernels/bf16.h"
#include "kernels/parallel.h"

#if RAMSTREAM_KERNELS_X86
#include <immintrin.h>

namespace ramstream::kernels {

RAMSTREAM_TARGET_AVX2 inline __m256 load8_fp32(const float* p) {
  return _mm256_loadu_ps(p);
}

// bf16 -> fp32 is exact: zero-extend each 16-bit pattern to 32 bits and shift it to the top half.
RAMSTREAM_TARGET_AVX2 inline __m256 load8_fp32(const bf16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// The vector form of to_bf16() in bf16.h, the same steps as ATen's cvtfp32_bf16 except that NaN
// lanes become 0x7fc0 (the scalar c10::BFloat16 result) rather than 0xffff.
RAMSTREAM_TARGET_AVX2 inline __m128i fp32_to_bf16x8(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  const __m256i ordered = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_ORD_Q));
  r = _mm256_blendv_epi8(_mm256_set1_epi32(0x7fc0), r, ordered);
  // Each 32-bit lane now holds a value <= 0xffff, so unsigned saturation never clips.
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

RAMSTREAM_TARGET_AVX2 inline void store8_bf16(bf16* p, __m256 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), fp32_to_bf16x8(x));
}

}  // namespace ramstream::kernels
#endif  // RAMSTREAM_KERNELS_X86
