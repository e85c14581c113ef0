#include "inference/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>

namespace ramstream::inference {

double PerplexityResult::perplexity() const {
  return tokens > 0 ? std::exp(nll_sum / double(tokens)) : 0.0;
}

double token_nll(const float* logits, int64_t vocab, int32_t target) {
  double mx = logits[0];
  for (int64_t i = 1; i < vocab; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - mx);
  return std::log(sum) + mx - double(logits[target]);
}

PerplexityResult perplexity(Generator& gen, const std::vector<int32_t>& ids,
                            const PerplexityOptions& o) {
  const int64_t N = o.context, S = o.stride > 0 ? o.stride : o.context / 2;
  if (N < 2) throw std::invalid_argument("--context must be >= 2, got " + std::to_string(N));
  if (S < 1 || S >= N) {
    throw std::invalid_argument("--stride must be in [1, context), got " + std::to_string(S));
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < N) {
    throw std::invalid_argument("the text has " + std::to_string(n) +
                                " tokens, fewer than one window (--context " + std::to_string(N) +
                                ")");
  }
  std::vector<int64_t> starts;
  for (int64_t s = 0; s + N <= n; s += S) starts.push_back(s);
  if (o.max_windows > 0 && static_cast<int64_t>(starts.size()) > o.max_windows) {
    starts.resize(static_cast<size_t>(o.max_windows));
  }
  const int64_t P = N - S;  // prefilled per window
  const int64_t total = static_cast<int64_t>(starts.size()) * S;
  PerplexityResult r;
  const auto t0 = std::chrono::steady_clock::now();
  double kv_per_token_sum = 0;
  const int64_t B = std::max<int64_t>(1, o.batch);
  for (size_t first = 0; first < starts.size(); first += static_cast<size_t>(B)) {
    const size_t last = std::min(starts.size(), first + static_cast<size_t>(B));
    std::vector<std::vector<int32_t>> prompts;
    for (size_t w = first; w < last; ++w) {
      prompts.emplace_back(ids.begin() + starts[w], ids.begin() + starts[w] + P);
    }
    DecodeBatch batch = gen.prefill(prompts, N);
    const int64_t rows = batch.size();
    std::vector<int64_t> all(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) all[static_cast<size_t>(i)] = i;
    const auto td = std::chrono::steady_clock::now();
    for (int64_t t = P; t < N; ++t) {
      std::vector<int32_t> next(static_cast<size_t>(rows));
      for (int64_t i = 0; i < rows; ++i) {
        const int32_t target = ids[static_cast<size_t>(starts[first + static_cast<size_t>(i)] + t)];
        r.nll_sum += token_nll(batch.logits(i), batch.vocab(), target);
        next[static_cast<size_t>(i)] = target;
      }
      r.tokens += rows;
      if (t + 1 < N) gen.decode(batch, next, all);
      if (o.progress) o.progress(r.tokens, total);
    }
    r.decode_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - td).count();
    // Each row holds N - 1 positions at the end (the last token is scored, never fed).
    kv_per_token_sum += double(batch.kv_bytes()) / double(N - 1);
    r.windows += rows;
  }
  r.kv_bytes_per_token = kv_per_token_sum / double(r.windows);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace ramstream::inference
