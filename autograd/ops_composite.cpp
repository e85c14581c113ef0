#include "autograd/ops_composite.h"

#include <cmath>
#include <limits>
#include <tuple>

#include "autograd/ops.h"
#include "util/torch_compat.h"

#if RAMSTREAM_TORCH_HAS_FLASH_SDPA
#include <ATen/ops/_flash_attention_backward.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/_scaled_dot_product_flash_attention.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_backward.h>
#endif

namespace ramstream::autograd::composite {
namespace {

at::ScalarType acc_of(const at::Tensor& t) {
  return acc_dtype(t.scalar_type());
}

struct Dims {
  int64_t B, NH, NKV, G, T, D;
};
Dims dims(const at::Tensor& q, const at::Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(1) / k.size(1), q.size(2), q.size(3)};
}

// Mask of the keys a stacked-heads row may not see (row r sits at position t = r % T): j > t,
// and for packed rows also j < t - pos[b][t]. [G*T, T], or [B, 1, G*T, T] when packed.
at::Tensor hidden_keys(const Dims& d, const TokenPositions& positions, const at::Device& device) {
  const auto o = at::TensorOptions().dtype(at::kLong).device(device);
  if (!positions.packed()) {
    const at::Tensor t = at::arange(d.G * d.T, o).remainder(d.T).unsqueeze(1);
    return at::arange(d.T, o).unsqueeze(0) > t;
  }
  const at::Tensor t = at::arange(d.T, o);
  const at::Tensor start = (t.unsqueeze(0) - positions.pos).unsqueeze(2);  // [B, T, 1]
  const at::Tensor j = t.view({1, 1, d.T});
  const at::Tensor hidden = (j > t.view({1, d.T, 1})) | (j < start);  // [B, T, T]
  return hidden.unsqueeze(1).expand({d.B, d.G, d.T, d.T}).reshape({d.B, 1, d.G * d.T, d.T});
}

// Scaled, masked scores of the stacked heads in the acc dtype: [B, NKV, G*T, T].
at::Tensor masked_scores(const Dims& d, const at::Tensor& q, const at::Tensor& k,
                         const TokenPositions& positions) {
  const at::Tensor qs = q.view({d.B, d.NKV, d.G * d.T, d.D});
  at::Tensor s = at::matmul(qs, k.transpose(2, 3)).to(acc_of(q));
  s.mul_(1.0 / std::sqrt(double(d.D)));
  s.masked_fill_(hidden_keys(d, positions, q.device()), -std::numeric_limits<double>::infinity());
  return s;
}

#if RAMSTREAM_TORCH_HAS_FLASH_SDPA
// libtorch's flash kernel: CUDA, half precision, head dims it was built for.
bool use_flash(const Dims& d, const at::Tensor& q) {
  return q.is_cuda() && (q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf) &&
         d.D % 8 == 0 && d.D <= 256;
}
// k or v repeated over the G query heads that share it (the kernel wants equal head counts).
at::Tensor expand_kv(const Dims& d, const at::Tensor& t) {
  return d.G == 1 ? t : t.repeat_interleave(d.G, 1);
}
// Without dropout the kernels ignore the philox state; this is the empty tensor the forward
// itself returns in that case.
at::Tensor no_philox_state() {
  return at::empty({}, at::TensorOptions().dtype(at::kLong));
}
// [B,H,T,D] -> [B*T, H, D]: the tokens of all rows end to end, the layout of the variable-length
// kernels, whose documents are positions.cu_seqlens.
at::Tensor tokens_major(const at::Tensor& t) {
  return t.transpose(1, 2).reshape({-1, t.size(1), t.size(3)});
}
#endif

}  // namespace

void rmsnorm_forward(at::Tensor& out, at::Tensor& rstd, const at::Tensor& x, const at::Tensor& w,
                     double eps) {
  const at::Tensor xf = x.to(acc_of(x));
  const at::Tensor r = at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  rstd.copy_(r.view(rstd.sizes()));
  out.copy_(xf * r * w.to(acc_of(x)));
}

void rmsnorm_backward(at::Tensor& dx, at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x,
                      const at::Tensor& w, const at::Tensor& rstd) {
  const int64_t C = x.size(-1);
  const at::ScalarType acc = acc_of(x);
  const at::Tensor r = rstd.reshape({-1, 1}).to(acc);
  const at::Tensor xhat = x.reshape({-1, C}).to(acc) * r;
  const at::Tensor g = dout.reshape({-1, C}).to(acc);
  dw.add_((g * xhat).sum(0).to(dw.scalar_type()));
  const at::Tensor gw = g * w.to(acc);
  const at::Tensor dot = (gw * xhat).mean(-1, /*keepdim=*/true);
  dx.add_((r * (gw - xhat * dot)).to(dx.scalar_type()).view(dx.sizes()));
}

