// Choosing the next token from a row of logits: greedy, or sampling with temperature, top-k and
// top-p (nucleus), after an optional repetition penalty. Each sequence has its own random stream
// seeded from (seed, sequence index), so the same seed gives the same tokens whatever the batch
// a sequence runs in.
//
//   SamplingOptions o;  o.temperature = 0.7f;  o.top_p = 0.9f;  o.seed = 42;
//   Sampler s(o, /*sequence=*/0);
//   int32_t next = s.next(logits, vocab, history);   // history: prompt + generated ids
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ramstream::inference {

struct SamplingOptions {
  float temperature = 0.0f;         // 0: greedy (argmax, lowest id on ties)
  int64_t top_k = 0;                // 0: no limit
  float top_p = 1.0f;               // keep the smallest set whose probability reaches top_p
  float repetition_penalty = 1.0f;  // > 1: discourage ids already in the history (CTRL rule)
  uint64_t seed = 0;
};

// An empty string when the options are valid, else what is wrong (naming the option).
std::string validate(const SamplingOptions& o);

class Sampler {
 public:
  Sampler(const SamplingOptions& options, uint64_t sequence);
  // `logits` [vocab] is not modified.
  int32_t next(const float* logits, int64_t vocab, const std::vector<int32_t>& history);

 private:
  double uniform();  // [0, 1)
  SamplingOptions o_;
  uint64_t state_;
  std::vector<float> work_;
  std::vector<int32_t> ids_;
  std::vector<char> seen_;
};

}  // namespace ramstream::inference
