// The CUDA engine's logic in its store layout (bf16 working copies that also receive the grads,
// fp32 masters and moments: 14 B/param), run on the CPU backend computing in bf16 (ctest label
// "gpu-layout", in CI), and on a GPU with RAMSTREAM_TEST_DEVICE=cuda (scripts/gpu_check.sh).
// What a test compares bit for bit on the CPU it compares within a stated tolerance on CUDA,
// whose index_add and flash-attention backward are not deterministic.
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "autograd/test_util.h"
#include "checkpoint/train_state.h"
#include "pipeline/engine.h"
#include "pipeline/engine_testing.h"

#if RAMSTREAM_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace ramstream::pipeline {
namespace {

namespace at_testing = autograd::testing;
using testing::Batches;
using testing::make_batches;
using testing::ReferenceTrainer;
using testing::same_bits;
using testing::snapshot;
using testing::StoreSnapshot;

bool on_cuda() {
  const char* d = std::getenv("RAMSTREAM_TEST_DEVICE");
  return d != nullptr && std::string(d) == "cuda";
}

// The device under test: the CPU computing in bf16, or GPU 0 (then one must be there: on the GPU
// machine nothing may skip).
std::unique_ptr<Device> test_device(const CpuDeviceOptions& cpu = {}) {
  if (on_cuda()) return make_cuda_device(0);
  CpuDeviceOptions o = cpu;
  o.compute_dtype = at::kBFloat16;
  return make_cpu_device(o);
}

ParamStoreOptions bf16_store_options() {
  ParamStoreOptions so;
  so.working_copy_bf16 = true;
  so.pin = on_cuda();
  return so;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Adam moves every weight by at most about lr per step whatever its grad, so two runs that start
// equal and differ only in rounding stay within 2 lr per step of each other.
double adam_bound(const EngineOptions& o, int steps) {
  return 2.0 * o.adamw.lr * steps * 1.01;
}

struct LayoutCase {
  const char* name;
  bool tied;
  int64_t micro_batches;
  int slots;
  bool clip;
  bool host_checkpoints;
  bool faults;
};

void PrintTo(const LayoutCase& c, std::ostream* os) {
  *os << c.name;
}

class Bf16LayoutTest : public ::testing::TestWithParam<LayoutCase> {};

// The streamed engine in the bf16 layout equals the non-streamed model computing from the same
// bf16 working copies with the same fp32 grad sums, bf16 grad rounding and AdamW kernel: bitwise
// on the CPU (the same ops in the same order). On CUDA: within the Adam bound of the CPU run,
// and the loss within 1e-2 (bf16 activations: Model.Bf16ComputeTracksFp32's reasoning).
TEST_P(Bf16LayoutTest, StreamedEqualsNonStreamed) {
  const LayoutCase c = GetParam();
  at_testing::TinyOptions to;
  to.tied = c.tied;
  to.layers = 3;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 81);
  const int64_t B = 2, T = 7;
  const int steps = 4;
  EngineOptions opts;
  opts.num_slots = c.slots;
  opts.max_grad_norm = c.clip ? 0.05 : 0.0;
  opts.host_checkpoints = c.host_checkpoints;
  opts.adamw.lr = 1e-2f;
  opts.optimizer_queue = CpuDeviceOptions::faults(c.faults, 11, 300);

  auto dev = test_device(CpuDeviceOptions::faults(c.faults, 5, 300));
  ParamStore store(plan_stages(cfg), cfg, bf16_store_options());
  store.load(init);
  Engine engine(*dev, store, opts, B, T);
  ReferenceTrainer ref(cfg, init, opts, B, T, /*bf16_layout=*/true);
  for (int step = 0; step < steps; ++step) {
    const Batches b = make_batches(cfg, c.micro_batches, B, T, 900 + step);
    StepResult s = engine.train_step(b.ids, b.targets);
    const double ref_loss = ref.step(b);
    if (on_cuda()) {
      EXPECT_LE(std::abs(s.loss() - ref_loss) / ref_loss, 1e-2) << "step " << step;
    } else {
      // The engine sums the loss over micro-batches in one accumulator, the reference per
      // micro-batch: the same terms, associated differently.
      EXPECT_NEAR(s.loss(), ref_loss, 1e-12 * ref_loss) << "step " << step;
      EXPECT_EQ(s.grad_norm(), ref.grad_norm()) << "step " << step;
    }
  }
  engine.synchronize();
  for (int64_t i = 0; i < store.plan().num_stages(); ++i) {
    const auto& r = store.region(i);
    const size_t k = static_cast<size_t>(i);
    const std::string name = store.plan().stages[k].name();
    if (on_cuda()) {
      EXPECT_LE(max_abs_diff(r.master, ref.masters()[k]), adam_bound(opts, steps)) << name;
    } else {
      EXPECT_TRUE(same_bits(r.master, ref.masters()[k]))
          << name << " max diff " << max_abs_diff(r.master, ref.masters()[k]);
      EXPECT_TRUE(same_bits(r.working, ref.working()[k])) << name << " working copy";
    }
  }
}

// Tied embeddings with several micro-batches sum the embedding grad in another order than the
// reference (every head first, then the embeddings), as in the fp32 layout's tests: left out.
INSTANTIATE_TEST_SUITE_P(
    Schedules, Bf16LayoutTest,
    ::testing::Values(LayoutCase{"untied_k2", false, 1, 2, false, false, false},
                      LayoutCase{"tied_k2_clip", true, 1, 2, true, false, false},
                      LayoutCase{"untied_3mb_clip", false, 3, 2, true, false, false},
                      LayoutCase{"untied_2mb_k3", false, 2, 3, false, false, false},
                      LayoutCase{"host_checkpoints_clip", false, 2, 2, true, true, false},
                      LayoutCase{"faults_clip", true, 1, 2, true, false, true},
                      LayoutCase{"faults_host_2mb", false, 2, 3, false, true, true}),
    [](const auto& info) { return std::string(info.param.name); });

// A step whose grads are NaN under nan_policy skip changes nothing: master, m, v and the working
// copy (which held that step's grads in between) are bitwise as before, and the next step is
// finite. Without the write-back the next step streamed the NaN grads in as weights. Bitwise on
// CUDA too: nothing here depends on device arithmetic.
TEST(Bf16Layout, SkippedNanStepLeavesTheStoreAsItWas) {
  at_testing::TinyOptions to;
  to.layers = 2;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 82);
  const int64_t poison = cfg.vocab_size - 1;  // the token whose embedding row is NaN
  init.embedding[poison].fill_(std::nan(""));
  EngineOptions opts;
  opts.max_grad_norm = 1.0;
  opts.skip_nonfinite = true;
  opts.adamw.lr = 1e-2f;
  auto dev = test_device();
  ParamStore store(plan_stages(cfg), cfg, bf16_store_options());
  store.load(init);
  const int64_t B = 2, T = 6;
  Engine engine(*dev, store, opts, B, T);
  // Batches that avoid the poisoned token, and one that has it.
  auto clean = [&](uint64_t seed) {
    at::manual_seed(seed);
    const at::Tensor ids = at::randint(0, poison, {B, T}, at::kLong);
    return Batches{{ids}, {autograd::next_token_targets(ids)}, {}};
  };
  Batches poisoned = clean(3);
  poisoned.ids[0][1][2] = poison;

