// adamw_update against torch::optim::AdamW (libtorch 1.13) over several steps, on both dispatch
// paths, fp32 and bf16 grads, with and without weight decay and a grad scale; plus the in-place
// bf16 case (working == grad), thread-count and ISA invariance, and argument checks.
#include "kernels/adamw.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kernels/test_isa.h"

namespace ramstream::kernels {
namespace {

std::vector<float> randn(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& e : x) e = dist(rng);
  return x;
}

std::vector<bf16> to_bf16_vec(const std::vector<float>& x) {
  std::vector<bf16> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = to_bf16(x[i]);
  return out;
}

at::Tensor as_tensor(const std::vector<float>& x) {
  return torch::from_blob(const_cast<float*>(x.data()), {static_cast<int64_t>(x.size())},
                          torch::kFloat)
      .clone();
}

// 1e-6 relative, as promised in adamw.h. The absolute 1e-9 only matters for values near zero
// reached by cancellation (m = 0.9 m + 0.1 g with terms of order 0.1), where a relative bound
// says nothing; it is four orders below the smallest update lr*1e-3 of these tests.
struct Closeness {
  int64_t exact = 0, within = 0, total = 0;
  float worst_rel = 0;
};

void compare(const char* what, const float* ours, const at::Tensor& ref, Closeness& c) {
  const float* r = ref.data_ptr<float>();
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const float diff = std::fabs(ours[i] - r[i]);
    ++c.total;
    if (std::memcmp(&ours[i], &r[i], sizeof(float)) == 0) ++c.exact;
    if (diff <= 1e-6f * std::fabs(r[i]) + 1e-9f) {
      ++c.within;
    } else {
      ADD_FAILURE() << what << "[" << i << "]: ours " << ours[i] << " torch " << r[i];
      return;
    }
    if (r[i] != 0) c.worst_rel = std::max(c.worst_rel, diff / std::fabs(r[i]));
  }
}

struct ParityCase {
  int64_t n;
  AdamWConfig cfg;
  float grad_scale;
  bool bf16_grads;
};

// Runs `steps` updates of ours and of torch::optim::AdamW from the same weights with the same
// grads (torch receives grad * grad_scale, computed in fp32), comparing param, m and v after each
// step and checking that the working copy is exactly the rounded param.
void check_parity(const ParityCase& pc, int steps) {
  const int64_t n = pc.n;
  const std::vector<float> p0 = randn(n, 7);
  for_each_isa([&](Isa isa) {
    SCOPED_TRACE(testing::Message() << isa_name(isa) << " n=" << n << " wd=" << pc.cfg.weight_decay
                                    << " grad_scale=" << pc.grad_scale
                                    << (pc.bf16_grads ? " bf16" : " fp32") << " grads");
    std::vector<float> p = p0, m(n, 0.0f), v(n, 0.0f);
    std::vector<bf16> working(n, bf16{0});

    at::Tensor tp = as_tensor(p0).set_requires_grad(true);
    torch::optim::AdamW opt({tp}, torch::optim::AdamWOptions(pc.cfg.lr)
                                      .betas({pc.cfg.beta1, pc.cfg.beta2})
                                      .eps(pc.cfg.eps)
                                      .weight_decay(pc.cfg.weight_decay));
    Closeness cp, cm, cv;
    for (int step = 1; step <= steps; ++step) {
      const std::vector<float> g = randn(n, 100 + step, 0.5f * step);
      at::Tensor torch_grad;
      if (pc.bf16_grads) {
        const std::vector<bf16> gb = to_bf16_vec(g);
        adamw_update(p.data(), m.data(), v.data(), gb.data(), n, pc.cfg, step, pc.grad_scale,
                     working.data());
        torch_grad = torch::from_blob(const_cast<bf16*>(gb.data()), {n}, torch::kBFloat16)
                         .to(torch::kFloat) *
                     pc.grad_scale;
      } else {
        adamw_update(p.data(), m.data(), v.data(), g.data(), n, pc.cfg, step, pc.grad_scale,
                     working.data());
        torch_grad = as_tensor(g) * pc.grad_scale;
      }
      tp.mutable_grad() = torch_grad;
      opt.step();

      const auto& state =
          static_cast<const torch::optim::AdamWParamState&>(*opt.state().begin()->second);
      ASSERT_EQ(state.step(), step);
      compare("param", p.data(), tp.detach(), cp);
      compare("exp_avg", m.data(), state.exp_avg(), cm);
      compare("exp_avg_sq", v.data(), state.exp_avg_sq(), cv);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(working[i].bits, to_bf16(p[i]).bits) << "working[" << i << "] step " << step;
      }
      if (testing::Test::HasFailure()) return;
    }
    // Not asserted (another libtorch build may place its FMAs differently), but worth seeing:
    // ATen 1.13 on an AVX2 CPU matches bit for bit.
    std::cout << "  [" << isa_name(isa) << " n=" << n << "] bit-exact vs torch: param " << cp.exact
              << "/" << cp.total << ", m " << cm.exact << "/" << cm.total << ", v " << cv.exact
              << "/" << cv.total << "; worst rel param " << cp.worst_rel << "\n";
  });
}

class AdamWParity : public testing::TestWithParam<int64_t> {};

TEST_P(AdamWParity, Fp32GradsDefaultConfig) {
  check_parity({GetParam(), AdamWConfig{}, 1.0f, false}, 5);
}

TEST_P(AdamWParity, Fp32GradsNoWeightDecayScaledGrads) {
  AdamWConfig cfg;
  cfg.weight_decay = 0.0f;
  check_parity({GetParam(), cfg, 0.37f, false}, 5);
}

