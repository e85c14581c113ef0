// Random fp32 / bf16 arrays for the kernels' tests (internal to kernels/).
//
//   std::vector<bf16> x = normal_values<bf16>(n, /*seed=*/1, /*stddev=*/2.f);
#pragma once

#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "kernels/bf16.h"

namespace ramstream::kernels {

template <class T>
std::vector<T> normal_values(int64_t n, uint32_t seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, stddev);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) {
    if constexpr (std::is_same_v<T, bf16>) {
      x = to_bf16(d(rng));
    } else {
      x = d(rng);
    }
  }
  return v;
}

}  // namespace ramstream::kernels
