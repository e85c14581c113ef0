#include "kernels/swiglu.h"

#include "kernels/cpu_isa.h"
#include "kernels/elementwise.h"

namespace ramstream::kernels {
namespace {

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