  StepResult first = engine.train_step(clean(1).ids, clean(1).targets);
  EXPECT_TRUE(std::isfinite(first.loss()));
  EXPECT_FALSE(first.skipped());
  engine.synchronize();
  const StoreSnapshot before = snapshot(store);

  StepResult bad = engine.train_step(poisoned.ids, poisoned.targets);
  EXPECT_FALSE(std::isfinite(bad.loss()));
  EXPECT_FALSE(std::isfinite(bad.grad_norm()));
  EXPECT_TRUE(bad.skipped());
  engine.synchronize();
  EXPECT_EQ(engine.skipped_steps(), 1);
  const StoreSnapshot after = snapshot(store);
  for (size_t i = 0; i < before.master.size(); ++i) {
    EXPECT_TRUE(same_bits(before.master[i], after.master[i])) << "master of stage " << i;
    EXPECT_TRUE(same_bits(before.m[i], after.m[i])) << "m of stage " << i;
    EXPECT_TRUE(same_bits(before.v[i], after.v[i])) << "v of stage " << i;
    EXPECT_TRUE(same_bits(before.working[i], after.working[i])) << "working copy of stage " << i;
  }

  StepResult next = engine.train_step(clean(2).ids, clean(2).targets);
  EXPECT_TRUE(std::isfinite(next.loss()));
  EXPECT_TRUE(std::isfinite(next.grad_norm()));
  EXPECT_FALSE(next.skipped());
}

