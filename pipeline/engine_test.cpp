// The streaming engine against the non-streamed hand-written model + the same AdamW (bitwise on
// the CPU), against libtorch autograd + torch::optim::AdamW (1e-6), and its schedule variants.
#include "pipeline/engine.h"

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/types.h>  // first: clip_grad.h uses torch::Tensor without including it

#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include "autograd/reference.h"
#include "autograd/test_util.h"
#include "kernels/reduce.h"
#include "memory/arena.h"
#include "pipeline/engine_testing.h"

namespace ramstream::pipeline {
namespace {

namespace at_testing = autograd::testing;

using testing::Batches;
using testing::make_batches;
using testing::ReferenceTrainer;

struct EngineCase {
  const char* name;
  bool tied;
  int64_t micro_batches;
  int slots;
  bool clip;
  bool host_checkpoints;
  bool keep_activations;
  bool faults;
  bool grad_ring = false;              // store without grad regions (no clipping)
  std::vector<int64_t> resident = {};  // stages with their own device buffer
};

void PrintTo(const EngineCase& c, std::ostream* os) {
  *os << c.name;
}

EngineOptions options_for(const EngineCase& c) {
  EngineOptions o;
  o.num_slots = c.slots;
  o.resident_stages = c.resident;
  o.max_grad_norm = c.clip ? 0.05 : 0.0;  // small enough that clipping is active
  o.host_checkpoints = c.host_checkpoints;
  o.activations =
      c.keep_activations ? autograd::ActivationMode::kSaved : autograd::ActivationMode::kRecompute;
  o.adamw.lr = 1e-2f;
  o.optimizer_queue = CpuDeviceOptions::faults(c.faults, 11, 300);
  return o;
}

class EngineExactTest : public ::testing::TestWithParam<EngineCase> {};

TEST_P(EngineExactTest, FiveStepsBitwiseEqualToNonStreamedModel) {
  const EngineCase c = GetParam();
  at_testing::TinyOptions to;
  to.tied = c.tied;
  to.layers = 3;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 61);
  const int64_t B = 2, T = 7;
  const EngineOptions opts = options_for(c);

  auto dev = make_cpu_device(CpuDeviceOptions::faults(c.faults, 5, 300));
  ParamStore store(plan_stages(cfg), cfg, {/*working_copy_bf16=*/false, !c.grad_ring});
  store.load(init);
  Engine engine(*dev, store, opts, B, T);
  ReferenceTrainer ref(cfg, init, opts, B, T);

