// SwiGLU rows on raw fp32 or bf16 arrays, vectorised (AVX2+FMA where the CPU has it), with an exp
// of our own so that the vector and scalar paths give the same bits (kernels/cpu_isa.h).
//
// gu [rows, 2F] = [gate | up] per row, out / dout [rows, F], dgu [rows, 2F]; arithmetic in fp32:
//   forward   out = g / (1 + exp(-g)) * u
//   backward  sig = 1 / (1 + exp(-g)); du = dy * (g * sig); dg = dy * u * sig * (1 + g * (1 - sig))
// exp is Cephes' expf (range reduction by ln 2 in two parts, a degree-5 polynomial, the exponent
// set by integer add), within a few ulp of the true value on [-87.3, 88] and clamped outside: the
// scalar loops it replaces called libm's expf per element, ~16% of the bf16 training step.
// The rows are processed serially: callers split rows across threads.
//
//   kernels::swiglu_forward_rows(gu, out, rows, F);        // float* or bf16*
//   kernels::swiglu_backward_rows(dout, gu, dgu, rows, F);
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace ramstream::kernels {

void swiglu_forward_rows(const float* gu, float* out, int64_t rows, int64_t F);
void swiglu_forward_rows(const bf16* gu, bf16* out, int64_t rows, int64_t F);
void swiglu_backward_rows(const float* dout, const float* gu, float* dgu, int64_t rows, int64_t F);
void swiglu_backward_rows(const bf16* dout, const bf16* gu, bf16* dgu, int64_t rows, int64_t F);

// The exp both paths use, for tests.
float exp_approx(float x);

}  // namespace ramstream::kernels