void rope_apply(const at::Tensor& out, const at::Tensor& x, const at::Tensor& cos,
                const at::Tensor& sin, const TokenPositions& positions, int sign) {
  const int64_t B = x.size(0), T = x.size(2), half = x.size(3) / 2;
  const at::ScalarType acc = acc_of(x);
  at::Tensor c, s;  // [T, half], or [B, 1, T, half] at each token's position
  if (positions.packed()) {
    const at::Tensor rows = positions.pos.reshape({-1});
    c = cos.index_select(0, rows).view({B, 1, T, half}).to(acc);
    s = sin.index_select(0, rows).view({B, 1, T, half}).to(acc) * double(sign);
  } else {
    c = cos.narrow(0, 0, T).to(acc);
    s = sin.narrow(0, 0, T).to(acc) * double(sign);
  }
  const at::Tensor a = x.narrow(3, 0, half).to(acc), b = x.narrow(3, half, half).to(acc);
  out.narrow(3, 0, half).copy_(a * c - b * s);
  out.narrow(3, half, half).copy_(b * c + a * s);
}

void attention_forward(at::Tensor& out, at::Tensor& lse, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const TokenPositions& positions) {
  const Dims d = dims(q, k);
  at::Tensor o;  // [B, NH, T, D]
#if RAMSTREAM_TORCH_HAS_FLASH_SDPA
  if (use_flash(d, q) && positions.packed()) {
    const auto r = at::_flash_attention_forward(
        tokens_major(q), tokens_major(expand_kv(d, k)), tokens_major(expand_kv(d, v)),
        positions.cu_seqlens, positions.cu_seqlens, positions.max_seqlen, positions.max_seqlen,
        /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false,
        /*scale=*/1.0 / std::sqrt(double(d.D)));
    out.view({d.B * d.T, d.NH, d.D}).copy_(std::get<0>(r));  // out [B,T,NH*D] is token-major
    const at::Tensor& l = std::get<1>(r);
    TORCH_CHECK(l.dim() == 2 && l.size(0) == d.NH && l.size(1) == d.B * d.T,
                "attention_forward: flash varlen returned a log-sum-exp of shape ", l.sizes(),
                ", expected [NH, B*T] = [", d.NH, ", ", d.B * d.T, "]");
    lse.copy_(l.view({d.NH, d.B, d.T}).permute({1, 0, 2}));
    return;
  }
  if (use_flash(d, q)) {
    const auto r = at::_scaled_dot_product_flash_attention(
        q, expand_kv(d, k), expand_kv(d, v), /*dropout_p=*/0.0, /*is_causal=*/true,
        /*return_debug_mask=*/false, /*scale=*/1.0 / std::sqrt(double(d.D)));
    o = std::get<0>(r);
    lse.copy_(std::get<1>(r).narrow(2, 0, d.T));
  }
#endif
  if (!o.defined()) {
    const at::Tensor s = masked_scores(d, q, k, positions);
    const at::Tensor l = at::logsumexp(s, -1, /*keepdim=*/true);
    lse.copy_(l.view({d.B, d.NH, d.T}));
    const at::Tensor p = at::exp(s - l).to(q.scalar_type());
    o = at::matmul(p, v).view({d.B, d.NH, d.T, d.D});
  }
  out.view({d.B, d.T, d.NH, d.D}).copy_(o.transpose(1, 2));
}

