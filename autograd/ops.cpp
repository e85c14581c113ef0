#include "autograd/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include <atomic>

#include <ATen/Dispatch.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include "autograd/ops_composite.h"
#include "kernels/gemm_bf16.h"
#include "kernels/softmax_rows.h"
#include "kernels/swiglu.h"

namespace ramstream::autograd {
namespace {

// Reductions and statistics run in float for float/bf16/half data and in double for double.
template <class T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <class T>
using acc_t = typename Acc<T>::type;

#define RS_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, name, __VA_ARGS__)

void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

// Strided [B,H,T,D] view whose last dim is contiguous: the byte layout rope works on.
struct Strided4 {
  int64_t sb, sh, st;
};
Strided4 strides4(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.dim() == 4 && t.stride(3) == 1, op, ": expected a [B,H,T,D] tensor with a ",
              "contiguous last dim, got sizes ", t.sizes(), " strides ", t.strides());
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// Rows [0, n) in ranges of at least `grain` over TBB's threads. Not ATen's parallel_for (OpenMP),
// which measured slower for these loops on the 2-core VMs even with passive OpenMP waiting
// (SmolLM2-135M bf16 step: 266 against 337 tokens/s, median of 3; bench/RESULTS.md). Every loop
// below writes disjoint rows, so the split never changes a result.
template <class F>
void parallel_rows(int64_t n, int64_t grain, const F& fn) {
  if (n <= grain) {
    if (n > 0) fn(int64_t{0}, n);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, static_cast<size_t>(grain)),
                    [&](const tbb::blocked_range<int64_t>& r) { fn(r.begin(), r.end()); });
}

// fp32 and bf16 rows go through the vectorised kernels (kernels/swiglu.h, softmax_rows.h);
// float64 (the oracle tests) and fp16 keep the loops below. kernel_ptr views a c10::BFloat16
// array as the kernels' bf16 (the same 16 bits).
template <class T>
constexpr bool kKernelRows = std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>;
static_assert(sizeof(c10::BFloat16) == sizeof(kernels::bf16));
template <class T>
auto* kernel_ptr(T* p) {
  if constexpr (std::is_same_v<std::remove_const_t<T>, float>) {
    return p;
  } else if constexpr (std::is_const_v<T>) {
    return reinterpret_cast<const kernels::bf16*>(p);
  } else {
    return reinterpret_cast<kernels::bf16*>(p);
  }
}

std::atomic<bool> g_composite_for_testing{false};

// The hand-fused loops below read raw CPU pointers; everything else takes the compositions.
bool fused(const at::Tensor& t) {
  return t.is_cpu() && !g_composite_for_testing.load();
}

}  // namespace

void set_composite_ops_for_testing(bool on) {
  g_composite_for_testing.store(on);
}

at::ScalarType acc_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// ---------------------------------------------------------------------------------------------
// embedding

void embedding_forward(at::Tensor& out, const at::Tensor& ids, const at::Tensor& wte) {
  at::index_select_out(out, wte, 0, ids.reshape({-1}));
}

void embedding_backward(at::Tensor& dwte, const at::Tensor& dout, const at::Tensor& ids) {
  const at::Tensor rows = dout.reshape({-1, dwte.size(1)});
  dwte.index_add_(0, ids.reshape({-1}),
                  rows.scalar_type() == dwte.scalar_type() ? rows : rows.to(dwte.scalar_type()));
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

void rmsnorm_forward(at::Tensor& out, at::Tensor& rstd, const at::Tensor& x, const at::Tensor& w,
                     double eps) {
  check_contiguous(x, "rmsnorm_forward", "x");
  check_contiguous(out, "rmsnorm_forward", "out");
  const int64_t C = x.size(-1), N = x.numel() / C;
  TORCH_CHECK(w.numel() == C && rstd.numel() == N && out.numel() == x.numel(),
              "rmsnorm_forward: shape mismatch");
  if (!fused(x)) return composite::rmsnorm_forward(out, rstd, x, w, eps);
  RS_DISPATCH(x.scalar_type(), "rmsnorm_forward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    A* rp = rstd.data_ptr<A>();
    parallel_rows(N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* xr = xp + n * C;
        A ss = 0;
        for (int64_t c = 0; c < C; ++c) ss += A(xr[c]) * A(xr[c]);
        const A r = A(1) / std::sqrt(ss / A(C) + A(eps));
        rp[n] = r;
        scalar_t* orow = op + n * C;
        for (int64_t c = 0; c < C; ++c) orow[c] = scalar_t(A(xr[c]) * r * A(wp[c]));
      }
    });
  });
}

