// Every op's hand-written forward and backward against libtorch autograd, in float64.
#include "autograd/ops.h"

#include <gtest/gtest.h>

#include "autograd/reference.h"
#include "autograd/rope.h"
#include "autograd/test_util.h"

namespace ramstream::autograd {
namespace {

using testing::compare;
constexpr double kOpTol = 1e-10;
const auto kF64 = at::TensorOptions().dtype(at::kDouble);

at::Tensor leaf(at::Tensor t) {
  return t.detach().clone().requires_grad_(true);
}

TEST(Ops, Embedding) {
  at::manual_seed(1);
  const at::Tensor wte = at::randn({11, 6}, kF64);
  const at::Tensor ids = at::tensor({3, 0, 3, 10, 7, 3}, at::kLong);  // repeats accumulate
  at::Tensor out = at::empty({6, 6}, kF64);
  embedding_forward(out, ids, wte);
  at::Tensor w = leaf(wte);
  at::Tensor ref = at::embedding(w, ids);
  EXPECT_LE(compare("embedding out", out, ref).max_rel, kOpTol);
  const at::Tensor dout = at::randn({6, 6}, kF64);
  ref.backward(dout);
  const at::Tensor base = at::randn({11, 6}, kF64);
  at::Tensor dwte = base.clone();
  embedding_backward(dwte, dout, ids);
  EXPECT_LE(compare("embedding dwte (+=)", dwte - base, w.grad()).max_rel, kOpTol);
}

TEST(Ops, RmsNorm) {
  at::manual_seed(2);
  const int64_t N = 7, C = 24;
  const at::Tensor x0 = at::randn({N, C}, kF64) * 3, w0 = at::randn({C}, kF64);
  at::Tensor out = at::empty({N, C}, kF64), rstd = at::empty({N}, kF64);
  rmsnorm_forward(out, rstd, x0, w0, 1e-5);
  at::Tensor x = leaf(x0), w = leaf(w0);
  at::Tensor ref = reference::rmsnorm(x, w, 1e-5);
  EXPECT_LE(compare("rmsnorm out", out, ref).max_rel, kOpTol);
  const at::Tensor dout = at::randn({N, C}, kF64);
  ref.backward(dout);
  // Both grads accumulate: dx is the residual stream, dw a parameter.
  const at::Tensor dx_base = at::randn({N, C}, kF64), dw_base = at::randn({C}, kF64);
  at::Tensor dx = dx_base.clone(), dw = dw_base.clone();
  rmsnorm_backward(dx, dw, dout, x0, w0, rstd);
  EXPECT_LE(compare("rmsnorm dx (+=)", dx - dx_base, x.grad()).max_rel, kOpTol);
  EXPECT_LE(compare("rmsnorm dw (+=)", dw - dw_base, w.grad()).max_rel, kOpTol);
}

class LinearTest : public ::testing::TestWithParam<bool> {};

TEST_P(LinearTest, ForwardBackward) {
  const bool bias = GetParam();
  at::manual_seed(3);
  const int64_t N = 5, IC = 12, OC = 9;
  const at::Tensor x0 = at::randn({N, IC}, kF64), w0 = at::randn({OC, IC}, kF64);
  const at::Tensor b0 = bias ? at::randn({OC}, kF64) : at::Tensor();
  at::Tensor out = at::empty({N, OC}, kF64);
  linear_forward(out, x0, w0, b0);
  at::Tensor x = leaf(x0), w = leaf(w0), b = bias ? leaf(b0) : at::Tensor();
  at::Tensor ref = at::linear(x, w, b);
  EXPECT_LE(compare("linear out", out, ref).max_rel, kOpTol);
  const at::Tensor dout = at::randn({N, OC}, kF64);
  ref.backward(dout);
  at::Tensor dx = at::full({N, IC}, 123.0, kF64);  // overwritten
  const at::Tensor dw_base = at::randn({OC, IC}, kF64);
  at::Tensor dw = dw_base.clone();
  at::Tensor db = bias ? at::zeros({OC}, kF64) : at::Tensor();
  linear_backward(dx, dw, db, dout, x0, w0);
  EXPECT_LE(compare("linear dx (=)", dx, x.grad()).max_rel, kOpTol);
  EXPECT_LE(compare("linear dw (+=)", dw - dw_base, w.grad()).max_rel, kOpTol);
  if (bias) {
    EXPECT_LE(compare("linear db", db, b.grad()).max_rel, kOpTol);
  }
}

INSTANTIATE_TEST_SUITE_P(Bias, LinearTest, ::testing::Bool());

class RopeTest : public ::testing::TestWithParam<model::RopeScalingType> {};

TEST_P(RopeTest, ForwardBackwardOnStridedView) {
  testing::TinyOptions o;
  o.scaling = GetParam();
  const model::ModelConfig cfg = testing::tiny_config(o);
  const int64_t B = 2, T = 9, H = 3, D = cfg.head_dim;
  const RopeTables rope = make_rope_tables(cfg, T, at::kDouble);
  at::manual_seed(4);
  // x is a view into a fused [B,T,2H,D] projection, as in the block.
  const at::Tensor fused = at::randn({B, T, 2 * H, D}, kF64);
  const at::Tensor x0 = fused.permute({0, 2, 1, 3}).narrow(1, H, H);
  at::Tensor out = at::empty({B, H, T, D}, kF64);
  rope_forward(out, x0, rope.cos, rope.sin);
  at::Tensor x = leaf(x0.contiguous());
  at::Tensor ref = reference::rope(x, rope.cos, rope.sin);
  EXPECT_LE(compare("rope out", out, ref).max_rel, kOpTol);
  const at::Tensor dout = at::randn({B, H, T, D}, kF64);
  ref.backward(dout);
  at::Tensor dfused = at::zeros({B, T, 2 * H, D}, kF64);
  at::Tensor dx = dfused.permute({0, 2, 1, 3}).narrow(1, H, H);
  rope_backward(dx, dout, rope.cos, rope.sin);
  EXPECT_LE(compare("rope dx", dx, x.grad()).max_rel, kOpTol);
  // The other heads of the fused buffer are untouched.
  EXPECT_EQ(dfused.permute({0, 2, 1, 3}).narrow(1, 0, H).abs().max().item<double>(), 0.0);
}

// Packed rows: every token rotated by its position in its document.
TEST_P(RopeTest, PackedPositionsOnStridedView) {
  testing::TinyOptions o;
  o.scaling = GetParam();
  const model::ModelConfig cfg = testing::tiny_config(o);
  const at::Tensor positions = testing::packed_positions({{4, 1, 6}, {2, 9}});
  const int64_t B = 2, T = 11, H = 3, D = cfg.head_dim;
  const RopeTables rope = make_rope_tables(cfg, T, at::kDouble);
  const TokenPositions tp = make_token_positions(positions, at::kCPU);
  ASSERT_TRUE(tp.packed());
  at::manual_seed(14);
  const at::Tensor fused = at::randn({B, T, 2 * H, D}, kF64);
  const at::Tensor x0 = fused.permute({0, 2, 1, 3}).narrow(1, H, H);
  at::Tensor out = at::empty({B, H, T, D}, kF64);
  rope_forward(out, x0, rope.cos, rope.sin, tp);
  at::Tensor x = leaf(x0.contiguous());
  at::Tensor ref = reference::rope(x, rope.cos, rope.sin, positions);
  EXPECT_LE(compare("rope packed out", out, ref).max_rel, kOpTol);
  // A document that starts mid-row is rotated as if it started the row: not by its offset.
  const at::Tensor plain = reference::rope(x0.contiguous(), rope.cos, rope.sin);
  EXPECT_GT((out - plain).abs().max().item<double>(), 1e-3);
  const at::Tensor dout = at::randn({B, H, T, D}, kF64);
  ref.backward(dout);
  at::Tensor dfused = at::zeros({B, T, 2 * H, D}, kF64);
  at::Tensor dx = dfused.permute({0, 2, 1, 3}).narrow(1, H, H);
  rope_backward(dx, dout, rope.cos, rope.sin, tp);
  EXPECT_LE(compare("rope packed dx", dx, x.grad()).max_rel, kOpTol);
}

INSTANTIATE_TEST_SUITE_P(Scaling, RopeTest,
                         ::testing::Values(model::RopeScalingType::kNone,
                                           model::RopeScalingType::kLinear,
                                           model::RopeScalingType::kLlama3));

TEST(Rope, Llama3ScalingMatchesReferenceFormula) {
  testing::TinyOptions o;
  o.scaling = model::RopeScalingType::kLlama3;
  o.head_dim = 16;
  const model::ModelConfig cfg = testing::tiny_config(o);
  const std::vector<double> inv = rope_inv_freq(cfg);
  // Recompute from the definition: wavelength bands of original_max_position_embeddings=64.
  int kept = 0, scaled = 0, blended = 0;
  for (size_t i = 0; i < inv.size(); ++i) {
    const double f = 1.0 / std::pow(cfg.rope_theta, 2.0 * double(i) / 16.0);
    const double wl = 2 * M_PI / f;
    double want;
    if (wl < 64.0 / 4.0) {
      want = f, ++kept;
    } else if (wl > 64.0 / 1.0) {
      want = f / 8.0, ++scaled;
    } else {
      const double s = (64.0 / wl - 1.0) / 3.0;
      want = (1 - s) * f / 8.0 + s * f, ++blended;
    }
    EXPECT_NEAR(inv[i], want, 1e-15 * std::abs(want)) << "i=" << i;
  }
  // The config exercises every band.
  EXPECT_GT(kept, 0);
  EXPECT_GT(scaled, 0);
  EXPECT_GT(blended, 0);
}

struct AttnCase {
  int64_t B, NH, NKV, T, D;
};

void PrintTo(const AttnCase& c, std::ostream* os) {
  *os << "B" << c.B << " NH" << c.NH << " NKV" << c.NKV << " T" << c.T << " D" << c.D;
}

class AttentionTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionTest, ForwardBackward) {
  const AttnCase c = GetParam();
  at::manual_seed(5);
  const at::Tensor q0 = at::randn({c.B, c.NH, c.T, c.D}, kF64);
  const at::Tensor k0 = at::randn({c.B, c.NKV, c.T, c.D}, kF64);
  const at::Tensor v0 = at::randn({c.B, c.NKV, c.T, c.D}, kF64);
  at::Tensor out = at::empty({c.B, c.T, c.NH * c.D}, kF64);
  at::Tensor lse = at::empty({c.B, c.NH, c.T}, kF64);
  attention_forward(out, lse, q0, k0, v0);
  at::Tensor q = leaf(q0), k = leaf(k0), v = leaf(v0);
  at::Tensor ref = reference::attention(q, k, v);
  EXPECT_LE(compare("attention out", out, ref).max_rel, kOpTol);
  const at::Tensor dout = at::randn({c.B, c.T, c.NH * c.D}, kF64);
  ref.backward(dout);
  at::Tensor dq = at::full_like(q0, 7.0), dk = at::full_like(k0, 7.0), dv = at::full_like(v0, 7.0);
  attention_backward(dq, dk, dv, dout, q0, k0, v0, out, lse);
  EXPECT_LE(compare("attention dq", dq, q.grad()).max_rel, kOpTol);
  EXPECT_LE(compare("attention dk", dk, k.grad()).max_rel, kOpTol);
  EXPECT_LE(compare("attention dv", dv, v.grad()).max_rel, kOpTol);
}

// Each row of the case split into documents (lengths cycling through a fixed pattern, another
// phase per row), so the rows hold documents of 1..5 tokens and different boundaries.
std::vector<std::vector<int64_t>> split_rows(int64_t B, int64_t T) {
  static const int64_t kPattern[] = {3, 1, 5, 2, 4};
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t left = T, k = b; left > 0; ++k) {
      const int64_t len = std::min(kPattern[k % 5], left);
      rows[static_cast<size_t>(b)].push_back(len);
      left -= len;
    }
  }
  return rows;
}