// Distance in bf16 units in the last place between a bf16 value and an exact one. `floor` bounds
// the magnitude from below: where the exact sum nearly cancels, fp32 accumulation error of the
// partial sums (2^-24 of them) may exceed a bf16 ulp of the tiny result, so tiny results are
// judged in ulps of floor (2^-12 of the tensor's largest magnitude), still 2^4 finer than what
// bf16 accumulation loses.
double bf16_ulps(double got, double exact, double floor) {
  const double mag = std::max(std::abs(exact), floor);
  const double ulp = std::ldexp(1.0, std::ilogb(mag) - 7);  // 8 significant bits
  return std::abs(got - exact) / ulp;
}

// The LM head's grad summed over 64 cross-entropy chunks x 4 micro-batches in bf16 compute lands
// within one bf16 rounding of an fp64 sum: the device accumulates it in fp32 and rounds once. The
// head is zero, so every softmax is exactly 1/V (V a power of two) and, with a power-of-two
// target count, every logit grad is exactly representable in bf16: the only error left is the
// accumulation's. With bf16 accumulation each of the 256 additions rounds, and contributions
// 2^6 times smaller than the running sum lose most of their bits.
TEST(Bf16Layout, HeadGradAccumulatesInFp32) {
  at_testing::TinyOptions to;
  to.vocab = 64;
  to.layers = 1;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 83);
  init.lm_head.zero_();
  const int64_t B = 2, T = 65, M = 4;  // 128 targets per micro-batch, 512 = 2^9 in all
  EngineOptions opts;
  opts.ce_chunk_rows = 2;  // 64 chunks per micro-batch
  auto dev = test_device();
  ParamStore store(plan_stages(cfg), cfg, bf16_store_options());
  store.load(init);
  Engine engine(*dev, store, opts, B, T);
  const int64_t head = store.plan().head_index();
  at::Tensor landed;  // the head's grads as they reached the working region
  engine.set_update_gate([&](int64_t stage) {
    if (stage == head) landed = store.region(head).working.clone();
  });
  at::manual_seed(84);
  std::vector<at::Tensor> ids, targets;
  for (int64_t mb = 0; mb < M; ++mb) {
    ids.push_back(at::randint(0, cfg.vocab_size, {B, T}, at::kLong));
    targets.push_back(autograd::next_token_targets(ids.back()));
  }
  StepResult s = engine.train_step(ids, targets);
  ASSERT_EQ(s.num_targets(), 512);
  engine.synchronize();
  ASSERT_TRUE(landed.defined());

  // The reference: the final-normed hidden states from the non-streamed bf16 model on the same
  // device (the same ops as the engine's forward), then dW[j] = gs * sum_rows (1/V - [y=j]) h in
  // fp64.
  const at::Device where = dev->torch_device();
  const model::ModelParams p16 = model::clone_model_params(init, at::kBFloat16, where);
  autograd::ModelWorkspace ws(cfg, B, T, at::kBFloat16, autograd::ActivationMode::kRecompute,
                              where);
  const double gs = 1.0 / 512.0, V = double(cfg.vocab_size);
  at::Tensor ref = at::zeros({cfg.vocab_size, cfg.hidden_size}, at::kDouble);
  for (int64_t mb = 0; mb < M; ++mb) {
    autograd::model_forward(p16, ids[static_cast<size_t>(mb)].to(where),
                            targets[static_cast<size_t>(mb)].to(where), ws);
    const at::Tensor h = ws.final_h.to(at::kCPU).to(at::kDouble);  // [N, C]
    const at::Tensor y = targets[static_cast<size_t>(mb)].reshape({-1});
    const at::Tensor counted = (y != autograd::kIgnoreIndex).to(at::kDouble).unsqueeze(1);
    ref += gs / V * (h * counted).sum(0, /*keepdim=*/true).expand_as(ref);
    for (int64_t n = 0; n < y.size(0); ++n) {
      const int64_t t = y[n].item<int64_t>();
      if (t != autograd::kIgnoreIndex) ref[t] -= gs * h[n];
    }
  }
  const at::Tensor got =
      landed.narrow(0, store.plan().head_lm_head_offset, ref.numel()).to(at::kDouble).view_as(ref);
  double worst = 0;
  const double* g = got.data_ptr<double>();
  const double* r = ref.data_ptr<double>();
  const double floor = ref.abs().max().item<double>() * std::ldexp(1.0, -12);
  for (int64_t i = 0; i < ref.numel(); ++i) worst = std::max(worst, bf16_ulps(g[i], r[i], floor));
  std::printf("LM-head grad vs fp64 over 64 chunks x 4 micro-batches: max %.2f bf16 ulps\n", worst);
  EXPECT_LE(worst, 1.0);
}