void rmsnorm_backward(at::Tensor& dx, at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x,
                      const at::Tensor& w, const at::Tensor& rstd) {
  check_contiguous(dout, "rmsnorm_backward", "dout");
  check_contiguous(dx, "rmsnorm_backward", "dx");
  if (!fused(x)) return composite::rmsnorm_backward(dx, dw, dout, x, w, rstd);
  const int64_t C = x.size(-1), N = x.numel() / C;
  RS_DISPATCH(x.scalar_type(), "rmsnorm_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* gp = dout.data_ptr<scalar_t>();
    const A* rp = rstd.data_ptr<A>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    TORCH_CHECK(dw.scalar_type() == c10::CppTypeToScalarType<A>::value,
                "rmsnorm_backward: dw must be in the acc dtype ",
                c10::CppTypeToScalarType<A>::value, ", got ", dw.scalar_type());
    // dw partial sums per fixed chunk of rows, summed in chunk order: the result depends neither
    // on the thread count nor on how the rows were split.
    constexpr int64_t kRowsPerPartial = 32;
    const int64_t chunks = (N + kRowsPerPartial - 1) / kRowsPerPartial;
    std::vector<A> dw_partial(static_cast<size_t>(chunks * C), A(0));
    parallel_rows(chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        A* dwt = dw_partial.data() + chunk * C;
        for (int64_t n = chunk * kRowsPerPartial; n < std::min(N, (chunk + 1) * kRowsPerPartial);
             ++n) {
          const scalar_t* xr = xp + n * C;
          const scalar_t* gr = gp + n * C;
          const A r = rp[n];
          // xhat = x*r; y = xhat*w; dxhat = dy*w;
          // dx = r * (dxhat - xhat * mean(dxhat * xhat))
          A dot = 0;
          for (int64_t c = 0; c < C; ++c) {
            const A xhat = A(xr[c]) * r;
            dot += A(gr[c]) * A(wp[c]) * xhat;
            dwt[c] += A(gr[c]) * xhat;
          }
          dot /= A(C);
          scalar_t* dxr = dxp + n * C;
          for (int64_t c = 0; c < C; ++c) {
            const A xhat = A(xr[c]) * r;
            dxr[c] = scalar_t(A(dxr[c]) + r * (A(gr[c]) * A(wp[c]) - xhat * dot));
          }
        }
      }
    });
    A* dwp = dw.data_ptr<A>();
    for (int64_t c = 0; c < C; ++c) {
      A s = dwp[c];
      for (int64_t chunk = 0; chunk < chunks; ++chunk) s += dw_partial[size_t(chunk * C + c)];
      dwp[c] = s;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// linear

void linear_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& w,
                    const at::Tensor& b) {
  if (b.defined()) {
    at::addmm_out(out, b, x, w.t());
  } else {
    at::mm_out(out, x, w.t());
  }
}

void accumulate_weight_grad(at::Tensor& dw, const at::Tensor& dout, const at::Tensor& x) {
  TORCH_CHECK(dout.dim() == 2 && x.dim() == 2 && dw.dim() == 2 && dout.size(0) == x.size(0) &&
                  dw.size(0) == dout.size(1) && dw.size(1) == x.size(1),
              "accumulate_weight_grad: dw [OC,IC] += dout[N,OC]^T x[N,IC], got dw ", dw.sizes(),
              " dout ", dout.sizes(), " x ", x.sizes());
  TORCH_CHECK(dout.scalar_type() == x.scalar_type(), "accumulate_weight_grad: dout ",
              dout.scalar_type(), " and x ", x.scalar_type(), " differ");
  if (dw.scalar_type() == x.scalar_type()) {
    dw.addmm_(dout.t(), x);
    return;
  }
  TORCH_CHECK(dw.scalar_type() == acc_dtype(x.scalar_type()), "accumulate_weight_grad: dw must be ",
              x.scalar_type(), " or its acc dtype, got ", dw.scalar_type());
#if RAMSTREAM_WITH_CUDA
  if (dw.is_cuda() && cuda_accumulate_weight_grad(dw, dout, x)) return;
#endif
  if (dw.is_cpu() && x.scalar_type() == at::kBFloat16 && dw.scalar_type() == at::kFloat &&
      dw.is_contiguous() && dout.stride(1) == 1 && x.stride(1) == 1 &&
      kernels::bf16_gemm_native()) {
    // dw [OC,IC] += dout^T [OC,N] x [N,IC]: one bf16 GEMM with an fp32 result (oneDNN), as on
    // CUDA. Falls through when this build has no oneDNN.
    const auto* d = reinterpret_cast<const uint16_t*>(dout.data_ptr<at::BFloat16>());
    const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
    if (kernels::gemm_bf16_f32(dw.size(0), dw.size(1), x.size(0), d, 1, dout.stride(0), xp,
                               x.stride(0), 1, dw.data_ptr<float>(), dw.size(1),
                               /*accumulate=*/true) == kernels::GemmStatus::kOk) {
      return;
    }
  }
  // The products of two bf16 values are exact in fp32, so widening first and summing in fp32 is
  // what the CUDA path's fp32-output GEMM computes too (up to summation order).
  dw.addmm_(dout.t().to(dw.scalar_type()), x.to(dw.scalar_type()));
}