TEST_P(AdamWParity, Bf16GradsScaledGradsOtherHyperparameters) {
  AdamWConfig cfg;
  cfg.lr = 3e-4f;
  cfg.beta1 = 0.8f;
  cfg.beta2 = 0.95f;
  cfg.eps = 1e-6f;
  cfg.weight_decay = 0.1f;
  check_parity({GetParam(), cfg, 0.61f, true}, 5);
}

TEST_P(AdamWParity, Bf16GradsDefaultConfig) {
  check_parity({GetParam(), AdamWConfig{}, 1.0f, true}, 3);
}

// 1 and 7: scalar tail only; 1000003: 16 chunks (several threads) and a 3-element tail.
INSTANTIATE_TEST_SUITE_P(Sizes, AdamWParity, testing::Values(1, 7, 1000003));

// The design's in-place update: grads land in the dead bf16 working copy, the optimizer reads
// each and overwrites it with the new bf16 weight. Must equal the run with separate buffers.
TEST(AdamW, Bf16GradsAliasedWithWorkingCopy) {
  const int64_t n = 1000003;
  const std::vector<float> p0 = randn(n, 3);
  for_each_isa([&](Isa isa) {
    SCOPED_TRACE(isa_name(isa));
    std::vector<float> pa = p0, ma(n, 0), va(n, 0), pb = p0, mb(n, 0), vb(n, 0);
    std::vector<bf16> region(n), grad(n), working(n);
    for (int step = 1; step <= 4; ++step) {
      const std::vector<bf16> g = to_bf16_vec(randn(n, 50 + step, 0.1f));
      region = g;  // the GPU grads land in the working-copy region
      adamw_update(pa.data(), ma.data(), va.data(), region.data(), n, AdamWConfig{}, step, 0.5f,
                   region.data());
      grad = g;
      adamw_update(pb.data(), mb.data(), vb.data(), grad.data(), n, AdamWConfig{}, step, 0.5f,
                   working.data());
      ASSERT_EQ(std::memcmp(pa.data(), pb.data(), n * sizeof(float)), 0) << "step " << step;
      ASSERT_EQ(std::memcmp(ma.data(), mb.data(), n * sizeof(float)), 0);
      ASSERT_EQ(std::memcmp(va.data(), vb.data(), n * sizeof(float)), 0);
      ASSERT_EQ(std::memcmp(region.data(), working.data(), n * sizeof(bf16)), 0);
      ASSERT_EQ(std::memcmp(grad.data(), g.data(), n * sizeof(bf16)), 0);  // not aliased: intact
    }
  });
}

TEST(AdamW, ResultIndependentOfThreadsAndIsa) {
  const int64_t n = 300001;
  const std::vector<float> p0 = randn(n, 11), g = randn(n, 12);
  std::vector<float> ref_p;
  std::vector<bf16> ref_w;
  for_each_isa([&](Isa isa) {
    for (int threads : {1, 2, 3, 0}) {
      SCOPED_TRACE(testing::Message() << isa_name(isa) << " threads=" << threads);
      std::vector<float> p = p0, m(n, 0), v(n, 0);
      std::vector<bf16> w(n);
      for (int step = 1; step <= 3; ++step) {
        adamw_update(p.data(), m.data(), v.data(), g.data(), n, AdamWConfig{}, step, 1.0f, w.data(),
                     threads);
      }
      if (ref_p.empty()) {
        ref_p = p;
        ref_w = w;
        continue;
      }
      ASSERT_EQ(std::memcmp(p.data(), ref_p.data(), n * sizeof(float)), 0);
      ASSERT_EQ(std::memcmp(w.data(), ref_w.data(), n * sizeof(bf16)), 0);
    }
  });
}

TEST(AdamW, NullWorkingCopyIsAllowed) {
  const int64_t n = 1001;
  std::vector<float> p = randn(n, 1), m(n, 0), v(n, 0), p2 = p, m2(n, 0), v2(n, 0);
  const std::vector<float> g = randn(n, 2);
  std::vector<bf16> w(n);
  adamw_update(p.data(), m.data(), v.data(), g.data(), n, AdamWConfig{}, 1, 1.0f, nullptr);
  adamw_update(p2.data(), m2.data(), v2.data(), g.data(), n, AdamWConfig{}, 1, 1.0f, w.data());
  EXPECT_EQ(std::memcmp(p.data(), p2.data(), n * sizeof(float)), 0);
}

TEST(AdamW, RejectsBadArguments) {
  std::vector<float> p(16), m(16), v(16), g(16);
  std::vector<bf16> buf(32);
  EXPECT_THROW(
      adamw_update(p.data(), m.data(), v.data(), g.data(), 16, AdamWConfig{}, 0, 1.0f, nullptr),
      std::invalid_argument);
  EXPECT_THROW(
      adamw_update(p.data(), m.data(), v.data(), g.data(), -1, AdamWConfig{}, 1, 1.0f, nullptr),
      std::invalid_argument);
  // working shifted by one element against the grads: partial overlap.
  EXPECT_THROW(adamw_update(p.data(), m.data(), v.data(), buf.data(), 16, AdamWConfig{}, 1, 1.0f,
                            buf.data() + 1),
               std::invalid_argument);
  // Adjacent, not overlapping: fine.
  EXPECT_NO_THROW(adamw_update(p.data(), m.data(), v.data(), buf.data(), 16, AdamWConfig{}, 1, 1.0f,
                               buf.data() + 16));
  // n == 0 touches nothing.
  EXPECT_NO_THROW(
      adamw_update(nullptr, nullptr, nullptr, g.data(), 0, AdamWConfig{}, 1, 1.0f, nullptr));
}

}  // namespace
}  // namespace ramstream::kernels
