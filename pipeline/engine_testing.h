// Shared by the engine tests: random micro-batches and the non-streamed reference trainer the
// streamed engine must equal, in either store layout.
//
//   ReferenceTrainer ref(cfg, init, opts, B, T, /*bf16_layout=*/true);
//   const Batches b = make_batches(cfg, /*M=*/2, B, T, /*seed=*/100);
//   double loss = ref.step(b);        // the same step Engine::train_step runs
#pragma once

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "autograd/model.h"
#include "kernels/adamw.h"
#include "kernels/bf16.h"
#include "kernels/reduce.h"
#include "pipeline/engine.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"

namespace ramstream::pipeline::testing {

struct Batches {
  std::vector<at::Tensor> ids, targets;
  std::vector<at::Tensor> positions;  // empty, or per micro-batch [B,T] (or undefined: unpacked)
};

// Next-token targets that stay inside each document of packed rows: the last token of a document
// predicts nothing. ids, positions [B,T] int64.
inline at::Tensor document_targets(const at::Tensor& ids, const at::Tensor& positions) {
  at::Tensor targets = at::full_like(ids, autograd::kIgnoreIndex);
  const int64_t B = ids.size(0), T = ids.size(1);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t + 1 < T; ++t) {
      if (positions[b][t + 1].item<int64_t>() != 0) targets[b][t] = ids[b][t + 1];
    }
  }
  return targets;
}

inline Batches make_batches(const model::ModelConfig& cfg, int64_t M, int64_t B, int64_t T,
                            uint64_t seed) {
  at::manual_seed(seed);
  Batches b;
  for (int64_t mb = 0; mb < M; ++mb) {
    at::Tensor ids = at::randint(0, cfg.vocab_size, {B, T}, at::kLong);
    at::Tensor labels = ids.clone();
    labels[0][1] = autograd::kIgnoreIndex;  // a masked position
    b.ids.push_back(ids);
    b.targets.push_back(autograd::next_token_targets(labels));
  }
  return b;
}

// The non-streamed model on flats laid out like the store: the same ops in the same order per
// stage, the same norm (per-stage sums in stage order) and the same AdamW kernel. In the bf16
// layout it computes from the bf16 working copies with fp32 grads, rounds each stage's grads to
// bf16 once (where the engine's land in the working region) and lets the optimizer write the new
// working copy, exactly as the engine's bf16 layout does.
class ReferenceTrainer {
 public:
  ReferenceTrainer(const model::ModelConfig& cfg, const model::ModelParams& init,
                   const EngineOptions& opts, int64_t B, int64_t T, bool bf16_layout = false)
      : cfg_(cfg),
        plan_(plan_stages(cfg)),
        opts_(opts),
        bf16_(bf16_layout),
        ws_(cfg, B, T, bf16_layout ? at::kBFloat16 : at::kFloat,
            autograd::ActivationMode::kRecompute) {
    for (const Stage& s : plan_.stages) {
      for (auto* v : {&master_, &m_, &v_, &grad_}) v->push_back(at::zeros({s.numel}, at::kFloat));
      working_.push_back(at::zeros({s.numel}, at::kBFloat16));
      grad16_.push_back(at::zeros({s.numel}, at::kBFloat16));
    }
    params_ = bind_stage_params(master_, plan_, cfg);
    grads_ = bind_stage_params(grad_, plan_, cfg);
    working_params_ = bind_stage_params(working_, plan_, cfg);
    std::vector<at::Tensor> src;
    model::for_each_param(const_cast<model::ModelParams&>(init),
                          [&](const std::string&, at::Tensor& t) { src.push_back(t); });
    size_t i = 0;
    model::for_each_param(params_, [&](const std::string&, at::Tensor& t) { t.copy_(src[i++]); });
    for (size_t s = 0; s < master_.size(); ++s) round(master_[s], working_[s]);
  }

