// Perplexity through the decode path. Each window of `context` tokens (windows start every
// `stride` tokens) has its first context - stride tokens prefilled and the remaining `stride`
// fed one at a time through Generator::decode, each scored against the model's prediction. So
// the compressed KV cache is what predicts every scored token: stricter than the teacher-forced
// fake quantisation (quantise-dequantise inside one full forward) that most papers report.
//
//   PerplexityOptions o;  o.context = 512;  o.stride = 256;  o.batch = 8;
//   PerplexityResult r = perplexity(gen, ids, o);
//   std::printf("ppl %.3f over %lld tokens\n", r.perplexity(), (long long)r.tokens);
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "inference/generator.h"

namespace ramstream::inference {

struct PerplexityOptions {
  int64_t context = 512;
  int64_t stride = 0;                                         // 0: context / 2
  int64_t max_windows = 0;                                    // 0: every window the text holds
  int64_t batch = 8;                                          // windows decoded together
  std::function<void(int64_t done, int64_t total)> progress;  // scored tokens
};

struct PerplexityResult {
  double nll_sum = 0;  // natural log
  int64_t tokens = 0;  // scored
  int64_t windows = 0;
  double seconds = 0;  // prefill + decode
  double decode_seconds = 0;
  double kv_bytes_per_token = 0;  // cache bytes / context positions, at the end of each window
  double perplexity() const;
};

// Throws std::invalid_argument when the text is shorter than one window or the options are bad.
PerplexityResult perplexity(Generator& gen, const std::vector<int32_t>& ids,
                            const PerplexityOptions& options);

// -log softmax(logits)[target], in double.
double token_nll(const float* logits, int64_t vocab, int32_t target);

}  // namespace ramstream::inference