void linear_backward(at::Tensor& dx, at::Tensor& dw, at::Tensor& db, const at::Tensor& dout,
                     const at::Tensor& x, const at::Tensor& w) {
  if (dx.defined()) at::mm_out(dx, dout, w);
  accumulate_weight_grad(dw, dout, x);
  if (db.defined()) db.add_(at::sum(dout, {0}, /*keepdim=*/false, db.scalar_type()));
}

// ---------------------------------------------------------------------------------------------
// RoPE

namespace {

// pos [B,T] int64 on x's device, or nullptr when positions are 0..T-1.
const int64_t* position_ids(const TokenPositions& positions, int64_t B, int64_t T, const char* op) {
  if (!positions.packed()) return nullptr;
  const at::Tensor& p = positions.pos;
  TORCH_CHECK(p.scalar_type() == at::kLong && p.is_contiguous() && p.dim() == 2 && p.size(0) == B &&
                  p.size(1) == T,
              op, ": positions must be contiguous int64 [", B, ",", T, "], got ", p.sizes(), " ",
              p.scalar_type());
  return p.data_ptr<int64_t>();
}

// out = rotate(x, sign * angle); out and x may have different strides.
void rope_apply(const at::Tensor& out, const at::Tensor& x, const at::Tensor& cos,
                const at::Tensor& sin, const TokenPositions& positions, int sign, const char* op) {
  const Strided4 so = strides4(out, op), sx = strides4(x, op);
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), half = D / 2;
  TORCH_CHECK(out.sizes() == x.sizes(), op, ": out ", out.sizes(), " vs x ", x.sizes());
  TORCH_CHECK(cos.size(0) >= T && cos.size(1) == half && cos.is_contiguous() && sin.is_contiguous(),
              op, ": cos/sin must be contiguous [>=T, D/2], got ", cos.sizes());
  if (!fused(x)) return composite::rope_apply(out, x, cos, sin, positions, sign);
  const int64_t* pos = position_ids(positions, B, T, op);
  RS_DISPATCH(x.scalar_type(), "rope", [&] {
    using A = acc_t<scalar_t>;
    TORCH_CHECK(cos.scalar_type() == c10::CppTypeToScalarType<A>::value, op,
                ": cos/sin must be in the acc dtype");
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    const A* cp = cos.data_ptr<A>();
    const A* sp = sin.data_ptr<A>();
    const A sg = A(sign);
    parallel_rows(B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t* xr = xp + b * sx.sb + h * sx.sh + t * sx.st;
          scalar_t* orow = op_ + b * so.sb + h * so.sh + t * so.st;
          const int64_t angle_row = pos ? pos[b * T + t] : t;  // < T: validated on the host
          const A* cr = cp + angle_row * half;
          const A* sr = sp + angle_row * half;
          for (int64_t i = 0; i < half; ++i) {
            const A a = A(xr[i]), bb = A(xr[i + half]);
            const A c = cr[i], s = sg * sr[i];
            orow[i] = scalar_t(a * c - bb * s);
            orow[i + half] = scalar_t(bb * c + a * s);
          }
        }
      }
    });
  });
}

}  // namespace

void rope_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& cos,
                  const at::Tensor& sin, const TokenPositions& positions) {
  rope_apply(out, x, cos, sin, positions, +1, "rope_forward");
}

void rope_backward(at::Tensor& dx, const at::Tensor& dout, const at::Tensor& cos,
                   const at::Tensor& sin, const TokenPositions& positions) {
  rope_apply(dx, dout, cos, sin, positions, -1, "rope_backward");
}

// ---------------------------------------------------------------------------------------------
// causal attention
//
// Per document (a whole row unless the rows are packed) the G query heads of one kv head are
// stacked into one [G*L, D] matrix, so the scores of all heads are one bmm over NKV without
// repeating k and v: row r of that matrix is query head kv*G + r/L at position t = r % L of the
// document, which may see its keys j <= t. Keys of other documents are never touched: a packed
// row costs the sum of its documents' L^2, not T^2.

