// The model shapes the CPU benchmarks share, so their figures describe the same models: a
// 49.7M-parameter Llama-style model (train_step_bench, save_overlap_bench, planner_accuracy):
// vocab 16384 (tied), hidden 512, 14 layers, 8/4 heads of 64, MLP 1408 (SmolLM2-135M's shape is
// model/shapes.h).
//
//   const ramstream::model::ModelConfig cfg = ramstream::bench::model_50m_config();
#pragma once

#include "model/config.h"

namespace ramstream::bench {

inline model::ModelConfig model_50m_config() {
  model::ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 16384;
  c.hidden_size = 512;
  c.intermediate_size = 1408;
  c.num_layers = 14;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  return c;
}

}  // namespace ramstream::bench