  for (int step = 0; step < 5; ++step) {
    const Batches b = make_batches(cfg, c.micro_batches, B, T, 100 + step);
    StepResult s = engine.train_step(b.ids, b.targets);
    const double ref_loss = ref.step(b);
    EXPECT_EQ(s.loss(), ref_loss) << "step " << step;
  }
  engine.synchronize();
  for (int64_t i = 0; i < store.plan().num_stages(); ++i) {
    EXPECT_TRUE(at::equal(store.region(i).master, ref.masters()[static_cast<size_t>(i)]))
        << store.plan().stages[static_cast<size_t>(i)].name() << " max diff "
        << (store.region(i).master - ref.masters()[static_cast<size_t>(i)])
               .abs()
               .max()
               .item<float>();
  }
}

// Tied embeddings with several micro-batches sum the embedding grad in another order than the
// reference (head of every micro-batch first, then the embeddings), so those are checked in
// EngineTest.TiedMicroBatchesMatchWithinRounding instead.
INSTANTIATE_TEST_SUITE_P(
    Schedules, EngineExactTest,
    ::testing::Values(
        EngineCase{"untied_k2", false, 1, 2, false, false, false, false},
        EngineCase{"tied_k2", true, 1, 2, false, false, false, false},
        EngineCase{"tied_k3_clip", true, 1, 3, true, false, false, false},
        EngineCase{"untied_3mb_clip", false, 3, 2, true, false, false, false},
        EngineCase{"untied_3mb_k3", false, 3, 3, false, false, false, false},
        EngineCase{"host_checkpoints", false, 2, 2, false, true, false, false},
        EngineCase{"host_checkpoints_tied_clip", true, 1, 3, true, true, false, false},
        EngineCase{"keep_activations", false, 2, 2, true, false, true, false},
        EngineCase{"faults", false, 2, 2, false, false, false, true},
        EngineCase{"faults_clip_host", true, 1, 2, true, true, false, true},
        EngineCase{"faults_keep_k3", false, 3, 3, true, false, true, true},
        EngineCase{"grad_ring", true, 1, 2, false, false, false, false, true},
        EngineCase{"grad_ring_faults_3mb", false, 3, 2, false, true, false, true, true},
        EngineCase{
            "resident_tied_ends_clip_faults", true, 1, 2, true, false, false, true, false, {0, 4}},
        EngineCase{"resident_block_3mb", false, 3, 2, false, false, false, false, false, {2}}),
    [](const auto& info) { return std::string(info.param.name); });

double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

TEST(EngineTest, TiedMicroBatchesMatchWithinRounding) {
  at_testing::TinyOptions to;
  to.tied = true;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 62);
  EngineOptions opts;
  opts.adamw.lr = 1e-2f;
  auto dev = make_cpu_device({});
  ParamStore store(plan_stages(cfg), cfg, {});
  store.load(init);
  Engine engine(*dev, store, opts, 2, 6);
  ReferenceTrainer ref(cfg, init, opts, 2, 6);
  for (int step = 0; step < 3; ++step) {
    const Batches b = make_batches(cfg, 3, 2, 6, 200 + step);
    EXPECT_NEAR(engine.train_step(b.ids, b.targets).loss(), ref.step(b), 1e-5);
  }
  engine.synchronize();
  for (int64_t i = 0; i < store.plan().num_stages(); ++i) {
    EXPECT_LE(max_rel_diff(store.region(i).master, ref.masters()[static_cast<size_t>(i)]), 1e-5);
  }
}

// Accumulating micro-batches equals one batch holding them all (up to GEMM summation order).
TEST(EngineTest, MicroBatchesEqualOneBigBatch) {
  const model::ModelConfig cfg = at_testing::tiny_config({});
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 63);
  EngineOptions opts;
  opts.max_grad_norm = 1.0;
  auto dev = make_cpu_device({});
  ParamStore small(plan_stages(cfg), cfg, {}), big(plan_stages(cfg), cfg, {});
  small.load(init);
  big.load(init);
  Engine e_small(*dev, small, opts, 2, 8), e_big(*dev, big, opts, 4, 8);
  for (int step = 0; step < 3; ++step) {
    const Batches b = make_batches(cfg, 2, 2, 8, 300 + step);
    StepResult s1 = e_small.train_step(b.ids, b.targets);
    StepResult s2 = e_big.train_step({at::cat(b.ids, 0)}, {at::cat(b.targets, 0)});
    EXPECT_NEAR(s1.loss(), s2.loss(), 1e-5);
    EXPECT_NEAR(s1.grad_norm(), s2.grad_norm(), 1e-5 * s2.grad_norm());
  }
  e_small.synchronize();
  e_big.synchronize();
  for (int64_t i = 0; i < small.plan().num_stages(); ++i) {
    EXPECT_LE(max_rel_diff(small.region(i).master, big.region(i).master), 1e-5);
  }
}

