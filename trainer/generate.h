// Greedy generation with a plain KV cache over model::ModelParams: the reference the streaming
// Generator (inference/generator.h, which the trainer's exact-match eval and `ramstream
// generate` run) is tested against, written the simplest way. It batches prompts of different
// lengths by padding them on the left: each row's positions start at 0 at its first real token
// and padded keys are masked out, so every row gets exactly the tokens it would get alone.
//
//   std::vector<std::vector<int32_t>> prompts = {tok.encode(p1), tok.encode(p2)};
//   GenerateOptions opt;  opt.max_new_tokens = 16;  opt.stop_ids = {tok.eos_id()};
//   std::vector<std::vector<int32_t>> out = greedy_generate(params, cfg, prompts, opt);
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/ATen.h>

#include "model/config.h"
#include "model/params.h"

namespace ramstream::trainer {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  std::vector<int32_t> stop_ids;  // generation of a row ends after one of these (it is kept)
  int64_t max_batch = 32;         // prompts per forward pass (sorted by length first)
  // Called after each batch with the number of prompts done so far (progress reporting).
  std::function<void(int64_t done, int64_t total)> progress;
};

// The generated tokens of each prompt (stop token included when one was produced). Runs in the
// dtype and on the device of `params`.
std::vector<std::vector<int32_t>> greedy_generate(const model::ModelParams& params,
                                                  const model::ModelConfig& cfg,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  const GenerateOptions& opts);

// Logits [B, T, V] (fp32) of a full forward over left-padded ids [B, T] whose row b starts with
// pad[b] padding positions; the reference path the KV cache is tested against.
at::Tensor padded_forward_logits(const model::ModelParams& params, const model::ModelConfig& cfg,
                                 const at::Tensor& ids, const std::vector<int64_t>& pad);

}  // namespace ramstream::trainer
