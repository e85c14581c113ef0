#include "autograd/rope.h"

#include <cmath>

#include "autograd/ops.h"

namespace ramstream::autograd {

std::vector<double> rope_inv_freq(const model::ModelConfig& cfg) {
  const int64_t D = cfg.head_dim, half = D / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    inv[static_cast<size_t>(i)] = 1.0 / std::pow(cfg.rope_theta, double(2 * i) / double(D));
  }
  const model::RopeScaling& rs = cfg.rope_scaling;
  switch (rs.type) {
    case model::RopeScalingType::kNone:
      break;
    case model::RopeScalingType::kLinear:
      for (double& f : inv) f /= rs.factor;
      break;
    case model::RopeScalingType::kLlama3: {
      // Long wavelengths (beyond the original context / low_freq_factor) are interpolated by
      // `factor`, short ones (below original / high_freq_factor) kept, the band between blended.
      const double old_ctx = double(rs.original_max_position_embeddings);
      const double low_wavelen = old_ctx / rs.low_freq_factor;
      const double high_wavelen = old_ctx / rs.high_freq_factor;
      for (double& f : inv) {
        const double wavelen = 2.0 * M_PI / f;
        if (wavelen < high_wavelen) continue;
        if (wavelen > low_wavelen) {
          f /= rs.factor;
          continue;
        }
        const double smooth =
            (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
      break;
    }
  }
  return inv;
}

RopeTables make_rope_tables(const model::ModelConfig& cfg, int64_t T, at::ScalarType compute_dtype,
                            at::Device device) {
  const std::vector<double> inv = rope_inv_freq(cfg);
  const int64_t half = static_cast<int64_t>(inv.size());
  at::Tensor cos = at::empty({T, half}, at::kDouble);
  at::Tensor sin = at::empty({T, half}, at::kDouble);
  double* cp = cos.data_ptr<double>();
  double* sp = sin.data_ptr<double>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(t) * inv[static_cast<size_t>(i)];
      cp[t * half + i] = std::cos(angle);
      sp[t * half + i] = std::sin(angle);
    }
  }
  const at::ScalarType acc = acc_dtype(compute_dtype);
  return {cos.to(device, acc), sin.to(device, acc)};
}

}  // namespace ramstream::autograd