// Layer-major: the weight traffic of a step does not depend on the number of micro-batches.
TEST(EngineTest, WeightTrafficIsFixedPerStep) {
  const model::ModelConfig cfg = at_testing::tiny_config({});
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 64);
  auto dev = make_cpu_device({});
  std::vector<int64_t> bytes;
  for (int64_t M : {1, 4}) {
    ParamStore store(plan_stages(cfg), cfg, {});
    store.load(init);
    Engine engine(*dev, store, {}, 2, 5);
    const Batches b = make_batches(cfg, M, 2, 5, 400);
    engine.train_step(b.ids, b.targets);
    bytes.push_back(engine.weight_bytes_loaded());
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  // Every stage is loaded once forward and blocks but the last once more backward (the last
  // block is still resident after the head with K=2).
  const StagePlan plan = plan_stages(cfg);
  int64_t expect = 0;
  for (const Stage& s : plan.stages) expect += s.numel * 4;
  expect += (cfg.num_layers - 1) * plan.block.numel * 4;
  EXPECT_EQ(bytes[0], expect);
}

// The streamed engine against libtorch autograd + torch::optim::AdamW (+ clip_grad_norm_).
TEST(EngineTest, MatchesLibtorchAutogradAndTorchAdamW) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    at_testing::TinyOptions to;
    to.tied = tied;
    const model::ModelConfig cfg = at_testing::tiny_config(to);
    // A fresh-model init (std 0.02, norms 1), as in real training.
    model::ModelParams init = model::allocate_model_params(cfg, at::kFloat);
    model::init_params_normal(init, 0.02, 65);
    EngineOptions opts;
    opts.max_grad_norm = 0.5;
    opts.adamw.lr = 1e-3f;
    auto dev = make_cpu_device({});
    ParamStore store(plan_stages(cfg), cfg, {});
    store.load(init);
    Engine engine(*dev, store, opts, 2, 6);

    model::ModelParams leaves = autograd::reference::make_leaf_params(init, at::kFloat, cfg);
    std::vector<at::Tensor> leaf_list;
    model::for_each_param(leaves, [&](const std::string&, at::Tensor& t) {
      if (t.is_leaf()) leaf_list.push_back(t);
    });
    // Block views are not leaves: optimise their flats.
    for (const at::Tensor& f : leaves.block_flat) leaf_list.push_back(f);
    torch::optim::AdamW adamw(leaf_list, torch::optim::AdamWOptions(opts.adamw.lr)
                                             .betas({opts.adamw.beta1, opts.adamw.beta2})
                                             .eps(opts.adamw.eps)
                                             .weight_decay(opts.adamw.weight_decay));
    const autograd::RopeTables rope = autograd::make_rope_tables(cfg, 6, at::kFloat);
    for (int step = 0; step < 5; ++step) {
      const Batches b = make_batches(cfg, 2, 2, 6, 500 + step);
      StepResult s = engine.train_step(b.ids, b.targets);
      adamw.zero_grad();
      int64_t count = 0;
      for (const at::Tensor& t : b.targets) count += autograd::count_targets(t);
      double loss = 0;
      for (size_t mb = 0; mb < b.ids.size(); ++mb) {
        at::Tensor l =
            autograd::reference::model_loss_sum(leaves, b.ids[mb], b.targets[mb], rope, cfg) /
            double(count);
        l.backward();
        loss += l.item<double>();
      }
      const double norm = torch::nn::utils::clip_grad_norm_(leaf_list, opts.max_grad_norm);
      adamw.step();
      EXPECT_NEAR(s.loss(), loss, 1e-6 * loss) << "step " << step;
      EXPECT_NEAR(s.grad_norm(), norm, 1e-6 * norm) << "step " << step;
    }
    engine.synchronize();
    model::ModelParams ours = store.master_params();
    // Weights are compared by max absolute difference. Two fp32 implementations differ in
    // summation order (~1e-7 relative on every grad), and Adam turns a grad entry whose true
    // value is ~0 into an update of about +-lr whatever its size, so entries dominated by
    // rounding noise move by a small fraction of lr in different directions: after 5 steps at
    // lr 1e-3 that stays below 1e-6 in absolute terms (measured: ~5e-7), not relative to tiny
    // weights.
    double worst = 0;
    std::vector<at::Tensor> a, r;
    model::for_each_param(ours, [&](const std::string&, at::Tensor& t) { a.push_back(t); });
    model::for_each_param(leaves,
                          [&](const std::string&, at::Tensor& t) { r.push_back(t.detach()); });
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, (a[i] - r[i]).abs().max().item<double>());
    }
    std::printf("engine vs libtorch autograd + torch AdamW after 5 steps: max abs diff %.3e\n",
                worst);
    EXPECT_LE(worst, 1e-6);
  }
}