namespace {

// scores [R, L] (R = NKV*G*L rows, each row at position r % L) -> probabilities in place;
// lse[r] = log sum_j exp(scale * s_rj) over visible j.
template <class scalar_t>
void causal_softmax_rows(scalar_t* scores, acc_t<scalar_t>* lse, int64_t R, int64_t L,
                         acc_t<scalar_t> scale) {
  using A = acc_t<scalar_t>;
  if constexpr (kKernelRows<scalar_t>) {
    parallel_rows(R, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = scores + r * L;
        const int64_t visible = r % L + 1;
        // scale > 0, so max(s) * scale is max(s * scale), bit for bit.
        const A mx = kernels::row_max(kernel_ptr(row), visible) * scale;
        const A sum = kernels::exp_sum(kernel_ptr(row), visible, scale, mx, 1.0f, /*store=*/true);
        kernels::scale_row(kernel_ptr(row), visible, A(1) / sum);
        for (int64_t j = visible; j < L; ++j) row[j] = scalar_t(0);
        lse[r] = mx + std::log(sum);
      }
    });
    return;
  }
  parallel_rows(R, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* row = scores + r * L;
      const int64_t visible = r % L + 1;
      A mx = -std::numeric_limits<A>::infinity();
      for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, A(row[j]) * scale);
      A sum = 0;
      for (int64_t j = 0; j < visible; ++j) {
        const A e = std::exp(A(row[j]) * scale - mx);
        row[j] = scalar_t(e);
        sum += e;
      }
      const A inv = A(1) / sum;
      for (int64_t j = 0; j < visible; ++j) row[j] = scalar_t(A(row[j]) * inv);
      for (int64_t j = visible; j < L; ++j) row[j] = scalar_t(0);
      lse[r] = mx + std::log(sum);
    }
  });
}

// Recompute p = exp(scale*s - lse) from scores in place (masked), then turn dp into
// ds = p * (dp - sum_j p*dp) * scale in place.
template <class scalar_t>
void causal_softmax_backward_rows(scalar_t* scores, scalar_t* dp, const acc_t<scalar_t>* lse,
                                  int64_t R, int64_t L, acc_t<scalar_t> scale) {
  using A = acc_t<scalar_t>;
  if constexpr (kKernelRows<scalar_t>) {
    parallel_rows(R, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* p = scores + r * L;
        scalar_t* d = dp + r * L;
        const int64_t visible = r % L + 1;
        const A dot = kernels::exp_dot(kernel_ptr(p), kernel_ptr(d), visible, scale, lse[r]);
        kernels::softmax_grad(kernel_ptr(p), kernel_ptr(d), visible, dot, scale);
        for (int64_t j = visible; j < L; ++j) {
          p[j] = scalar_t(0);
          d[j] = scalar_t(0);
        }
      }
    });
    return;
  }
  parallel_rows(R, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* p = scores + r * L;
      scalar_t* d = dp + r * L;
      const int64_t visible = r % L + 1;
      A dot = 0;
      for (int64_t j = 0; j < visible; ++j) {
        const A pj = std::exp(A(p[j]) * scale - lse[r]);
        p[j] = scalar_t(pj);
        dot += pj * A(d[j]);
      }
      for (int64_t j = 0; j < visible; ++j) d[j] = scalar_t(A(p[j]) * (A(d[j]) - dot) * scale);
      for (int64_t j = visible; j < L; ++j) {
        p[j] = scalar_t(0);
        d[j] = scalar_t(0);
      }
    }
  });
}

struct AttnDims {
  int64_t B, NH, NKV, G, T, D;
};

AttnDims attn_dims(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* op) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes(), op,
              ": expected q [B,NH,T,D], k/v [B,NKV,T,D], got ", q.sizes(), " ", k.sizes(), " ",
              v.sizes());
  AttnDims d{q.size(0), q.size(1), k.size(1), 0, q.size(2), q.size(3)};
  TORCH_CHECK(
      d.NKV > 0 && d.NH % d.NKV == 0 && k.size(0) == d.B && k.size(2) == d.T && k.size(3) == d.D,
      op, ": q ", q.sizes(), " incompatible with k ", k.sizes());
  d.G = d.NH / d.NKV;
  for (const at::Tensor* t : {&q, &k, &v}) check_contiguous(*t, op, "q/k/v");
  return d;
}

// One document: tokens start..start+len-1 of row b.
struct Document {
  int64_t b, start, len;
};

