// Parameter tensors of a model as views into flat buffers, one flat buffer per stage.
//
// A transformer block's tensors live in one contiguous region whose layout (BlockLayout) is the
// same for the host store and the device template, so one layer moves in one copy. q/k/v share
// one matrix (wqkv: q rows, then k rows, then v rows) and gate/up share one (wgu: gate rows, then
// up rows): each pair is one GEMM in the forward and in the backward.
//
//   BlockLayout layout = block_layout(cfg);
//   at::Tensor flat = at::zeros({layout.numel}, at::kFloat);
//   BlockParams p = bind_block_params(flat, layout);   // p.wqkv is a view of flat
//
//   ModelParams grads = allocate_model_params(cfg, at::kDouble);  // zeros, tied lm_head aliases
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "model/config.h"

namespace ramstream::model {

enum class BlockTensor { kAttnNorm, kWqkv, kBqkv, kWo, kBo, kMlpNorm, kWgu, kWd, kCount };
constexpr int kNumBlockTensors = static_cast<int>(BlockTensor::kCount);

struct TensorSlot {
  const char* name = "";
  std::vector<int64_t> shape;  // empty when absent (e.g. bqkv without qkv bias)
  int64_t offset = 0;          // in elements from the start of the flat buffer
  int64_t numel = 0;
  bool present() const { return numel > 0; }
};

// Offsets are aligned to kSlotAlignElems elements so every tensor starts on a 64-byte boundary.
constexpr int64_t kSlotAlignElems = 32;

struct BlockLayout {
  std::array<TensorSlot, kNumBlockTensors> slots;
  int64_t numel = 0;  // flat buffer size in elements, padding included
  const TensorSlot& operator[](BlockTensor t) const { return slots[static_cast<int>(t)]; }
};

BlockLayout block_layout(const ModelConfig& cfg);

struct BlockParams {
  at::Tensor attn_norm;  // [C]
  at::Tensor wqkv;       // [NH*D + 2*NKV*D, C]
  at::Tensor bqkv;       // [NH*D + 2*NKV*D] or undefined
  at::Tensor wo;         // [C, NH*D]
  at::Tensor bo;         // [C] or undefined
  at::Tensor mlp_norm;   // [C]
  at::Tensor wgu;        // [2F, C]: gate rows then up rows
  at::Tensor wd;         // [C, F]
};

BlockParams bind_block_params(const at::Tensor& flat, const BlockLayout& layout);

struct ModelParams {
  at::Tensor embedding;                // [V, C]
  std::vector<at::Tensor> block_flat;  // per layer, [layout.numel]
  std::vector<BlockParams> blocks;     // views into block_flat
  at::Tensor final_norm;               // [C]
  at::Tensor lm_head;  // [V, C]; the same tensor as `embedding` when embeddings are tied

  int64_t numel() const;  // distinct parameters (tied counted once, padding excluded)
};

// All tensors zero-filled, in `dtype`, on the CPU.
ModelParams allocate_model_params(const ModelConfig& cfg, at::ScalarType dtype);
// A fresh model: norm weights 1, every other tensor N(0, stddev^2) from a generator seeded with
// `seed` (the usual initialisation for training from scratch and for benchmarks).
void init_params_normal(ModelParams& p, double stddev, uint64_t seed);

// Deep copy converting dtype (and moving to `device`); keeps the tie.
ModelParams clone_model_params(const ModelParams& p, at::ScalarType dtype,
                               at::Device device = at::kCPU);
// Calls fn(name, tensor) for every distinct parameter in a fixed order (embedding, blocks in
// order with their slot names, final_norm, lm_head unless tied). Names are ours, e.g.
// "layers.3.wqkv"; model/hf_names.h maps them to Hugging Face names.
template <class Fn>
void for_each_param(ModelParams& p, Fn&& fn);

}  // namespace ramstream::model

#include "model/params_inl.h"
