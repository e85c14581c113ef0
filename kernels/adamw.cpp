#include "kernels/adamw.h"

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cpu_isa.h"
#include "kernels/parallel.h"
#include "kernels/simd_avx2.h"

namespace ramstream::kernels {
namespace {

// The per-step scalars, formed the way libtorch forms them: its options are doubles, so every
// scalar expression is evaluated in double and rounded to fp32 once, where ATen's fp32 kernels
// convert their Scalar arguments.
struct Coeffs {
  float decay;  // 1 - lr*wd
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float sqrt_bias_correction2;
  float eps;
  float neg_step_size;  // -lr / bias_correction1, the addcdiv_ value
  float grad_scale;
};

Coeffs make_coeffs(const AdamWConfig& cfg, int64_t step, float grad_scale) {
  const double lr = cfg.lr, beta1 = cfg.beta1, beta2 = cfg.beta2;
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  Coeffs c;
  c.decay = static_cast<float>(1.0 - lr * static_cast<double>(cfg.weight_decay));
  c.beta1 = static_cast<float>(beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  c.sqrt_bias_correction2 = static_cast<float>(std::sqrt(bias_correction2));
  c.eps = cfg.eps;
  c.neg_step_size = static_cast<float>(-(lr / bias_correction1));
  c.grad_scale = grad_scale;
  return c;
}

inline float load_grad(const float* g, int64_t i) {
  return g[i];
}
inline float load_grad(const bf16* g, int64_t i) {
  return to_float(g[i]);
}

// One element per iteration; also the tail of the vector path. The FMAs are where GCC contracted
// ATen's add_ (self + alpha*other) and addcmul_ (self + value*t1*t2) kernels; everything else is
// separately rounded, as in ATen (this target builds with -ffp-contract=off).
// libtorch skips `p *= 1 - lr*wd` when wd == 0; multiplying by exactly 1.0f changes no bits.
template <class G>
inline void adamw_scalar(float* p, float* m, float* v, const G* g, bf16* w, int64_t begin,
                         int64_t end, const Coeffs& c) {
  for (int64_t i = begin; i < end; ++i) {
    const float gi = load_grad(g, i) * c.grad_scale;  // read before w[i] is written: aliasing
    const float pi = p[i] * c.decay;
    const float mi = std::fma(c.one_minus_beta1, gi, m[i] * c.beta1);
    const float vi = std::fma(c.one_minus_beta2 * gi, gi, v[i] * c.beta2);
    const float denom = std::sqrt(vi) / c.sqrt_bias_correction2 + c.eps;
    const float pn = pi + (c.neg_step_size * mi) / denom;
    p[i] = pn;
    m[i] = mi;
    v[i] = vi;
    if (w) w[i] = to_bf16(pn);
  }
}

#if RAMSTREAM_KERNELS_X86
// Eight elements per iteration, the same operations in the same order as adamw_scalar. The
// loop is bound by memory, not by the two divisions and the square root (see adamw_bench).
template <class G>
RAMSTREAM_TARGET_AVX2 void adamw_avx2(float* p, float* m, float* v, const G* g, bf16* w,
                                      int64_t begin, int64_t end, const Coeffs& c) {
  const __m256 decay = _mm256_set1_ps(c.decay);
  const __m256 beta1 = _mm256_set1_ps(c.beta1), one_minus_beta1 = _mm256_set1_ps(c.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(c.beta2), one_minus_beta2 = _mm256_set1_ps(c.one_minus_beta2);
  const __m256 sqrt_bc2 = _mm256_set1_ps(c.sqrt_bias_correction2);
  const __m256 eps = _mm256_set1_ps(c.eps);
  const __m256 neg_step_size = _mm256_set1_ps(c.neg_step_size);
  const __m256 grad_scale = _mm256_set1_ps(c.grad_scale);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    // The grads of these 8 elements are in registers before the bf16 store below overwrites
    // them when w aliases g.
    const __m256 gi = _mm256_mul_ps(load8_fp32(g + i), grad_scale);
    const __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    const __m256 mi =
        _mm256_fmadd_ps(one_minus_beta1, gi, _mm256_mul_ps(_mm256_loadu_ps(m + i), beta1));
    const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(one_minus_beta2, gi), gi,
                                      _mm256_mul_ps(_mm256_loadu_ps(v + i), beta2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), sqrt_bc2), eps);
    const __m256 pn = _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(neg_step_size, mi), denom));
    _mm256_storeu_ps(p + i, pn);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    if (w) store8_bf16(w + i, pn);
  }
  adamw_scalar(p, m, v, g, w, i, end, c);  // inlined here, so std::fma becomes vfmadd
}
#endif

bool overlaps(const void* a, int64_t a_bytes, const void* b, int64_t b_bytes) {
  const auto a0 = reinterpret_cast<uintptr_t>(a), b0 = reinterpret_cast<uintptr_t>(b);
  return a0 < b0 + static_cast<uintptr_t>(b_bytes) && b0 < a0 + static_cast<uintptr_t>(a_bytes);
}

template <class G>
void adamw_impl(const char* who, float* param, float* m, float* v, const G* grad, int64_t n,
                const AdamWConfig& cfg, int64_t step, float grad_scale, bf16* working,
                int max_threads) {
  if (n < 0) throw std::invalid_argument(std::string(who) + ": negative element count");
  if (step < 1) {
    throw std::invalid_argument(std::string(who) + ": step must be >= 1 (1-based), got " +
                                std::to_string(step));
  }
  if (n == 0) return;
  const Coeffs c = make_coeffs(cfg, step, grad_scale);
  const bool avx2 = kernel_isa() == Isa::kAvx2Fma;
  parallel_chunks(n, max_threads, [&](int64_t, int64_t begin, int64_t end) {
#if RAMSTREAM_KERNELS_X86
    if (avx2) return adamw_avx2(param, m, v, grad, working, begin, end, c);
#endif
    (void)avx2;
    adamw_scalar(param, m, v, grad, working, begin, end, c);
  });
}

}  // namespace

void adamw_update(float* param, float* m, float* v, const float* grad, int64_t n,
                  const AdamWConfig& cfg, int64_t step, float grad_scale, bf16* working,
                  int max_threads) {
  adamw_impl("adamw_update", param, m, v, grad, n, cfg, step, grad_scale, working, max_threads);
}

void adamw_update(float* param, float* m, float* v, const bf16* grad, int64_t n,
                  const AdamWConfig& cfg, int64_t step, float grad_scale, bf16* working,
                  int max_threads) {
  if (working && working != grad && n > 0 &&
      overlaps(working, n * int64_t{sizeof(bf16)}, grad, n * int64_t{sizeof(bf16)})) {
    throw std::invalid_argument(
        "adamw_update: bf16 working copy partially overlaps the grads; it may alias them only "
        "exactly (working == grad)");
  }
  adamw_impl("adamw_update", param, m, v, grad, n, cfg, step, grad_scale, working, max_threads);
}

}  // namespace ramstream::kernels