// The timeline shows the schedule's orderings: no compute before its stage's load finished, no
// update before its grads reached the host. The overlap figure is printed, not asserted.
TEST(EngineTest, TimelineOrdersLoadsComputeAndUpdates) {
  at_testing::TinyOptions to;
  to.tied = true;
  to.layers = 3;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  auto dev = make_cpu_device({});
  ParamStore store(plan_stages(cfg), cfg, {});
  store.load(at_testing::random_params(cfg, at::kFloat, 66));
  EngineOptions opts;
  opts.record_timeline = true;
  Engine engine(*dev, store, opts, 2, 8);
  for (int step = 0; step < 2; ++step) {
    const Batches b = make_batches(cfg, 2, 2, 8, 600 + step);
    engine.train_step(b.ids, b.targets);
  }
  engine.synchronize();
  const std::vector<TimelineEvent> tl = engine.timeline();
  auto ends_with = [](const std::string& s, const char* suffix) {
    const std::string x(suffix);
    return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  int computes = 0, updates = 0;
  for (size_t i = 0; i < tl.size(); ++i) {
    const TimelineEvent& e = tl[i];
    const bool compute_begin = e.stream == "compute" && ends_with(e.what, "_begin");
    const bool update_begin = e.what == "update_begin";
    if (!compute_begin && !update_begin) continue;
    const char* needed = compute_begin ? "load_end" : "grads_end";
    // The embedding's backward reads no weights; the head's lm_head may come with its load.
    bool found = false;
    for (size_t j = 0; j < i && !found; ++j) found = tl[j].what == needed && tl[j].stage == e.stage;
    EXPECT_TRUE(found) << e.what << " of stage " << e.stage << " at " << e.t_us << " us";
    (compute_begin ? computes : updates)++;
  }
  const int64_t S = store.plan().num_stages(), L = cfg.num_layers;
  EXPECT_EQ(computes, 2 * ((S - 1) + 1 + L));  // forward (no head), head, backward blocks
  EXPECT_EQ(updates, 2 * S);
  std::printf("load/compute overlap on the CPU backend: %.2f\n", load_compute_overlap(tl));
}

// A store larger than the machine's available RAM is refused before anything is allocated, with
// the estimate and what is available.
TEST(ParamStoreTest, RefusesTooLittleHostMemoryUpFront) {
  at_testing::TinyOptions to;
  to.vocab = 1 << 20;
  to.hidden = 8192;  // 8.6G embedding parameters: ~137 GB of store
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  try {
    ParamStore store(plan_stages(cfg), cfg, {});
    FAIL() << "a 137 GB store was accepted";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("parameter store"), std::string::npos) << msg;
    EXPECT_NE(msg.find("available"), std::string::npos) << msg;
    std::printf("refusal: %s\n", msg.c_str());
  }
}

TEST(ParamStoreTest, ReportsBytesPerParameter) {
  // Big enough that the page alignment of each region (<= 4 KiB per region) is noise.
  at_testing::TinyOptions to;
  to.hidden = 256;
  to.vocab = 4096;
  to.ffn = 512;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  const StagePlan plan = plan_stages(cfg);
  ParamStore cpu_clip(plan, cfg, {});
  ParamStore cpu_ring(plan, cfg, {/*working_copy_bf16=*/false, /*grad_regions=*/false});
  ParamStore cuda_layout(plan, cfg, {/*working_copy_bf16=*/true});
  EXPECT_NEAR(cpu_clip.bytes_per_param(), 16.0, 0.2);
  EXPECT_NEAR(cpu_ring.bytes_per_param(), 12.0, 0.2);
  EXPECT_NEAR(cuda_layout.bytes_per_param(), 14.0, 0.2);
  ParamStoreOptions weights_only;
  weights_only.optimizer_state = false;
  EXPECT_NEAR(ParamStore(plan, cfg, weights_only).bytes_per_param(), 4.0, 0.2);
  weights_only.working_copy_bf16 = true;
  ParamStore bf16_weights(plan, cfg, weights_only);
  EXPECT_NEAR(bf16_weights.bytes_per_param(), 6.0, 0.2);
  EXPECT_FALSE(bf16_weights.region(0).m.defined());
  EXPECT_EQ(cuda_layout.persistent_bytes(),
            ParamStore::bytes_needed(plan, {/*working_copy_bf16=*/true}));
}

