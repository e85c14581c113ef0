#include "autograd/block.h"

#include "autograd/ops.h"

namespace ramstream::autograd {
namespace {

int64_t tensor_bytes(const at::Tensor& t) {
  return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
}

// The fused qkv projection [N, QKV] seen as [B, NH+2*NKV, T, D] (a strided view).
at::Tensor heads_view(const at::Tensor& qkv, const model::ModelConfig& cfg, int64_t B, int64_t T) {
  const int64_t heads = cfg.num_heads + 2 * cfg.num_kv_heads;
  return qkv.view({B, T, heads, cfg.head_dim}).permute({0, 2, 1, 3});
}

}  // namespace

BlockActs BlockActs::allocate(const model::ModelConfig& cfg, int64_t B, int64_t T,
                              at::ScalarType dtype, at::Device device) {
  const auto o = at::TensorOptions().dtype(dtype).device(device);
  const auto oa = o.dtype(acc_dtype(dtype));
  const int64_t N = B * T, C = cfg.hidden_size, D = cfg.head_dim;
  BlockActs a;
  a.rstd1 = at::empty({N}, oa);
  a.h1 = at::empty({N, C}, o);
  a.q = at::empty({B, cfg.num_heads, T, D}, o);
  a.k = at::empty({B, cfg.num_kv_heads, T, D}, o);
  a.v = at::empty({B, cfg.num_kv_heads, T, D}, o);
  a.lse = at::empty({B, cfg.num_heads, T}, oa);
  a.att = at::empty({N, cfg.q_dim()}, o);
  a.x2 = at::empty({N, C}, o);
  a.rstd2 = at::empty({N}, oa);
  a.h2 = at::empty({N, C}, o);
  a.gu = at::empty({N, 2 * cfg.intermediate_size}, o);
  return a;
}

int64_t BlockActs::bytes() const {
  int64_t n = 0;
  for (const at::Tensor* t : {&rstd1, &h1, &q, &k, &v, &lse, &att, &x2, &rstd2, &h2, &gu}) {
    n += tensor_bytes(*t);
  }
  return n;
}

BlockScratch BlockScratch::allocate(const model::ModelConfig& cfg, int64_t B, int64_t T,
                                    at::ScalarType dtype, at::Device device) {
  const auto o = at::TensorOptions().dtype(dtype).device(device);
  const int64_t N = B * T, C = cfg.hidden_size, D = cfg.head_dim, F = cfg.intermediate_size;
  BlockScratch s;
  s.qkv = at::empty({N, cfg.qkv_dim()}, o);
  s.proj = at::empty({N, C}, o);
  s.s = at::empty({N, F}, o);
  s.ds = at::empty({N, F}, o);
  s.dgu = at::empty({N, 2 * F}, o);
  s.dh = at::empty({N, C}, o);
  s.datt = at::empty({N, cfg.q_dim()}, o);
  s.dq = at::empty({B, cfg.num_heads, T, D}, o);
  s.dk = at::empty({B, cfg.num_kv_heads, T, D}, o);
  s.dv = at::empty({B, cfg.num_kv_heads, T, D}, o);
  return s;
}

int64_t BlockScratch::bytes() const {
  int64_t n = 0;
  for (const at::Tensor* t : {&qkv, &proj, &s, &ds, &dgu, &dh, &datt, &dq, &dk, &dv}) {
    n += tensor_bytes(*t);
  }
  return n;
}

void block_forward(at::Tensor& y, BlockActs& a, BlockScratch& s, const model::BlockParams& p,
                   const at::Tensor& x, const RopeTables& rope, const model::ModelConfig& cfg,
                   const TokenPositions& positions) {
  const int64_t B = a.q.size(0), T = a.q.size(2), N = B * T, C = cfg.hidden_size;
  const int64_t NH = cfg.num_heads, NKV = cfg.num_kv_heads;
  TORCH_CHECK(x.numel() == N * C && y.numel() == N * C, "block_forward: x/y must hold ", N, "x", C,
              " elements for the workspace's B=", B, " T=", T);
  a.x = x.view({N, C});
  at::Tensor y2 = y.view({N, C});
  const at::Tensor none;

  rmsnorm_forward(a.h1, a.rstd1, a.x, p.attn_norm, cfg.rms_norm_eps);
  linear_forward(s.qkv, a.h1, p.wqkv, p.bqkv);
  const at::Tensor heads = heads_view(s.qkv, cfg, B, T);
  rope_forward(a.q, heads.narrow(1, 0, NH), rope.cos, rope.sin, positions);
  rope_forward(a.k, heads.narrow(1, NH, NKV), rope.cos, rope.sin, positions);
  a.v.copy_(heads.narrow(1, NH + NKV, NKV));
  attention_forward(a.att, a.lse, a.q, a.k, a.v, positions);
  linear_forward(s.proj, a.att, p.wo, p.bo);
  residual_forward(a.x2, a.x, s.proj);

  rmsnorm_forward(a.h2, a.rstd2, a.x2, p.mlp_norm, cfg.rms_norm_eps);
  linear_forward(a.gu, a.h2, p.wgu, none);
  swiglu_forward(s.s, a.gu);
  linear_forward(s.proj, s.s, p.wd, none);
  residual_forward(y2, a.x2, s.proj);
}

void block_backward(at::Tensor& dres, model::BlockParams& g, const BlockActs& a, BlockScratch& s,
                    const model::BlockParams& p, const RopeTables& rope,
                    const model::ModelConfig& cfg, const TokenPositions& positions) {
  const int64_t B = a.q.size(0), T = a.q.size(2), N = B * T, C = cfg.hidden_size;
  const int64_t NH = cfg.num_heads, NKV = cfg.num_kv_heads;
  at::Tensor dres2 = dres.view({N, C});
  at::Tensor none;

  // MLP branch: dres holds dL/dy = dL/d(mlp out).
  swiglu_forward(s.s, a.gu);  // s is not kept: cheaper to recompute than to store N x F
  linear_backward(s.ds, g.wd, none, dres2, s.s, p.wd);
  swiglu_backward(s.dgu, s.ds, a.gu);
  linear_backward(s.dh, g.wgu, none, s.dgu, a.h2, p.wgu);
  rmsnorm_backward(dres2, g.mlp_norm, s.dh, a.x2, p.mlp_norm, a.rstd2);  // dres = dL/dx2

  // Attention branch.
  linear_backward(s.datt, g.wo, g.bo, dres2, a.att, p.wo);
  attention_backward(s.dq, s.dk, s.dv, s.datt, a.q, a.k, a.v, a.att, a.lse, positions);
  at::Tensor dheads = heads_view(s.qkv, cfg, B, T);  // qkv scratch now holds its grad
  at::Tensor dq_heads = dheads.narrow(1, 0, NH);
  at::Tensor dk_heads = dheads.narrow(1, NH, NKV);
  rope_backward(dq_heads, s.dq, rope.cos, rope.sin, positions);
  rope_backward(dk_heads, s.dk, rope.cos, rope.sin, positions);
  dheads.narrow(1, NH + NKV, NKV).copy_(s.dv);
  linear_backward(s.dh, g.wqkv, g.bqkv, s.qkv, a.h1, p.wqkv);
  rmsnorm_backward(dres2, g.attn_norm, s.dh, a.x, p.attn_norm, a.rstd1);  // dres = dL/dx
}

}  // namespace ramstream::autograd
