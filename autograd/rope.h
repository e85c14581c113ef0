// Rotary position tables for rope_forward / rope_backward, with the rope scalings of Llama 3.x
// ("llama3") and linear position interpolation applied to the inverse frequencies.
//
//   RopeTables rope = make_rope_tables(cfg, /*T=*/256, at::kFloat);
//   rope_forward(q_out, q_in, rope.cos, rope.sin);
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "model/config.h"

namespace ramstream::autograd {

// inv_freq[i] = theta^(-2i/D) for i < D/2, then scaled per cfg.rope_scaling. Computed in double.
std::vector<double> rope_inv_freq(const model::ModelConfig& cfg);

struct RopeTables {
  at::Tensor cos;  // [T, D/2], acc dtype of the compute dtype
  at::Tensor sin;
};

// Positions 0..T-1.
RopeTables make_rope_tables(const model::ModelConfig& cfg, int64_t T, at::ScalarType compute_dtype,
                            at::Device device = at::kCPU);

}  // namespace ramstream::autograd
