#include "inference/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace ramstream::inference {
namespace {

// splitmix64: a small, well-mixed generator; one stream per sequence.
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

std::string validate(const SamplingOptions& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature)) {
    return "--temperature must be >= 0 (0 = greedy), got " + std::to_string(o.temperature);
  }
  if (o.top_k < 0) return "--top-k must be >= 0 (0 = off), got " + std::to_string(o.top_k);
  if (!(o.top_p > 0 && o.top_p <= 1)) {
    return "--top-p must be in (0, 1], got " + std::to_string(o.top_p);
  }
  if (!(o.repetition_penalty > 0) || !std::isfinite(o.repetition_penalty)) {
    return "--repetition-penalty must be > 0 (1 = off), got " +
           std::to_string(o.repetition_penalty);
  }
  return "";
}

Sampler::Sampler(const SamplingOptions& options, uint64_t sequence) : o_(options) {
  uint64_t s = options.seed ^ (sequence * 0xD1B54A32D192ED03ull);
  state_ = splitmix64(s);
}

double Sampler::uniform() {
  return double(splitmix64(state_) >> 11) * (1.0 / 9007199254740992.0);
}

int32_t Sampler::next(const float* logits, int64_t vocab, const std::vector<int32_t>& history) {
  work_.assign(logits, logits + vocab);
  if (o_.repetition_penalty != 1.0f) {
    // Once per distinct id, however often it occurs (Hugging Face's rule).
    seen_.assign(static_cast<size_t>(vocab), 0);
    for (int32_t id : history) {
      if (id < 0 || id >= vocab || seen_[static_cast<size_t>(id)]) continue;
      seen_[static_cast<size_t>(id)] = 1;
      float& l = work_[static_cast<size_t>(id)];
      l = l > 0 ? l / o_.repetition_penalty : l * o_.repetition_penalty;
    }
  }
  if (o_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  }
  // Candidates by descending logit (ties: lower id first), cut by top-k.
  ids_.resize(static_cast<size_t>(vocab));
  std::iota(ids_.begin(), ids_.end(), 0);
  const int64_t k = o_.top_k > 0 ? std::min(o_.top_k, vocab) : vocab;
  auto by_logit = [&](int32_t a, int32_t b) {
    const float la = work_[static_cast<size_t>(a)], lb = work_[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  if (k < vocab) {
    std::partial_sort(ids_.begin(), ids_.begin() + k, ids_.end(), by_logit);
    ids_.resize(static_cast<size_t>(k));
  } else {
    std::sort(ids_.begin(), ids_.end(), by_logit);
  }
  // Softmax of logit / T over the candidates, in double.
  const double inv_t = 1.0 / double(o_.temperature);
  const double top = double(work_[static_cast<size_t>(ids_[0])]) * inv_t;
  std::vector<double> p(ids_.size());
  double sum = 0;
  for (size_t i = 0; i < ids_.size(); ++i) {
    p[i] = std::exp(double(work_[static_cast<size_t>(ids_[i])]) * inv_t - top);
    sum += p[i];
  }
  size_t keep = ids_.size();
  if (o_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < ids_.size(); ++i) {
      cum += p[i] / sum;
      if (cum >= double(o_.top_p)) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += p[i];
  double u = uniform() * kept;
  for (size_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u < 0) return ids_[i];
  }
  return ids_[keep - 1];
}

}  // namespace ramstream::inference