// Steady state: a step makes one host wait when its loss is read and none otherwise; nothing in
// it syncs implicitly (on CUDA, libtorch's sync check turns any implicit sync into an error).
TEST(Bf16Layout, OneHostReadPerStepInSteadyState) {
  at_testing::TinyOptions to;
  to.tied = true;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  EngineOptions opts;
  opts.max_grad_norm = 1.0;
  auto dev = test_device();
  ParamStore store(plan_stages(cfg), cfg, bf16_store_options());
  store.load(at_testing::random_params(cfg, at::kFloat, 85));
  Engine engine(*dev, store, opts, 2, 8);
  const Batches warm = make_batches(cfg, 2, 2, 8, 850);
  for (int i = 0; i < 2; ++i) engine.train_step(warm.ids, warm.targets).loss();
  std::vector<Batches> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(make_batches(cfg, 2, 2, 8, 860 + i));
#if RAMSTREAM_WITH_CUDA
  if (on_cuda()) {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  }
#endif
  for (int i = 0; i < 4; ++i) {
    const bool read = i % 2 == 0;
    const int64_t before = host_wait_count();
    StepResult s = engine.train_step(batches[static_cast<size_t>(i)].ids,
                                     batches[static_cast<size_t>(i)].targets);
    EXPECT_EQ(host_wait_count() - before, 0) << "train_step " << i << " waited";
    if (read) {
      EXPECT_TRUE(std::isfinite(s.loss()));
      EXPECT_EQ(host_wait_count() - before, 1) << "reading the loss of step " << i;
    }
  }
#if RAMSTREAM_WITH_CUDA
  if (on_cuda())
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
#endif
  engine.synchronize();
}

