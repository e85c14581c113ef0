// What an Engine allocates beyond its ParamStore for a batch shape, before anything is allocated:
// the trainer refuses a recipe that cannot fit, the planner (planner/cost_model.h) keeps its plans
// within the machine. Mirrors the buffers of pipeline/engine.cpp and autograd/block.cpp.
//
//   EngineShape shape;  shape.batch = 2;  shape.seq_len = 256;  shape.keep_activations = true;
//   EngineMemory m = estimate_engine_memory(cfg, shape, /*element_bytes=*/2, /*cuda=*/false);
//   // CPU backend: m.device_bytes is host memory too
#pragma once

#include <cstdint>

#include "model/config.h"

namespace ramstream::pipeline {

// Bytes of fp32 logits per cross-entropy chunk when EngineOptions::ce_chunk_rows
// (pipeline/engine.h) is 0. The head's weight-grad GEMM has the chunk's rows as its depth: a GPU
// needs hundreds of rows, and on the CPU 8 MiB (42 rows of a 49k vocabulary) ran that GEMM at a
// fraction of the rate that 64 MiB (340 rows) reaches.
constexpr int64_t default_ce_chunk_bytes(bool cuda) {
  return cuda ? int64_t{256} << 20 : int64_t{64} << 20;
}

struct EngineShape {
  int64_t batch = 1;          // rows per micro-batch
  int64_t seq_len = 1;        // tokens per row
  int64_t micro_batches = 1;  // per step (grad accumulation)
  int64_t num_slots = 2;
  bool keep_activations = false;
  bool host_checkpoints = false;
};

struct EngineMemory {
  double device_bytes = 0, host_bytes = 0;  // in double: hostile sizes overflow int64
};

// element_bytes: 2 for bf16 compute, 4 for fp32.
EngineMemory estimate_engine_memory(const model::ModelConfig& cfg, const EngineShape& shape,
                                    int64_t element_bytes, bool cuda);

}  // namespace ramstream::pipeline
