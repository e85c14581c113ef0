#include "trainer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "autograd/ops.h"
#include "autograd/rope.h"

namespace ramstream::trainer {
namespace {

// Hugging Face's RMSNorm: normalise in fp32, round to the compute dtype, then scale.
at::Tensor rmsnorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const at::Tensor xf = x.to(autograd::acc_dtype(x.scalar_type()));
  const at::Tensor r = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (xf * r).to(x.scalar_type()) * w;
}

// Rotate-half RoPE of x [B,H,t,D] with per-row angles cos/sin [B,1,t,D/2].
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor a = x.narrow(-1, 0, half), b = x.narrow(-1, half, half);
  return at::cat({a * cos - b * sin, b * cos + a * sin}, -1);
}

// The KV cache and per-row bookkeeping of one batch of left-padded prompts.
struct Batch {
  int64_t B = 0, capacity = 0, length = 0;  // rows, cache positions, positions filled
  std::vector<int64_t> pad;                 // leading padding per row
  at::Tensor pad_t;                         // [B,1,1,1] int64
  std::vector<at::Tensor> k, v;             // per layer [B,NKV,capacity,D]
  at::Tensor inv_freq;                      // [D/2] fp32
};

// Forward of t new tokens per row (ids [B,t]) through every layer, filling the cache; returns
// the final hidden states [B,t,C] after the final norm.
at::Tensor forward_step(const model::ModelParams& p, const model::ModelConfig& cfg, Batch& st,
                        const at::Tensor& ids) {
  const int64_t B = ids.size(0), t = ids.size(1), L = st.length;
  const int64_t NH = cfg.num_heads, NKV = cfg.num_kv_heads, D = cfg.head_dim;
  const auto opts = p.embedding.options();
  const at::Device dev = p.embedding.device();

  // Positions: column j of the cache is position j - pad[b] of row b (clamped for padding).
  const at::Tensor cols = at::arange(L, L + t, at::TensorOptions().dtype(at::kLong).device(dev));
  const at::Tensor pos = (cols.view({1, t}) - st.pad_t.view({B, 1})).clamp_min(0);  // [B,t]
  const at::Tensor angle = pos.to(at::kFloat).unsqueeze(-1) * st.inv_freq;          // [B,t,D/2]
  const at::Tensor cos = angle.cos().to(opts.dtype()).unsqueeze(1);
  const at::Tensor sin = angle.sin().to(opts.dtype()).unsqueeze(1);

  // Key j is visible to query column L+i when it is a real token (j >= pad) and not in the
  // future (j <= L+i). Each column also sees itself, so padding rows stay finite.
  const at::Tensor keys = at::arange(L + t, at::TensorOptions().dtype(at::kLong).device(dev));
  const at::Tensor q_col = cols.view({1, 1, t, 1});
  const at::Tensor k_col = keys.view({1, 1, 1, L + t});
  const at::Tensor visible = ((k_col >= st.pad_t) & (k_col <= q_col)) | (k_col == q_col);

  at::Tensor x = p.embedding.index_select(0, ids.reshape(-1)).view({B, t, cfg.hidden_size});
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const model::BlockParams& w = p.blocks[static_cast<size_t>(l)];
    const at::Tensor h = rmsnorm(x, w.attn_norm, cfg.rms_norm_eps);
    const at::Tensor qkv = at::linear(h, w.wqkv, w.bqkv);  // [B,t,(NH+2NKV)D]
    const at::Tensor q =
        rope(qkv.narrow(-1, 0, NH * D).view({B, t, NH, D}).transpose(1, 2), cos, sin);
    const at::Tensor k =
        rope(qkv.narrow(-1, NH * D, NKV * D).view({B, t, NKV, D}).transpose(1, 2), cos, sin);
    const at::Tensor v =
        qkv.narrow(-1, (NH + NKV) * D, NKV * D).view({B, t, NKV, D}).transpose(1, 2);
    at::Tensor& kc = st.k[static_cast<size_t>(l)];
    at::Tensor& vc = st.v[static_cast<size_t>(l)];
    kc.narrow(2, L, t).copy_(k);
    vc.narrow(2, L, t).copy_(v);
    at::Tensor kk = kc.narrow(2, 0, L + t), vv = vc.narrow(2, 0, L + t);
    if (NH != NKV) {
      kk = kk.repeat_interleave(NH / NKV, 1);
      vv = vv.repeat_interleave(NH / NKV, 1);
    }
    at::Tensor scores =
        at::matmul(q, kk.transpose(-1, -2)).to(autograd::acc_dtype(q.scalar_type())) /
        std::sqrt(double(D));
    scores.masked_fill_(visible.logical_not(), -INFINITY);
    const at::Tensor probs = at::softmax(scores, -1).to(opts.dtype());
    const at::Tensor o = at::matmul(probs, vv).transpose(1, 2).reshape({B, t, NH * D});
    x = x + at::linear(o, w.wo, w.bo);
    const at::Tensor h2 = rmsnorm(x, w.mlp_norm, cfg.rms_norm_eps);
    const at::Tensor gu = at::linear(h2, w.wgu);
    const int64_t F = cfg.intermediate_size;
    x = x + at::linear(at::silu(gu.narrow(-1, 0, F)) * gu.narrow(-1, F, F), w.wd);
  }
  st.length = L + t;
  return rmsnorm(x, p.final_norm, cfg.rms_norm_eps);
}