// Block-causal attention on packed rows against autograd on an explicit [B,T,T] mask.
TEST_P(AttentionTest, PackedRowsBlockCausal) {
  const AttnCase c = GetParam();
  at::manual_seed(15);
  const at::Tensor positions = testing::packed_positions(split_rows(c.B, c.T));
  const TokenPositions tp = make_token_positions(positions, at::kCPU);
  const at::Tensor q0 = at::randn({c.B, c.NH, c.T, c.D}, kF64);
  const at::Tensor k0 = at::randn({c.B, c.NKV, c.T, c.D}, kF64);
  const at::Tensor v0 = at::randn({c.B, c.NKV, c.T, c.D}, kF64);
  at::Tensor out = at::empty({c.B, c.T, c.NH * c.D}, kF64);
  at::Tensor lse = at::empty({c.B, c.NH, c.T}, kF64);
  attention_forward(out, lse, q0, k0, v0, tp);
  at::Tensor q = leaf(q0), k = leaf(k0), v = leaf(v0);
  at::Tensor ref = reference::attention(q, k, v, positions);
  EXPECT_LE(compare("attention packed out", out, ref).max_rel, kOpTol);
  if (tp.packed()) {  // the mask matters: plain causal attention gives something else
    EXPECT_GT((out - reference::attention(q0, k0, v0)).abs().max().item<double>(), 1e-3);
  }
  const at::Tensor dout = at::randn({c.B, c.T, c.NH * c.D}, kF64);
  ref.backward(dout);
  at::Tensor dq = at::full_like(q0, 7.0), dk = at::full_like(k0, 7.0), dv = at::full_like(v0, 7.0);
  attention_backward(dq, dk, dv, dout, q0, k0, v0, out, lse, tp);
  EXPECT_LE(compare("attention packed dq", dq, q.grad()).max_rel, kOpTol);
  EXPECT_LE(compare("attention packed dk", dk, k.grad()).max_rel, kOpTol);
  EXPECT_LE(compare("attention packed dv", dv, v.grad()).max_rel, kOpTol);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttnCase{2, 4, 2, 9, 8},     // GQA, odd T
                                           AttnCase{2, 4, 4, 8, 8},     // MHA
                                           AttnCase{3, 6, 1, 1, 4},     // MQA, T=1
                                           AttnCase{1, 8, 2, 33, 16}),  // G=4, longer T
                         [](const auto& info) {
                           const AttnCase& c = info.param;
                           return "NH" + std::to_string(c.NH) + "_NKV" + std::to_string(c.NKV) +
                                  "_T" + std::to_string(c.T);
                         });