// The documents of the batch: one per row, or those of positions.cu_seqlens (which never cross a
// row: every row starts at position 0).
std::vector<Document> documents(const TokenPositions& positions, const AttnDims& d,
                                const char* op) {
  std::vector<Document> docs;
  if (!positions.packed()) {
    for (int64_t b = 0; b < d.B; ++b) docs.push_back({b, 0, d.T});
    return docs;
  }
  const at::Tensor& cu = positions.cu_seqlens;
  TORCH_CHECK(cu.is_cpu() && cu.scalar_type() == at::kInt && cu.dim() == 1 && cu.numel() >= 2 &&
                  cu.is_contiguous(),
              op, ": cu_seqlens must be a contiguous int32 CPU tensor [S+1], got ", cu.sizes());
  const int32_t* c = cu.data_ptr<int32_t>();
  const int64_t S = cu.numel() - 1;
  TORCH_CHECK(c[0] == 0 && c[S] == d.B * d.T, op,
              ": cu_seqlens must run from 0 to B*T = ", d.B * d.T, ", got ", c[0], "..", c[S]);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t first = c[s], len = int64_t{c[s + 1]} - first;
    TORCH_CHECK(len > 0 && first % d.T + len <= d.T, op, ": document ", s, " (tokens ", first, "..",
                first + len - 1, ") is empty or crosses a row");
    docs.push_back({first / d.T, first % d.T, len});
  }
  return docs;
}

int64_t longest(const std::vector<Document>& docs) {
  int64_t L = 0;
  for (const Document& doc : docs) L = std::max(L, doc.len);
  return L;
}

// Buffers of the largest document, viewed at the size of each one.
at::Tensor first_elements(const at::Tensor& buf, at::IntArrayRef sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return buf.narrow(0, 0, n).view(sizes);
}

}  // namespace

void attention_forward(at::Tensor& out, at::Tensor& lse, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, const TokenPositions& positions) {
  const AttnDims d = attn_dims(q, k, v, "attention_forward");
  check_contiguous(out, "attention_forward", "out");
  if (!fused(q)) return composite::attention_forward(out, lse, q, k, v, positions);
  const std::vector<Document> docs = documents(positions, d, "attention_forward");
  const int64_t Lmax = longest(docs);
  const auto opts = q.options();
  const at::Tensor scores_buf = at::empty({d.NKV * d.G * Lmax * Lmax}, opts);
  const at::Tensor ob_buf = at::empty({d.NKV * d.G * Lmax * d.D}, opts);
  const at::Tensor lse_buf = at::empty({d.NH * Lmax}, lse.options());
  const at::Tensor out_rows = out.view({d.B, d.T, d.NH * d.D});
  RS_DISPATCH(q.scalar_type(), "attention_forward", [&] {
    using A = acc_t<scalar_t>;
    const A scale = A(1) / std::sqrt(A(d.D));
    for (const Document& doc : docs) {
      const int64_t L = doc.len;
      const bool whole_row = L == d.T;
      // [NKV, G*L, D]: a view for a whole row, else a copy of the document's rows.
      const at::Tensor qd = q[doc.b]
                                .view({d.NKV, d.G, d.T, d.D})
                                .narrow(2, doc.start, L)
                                .reshape({d.NKV, d.G * L, d.D});
      const at::Tensor kd = k[doc.b].narrow(1, doc.start, L);  // [NKV, L, D]
      const at::Tensor vd = v[doc.b].narrow(1, doc.start, L);
      at::Tensor scores = first_elements(scores_buf, {d.NKV, d.G * L, L});
      at::Tensor ob = first_elements(ob_buf, {d.NKV, d.G * L, d.D});
      at::bmm_out(scores, qd, kd.transpose(1, 2));
      // lse rows r = h*L + t: lse[b] itself for a whole row, else a buffer copied into place.
      A* lse_d = whole_row ? lse.data_ptr<A>() + doc.b * d.NH * d.T : lse_buf.data_ptr<A>();
      causal_softmax_rows<scalar_t>(scores.data_ptr<scalar_t>(), lse_d, d.NKV * d.G * L, L, scale);
      if (!whole_row) {
        lse[doc.b].narrow(1, doc.start, L).copy_(first_elements(lse_buf, {d.NH, L}));
      }
      at::bmm_out(ob, scores, vd);
      // [NKV, G, L, D] -> out rows start..start+L-1 of row b, as [L, NH, D]
      out_rows[doc.b]
          .narrow(0, doc.start, L)
          .view({L, d.NKV, d.G, d.D})
          .copy_(ob.view({d.NKV, d.G, L, d.D}).permute({2, 0, 1, 3}));
    }
  });
}

