// Shapes of known models, for code that needs a model's size and not its weights: the planner's
// block calibration and cost tables, benchmarks that run random weights of a real model's shape.
//
//   const ramstream::model::ModelConfig cfg = ramstream::model::smollm2_135m_shape();
#pragma once

#include "model/config.h"

namespace ramstream::model {

// SmolLM2-135M (the bundled default model): vocab 49152 (tied), hidden 576, 30 layers, 9/3 heads
// of 64, MLP 1536, RoPE theta 1e5, as its config.json has them.
inline ModelConfig smollm2_135m_shape() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.intermediate_size = 1536;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.max_position_embeddings = 8192;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100000.0;
  c.tie_word_embeddings = true;
  return c;
}

}  // namespace ramstream::model