// A store that must be page-locked and cannot be is an error naming the way out, not a silent
// switch to synchronous copies; with allow_pageable it runs pageable. Region boundaries are the
// only places its registration chunks end.
TEST(ParamStoreTest, PinFailureIsAnErrorUnlessPageableIsAllowed) {
  const model::ModelConfig cfg = at_testing::tiny_config({});
  const StagePlan plan = plan_stages(cfg);
  memory::set_pin_backend_for_testing(memory::noop_pin_backend());
  memory::set_pin_chunk_bytes_for_testing(64 << 10);
  ParamStoreOptions so;
  so.working_copy_bf16 = true;
  so.pin = true;
  {
    ParamStore pinned(plan, cfg, so);
    ASSERT_TRUE(pinned.arena().pinned());
    // Every region (master, m, v, working of every stage) lies inside one chunk.
    const auto& chunks = pinned.arena().pin_chunks();
    EXPECT_GT(chunks.size(), 1u);
    for (int64_t i = 0; i < plan.num_stages(); ++i) {
      const auto& r = pinned.region(i);
      for (const at::Tensor* t : {&r.master, &r.m, &r.v, &r.working}) {
        const uint64_t begin = static_cast<uint64_t>(static_cast<const uint8_t*>(t->data_ptr()) -
                                                     pinned.arena().data());
        const uint64_t end = begin + static_cast<uint64_t>(t->nbytes());
        int inside = 0;
        for (const auto& [off, len] : chunks) inside += begin >= off && end <= off + len;
        EXPECT_EQ(inside, 1) << plan.stages[static_cast<size_t>(i)].name();
      }
    }
  }
  memory::set_pin_failure_for_testing(true);
  try {
    ParamStore refused(plan, cfg, so);
    FAIL() << "an unpinnable store was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("engine.allow_pageable=true"), std::string::npos)
        << e.what();
  }
  so.allow_pageable = true;
  ParamStore pageable(plan, cfg, so);
  EXPECT_FALSE(pageable.arena().pinned());
  memory::set_pin_failure_for_testing(false);
  memory::set_pin_chunk_bytes_for_testing(0);
  memory::set_pin_backend_for_testing(nullptr);
}

