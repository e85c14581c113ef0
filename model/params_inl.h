// Template bodies for model/params.h (included at its end; not to be included directly).
#pragma once

#include <string>

namespace ramstream::model {

template <class Fn>
void for_each_param(ModelParams& p, Fn&& fn) {
  fn(std::string("embedding"), p.embedding);
  for (size_t l = 0; l < p.blocks.size(); ++l) {
    BlockParams& b = p.blocks[l];
    const std::string prefix = "layers." + std::to_string(l) + ".";
    at::Tensor* tensors[] = {&b.attn_norm, &b.wqkv,     &b.bqkv, &b.wo,
                             &b.bo,        &b.mlp_norm, &b.wgu,  &b.wd};
    const char* names[] = {"attn_norm", "wqkv", "bqkv", "wo", "bo", "mlp_norm", "wgu", "wd"};
    for (int i = 0; i < kNumBlockTensors; ++i) {
      if (tensors[i]->defined()) fn(prefix + names[i], *tensors[i]);
    }
  }
  fn(std::string("final_norm"), p.final_norm);
  if (p.lm_head.defined() && !p.lm_head.is_same(p.embedding)) fn(std::string("lm_head"), p.lm_head);
}

}  // namespace ramstream::model
