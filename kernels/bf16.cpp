#include "kernels/bf16.h"

#include <stdexcept>

#include "kernels/cpu_isa.h"
#include "kernels/parallel.h"
#include "kernels/simd_avx2.h"

namespace ramstream::kernels {
namespace {

void fp32_to_bf16_scalar(const float* src, bf16* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
}

void bf16_to_fp32_scalar(const bf16* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

#if RAMSTREAM_KERNELS_X86
RAMSTREAM_TARGET_AVX2 void fp32_to_bf16_avx2(const float* src, bf16* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8_bf16(dst + i, load8_fp32(src + i));
  fp32_to_bf16_scalar(src + i, dst + i, n - i);
}

RAMSTREAM_TARGET_AVX2 void bf16_to_fp32_avx2(const bf16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8_fp32(src + i));
  bf16_to_fp32_scalar(src + i, dst + i, n - i);
}
#endif

}  // namespace

void fp32_to_bf16(const float* src, bf16* dst, int64_t n, int max_threads) {
  if (n < 0) throw std::invalid_argument("fp32_to_bf16: negative element count");
  const bool avx2 = kernel_isa() == Isa::kAvx2Fma;
  parallel_chunks(n, max_threads, [&](int64_t, int64_t begin, int64_t end) {
#if RAMSTREAM_KERNELS_X86
    if (avx2) return fp32_to_bf16_avx2(src + begin, dst + begin, end - begin);
#endif
    (void)avx2;
    fp32_to_bf16_scalar(src + begin, dst + begin, end - begin);
  });
}

void bf16_to_fp32(const bf16* src, float* dst, int64_t n, int max_threads) {
  if (n < 0) throw std::invalid_argument("bf16_to_fp32: negative element count");
  const bool avx2 = kernel_isa() == Isa::kAvx2Fma;
  parallel_chunks(n, max_threads, [&](int64_t, int64_t begin, int64_t end) {
#if RAMSTREAM_KERNELS_X86
    if (avx2) return bf16_to_fp32_avx2(src + begin, dst + begin, end - begin);
#endif
    (void)avx2;
    bf16_to_fp32_scalar(src + begin, dst + begin, end - begin);
  });
}

}  // namespace ramstream::kernels