TEST(EngineTest, RejectsBadConfigurations) {
  const model::ModelConfig cfg = at_testing::tiny_config({});
  auto dev = make_cpu_device({});
  ParamStore store(plan_stages(cfg), cfg, {});
  EngineOptions one_slot;
  one_slot.num_slots = 1;
  EXPECT_THROW(Engine(*dev, store, one_slot, 1, 4), c10::Error);
  EngineOptions keep_on_host;
  keep_on_host.host_checkpoints = true;
  keep_on_host.activations = autograd::ActivationMode::kSaved;
  EXPECT_THROW(Engine(*dev, store, keep_on_host, 1, 4), c10::Error);
  ParamStore bf16_store(plan_stages(cfg), cfg, {/*working_copy_bf16=*/true});
  EXPECT_THROW(Engine(*dev, bf16_store, {}, 1, 4), c10::Error);  // fp32 compute, bf16 layout
  CpuDeviceOptions bf16;
  bf16.compute_dtype = at::kBFloat16;
  auto dev16 = make_cpu_device(bf16);
  EXPECT_THROW(Engine(*dev16, store, {}, 1, 4), c10::Error);  // bf16 compute, fp32 layout
  Engine engine(*dev, store, {}, 2, 4);
  const Batches b = make_batches(cfg, 1, 2, 5, 1);  // T=5, engine expects 4
  try {
    engine.train_step(b.ids, b.targets);
    FAIL() << "shape mismatch accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2,4]"), std::string::npos) << e.what();
  }
  // Token ids and targets outside the vocabulary are refused on the host, naming the position.
  Batches ok = make_batches(cfg, 1, 2, 4, 2);
  ok.ids[0][1][3] = cfg.vocab_size;
  try {
    engine.train_step(ok.ids, ok.targets);
    FAIL() << "an id outside the vocabulary was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("position 7"), std::string::npos) << e.what();
  }
  ok = make_batches(cfg, 1, 2, 4, 3);
  ok.targets[0][0][2] = -5;
  EXPECT_THROW(engine.train_step(ok.ids, ok.targets), c10::Error);
}

// ---- packed rows ---------------------------------------------------------------------------

// Three micro-batches: two packed differently and one unpacked between them (no positions), so
// the staging of positions and document bounds is exercised per micro-batch and across steps.
Batches packed_batches(const model::ModelConfig& cfg, int64_t B, int64_t T, uint64_t seed) {
  const std::vector<at::Tensor> positions = {at_testing::packed_positions({{5, 4, 3}, {12}}),
                                             at::Tensor(),
                                             at_testing::packed_positions({{1, 11}, {6, 6}})};
  at::manual_seed(seed);
  Batches b;
  for (const at::Tensor& p : positions) {
    const at::Tensor ids = at::randint(0, cfg.vocab_size, {B, T}, at::kLong);
    b.ids.push_back(ids);
    b.targets.push_back(p.defined() ? testing::document_targets(ids, p)
                                    : autograd::next_token_targets(ids));
    b.positions.push_back(p);
  }
  return b;
}

struct PackedEngineCase {
  const char* name;
  bool host_checkpoints, keep_activations, clip;
};

void PrintTo(const PackedEngineCase& c, std::ostream* os) {
  *os << c.name;
}

class EnginePackedTest : public ::testing::TestWithParam<PackedEngineCase> {};

TEST_P(EnginePackedTest, StepsBitwiseEqualToNonStreamedModel) {
  const PackedEngineCase c = GetParam();
  at_testing::TinyOptions to;
  to.layers = 3;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 63);
  const int64_t B = 2, T = 12;
  EngineOptions opts;
  opts.host_checkpoints = c.host_checkpoints;
  opts.activations =
      c.keep_activations ? autograd::ActivationMode::kSaved : autograd::ActivationMode::kRecompute;
  opts.max_grad_norm = c.clip ? 0.05 : 0.0;
  opts.adamw.lr = 1e-2f;
  auto dev = make_cpu_device({});
  ParamStore store(plan_stages(cfg), cfg, {});
  store.load(init);
  Engine engine(*dev, store, opts, B, T);
  ReferenceTrainer ref(cfg, init, opts, B, T);
  for (int step = 0; step < 3; ++step) {
    const Batches b = packed_batches(cfg, B, T, 300 + step);
    StepResult s = engine.train_step(b.ids, b.targets, b.positions);
    EXPECT_EQ(s.loss(), ref.step(b)) << "step " << step;
  }
  engine.synchronize();
  for (int64_t i = 0; i < store.plan().num_stages(); ++i) {
    EXPECT_TRUE(at::equal(store.region(i).master, ref.masters()[static_cast<size_t>(i)]))
        << store.plan().stages[static_cast<size_t>(i)].name();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, EnginePackedTest,
    ::testing::Values(PackedEngineCase{"device_checkpoints", false, false, false},
                      PackedEngineCase{"host_checkpoints_clip", true, false, true},
                      PackedEngineCase{"keep_activations", false, true, false}),
    [](const auto& info) { return std::string(info.param.name); });