void attention_backward(at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, const at::Tensor& dout,
                        const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& out, const at::Tensor& lse,
                        const TokenPositions& positions) {
  const AttnDims d = attn_dims(q, k, v, "attention_backward");
  check_contiguous(dout, "attention_backward", "dout");
  if (!fused(q)) {
    return composite::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, positions);
  }
  const std::vector<Document> docs = documents(positions, d, "attention_backward");
  const int64_t Lmax = longest(docs);
  const auto opts = q.options();
  const at::Tensor scores_buf = at::empty({d.NKV * d.G * Lmax * Lmax}, opts);
  const at::Tensor dp_buf = at::empty({d.NKV * d.G * Lmax * Lmax}, opts);
  const at::Tensor dob_buf = at::empty({d.NKV * d.G * Lmax * d.D}, opts);
  const at::Tensor lse_buf = at::empty({d.NH * Lmax}, lse.options());
  const at::Tensor dout_rows = dout.view({d.B, d.T, d.NH * d.D});
  RS_DISPATCH(q.scalar_type(), "attention_backward", [&] {
    using A = acc_t<scalar_t>;
    const A scale = A(1) / std::sqrt(A(d.D));
    for (const Document& doc : docs) {
      const int64_t L = doc.len;
      const bool whole_row = L == d.T;
      const at::Tensor qd = q[doc.b]
                                .view({d.NKV, d.G, d.T, d.D})
                                .narrow(2, doc.start, L)
                                .reshape({d.NKV, d.G * L, d.D});
      const at::Tensor kd = k[doc.b].narrow(1, doc.start, L);
      const at::Tensor vd = v[doc.b].narrow(1, doc.start, L);
      // dout rows of the document [L, NH, D] -> [NKV, G*L, D]
      at::Tensor dob = first_elements(dob_buf, {d.NKV, d.G, L, d.D});
      dob.copy_(dout_rows[doc.b]
                    .narrow(0, doc.start, L)
                    .view({L, d.NKV, d.G, d.D})
                    .permute({1, 2, 0, 3}));
      const at::Tensor dob2 = dob.view({d.NKV, d.G * L, d.D});
      at::Tensor scores = first_elements(scores_buf, {d.NKV, d.G * L, L});
      at::Tensor dp = first_elements(dp_buf, {d.NKV, d.G * L, L});
      at::bmm_out(scores, qd, kd.transpose(1, 2));
      at::bmm_out(dp, dob2, vd.transpose(1, 2));
      const A* lse_d = lse.data_ptr<A>() + doc.b * d.NH * d.T;
      if (!whole_row) {
        at::Tensor l = first_elements(lse_buf, {d.NH, L});
        l.copy_(lse[doc.b].narrow(1, doc.start, L));
        lse_d = l.data_ptr<A>();
      }
      causal_softmax_backward_rows<scalar_t>(scores.data_ptr<scalar_t>(), dp.data_ptr<scalar_t>(),
                                             lse_d, d.NKV * d.G * L, L, scale);
      // scores now holds p and dp holds ds (scale folded in).
      if (whole_row) {
        at::Tensor dvb = dv[doc.b];
        at::Tensor dkb = dk[doc.b];
        at::Tensor dqb = dq[doc.b].view({d.NKV, d.G * d.T, d.D});
        at::bmm_out(dvb, scores.transpose(1, 2), dob2);  // sums the G heads of each kv head
        at::bmm_out(dkb, dp.transpose(1, 2), qd);
        at::bmm_out(dqb, dp, kd);
      } else {
        dv[doc.b].narrow(1, doc.start, L).copy_(at::bmm(scores.transpose(1, 2), dob2));
        dk[doc.b].narrow(1, doc.start, L).copy_(at::bmm(dp.transpose(1, 2), qd));
        dq[doc.b]
            .view({d.NKV, d.G, d.T, d.D})
            .narrow(2, doc.start, L)
            .copy_(at::bmm(dp, kd).view({d.NKV, d.G, L, d.D}));
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

void swiglu_forward(at::Tensor& out, const at::Tensor& gu) {
  check_contiguous(gu, "swiglu_forward", "gu");
  check_contiguous(out, "swiglu_forward", "out");
  const int64_t F = gu.size(-1) / 2, N = gu.numel() / (2 * F);
  TORCH_CHECK(out.numel() == N * F, "swiglu_forward: out has ", out.numel(), " elements, want ",
              N * F);
  if (!fused(gu)) return composite::swiglu_forward(out, gu);
  RS_DISPATCH(gu.scalar_type(), "swiglu_forward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = gu.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    if constexpr (kKernelRows<scalar_t>) {
      parallel_rows(N, 16, [&](int64_t begin, int64_t end) {
        kernels::swiglu_forward_rows(kernel_ptr(gp + begin * 2 * F), kernel_ptr(op + begin * F),
                                     end - begin, F);
      });
      return;
    }
    parallel_rows(N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* g = gp + n * 2 * F;
        const scalar_t* u = g + F;
        scalar_t* o = op + n * F;
        for (int64_t i = 0; i < F; ++i) {
          const A gi = A(g[i]);
          o[i] = scalar_t(gi / (A(1) + std::exp(-gi)) * A(u[i]));
        }
      }
    });
  });
}

