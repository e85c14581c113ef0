// Sum of squares over a flat array, for exact global-norm gradient clipping.
//
// Deterministic whatever the thread count or instruction set: fixed 64K-element chunks, each
// summed in double over 16 interleaved lanes in a fixed order, then the chunk partials summed in
// chunk order. Each square of an fp32 value is exact in double, so the only roundings are the
// additions, whose order never changes.
//
//   double ss = 0;
//   for (const Layer& l : layers) ss += sum_of_squares(l.grad, l.n);   // in layer order
//   const double norm = std::sqrt(ss);
//   const float coef = norm > max_norm ? float(max_norm / (norm + 1e-6)) : 1.0f;
//
// NaN or inf in x gives a NaN or inf result, so a caller can detect a non-finite norm.
#pragma once

#include <cstdint>

#include "kernels/bf16.h"

namespace ramstream::kernels {

// max_threads: 0 = the calling TBB arena, 1 = serially in the calling thread, k > 1 = at most k.
// The result is the same for every value.
double sum_of_squares(const float* x, int64_t n, int max_threads = 0);
double sum_of_squares(const bf16* x, int64_t n, int max_threads = 0);

}  // namespace ramstream::kernels
