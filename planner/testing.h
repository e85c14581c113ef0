// Synthetic machines and models for the planner's tests: fixed figures, so the tests do not
// depend on what the machine running them measures.
//
//   HardwareProfile hw = testing::cpu_machine();
//   TrainWorkload w = testing::train_workload(testing::small_model(), /*seq_len=*/64, /*rows=*/2);
#pragma once

#include "model/config.h"
#include "planner/cost_model.h"

namespace ramstream::planner::testing {

// A 2-core AVX-512 VM like the development machines.
inline HardwareProfile cpu_machine() {
  HardwareProfile hw;
  hw.name = "synthetic-cpu";
  hw.measured = false;
  hw.cpu.model = "synthetic";
  hw.cpu.cores = hw.cpu.threads = 2;
  hw.cpu.ram_total_bytes = 24e9;
  hw.cpu.ram_available_bytes = 20e9;
  hw.cpu.read_bytes_per_s = 30e9;
  hw.cpu.copy_bytes_per_s = 12e9;
  hw.cpu.read_bytes_per_s_1t = 16e9;
  hw.cpu.gemm_fp32_flops = 260e9;
  hw.cpu.gemm_bf16_flops = 500e9;
  hw.cpu.idle_w = 3;
  hw.cpu.max_w = 10;
  return hw;
}

// 16 cores and one H200-class GPU.
inline HardwareProfile gpu_machine() {
  HardwareProfile hw = cpu_machine();
  hw.name = "synthetic-gpu";
  hw.cpu.cores = hw.cpu.threads = 16;
  hw.cpu.ram_total_bytes = 128e9;
  hw.cpu.ram_available_bytes = 120e9;
  hw.cpu.read_bytes_per_s = 100e9;
  hw.cpu.copy_bytes_per_s = 40e9;
  hw.cpu.read_bytes_per_s_1t = 15e9;
  hw.cpu.gemm_fp32_flops = 1.2e12;
  hw.cpu.gemm_bf16_flops = 2.4e12;
  hw.cpu.idle_w = 24;
  hw.cpu.max_w = 80;
  hw.gpu.present = true;
  hw.gpu.name = "synthetic H200";
  hw.gpu.memory_bytes = 139e9;
  hw.gpu.h2d_bytes_per_s = hw.gpu.d2h_bytes_per_s = 50e9;
  hw.gpu.hbm_bytes_per_s = 4.0e12;
  hw.gpu.gemm_bf16_flops = 7e14;
  hw.gpu.idle_w = 75;
  hw.gpu.max_w = 700;
  return hw;
}

// A 4-layer Llama-style model (hidden 256, GQA 4/2 heads of 64, vocabulary 4096, tied).
inline model::ModelConfig small_model() {
  model::ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 4096;
  c.hidden_size = 256;
  c.intermediate_size = 704;
  c.num_layers = 4;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = true;
  return c;
}

inline TrainWorkload train_workload(const model::ModelConfig& cfg, int64_t seq_len,
                                    int64_t rows_per_step) {
  TrainWorkload w;
  w.model = cfg;
  w.seq_len = seq_len;
  w.rows_per_step = rows_per_step;
  w.clip = true;
  return w;
}

}  // namespace ramstream::planner::testing