void swiglu_backward(at::Tensor& dgu, const at::Tensor& dout, const at::Tensor& gu) {
  check_contiguous(gu, "swiglu_backward", "gu");
  check_contiguous(dout, "swiglu_backward", "dout");
  check_contiguous(dgu, "swiglu_backward", "dgu");
  if (!fused(gu)) return composite::swiglu_backward(dgu, dout, gu);
  const int64_t F = gu.size(-1) / 2, N = gu.numel() / (2 * F);
  RS_DISPATCH(gu.scalar_type(), "swiglu_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = gu.data_ptr<scalar_t>();
    const scalar_t* dp = dout.data_ptr<scalar_t>();
    scalar_t* dgp = dgu.data_ptr<scalar_t>();
    if constexpr (kKernelRows<scalar_t>) {
      parallel_rows(N, 16, [&](int64_t begin, int64_t end) {
        kernels::swiglu_backward_rows(kernel_ptr(dp + begin * F), kernel_ptr(gp + begin * 2 * F),
                                      kernel_ptr(dgp + begin * 2 * F), end - begin, F);
      });
      return;
    }
    parallel_rows(N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* g = gp + n * 2 * F;
        const scalar_t* u = g + F;
        const scalar_t* dy = dp + n * F;
        scalar_t* dg = dgp + n * 2 * F;
        scalar_t* du = dg + F;
        for (int64_t i = 0; i < F; ++i) {
          const A gi = A(g[i]);
          const A sig = A(1) / (A(1) + std::exp(-gi));
          const A silu = gi * sig;
          du[i] = scalar_t(A(dy[i]) * silu);
          dg[i] = scalar_t(A(dy[i]) * A(u[i]) * sig * (A(1) + gi * (A(1) - sig)));
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// residual

void residual_forward(at::Tensor& out, const at::Tensor& x, const at::Tensor& y) {
  at::add_out(out, x, y);
}

// ---------------------------------------------------------------------------------------------
// chunked LM head + cross-entropy

namespace {

// logits [R, V] of the counted rows -> returns the loss sum; when `backward`, overwrites logits
// with grad_scale * (softmax - onehot).
template <class scalar_t>
double cross_entropy_rows(scalar_t* logits, const int64_t* targets, int64_t R, int64_t V,
                          bool backward, double grad_scale) {
  using A = acc_t<scalar_t>;
  std::vector<double> row_loss(static_cast<size_t>(R));
  if constexpr (kKernelRows<scalar_t>) {
    parallel_rows(R, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = logits + r * V;
        const A mx = kernels::row_max(kernel_ptr(row), V);
        const A sum = kernels::exp_sum(kernel_ptr(row), V, 1.0f, mx, 1.0f, /*store=*/false);
        const A lse = mx + std::log(sum);
        const int64_t y = targets[r];
        row_loss[static_cast<size_t>(r)] = double(lse - A(row[y]));
        if (backward) {
          const A gs = A(grad_scale);
          kernels::exp_sum(kernel_ptr(row), V, 1.0f, lse, gs, /*store=*/true);
          row[y] = scalar_t(A(row[y]) - gs);
        }
      }
    });
  } else {
    parallel_rows(R, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = logits + r * V;
        A mx = -std::numeric_limits<A>::infinity();
        for (int64_t j = 0; j < V; ++j) mx = std::max(mx, A(row[j]));
        A sum = 0;
        for (int64_t j = 0; j < V; ++j) sum += std::exp(A(row[j]) - mx);
        const A lse = mx + std::log(sum);
        const int64_t y = targets[r];
        row_loss[static_cast<size_t>(r)] = double(lse - A(row[y]));
        if (backward) {
          const A gs = A(grad_scale);
          for (int64_t j = 0; j < V; ++j) row[j] = scalar_t(std::exp(A(row[j]) - lse) * gs);
          row[y] = scalar_t(A(row[y]) - gs);
        }
      }
    });
  }
  double total = 0;
  for (double l : row_loss) total += l;
  return total;
}

void cross_entropy(at::Tensor& loss_sum, at::Tensor* dh, at::Tensor* dw, const at::Tensor& h,
                   const at::Tensor& w, const LossRows& rows, double grad_scale,
                   int64_t chunk_rows) {
  TORCH_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1),
              "cross_entropy: h [N,C] and w [V,C] expected, got ", h.sizes(), " ", w.sizes());
  TORCH_CHECK(loss_sum.numel() == 1 && loss_sum.scalar_type() == at::kDouble &&
                  loss_sum.device() == h.device(),
              "cross_entropy: loss_sum must be a float64 scalar on ", h.device());
  const int64_t V = w.size(0), R = rows.count();
  TORCH_CHECK(R == 0 || (rows.index.device() == h.device() && rows.target.numel() == R),
              "cross_entropy: the loss rows must be on ", h.device(), " with one target each");
  const bool backward = dh != nullptr;
  if (backward) dh->zero_();  // rows without a target get zero grad
  chunk_rows = std::max<int64_t>(1, chunk_rows);
  at::Tensor logits = at::empty({std::min(chunk_rows, std::max<int64_t>(R, 1)), V}, h.options());
  for (int64_t start = 0; start < R; start += chunk_rows) {
    const int64_t n = std::min(chunk_rows, R - start);
    const at::Tensor idx = rows.index.narrow(0, start, n);
    const at::Tensor yc = rows.target.narrow(0, start, n);
    const at::Tensor hc = h.index_select(0, idx);
    at::Tensor lc = logits.narrow(0, 0, n);
    at::mm_out(lc, hc, w.t());
    if (fused(lc)) {
      RS_DISPATCH(h.scalar_type(), "cross_entropy", [&] {
        loss_sum.add_(cross_entropy_rows<scalar_t>(lc.data_ptr<scalar_t>(), yc.data_ptr<int64_t>(),
                                                   n, V, backward, grad_scale));
      });
    } else {
      composite::cross_entropy_rows(loss_sum, lc, yc, backward, grad_scale);
    }
    if (backward) {
      dh->index_copy_(0, idx, at::mm(lc, w));
      accumulate_weight_grad(*dw, lc, hc);
    }
  }
}

}  // namespace