// train_step returns while the optimizer queue is held back (every task of it blocks until
// released, the grad norm's included), and the results are those of a run without the hold.
TEST(Bf16Layout, TrainStepDoesNotWaitForTheOptimizer) {
  const model::ModelConfig cfg = at_testing::tiny_config({});
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 86);
  EngineOptions opts;
  opts.max_grad_norm = 1.0;
  opts.adamw.lr = 1e-2f;
  const Batches b = make_batches(cfg, 2, 2, 8, 870);
  auto dev = test_device();

  ParamStore plain_store(plan_stages(cfg), cfg, bf16_store_options());
  plain_store.load(init);
  double plain_loss;
  {
    Engine plain(*dev, plain_store, opts, 2, 8);
    plain_loss = plain.train_step(b.ids, b.targets).loss();
    plain.synchronize();
  }

  std::mutex mu;
  std::condition_variable cv;
  bool released = false, held = false, gave_up = false;
  EngineOptions held_opts = opts;
  held_opts.optimizer_queue.before_each_task = [&] {
    std::unique_lock<std::mutex> lock(mu);
    held = true;
    cv.notify_all();
    // A train_step that waited for the optimizer would never return: give up after a while so
    // that the test fails instead of hanging.
    if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return released; })) {
      gave_up = released = true;
    }
  };
  ParamStore store(plan_stages(cfg), cfg, bf16_store_options());
  store.load(init);
  Engine engine(*dev, store, held_opts, 2, 8);
  StepResult s = engine.train_step(b.ids, b.targets);  // must return with the optimizer held
  const double loss = s.loss();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return held; });
    EXPECT_FALSE(gave_up) << "train_step returned only after the optimizer was let go";
    released = true;
  }
  cv.notify_all();
  engine.synchronize();
  if (on_cuda()) {
    EXPECT_LE(std::abs(loss - plain_loss) / plain_loss, 1e-3);
  } else {
    EXPECT_EQ(loss, plain_loss);
  }
  for (int64_t i = 0; i < store.plan().num_stages(); ++i) {
    const at::Tensor& a = store.region(i).master;
    const at::Tensor& p = plain_store.region(i).master;
    if (on_cuda()) {
      EXPECT_LE(max_abs_diff(a, p), adam_bound(opts, 1)) << "stage " << i;
    } else {
      EXPECT_TRUE(same_bits(a, p)) << "stage " << i;
    }
  }
}

// Save after step 2 of 4, load into a fresh store and engine, run steps 3-4: the same state as
// the uninterrupted run (bitwise on the CPU). The working copies are rebuilt from the masters.
TEST(Bf16Layout, ResumeContinuesTheRun) {
  at_testing::TinyOptions to;
  to.tied = true;
  const model::ModelConfig cfg = at_testing::tiny_config(to);
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 87);
  EngineOptions opts;
  opts.max_grad_norm = 0.5;
  opts.adamw.lr = 1e-2f;
  auto dev = test_device();
  const std::string dir = ::testing::TempDir() + "/gpu_layout_resume";
  std::filesystem::remove_all(dir);
  std::vector<Batches> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(make_batches(cfg, 1, 2, 6, 880 + i));

  ParamStore straight(plan_stages(cfg), cfg, bf16_store_options());
  straight.load(init);
  std::string saved;
  {
    Engine e(*dev, straight, opts, 2, 6);
    for (int i = 0; i < 4; ++i) {
      e.train_step(batches[static_cast<size_t>(i)].ids, batches[static_cast<size_t>(i)].targets);
      if (i == 1) {
        e.synchronize();
        const Status st = checkpoint::save_checkpoint(dir, 2, straight, nlohmann::json::object(),
                                                      "test", checkpoint::CheckpointOptions{});
        ASSERT_TRUE(st.ok()) << st.error().message;
        saved = checkpoint::checkpoint_dir(dir, 2);
      }
    }
    e.synchronize();
  }
  ParamStore resumed(plan_stages(cfg), cfg, bf16_store_options());
  Result<checkpoint::TrainStateMeta> meta = checkpoint::load_checkpoint(saved, resumed);
  ASSERT_TRUE(meta.ok()) << meta.error().message;
  ASSERT_EQ(meta.value().step, 2);
  {
    Engine e(*dev, resumed, opts, 2, 6);
    e.set_step(meta.value().step);
    for (int i = 2; i < 4; ++i) {
      e.train_step(batches[static_cast<size_t>(i)].ids, batches[static_cast<size_t>(i)].targets);
    }
    e.synchronize();
  }
  for (int64_t i = 0; i < straight.plan().num_stages(); ++i) {
    const auto& a = straight.region(i);
    const auto& b = resumed.region(i);
    if (on_cuda()) {
      EXPECT_LE(max_abs_diff(a.master, b.master), adam_bound(opts, 2)) << "stage " << i;
    } else {
      EXPECT_TRUE(same_bits(a.master, b.master)) << "master of stage " << i;
      EXPECT_TRUE(same_bits(a.m, b.m)) << "m of stage " << i;
      EXPECT_TRUE(same_bits(a.v, b.v)) << "v of stage " << i;
      EXPECT_TRUE(same_bits(a.working, b.working)) << "working copy of stage " << i;
    }
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ramstream::pipeline
