#include "pipeline/engine_memory.h"

#include <algorithm>

#include "pipeline/stages.h"

namespace ramstream::pipeline {

EngineMemory estimate_engine_memory(const model::ModelConfig& c, const EngineShape& shape,
                                    int64_t element_bytes, bool cuda) {
  const StagePlan plan = plan_stages(c);
  const double E = double(element_bytes), A = 4;  // compute and accumulation dtype bytes
  const double B = double(shape.batch), T = double(shape.seq_len);
  const double M = double(shape.micro_batches);
  const double N = B * T, L = double(c.num_layers), C = double(c.hidden_size);
  const double F = double(c.intermediate_size), Q = double(c.q_dim()), KV = double(c.kv_dim());
  const double H = double(c.num_heads), slot = double(plan.slot_numel);
  EngineMemory m;
  // Weight slots; fp32 grad buffers (and on CUDA their bf16 halves in the bf16 layout); the tied
  // grad.
  m.device_bytes = double(std::max<int64_t>(2, shape.num_slots)) * slot * E +
                   2 * double(plan.grad_numel) * A +
                   (element_bytes == 2 && cuda ? 2 * slot * E : 0.0);
  if (c.tie_word_embeddings) m.device_bytes += double(c.vocab_size) * C * A;
  // One block's activations and scratch, the head's buffers.
  const double acts = N * (4 * C + 2 * Q + 2 * KV + 2 * F) * E + N * (2 + H) * A;
  const double scratch = N * (Q + 2 * KV + 2 * C + 4 * F + 2 * Q + 2 * KV) * E;
  m.device_bytes += acts + scratch + 3 * N * C * E + N * A;
  // Per micro-batch: residual grads, ids, target rows, positions and document bounds on the
  // device, staging on the host.
  m.device_bytes += M * (N * C * E + 4 * N * 8 + (N + 1) * 4);
  m.host_bytes += 2 * M * (4 * N * 8 + (N + 1) * 4);
  // Block-input checkpoints of every layer and micro-batch (layer-major: all kept at once).
  if (shape.host_checkpoints) {
    m.host_bytes += L * M * N * C * E;
    m.device_bytes += 2 * M * N * C * E;
  } else {
    m.device_bytes += (L + 1) * M * N * C * E;
  }
  if (shape.keep_activations) m.device_bytes += L * M * acts;
  // Attention probabilities of one row, T x T per head, forward and backward.
  m.device_bytes += 2 * H * T * T * E;
  // Cross-entropy chunks of logits and their grads.
  m.device_bytes += 2 * double(default_ce_chunk_bytes(cuda));
  return m;
}

}  // namespace ramstream::pipeline
