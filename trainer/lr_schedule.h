// Learning-rate schedules: linear warmup from 0, then constant, linear or cosine decay to
// min_ratio * peak at the last step. Pure functions of the step, so a resumed run needs only the
// step count to continue the schedule exactly.
//
//   LrSchedule s{LrSchedule::Kind::kCosine, /*peak=*/1e-4, /*warmup=*/10, /*total=*/200, 0.1};
//   engine.set_learning_rate(float(s.at(step)));   // step: 1-based number of this update
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace ramstream::trainer {

struct LrSchedule {
  enum class Kind { kConstant, kLinear, kCosine };
  Kind kind = Kind::kConstant;
  double peak = 1e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_ratio = 0.0;

  static Kind kind_from_name(const std::string& name) {
    if (name == "linear") return Kind::kLinear;
    if (name == "cosine") return Kind::kCosine;
    return Kind::kConstant;
  }

  double at(int64_t step) const {
    if (warmup_steps > 0 && step <= warmup_steps) {
      return peak * double(step) / double(warmup_steps);
    }
    if (kind == Kind::kConstant) return peak;
    const int64_t span = std::max<int64_t>(1, total_steps - warmup_steps);
    const double p = std::clamp(double(step - warmup_steps) / double(span), 0.0, 1.0);
    const double low = peak * min_ratio;
    if (kind == Kind::kLinear) return peak - (peak - low) * p;
    const double pi = 3.14159265358979323846;
    return low + (peak - low) * 0.5 * (1.0 + std::cos(pi * p));
  }
};

}  // namespace ramstream::trainer
