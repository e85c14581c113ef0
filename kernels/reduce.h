// Sum of squares over a flat array, for exact global-norm gradient clipping.
//
// Deterministic whatever the thread count or instruction set: fixed blocks of
// kSumOfSquaresBlock elements, each summed in double over 16 interleaved lanes in a fixed order,
// then the block partials summed in block order from 0. Each square of an fp32 value is exact in
// double, so the only roundings are the additions, whose order never changes. The partials are
// public too: a rank holding blocks [i, j) of an array computes its partials, the ranks exchange
// them, and summing all of them in block order gives sum_of_squares of the whole array bit for
// bit (the sharded optimizer's global norm, dist/).
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

constexpr int64_t kSumOfSquaresBlock = 4096;
constexpr int64_t sum_of_squares_blocks(int64_t n) {
  return (n + kSumOfSquaresBlock - 1) / kSumOfSquaresBlock;
}

// max_threads: 0 = the calling TBB arena, 1 = serially in the calling thread, k > 1 = at most k.
// The result is the same for every value.
double sum_of_squares(const float* x, int64_t n, int max_threads = 0);
double sum_of_squares(const bf16* x, int64_t n, int max_threads = 0);
// partials[k] = sum of squares of x[k * kSumOfSquaresBlock, ...), sum_of_squares_blocks(n) of them.
void sum_of_squares_partials(const float* x, int64_t n, double* partials, int max_threads = 0);
void sum_of_squares_partials(const bf16* x, int64_t n, double* partials, int max_threads = 0);

}  // namespace ramstream::kernels
