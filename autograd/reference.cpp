#include "autograd/reference.h"

#include <cmath>

#include "autograd/ops.h"

namespace ramstream::autograd::reference {

at::Tensor rmsnorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * w;
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                const at::Tensor& positions) {
  const int64_t B = x.size(0), T = x.size(2), half = x.size(3) / 2;
  at::Tensor c = cos.narrow(0, 0, T).to(x.scalar_type());
  at::Tensor s = sin.narrow(0, 0, T).to(x.scalar_type());
  if (positions.defined()) {  // the table rows of each token's position: [B, 1, T, D/2]
    c = at::embedding(cos, positions).to(x.scalar_type()).view({B, 1, T, half});
    s = at::embedding(sin, positions).to(x.scalar_type()).view({B, 1, T, half});
  }
  const at::Tensor a = x.narrow(3, 0, half), b = x.narrow(3, half, half);
  return at::cat({a * c - b * s, b * c + a * s}, 3);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& positions) {
  const int64_t B = q.size(0), NH = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t G = NH / k.size(1);
  const at::Tensor kk = k.repeat_interleave(G, 1), vv = v.repeat_interleave(G, 1);
  at::Tensor mask = at::ones({T, T}, at::TensorOptions().dtype(at::kBool)).triu(/*diagonal=*/1);
  if (positions.defined()) {
    // Element by element from the definition: hidden[b][t][j] = j > t or j < t - positions[b][t].
    mask = at::zeros({B, 1, T, T}, at::TensorOptions().dtype(at::kBool));
    const at::Tensor p = positions.to(at::kCPU).contiguous();
    const auto pa = p.accessor<int64_t, 2>();
    auto m = mask.accessor<bool, 4>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t start = t - pa[b][t];
        for (int64_t j = 0; j < T; ++j) m[b][0][t][j] = j > t || j < start;
      }
    }
    mask = mask.to(q.device());
  }
  at::Tensor scores = at::matmul(q, kk.transpose(2, 3)) / std::sqrt(double(D));
  scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
  const at::Tensor out = at::matmul(at::softmax(scores, -1), vv);  // [B,NH,T,D]
  return out.transpose(1, 2).reshape({B, T, NH * D});
}

at::Tensor swiglu(const at::Tensor& gu) {
  const int64_t F = gu.size(-1) / 2;
  return at::silu(gu.narrow(-1, 0, F)) * gu.narrow(-1, F, F);
}

at::Tensor block(const model::BlockParams& p, const at::Tensor& x, const RopeTables& rope_tables,
                 const model::ModelConfig& cfg) {
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t NH = cfg.num_heads, NKV = cfg.num_kv_heads, D = cfg.head_dim;
  const at::Tensor h1 = rmsnorm(x, p.attn_norm, cfg.rms_norm_eps);
  const at::Tensor qkv = at::linear(h1, p.wqkv, p.bqkv);
  auto heads = [&](int64_t first, int64_t count) {
    return qkv.narrow(-1, first * D, count * D).view({B, T, count, D}).transpose(1, 2);
  };
  const at::Tensor q = rope(heads(0, NH), rope_tables.cos, rope_tables.sin);
  const at::Tensor k = rope(heads(NH, NKV), rope_tables.cos, rope_tables.sin);
  const at::Tensor v = heads(NH + NKV, NKV);
  const at::Tensor x2 = x + at::linear(attention(q, k, v), p.wo, p.bo);
  const at::Tensor h2 = rmsnorm(x2, p.mlp_norm, cfg.rms_norm_eps);
  return x2 + at::linear(swiglu(at::linear(h2, p.wgu)), p.wd);
}

at::Tensor hidden(const model::ModelParams& p, const at::Tensor& ids, const RopeTables& rope_tables,
                  const model::ModelConfig& cfg) {
  at::Tensor x = at::embedding(p.embedding, ids);
  for (const model::BlockParams& b : p.blocks) x = block(b, x, rope_tables, cfg);
  return x;
}

at::Tensor logits(const model::ModelParams& p, const at::Tensor& ids, const RopeTables& rope_tables,
                  const model::ModelConfig& cfg) {
  const at::Tensor h = rmsnorm(hidden(p, ids, rope_tables, cfg), p.final_norm, cfg.rms_norm_eps);
  return at::linear(h, p.lm_head);
}

at::Tensor model_loss_sum(const model::ModelParams& p, const at::Tensor& ids,
                          const at::Tensor& targets, const RopeTables& rope_tables,
                          const model::ModelConfig& cfg) {
  const at::Tensor lg = logits(p, ids, rope_tables, cfg);
  return at::cross_entropy_loss(lg.reshape({-1, lg.size(-1)}), targets.reshape({-1}), {},
                                at::Reduction::Sum, kIgnoreIndex);
}

model::ModelParams make_leaf_params(const model::ModelParams& src, at::ScalarType dtype,
                                    const model::ModelConfig& cfg) {
  model::ModelParams p = model::clone_model_params(src, dtype);
  p.embedding.requires_grad_(true);
  p.final_norm.requires_grad_(true);
  if (!p.lm_head.is_same(p.embedding)) p.lm_head.requires_grad_(true);
  const model::BlockLayout layout = model::block_layout(cfg);
  for (size_t l = 0; l < p.blocks.size(); ++l) {
    p.block_flat[l].requires_grad_(true);
    p.blocks[l] = model::bind_block_params(p.block_flat[l], layout);
  }
  return p;
}

model::ModelParams grads_of(const model::ModelParams& leaves, const model::ModelConfig& cfg) {
  auto grad = [](const at::Tensor& t) {
    return t.grad().defined() ? t.grad().detach().clone() : at::zeros_like(t).detach();
  };
  model::ModelParams g;
  g.embedding = grad(leaves.embedding);
  const model::BlockLayout layout = model::block_layout(cfg);
  for (const at::Tensor& flat : leaves.block_flat) {
    g.block_flat.push_back(grad(flat));
    g.blocks.push_back(model::bind_block_params(g.block_flat.back(), layout));
  }
  g.final_norm = grad(leaves.final_norm);
  g.lm_head = leaves.lm_head.is_same(leaves.embedding) ? g.embedding : grad(leaves.lm_head);
  return g;
}

void zero_grads(model::ModelParams& leaves) {
  auto zero = [](at::Tensor& t) {
    if (t.grad().defined()) t.mutable_grad().zero_();
  };
  zero(leaves.embedding);
  for (at::Tensor& flat : leaves.block_flat) zero(flat);
  zero(leaves.final_norm);
  zero(leaves.lm_head);
}

}  // namespace ramstream::autograd::reference
