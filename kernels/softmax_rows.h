// Softmax row pieces on raw fp32 or bf16 arrays for the CPU attention and cross-entropy loops,
// vectorised (AVX2+FMA where the CPU has it) with the kernels' own exp (elementwise.h); the
// scalar path keeps 8 partial sums like the vector one, so both give the same bits.
//
//   float m = row_max(x, n);                                   // max_j x[j]
//   float s = exp_sum(x, n, scale, shift, out_scale, store);   // sum_j e_j, e_j = exp(x_j*scale -
//   shift);
//                                                              // store: x[j] = e_j * out_scale
//   scale_row(x, n, s);                                        // x[j] *= s
//   float d = exp_dot(p, dp, n, scale, lse);                   // p[j] = exp(p_j*scale - lse),
//                                                              // returns sum_j p_j dp_j
//   softmax_grad(p, dp, n, d, scale);                          // dp[j] = p_j (dp_j - d) scale
// Sums are of the fp32 values before any rounding to bf16; n may be anything >= 1.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace ramstream::kernels {

float row_max(const float* x, int64_t n);
float row_max(const bf16* x, int64_t n);
float exp_sum(float* x, int64_t n, float scale, float shift, float out_scale, bool store);
float exp_sum(bf16* x, int64_t n, float scale, float shift, float out_scale, bool store);
void scale_row(float* x, int64_t n, float s);
void scale_row(bf16* x, int64_t n, float s);
float exp_dot(float* p, const float* dp, int64_t n, float scale, float lse);
float exp_dot(bf16* p, const bf16* dp, int64_t n, float scale, float lse);
void softmax_grad(const float* p, float* dp, int64_t n, float dot, float scale);
void softmax_grad(const bf16* p, bf16* dp, int64_t n, float dot, float scale);

}  // namespace ramstream::kernels
