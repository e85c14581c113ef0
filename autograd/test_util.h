// Helpers shared by the autograd tests: random parameters and the per-tensor error report (max abs
// and max relative error, printed for every compared tensor).
#pragma once

#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "model/config.h"
#include "model/params.h"
#include "model/testing.h"

namespace ramstream::autograd::testing {

using model::testing::tiny_config;
using model::testing::TinyOptions;

// Weights ~ N(0, 0.1^2) (scaled so activations stay O(1)), norm weights ~ 1 + N(0, 0.1^2).
inline model::ModelParams random_params(const model::ModelConfig& cfg, at::ScalarType dtype,
                                        uint64_t seed) {
  at::manual_seed(seed);
  model::ModelParams p = model::allocate_model_params(cfg, at::kDouble);
  model::for_each_param(p, [&](const std::string& name, at::Tensor& t) {
    const bool is_norm = name.find("norm") != std::string::npos;
    at::Tensor noise = at::randn(t.sizes(), at::kDouble) * (is_norm ? 0.1 : 0.3);
    t.copy_(is_norm ? noise + 1.0 : noise);
  });
  return model::clone_model_params(p, dtype);
}

struct ErrorReport {
  double max_abs = 0, max_rel = 0;
};

// max_rel = max|ours - ref| / max|ref|: the error relative to the tensor's scale, which stays
// meaningful where single elements of ref are near zero.
inline ErrorReport compare(const std::string& name, const at::Tensor& ours, const at::Tensor& ref) {
  const at::Tensor a = ours.detach().to(at::kDouble), b = ref.detach().to(at::kDouble);
  ErrorReport r;
  if (a.sizes() != b.sizes()) {
    std::printf("  %-28s SHAPE MISMATCH\n", name.c_str());
    r.max_abs = r.max_rel = INFINITY;
    return r;
  }
  r.max_abs = a.numel() ? (a - b).abs().max().item<double>() : 0.0;
  const double scale = b.numel() ? b.abs().max().item<double>() : 0.0;
  r.max_rel = scale > 0 ? r.max_abs / scale : r.max_abs;
  std::printf("  %-28s max abs %.3e  max rel %.3e\n", name.c_str(), r.max_abs, r.max_rel);
  return r;
}

// Options edited by a (captureless) lambda: keeps test-case tables to one line per case.
inline TinyOptions opts_with(void (*edit)(TinyOptions&)) {
  TinyOptions o;
  edit(o);
  return o;
}

// Positions [B,T] int64 of rows packing documents of the given lengths (each row's lengths sum
// to T): 0..len-1 per document, laid end to end.
inline at::Tensor packed_positions(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> flat;
  for (const std::vector<int64_t>& lengths : rows) {
    for (int64_t len : lengths) {
      for (int64_t k = 0; k < len; ++k) flat.push_back(k);
    }
  }
  const int64_t B = static_cast<int64_t>(rows.size());
  const int64_t T = B > 0 ? static_cast<int64_t>(flat.size()) / B : 0;
  for (const std::vector<int64_t>& lengths : rows) {
    int64_t sum = 0;
    for (int64_t len : lengths) sum += len;
    TORCH_CHECK(sum == T, "packed_positions: rows of different lengths");
  }
  return at::tensor(flat, at::kLong).view({B, T});
}

// Compares every parameter grad (ours vs ref, same config); returns the largest max_rel.
inline double compare_grads(model::ModelParams& ours, model::ModelParams& ref) {
  std::vector<std::pair<std::string, at::Tensor>> a, b;
  model::for_each_param(ours, [&](const std::string& n, at::Tensor& t) { a.emplace_back(n, t); });
  model::for_each_param(ref, [&](const std::string& n, at::Tensor& t) { b.emplace_back(n, t); });
  TORCH_CHECK(a.size() == b.size(), "compare_grads: ", a.size(), " vs ", b.size(), " tensors");
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    TORCH_CHECK(a[i].first == b[i].first, "compare_grads: ", a[i].first, " vs ", b[i].first);
    worst = std::max(worst, compare("grad " + a[i].first, a[i].second, b[i].second).max_rel);
  }
  return worst;
}

}  // namespace ramstream::autograd::testing