// What the engine computes on a packed batch is what its documents give one by one.
TEST(EnginePacked, EvaluationEqualsTheDocumentsOneByOne) {
  const model::ModelConfig cfg = at_testing::tiny_config({});
  const model::ModelParams params = at_testing::random_params(cfg, at::kFloat, 64);
  const std::vector<std::vector<int64_t>> rows = {{3, 6, 3}, {7, 5}};
  const at::Tensor positions = at_testing::packed_positions(rows);
  const int64_t B = 2, T = 12;
  at::manual_seed(65);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {B, T}, at::kLong);
  const at::Tensor targets = testing::document_targets(ids, positions);
  auto dev = make_cpu_device({});
  ParamStore store(plan_stages(cfg), cfg, {});
  store.load(params);
  Engine engine(*dev, store, {}, B, T);
  const autograd::CrossEntropyResult packed = engine.evaluate({ids}, {targets}, {positions});

  double docs = 0;
  int64_t count = 0;
  for (int64_t b = 0; b < B; ++b) {
    int64_t start = 0;
    for (int64_t len : rows[static_cast<size_t>(b)]) {
      autograd::ModelWorkspace ws(cfg, 1, len, at::kFloat, autograd::ActivationMode::kRecompute);
      const autograd::CrossEntropyResult r = autograd::model_forward(
          params, ids[b].narrow(0, start, len).reshape({1, len}).contiguous(),
          targets[b].narrow(0, start, len).reshape({1, len}).contiguous(), ws);
      docs += r.loss_sum;
      count += r.num_targets;
      start += len;
    }
  }
  std::printf("packed evaluation: loss sum %.7f, documents one by one %.7f (rel %.2e)\n",
              packed.loss_sum, docs, std::abs(packed.loss_sum - docs) / docs);
  EXPECT_EQ(packed.num_targets, count);
  EXPECT_LE(std::abs(packed.loss_sum - docs) / docs, 1e-5);  // fp32, other summation orders
  const double leaky = engine.evaluate({ids}, {targets}).loss_sum;
  EXPECT_GT(std::abs(leaky - docs) / docs, 1e-3);
}

// Positions that are not runs 0, 1, 2, ... are refused on the host, naming micro-batch, row and
// token, before anything runs; so are wrong shapes and counts.
TEST(EnginePacked, RejectsBadPositions) {
  const model::ModelConfig cfg = at_testing::tiny_config({});
  auto dev = make_cpu_device({});
  ParamStore store(plan_stages(cfg), cfg, {});
  store.load(at_testing::random_params(cfg, at::kFloat, 66));
  Engine engine(*dev, store, {}, 2, 6);
  const Batches b = make_batches(cfg, 2, 2, 6, 67);
  at::Tensor bad = at_testing::packed_positions({{2, 4}, {6}});
  bad[1][3] = 7;
  try {
    engine.train_step(b.ids, b.targets, {at::Tensor(), bad});
    FAIL() << "bad positions accepted";
  } catch (const c10::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("micro-batch 1"), std::string::npos) << what;
    EXPECT_NE(what.find("row 1, token 3 has position 7"), std::string::npos) << what;
  }
  EXPECT_THROW(engine.train_step(b.ids, b.targets, {bad}), c10::Error);  // one for two
  EXPECT_THROW(engine.train_step(b.ids, b.targets, {bad.narrow(1, 0, 5), bad}), c10::Error);
  EXPECT_THROW(engine.train_step(b.ids, b.targets, {bad.to(at::kInt), bad}), c10::Error);
  // The engine is still usable.
  const at::Tensor good = at_testing::packed_positions({{2, 4}, {6}});
  EXPECT_TRUE(std::isfinite(engine.train_step(b.ids, b.targets, {good, good}).loss()));
}

}  // namespace
}  // namespace ramstream::pipeline
