#include "model/flops.h"

namespace ramstream::model {

int64_t matmul_param_count(const ModelConfig& cfg) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size;
  const int64_t per_block = cfg.qkv_dim() * C + C * cfg.q_dim() + 2 * F * C + C * F;
  return cfg.num_layers * per_block + cfg.vocab_size * C;  // the LM head, tied or not
}

double attention_flops_per_token(const ModelConfig& cfg, int64_t seq_len) {
  // (QK^T + PV) x 2 FLOP x q_dim x seq_len/2 (causal) forward, x 3 with backward.
  return 6.0 * double(cfg.num_layers) * double(cfg.q_dim()) * double(seq_len);
}

double training_flops_per_token(const ModelConfig& cfg, int64_t seq_len) {
  return 6.0 * double(matmul_param_count(cfg)) + attention_flops_per_token(cfg, seq_len);
}

}  // namespace ramstream::model