  double step(const Batches& b) {
    ++step_;
    for (at::Tensor& g : grad_) g.zero_();
    int64_t count = 0;
    for (const at::Tensor& t : b.targets) count += autograd::count_targets(t);
    double loss = 0;
    for (size_t mb = 0; mb < b.ids.size(); ++mb) {
      const at::Tensor positions = b.positions.empty() ? at::Tensor() : b.positions[mb];
      if (!separate_grads_) {
        loss +=
            autograd::model_forward_backward(bf16_ ? working_params_ : params_, grads_, b.ids[mb],
                                             b.targets[mb], 1.0 / double(count), ws_, positions)
                .loss_sum;
        continue;
      }
      for (at::Tensor& g : mb_grad_) g.zero_();
      loss +=
          autograd::model_forward_backward(bf16_ ? working_params_ : params_, mb_grads_, b.ids[mb],
                                           b.targets[mb], 1.0 / double(count), ws_, positions)
              .loss_sum;
      for (size_t s = 0; s < grad_.size(); ++s) grad_[s].add_(mb_grad_[s]);
    }
    double total = 0;
    for (size_t s = 0; s < grad_.size(); ++s) {
      if (bf16_) {
        round(grad_[s], grad16_[s]);
        total += kernels::sum_of_squares(bf16_ptr(grad16_[s]), grad16_[s].numel());
      } else {
        total += kernels::sum_of_squares(grad_[s].data_ptr<float>(), grad_[s].numel());
      }
    }
    norm_ = std::sqrt(total);
    float coef = 1.0f;
    if (opts_.max_grad_norm > 0) {
      coef = static_cast<float>(std::min(1.0, opts_.max_grad_norm / (norm_ + 1e-6)));
      if (opts_.skip_nonfinite && !std::isfinite(norm_)) return loss / double(count);
    }
    for (size_t s = 0; s < master_.size(); ++s) {
      float* p = master_[s].data_ptr<float>();
      float* m = m_[s].data_ptr<float>();
      float* v = v_[s].data_ptr<float>();
      const int64_t n = master_[s].numel();
      if (bf16_) {
        kernels::adamw_update(p, m, v, bf16_ptr(grad16_[s]), n, opts_.adamw, step_, coef,
                              bf16_ptr(working_[s]));
      } else {
        kernels::adamw_update(p, m, v, grad_[s].data_ptr<float>(), n, opts_.adamw, step_, coef,
                              nullptr);
      }
    }
    return loss / double(count);
  }

  // Each micro-batch's grads computed on their own and then summed in micro-batch order: what
  // data parallel over one micro-batch per rank computes (for two ranks, whose sum a + b has no
  // order, bitwise).
  void set_separate_micro_batch_grads(bool on) {
    separate_grads_ = on;
    if (on && mb_grad_.empty()) {
      for (const at::Tensor& g : grad_) mb_grad_.push_back(at::zeros_like(g));
      mb_grads_ = bind_stage_params(mb_grad_, plan_, cfg_);
    }
  }

  const std::vector<at::Tensor>& masters() const { return master_; }
  const std::vector<at::Tensor>& working() const { return working_; }
  double grad_norm() const { return norm_; }

 private:
  static kernels::bf16* bf16_ptr(const at::Tensor& t) {
    return reinterpret_cast<kernels::bf16*>(t.data_ptr());
  }
  static void round(const at::Tensor& f32, const at::Tensor& b16) {
    kernels::fp32_to_bf16(f32.data_ptr<float>(), bf16_ptr(b16), f32.numel());
  }

  model::ModelConfig cfg_;
  StagePlan plan_;
  EngineOptions opts_;
  bool bf16_;
  autograd::ModelWorkspace ws_;
  std::vector<at::Tensor> master_, m_, v_, grad_, working_, grad16_, mb_grad_;
  model::ModelParams params_, grads_, working_params_, mb_grads_;
  bool separate_grads_ = false;
  int64_t step_ = 0;
  double norm_ = 0;
};

// Copies of every stage's master, m, v and (bf16 layout) working copy, for before/after checks.
struct StoreSnapshot {
  std::vector<at::Tensor> master, m, v, working;
};

inline StoreSnapshot snapshot(ParamStore& s) {
  StoreSnapshot out;
  for (int64_t i = 0; i < s.plan().num_stages(); ++i) {
    const ParamStore::Region& r = s.region(i);
    out.master.push_back(r.master.clone());
    out.m.push_back(r.m.clone());
    out.v.push_back(r.v.clone());
    out.working.push_back(r.working.defined() ? r.working.clone() : at::Tensor());
  }
  return out;
}

// Bitwise equality of two tensors of the same dtype (NaNs with equal bits are equal).
inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), static_cast<size_t>(x.nbytes())) == 0;
}

}  // namespace ramstream::pipeline::testing