TEST(Positions, DocumentsOfPackedRows) {
  const DocumentBounds d = find_documents(testing::packed_positions({{3, 2}, {5}}));
  EXPECT_TRUE(d.packed);
  EXPECT_EQ(d.cu_seqlens, (std::vector<int32_t>{0, 3, 5, 10}));
  EXPECT_EQ(d.max_seqlen, 5);
  // One document per row is plain causal attention: no positions to carry.
  const at::Tensor plain = testing::packed_positions({{6}, {6}, {6}});
  EXPECT_FALSE(find_documents(plain).packed);
  EXPECT_FALSE(make_token_positions(plain, at::kCPU).packed());
  EXPECT_FALSE(make_token_positions(at::Tensor(), at::kCPU).packed());
  const TokenPositions tp = make_token_positions(testing::packed_positions({{1, 4}}), at::kCPU);
  ASSERT_TRUE(tp.packed());
  EXPECT_EQ(tp.max_seqlen, 4);
  EXPECT_EQ(tp.cu_seqlens.scalar_type(), at::kInt);
  EXPECT_TRUE(at::equal(tp.cu_seqlens, at::tensor({0, 1, 5}, at::kInt)));
}

// Every position that is neither 0 nor the previous + 1, at every place of a few packings: an
// error naming its row and token (or, at a row's first token, saying rows start at 0).
TEST(Positions, InvalidPositionsNameRowAndToken) {
  int checked = 0;
  for (const auto& rows : std::vector<std::vector<std::vector<int64_t>>>{
           {{4, 3}, {7}}, {{1, 1, 1}, {2, 1}}, {{5}, {2, 3}, {1, 4}}}) {
    const at::Tensor good = testing::packed_positions(rows);
    const int64_t B = good.size(0), T = good.size(1);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t prev = t > 0 ? good[b][t - 1].item<int64_t>() : -1;
        for (int64_t bad : {prev + 2, prev, int64_t{-1}, int64_t{1000}}) {
          if (bad == 0 || bad == prev + 1) continue;
          at::Tensor p = good.clone();
          p[b][t] = bad;
          const std::string want = t == 0 ? "row " + std::to_string(b) + " starts at position"
                                          : "row " + std::to_string(b) + ", token " +
                                                std::to_string(t) + " has position " +
                                                std::to_string(bad);
          try {
            find_documents(p);
            ADD_FAILURE() << "accepted position " << bad << " at row " << b << " token " << t;
          } catch (const c10::Error& e) {
            EXPECT_NE(std::string(e.what()).find(want), std::string::npos)
                << "want '" << want << "' in: " << e.what_without_backtrace();
          }
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 60);
  EXPECT_THROW(find_documents(at::zeros({2, 3}, at::kInt)), c10::Error);  // not int64
  EXPECT_THROW(find_documents(at::zeros({6}, at::kLong)), c10::Error);    // not [B,T]
}

TEST(Ops, SwiGLU) {
  at::manual_seed(6);
  const int64_t N = 7, F = 10;
  const at::Tensor gu0 = at::randn({N, 2 * F}, kF64) * 2;
  at::Tensor out = at::empty({N, F}, kF64);
  swiglu_forward(out, gu0);
  at::Tensor gu = leaf(gu0);
  at::Tensor ref = reference::swiglu(gu);
  EXPECT_LE(compare("swiglu out", out, ref).max_rel, kOpTol);
  const at::Tensor dout = at::randn({N, F}, kF64);
  ref.backward(dout);
  at::Tensor dgu = at::empty({N, 2 * F}, kF64);
  swiglu_backward(dgu, dout, gu0);
  EXPECT_LE(compare("swiglu dgu", dgu, gu.grad()).max_rel, kOpTol);
}

TEST(Ops, Residual) {
  const at::Tensor x = at::randn({3, 4}, kF64), y = at::randn({3, 4}, kF64);
  at::Tensor out = at::empty({3, 4}, kF64);
  residual_forward(out, x, y);
  EXPECT_LE(compare("residual out", out, x + y).max_rel, 0.0);
}

class CrossEntropyTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(CrossEntropyTest, ChunkedMatchesFullLogits) {
  const int64_t chunk_rows = GetParam();
  at::manual_seed(7);
  const int64_t N = 11, C = 8, V = 37;
  const at::Tensor h0 = at::randn({N, C}, kF64), w0 = at::randn({V, C}, kF64);
  at::Tensor targets = at::randint(0, V, {N}, at::kLong);
  targets[0] = kIgnoreIndex;
  targets[5] = kIgnoreIndex;
  targets[N - 1] = kIgnoreIndex;
  const int64_t count = N - 3;
  const double scale = 1.0 / double(count);

  at::Tensor h = leaf(h0), w = leaf(w0);
  at::Tensor ref =
      at::cross_entropy_loss(at::linear(h, w), targets, {}, at::Reduction::Sum, kIgnoreIndex);
  (ref * scale).backward();

  const CrossEntropyResult fwd = chunked_cross_entropy_forward(h0, w0, targets, chunk_rows);
  EXPECT_EQ(fwd.num_targets, count);
  EXPECT_NEAR(fwd.loss_sum, ref.item<double>(), kOpTol * std::abs(ref.item<double>()));

  at::Tensor dh = at::full({N, C}, 5.0, kF64);
  const at::Tensor dw_base = at::randn({V, C}, kF64);
  at::Tensor dw = dw_base.clone();
  const CrossEntropyResult r =
      chunked_cross_entropy_forward_backward(dh, dw, h0, w0, targets, scale, chunk_rows);
  EXPECT_EQ(r.num_targets, count);
  EXPECT_NEAR(r.loss_sum, ref.item<double>(), kOpTol * std::abs(ref.item<double>()));
  EXPECT_LE(compare("ce dh (=)", dh, h.grad()).max_rel, kOpTol);
  EXPECT_LE(compare("ce dw (+=)", dw - dw_base, w.grad()).max_rel, kOpTol);
  EXPECT_EQ(dh[0].abs().max().item<double>(), 0.0);  // ignored row
}

INSTANTIATE_TEST_SUITE_P(ChunkRows, CrossEntropyTest, ::testing::Values(1, 3, 8, 1000));

TEST(Ops, CrossEntropyRejectsOutOfRangeTarget) {
  const at::Tensor h = at::randn({2, 4}, kF64), w = at::randn({5, 4}, kF64);
  EXPECT_THROW(chunked_cross_entropy_forward(h, w, at::tensor({1, 5}, at::kLong), 4), c10::Error);
  EXPECT_THROW(chunked_cross_entropy_forward(h, w, at::tensor({-3, 1}, at::kLong), 4), c10::Error);
}

TEST(Ops, CrossEntropyAllIgnored) {
  const at::Tensor h = at::randn({3, 4}, kF64), w = at::randn({5, 4}, kF64);
  at::Tensor dh = at::ones({3, 4}, kF64), dw = at::zeros({5, 4}, kF64);
  const at::Tensor t = at::full({3}, kIgnoreIndex, at::kLong);
  const CrossEntropyResult r = chunked_cross_entropy_forward_backward(dh, dw, h, w, t, 1.0, 2);
  EXPECT_EQ(r.num_targets, 0);
  EXPECT_EQ(r.loss_sum, 0.0);
  EXPECT_EQ(dh.abs().max().item<double>(), 0.0);
  EXPECT_EQ(dw.abs().max().item<double>(), 0.0);
}

}  // namespace
}  // namespace ramstream::autograd