void attention_backward(at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, const at::Tensor& dout,
                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& out, const at::Tensor& lse,
                        const TokenPositions& positions) {
  const Dims d = dims(q, k);
  const at::Tensor dout_heads = dout.view({d.B, d.T, d.NH, d.D}).transpose(1, 2);  // [B,NH,T,D]
#if RAMSTREAM_TORCH_HAS_FLASH_SDPA
  if (use_flash(d, q) && positions.packed()) {
    const at::Tensor no_philox = no_philox_state();
    const int64_t N = d.B * d.T;
    const auto r = at::_flash_attention_backward(
        dout.view({N, d.NH, d.D}), tokens_major(q), tokens_major(expand_kv(d, k)),
        tokens_major(expand_kv(d, v)), out.view({N, d.NH, d.D}),
        lse.permute({1, 0, 2}).reshape({d.NH, N}).contiguous(), positions.cu_seqlens,
        positions.cu_seqlens, positions.max_seqlen, positions.max_seqlen, /*dropout_p=*/0.0,
        /*is_causal=*/true, no_philox, no_philox, /*scale=*/1.0 / std::sqrt(double(d.D)));
    dq.copy_(std::get<0>(r).view({d.B, d.T, d.NH, d.D}).transpose(1, 2));
    // Sum the grads of the G query heads that shared each key/value head.
    dk.copy_(std::get<1>(r).view({d.B, d.T, d.NKV, d.G, d.D}).sum(3).transpose(1, 2));
    dv.copy_(std::get<2>(r).view({d.B, d.T, d.NKV, d.G, d.D}).sum(3).transpose(1, 2));
    return;
  }
  if (use_flash(d, q)) {
    const at::Tensor no_philox = no_philox_state();
    const auto r = at::_scaled_dot_product_flash_attention_backward(
        dout_heads, q, expand_kv(d, k), expand_kv(d, v),
        out.view({d.B, d.T, d.NH, d.D}).transpose(1, 2), lse, at::Tensor(), at::Tensor(),
        /*max_q=*/d.T, /*max_k=*/d.T, /*dropout_p=*/0.0, /*is_causal=*/true, no_philox, no_philox,
        /*scale=*/1.0 / std::sqrt(double(d.D)));
    dq.copy_(std::get<0>(r));
    // Sum the grads of the G query heads that shared each key/value head.
    dk.copy_(std::get<1>(r).view({d.B, d.NKV, d.G, d.T, d.D}).sum(2));
    dv.copy_(std::get<2>(r).view({d.B, d.NKV, d.G, d.T, d.D}).sum(2));
    return;
  }
#endif
  (void)out;
  const double scale = 1.0 / std::sqrt(double(d.D));
  const at::Tensor dob = dout_heads.reshape({d.B, d.NKV, d.G * d.T, d.D});
  const at::Tensor s = masked_scores(d, q, k, positions);
  const at::Tensor p = at::exp(s - lse.view({d.B, d.NKV, d.G * d.T, 1}).to(s.scalar_type()));
  const at::Tensor pc = p.to(q.scalar_type());
  dv.copy_(at::matmul(pc.transpose(2, 3), dob));  // sums the G heads of each kv head
  const at::Tensor dp = at::matmul(dob, v.transpose(2, 3)).to(s.scalar_type());
  const at::Tensor dot = (p * dp).sum(-1, /*keepdim=*/true);
  const at::Tensor ds = (p * (dp - dot) * scale).to(q.scalar_type());
  dq.view({d.B, d.NKV, d.G * d.T, d.D}).copy_(at::matmul(ds, k));
  dk.copy_(at::matmul(ds.transpose(2, 3), q.view({d.B, d.NKV, d.G * d.T, d.D})));
}

void swiglu_forward(at::Tensor& out, const at::Tensor& gu) {
  const int64_t F = gu.size(-1) / 2;
  const at::ScalarType acc = acc_of(gu);
  const at::Tensor g = gu.narrow(-1, 0, F).to(acc), u = gu.narrow(-1, F, F).to(acc);
  out.copy_((at::silu(g) * u).view(out.sizes()));
}

void swiglu_backward(at::Tensor& dgu, const at::Tensor& dout, const at::Tensor& gu) {
  const int64_t F = gu.size(-1) / 2;
  const at::ScalarType acc = acc_of(gu);
  const at::Tensor g = gu.narrow(-1, 0, F).to(acc), u = gu.narrow(-1, F, F).to(acc);
  const at::Tensor dy = dout.to(acc).view(g.sizes());
  const at::Tensor sig = at::sigmoid(g);
  dgu.narrow(-1, 0, F).copy_(dy * u * sig * (1.0 + g * (1.0 - sig)));
  dgu.narrow(-1, F, F).copy_(dy * g * sig);
}

void cross_entropy_rows(at::Tensor& loss_sum, at::Tensor& logits, const at::Tensor& targets,
                        bool backward, double grad_scale) {
  const at::Tensor lf = logits.to(acc_of(logits));
  const at::Tensor lse = at::logsumexp(lf, -1, /*keepdim=*/true);
  const at::Tensor y = targets.view({-1, 1});
  loss_sum.add_(at::sum(lse - lf.gather(1, y), at::kDouble));
  if (backward) {
    at::Tensor grad = at::exp(lf - lse).mul_(grad_scale);
    grad.scatter_add_(1, y, at::full({y.size(0), 1}, -grad_scale, grad.options()));
    logits.copy_(grad);
  }
}

}  // namespace ramstream::autograd::composite