LossRows find_loss_rows(const at::Tensor& targets, int64_t vocab) {
  TORCH_CHECK(targets.scalar_type() == at::kLong, "find_loss_rows: targets must be int64, got ",
              targets.scalar_type());
  const at::Tensor flat = targets.to(at::kCPU).contiguous().reshape({-1});
  const int64_t* t = flat.data_ptr<int64_t>();
  const int64_t N = flat.numel();
  int64_t R = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == kIgnoreIndex) continue;
    TORCH_CHECK(t[i] >= 0 && t[i] < vocab, "target ", t[i], " at position ", i, " is outside [0, ",
                vocab, ") and not the ignore index ", kIgnoreIndex);
    ++R;
  }
  LossRows rows;
  rows.index = at::empty({R}, at::kLong);
  rows.target = at::empty({R}, at::kLong);
  int64_t* ip = rows.index.data_ptr<int64_t>();
  int64_t* tp = rows.target.data_ptr<int64_t>();
  for (int64_t i = 0, r = 0; i < N; ++i) {
    if (t[i] == kIgnoreIndex) continue;
    ip[r] = i;
    tp[r++] = t[i];
  }
  return rows;
}

LossRows LossRows::to(const at::Device& device) const {
  return LossRows{index.to(device), target.to(device)};
}

void cross_entropy_forward(at::Tensor& loss_sum, const at::Tensor& h, const at::Tensor& w,
                           const LossRows& rows, int64_t chunk_rows) {
  cross_entropy(loss_sum, nullptr, nullptr, h, w, rows, 0.0, chunk_rows);
}

void cross_entropy_forward_backward(at::Tensor& loss_sum, at::Tensor& dh, at::Tensor& dw,
                                    const at::Tensor& h, const at::Tensor& w, const LossRows& rows,
                                    double grad_scale, int64_t chunk_rows) {
  cross_entropy(loss_sum, &dh, &dw, h, w, rows, grad_scale, chunk_rows);
}

namespace {

CrossEntropyResult cross_entropy_read_back(at::Tensor* dh, at::Tensor* dw, const at::Tensor& h,
                                           const at::Tensor& w, const at::Tensor& targets,
                                           double grad_scale, int64_t chunk_rows) {
  TORCH_CHECK(targets.numel() == h.size(0), "cross_entropy: ", targets.numel(), " targets for ",
              h.size(0), " rows");
  const LossRows rows = find_loss_rows(targets, w.size(0)).to(h.device());
  at::Tensor loss = at::zeros({}, h.options().dtype(at::kDouble));
  cross_entropy(loss, dh, dw, h, w, rows, grad_scale, chunk_rows);
  return {loss.item<double>(), rows.count()};
}

}  // namespace

CrossEntropyResult chunked_cross_entropy_forward(const at::Tensor& h, const at::Tensor& w,
                                                 const at::Tensor& targets, int64_t chunk_rows) {
  return cross_entropy_read_back(nullptr, nullptr, h, w, targets, 0.0, chunk_rows);
}

CrossEntropyResult chunked_cross_entropy_forward_backward(at::Tensor& dh, at::Tensor& dw,
                                                          const at::Tensor& h, const at::Tensor& w,
                                                          const at::Tensor& targets,
                                                          double grad_scale, int64_t chunk_rows) {
  return cross_entropy_read_back(&dh, &dw, h, w, targets, grad_scale, chunk_rows);
}

int64_t cross_entropy_chunk_rows(int64_t vocab_size, int64_t bytes) {
  return std::max<int64_t>(1, bytes / (vocab_size * 4));
}

}  // namespace ramstream::autograd