Batch make_batch(const model::ModelParams& p, const model::ModelConfig& cfg,
                 const std::vector<int64_t>& pad, int64_t capacity) {
  Batch st;
  st.B = static_cast<int64_t>(pad.size());
  st.capacity = capacity;
  st.pad = pad;
  const at::Device dev = p.embedding.device();
  st.pad_t = at::tensor(pad, at::kLong).to(dev).view({st.B, 1, 1, 1});
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    st.k.push_back(
        at::zeros({st.B, cfg.num_kv_heads, capacity, cfg.head_dim}, p.embedding.options()));
    st.v.push_back(at::zeros_like(st.k.back()));
  }
  const std::vector<double> inv = autograd::rope_inv_freq(cfg);
  st.inv_freq = at::tensor(std::vector<float>(inv.begin(), inv.end()), at::kFloat).to(dev);
  return st;
}

void check_fits(const model::ModelConfig& cfg, int64_t total) {
  if (cfg.sliding_window > 0 && total > cfg.sliding_window) {
    throw std::invalid_argument("greedy_generate: prompt + new tokens (" + std::to_string(total) +
                                ") exceed the sliding window (" +
                                std::to_string(cfg.sliding_window) + "), which is not supported");
  }
}

}  // namespace

at::Tensor padded_forward_logits(const model::ModelParams& params, const model::ModelConfig& cfg,
                                 const at::Tensor& ids, const std::vector<int64_t>& pad) {
  check_fits(cfg, ids.size(1));
  Batch st = make_batch(params, cfg, pad, ids.size(1));
  const at::Tensor h = forward_step(params, cfg, st, ids.to(params.embedding.device()));
  return at::linear(h, params.lm_head).to(at::kFloat);
}

std::vector<std::vector<int32_t>> greedy_generate(const model::ModelParams& params,
                                                  const model::ModelConfig& cfg,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  const GenerateOptions& opts) {
  const int64_t n = static_cast<int64_t>(prompts.size());
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(n));
  for (const auto& pr : prompts) {
    if (pr.empty()) throw std::invalid_argument("greedy_generate: empty prompt");
  }
  // Similar lengths together: less padding.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return prompts[static_cast<size_t>(a)].size() < prompts[static_cast<size_t>(b)].size();
  });
  const at::Device dev = params.embedding.device();
  const int64_t max_batch = std::max<int64_t>(1, opts.max_batch);
  for (int64_t first = 0; first < n; first += max_batch) {
    const int64_t B = std::min(max_batch, n - first);
    int64_t T = 0;
    for (int64_t i = 0; i < B; ++i) {
      T = std::max<int64_t>(T, prompts[static_cast<size_t>(order[first + i])].size());
    }
    check_fits(cfg, T + opts.max_new_tokens);
    std::vector<int64_t> pad(static_cast<size_t>(B));
    at::Tensor ids = at::zeros({B, T}, at::kLong);
    for (int64_t i = 0; i < B; ++i) {
      const auto& pr = prompts[static_cast<size_t>(order[first + i])];
      pad[static_cast<size_t>(i)] = T - static_cast<int64_t>(pr.size());
      for (size_t j = 0; j < pr.size(); ++j) {
        ids[i][pad[static_cast<size_t>(i)] + static_cast<int64_t>(j)] = int64_t{pr[j]};
      }
    }
    Batch st = make_batch(params, cfg, pad, T + opts.max_new_tokens);
    at::Tensor h = forward_step(params, cfg, st, ids.to(dev));
    std::vector<bool> done(static_cast<size_t>(B), false);
    for (int64_t s = 0; s < opts.max_new_tokens; ++s) {
      const at::Tensor logits = at::linear(h.select(1, h.size(1) - 1), params.lm_head);
      const at::Tensor next = logits.argmax(-1).to(at::kCPU);  // [B]
      const int64_t* nx = next.data_ptr<int64_t>();
      bool all_done = true;
      for (int64_t i = 0; i < B; ++i) {
        if (done[static_cast<size_t>(i)]) continue;
        const int32_t tok = static_cast<int32_t>(nx[i]);
        out[static_cast<size_t>(order[first + i])].push_back(tok);
        if (std::find(opts.stop_ids.begin(), opts.stop_ids.end(), tok) != opts.stop_ids.end()) {
          done[static_cast<size_t>(i)] = true;
        } else {
          all_done = false;
        }
      }
      if (all_done || s + 1 == opts.max_new_tokens) break;
      h = forward_step(params, cfg, st, next.view({B, 1}).to(dev));
    }
    if (opts.progress) opts.progress(first + B, n);
  }
  return out;
}

}  // namespace ramstream::trainer
