// The Generator against the plain KV-cache forward of trainer/generate.h (itself tested against
// the training forward): prefill and decode logits per position, greedy tokens for a batch of
// prompts of different lengths, the streaming path equal to the host-view path, rows independent
// of their batch, weight traffic per decode step independent of the batch (layer-major), and the
// compressed caches close to the full one.
#include "inference/generator.h"

#include <cstdio>

#include <gtest/gtest.h>

#include "inference/evaluate.h"
#include "model/testing.h"
#include "pipeline/stages.h"
#include "trainer/generate.h"

namespace ramstream::inference {
namespace {

struct Tiny {
  model::ModelConfig cfg;
  model::ModelParams params;  // fp32
  std::unique_ptr<pipeline::ParamStore> store;
  std::unique_ptr<pipeline::Device> dev;
};

Tiny make_tiny(model::testing::TinyOptions o = {}) {
  Tiny t;
  t.cfg = model::testing::tiny_config(o);
  t.params = model::allocate_model_params(t.cfg, at::kFloat);
  model::init_params_normal(t.params, 0.3, 11);
  pipeline::ParamStoreOptions so;
  so.optimizer_state = false;
  t.store = std::make_unique<pipeline::ParamStore>(pipeline::plan_stages(t.cfg), t.cfg, so);
  t.store->load(t.params);
  t.dev = pipeline::make_cpu_device({});
  return t;
}

model::testing::TinyOptions kivi_shape() {
  model::testing::TinyOptions o;
  o.hidden = 64;
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 32;
  o.vocab = 97;
  return o;
}

std::vector<std::vector<int32_t>> prompts_for(int64_t vocab) {
  std::vector<std::vector<int32_t>> p = {{3, 17, 5, 42, 8, 1, 29}, {11, 2}, {7, 7, 9, 30, 12}};
  for (auto& row : p) {
    for (auto& id : row) id = static_cast<int32_t>(id % vocab);
  }
  return p;
}

// Logits [T,V] of the whole sequence by the reference forward.
at::Tensor reference_logits(const Tiny& t, const std::vector<int32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  at::Tensor x = at::empty({1, T}, at::kLong);
  for (int64_t i = 0; i < T; ++i) x[0][i] = int64_t{ids[static_cast<size_t>(i)]};
  return trainer::padded_forward_logits(t.params, t.cfg, x, {0})[0];
}

double max_err(const float* got, const at::Tensor& ref) {
  const at::Tensor g = at::from_blob(const_cast<float*>(got), {ref.size(0)}, at::kFloat);
  return (g - ref).abs().max().item<double>();
}

TEST(Generator, PrefillAndDecodeLogitsMatchTheFullForward) {
  Tiny t = make_tiny();
  Generator gen(*t.dev, *t.store, GeneratorOptions{});
  const std::vector<int32_t> seq = {3, 17, 5, 42, 8, 1, 29, 4, 44, 13};
  const int64_t P = 4;
  const at::Tensor ref = reference_logits(t, seq);
  DecodeBatch b = gen.prefill({{seq.begin(), seq.begin() + P}}, 16);
  double worst = max_err(b.logits(0), ref[P - 1]);
  for (int64_t i = P; i < static_cast<int64_t>(seq.size()); ++i) {
    gen.decode(b, {seq[static_cast<size_t>(i)]}, {0});
    worst = std::max(worst, max_err(b.logits(0), ref[i]));
  }
  std::printf("max abs logit error, prefill + decode vs full forward: %.3g\n", worst);
  EXPECT_LT(worst, 1e-4);
}

TEST(Generator, GreedyBatchEqualsReferenceGenerate) {
  for (bool tied : {false, true}) {
    model::testing::TinyOptions o;
    o.tied = tied;
    Tiny t = make_tiny(o);
    Generator gen(*t.dev, *t.store, GeneratorOptions{});
    const auto prompts = prompts_for(t.cfg.vocab_size);
    GenerateOptions go;
    go.max_new_tokens = 12;
    const GenerateResult got = gen.generate(prompts, go);
    trainer::GenerateOptions ro;
    ro.max_new_tokens = 12;
    const auto want = trainer::greedy_generate(t.params, t.cfg, prompts, ro);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(got.tokens[i], want[i]) << "prompt " << i << " tied " << tied;
      EXPECT_EQ(got.stop[i], "length");
    }
    EXPECT_EQ(got.new_tokens, 36);
  }
}

TEST(Generator, StreamingThroughSlotsEqualsHostViews) {
  Tiny t = make_tiny();
  const auto prompts = prompts_for(t.cfg.vocab_size);
  GenerateOptions go;
  go.max_new_tokens = 8;
  Generator direct(*t.dev, *t.store, GeneratorOptions{});
  const GenerateResult a = direct.generate(prompts, go);
  EXPECT_EQ(direct.weight_bytes_loaded(), 0);
  for (int64_t resident : {0, 2}) {
    GeneratorOptions so;
    so.stream_on_cpu = true;
    so.resident_stages = resident;
    pipeline::CpuDeviceOptions faults = pipeline::CpuDeviceOptions::faults(true, 7, 200);
    std::unique_ptr<pipeline::Device> slow = pipeline::make_cpu_device(faults);
    Generator streamed(*slow, *t.store, so);
    const GenerateResult b = streamed.generate(prompts, go);
    EXPECT_EQ(a.tokens, b.tokens) << "resident " << resident;
    EXPECT_GT(streamed.weight_bytes_loaded(), 0);
  }
}

TEST(Generator, AWeightBudgetKeepsTheFirstStagesThatFitAndStreamsTheRest) {
  Tiny t = make_tiny();
  const pipeline::StagePlan& plan = t.store->plan();
  const int64_t n = plan.num_stages(), slots = 2 * plan.slot_numel * 4;  // fp32 on the CPU
  GeneratorOptions o;
  o.stream_on_cpu = true;
  o.weight_device_bytes = slots + plan.stages[0].numel * 4;  // the slots and the first stage
  Generator gen(*t.dev, *t.store, o);
  EXPECT_EQ(gen.resident_stages_within(o.weight_device_bytes), 1);
  EXPECT_EQ(gen.resident_stages_within(-1), n);
  EXPECT_EQ(gen.resident_stages_within(0), 0);
  EXPECT_EQ(gen.resident_stages_within(int64_t{1} << 40), n);
  EXPECT_NE(gen.describe().find("1/" + std::to_string(n) + " stages resident"), std::string::npos)
      << gen.describe();
  GenerateOptions go;
  go.max_new_tokens = 6;
  const GenerateResult r = gen.generate(prompts_for(t.cfg.vocab_size), go);
  Generator direct(*t.dev, *t.store, GeneratorOptions{});
  EXPECT_EQ(r.tokens, direct.generate(prompts_for(t.cfg.vocab_size), go).tokens);
  // Every decode step streams all stages but the first.
  int64_t streamed = 0;
  for (int64_t s = 1; s < n; ++s) streamed += plan.stages[static_cast<size_t>(s)].numel * 4;
  EXPECT_EQ(r.decode_weight_bytes, r.decode_steps * streamed);
}

TEST(Generator, WeightTrafficPerDecodeStepDoesNotGrowWithTheBatch) {
  Tiny t = make_tiny();
  GeneratorOptions so;
  so.stream_on_cpu = true;
  so.resident_stages = 0;
  so.micro_batch = 2;  // several micro-batches per stage: still one load per stage
  int64_t per_step[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    const int64_t B = k == 0 ? 1 : 5;
    Generator gen(*t.dev, *t.store, so);
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B), {1, 2, 3});
    DecodeBatch batch = gen.prefill(prompts, 8);
    const int64_t before = gen.weight_bytes_loaded();
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < B; ++i) rows.push_back(i);
    gen.decode(batch, std::vector<int32_t>(static_cast<size_t>(B), 4), rows);
    per_step[k] = gen.weight_bytes_loaded() - before;
  }
  std::printf("weight bytes per decode step: batch 1 %lld, batch 5 %lld\n", (long long)per_step[0],
              (long long)per_step[1]);
  EXPECT_EQ(per_step[0], per_step[1]);
  EXPECT_GT(per_step[0], 0);
}

// Each row gets the tokens it gets alone, whatever the cache (h2o scores are per sequence).
TEST(Generator, RowsAreIndependentOfTheirBatch) {
  Tiny t = make_tiny(kivi_shape());
  const auto prompts = prompts_for(t.cfg.vocab_size);
  for (const char* kind : {"bf16", "kivi2", "h2o", "kivi4+h2o"}) {
    GeneratorOptions o;
    o.kv = KvCacheConfig::parse(kind, 32, 32, 0.6).value();
    Generator gen(*t.dev, *t.store, o);
    GenerateOptions go;
    go.max_new_tokens = 110;  // past R + G and the budget: quantised groups and evictions
    const GenerateResult all = gen.generate(prompts, go);
    for (size_t i = 0; i < prompts.size(); ++i) {
      const GenerateResult one = gen.generate({prompts[i]}, go);
      EXPECT_EQ(one.tokens[0], all.tokens[i]) << kind << " prompt " << i;
    }
  }
}

// A token stream over kivi_shape()'s vocabulary, and eval windows of 120 tokens, 90 scored.
std::vector<int32_t> text_ids(int n) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>((i * 37 + i / 7) % 97));
  return ids;
}

PerplexityOptions short_windows() {
  PerplexityOptions po;
  po.context = 120;
  po.stride = 90;
  po.batch = 2;
  return po;
}

TEST(Generator, CompressedCachesStayCloseToTheFullOne) {
  Tiny t = make_tiny(kivi_shape());
  const std::vector<int32_t> ids = text_ids(400);
  const PerplexityOptions po = short_windows();
  double full = 0;
  for (const char* kind : {"bf16", "kivi4", "kivi2", "h2o"}) {
    GeneratorOptions o;
    o.kv = KvCacheConfig::parse(kind, 32, 32, 0.5).value();
    Generator gen(*t.dev, *t.store, o);
    const PerplexityResult r = perplexity(gen, ids, po);
    std::printf("%-6s ppl %.4f over %lld tokens, %.1f KV bytes/token\n", kind, r.perplexity(),
                (long long)r.tokens, r.kv_bytes_per_token);
    EXPECT_EQ(r.tokens, 4 * 90);
    if (std::string(kind) == "bf16") {
      full = r.perplexity();
      continue;
    }
    EXPECT_NE(r.perplexity(), full) << kind << ": the cache changed nothing?";
    EXPECT_NEAR(r.perplexity() / full, 1.0, 0.25) << kind;
  }
}

// Decode attention on a device twin of the KV pages (host memory standing in for the device:
// the Generator's twin path, packing and scatter included) gives the very perplexity of the host
// pages, with the twin live to the end; with a budget too small it stops and the run carries on.
TEST(Generator, KvPagesOnTheDeviceGiveTheSameResults) {
  Tiny t = make_tiny(kivi_shape());
  const std::vector<int32_t> ids = text_ids(300);
  const PerplexityOptions po = short_windows();
  for (const char* kind : {"bf16", "kivi2"}) {
    GeneratorOptions host;
    host.kv = KvCacheConfig::parse(kind, 32, 32, 0.5).value();
    Generator a(*t.dev, *t.store, host);
    EXPECT_EQ(a.kv_mirror(), nullptr);  // the CPU has no device twin by default
    const PerplexityResult want = perplexity(a, ids, po);
    for (int64_t budget : {int64_t{-1}, int64_t{1}}) {
      GeneratorOptions twin = host;
      twin.kv_mirror_backend = make_host_mirror_backend;
      twin.kv_device_bytes = budget;
      Generator b(*t.dev, *t.store, twin);
      const PerplexityResult got = perplexity(b, ids, po);
      ASSERT_NE(b.kv_mirror(), nullptr);
      EXPECT_EQ(b.kv_mirror()->active(), budget < 0) << kind;
      EXPECT_EQ(got.perplexity(), want.perplexity()) << kind << " budget " << budget;
      if (budget < 0) {
        EXPECT_GT(b.kv_mirror()->uploaded_bytes(), 0);
        EXPECT_NE(b.describe().find("KV pages on the device"), std::string::npos);
      }
    }
  }
}

TEST(Generator, ErrorsNameTheProblem) {
  Tiny t = make_tiny();
  Generator gen(*t.dev, *t.store, GeneratorOptions{});
  try {
    gen.prefill({std::vector<int32_t>(20, 1)}, 10);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("more than the context of 10"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(gen.prefill({std::vector<int32_t>(4, 1)}, 1000), std::invalid_argument);
  EXPECT_THROW(gen.prefill({{}}, 10), std::invalid_argument);
}

}  // namespace
}  // namespace ramstream::inference

namespace ramstream::inference {
namespace {

// extend() is the decode path with its GEMMs batched: the logits (and so the tokens) equal
// feeding the same tokens one decode step at a time, for every cache; generate_on continues a
// conversation on the kept cache.
TEST(Generator, ExtendEqualsDecodingTokenByToken) {
  Tiny t = make_tiny(kivi_shape());
  const std::vector<int32_t> prompt = {3, 17, 5, 42, 8, 1, 29, 4, 44, 13, 60, 2};
  std::vector<int32_t> more;
  for (int i = 0; i < 30; ++i) more.push_back(static_cast<int32_t>((i * 37 + 5) % 97));
  for (const char* kind : {"bf16", "kivi2", "h2o", "kivi4+h2o"}) {
    GeneratorOptions o;
    o.kv = KvCacheConfig::parse(kind, 32, 32, 0.9).value();
    Generator gen(*t.dev, *t.store, o);
    DecodeBatch a = gen.prefill({prompt}, 128);
    DecodeBatch b = gen.prefill({prompt}, 128);
    gen.extend(a, 0, more);
    for (int32_t tok : more) gen.decode(b, {tok}, {0});
    double worst = 0;
    for (int64_t v = 0; v < a.vocab(); ++v) {
      worst = std::max(worst, double(std::abs(a.logits(0)[v] - b.logits(0)[v])));
    }
    std::printf("%s: extend vs token-by-token decode, max abs logit difference %.3g\n", kind,
                worst);
    EXPECT_LT(worst, 1e-5) << kind;
    EXPECT_EQ(a.position(0), b.position(0));
    EXPECT_EQ(a.kv_bytes(), b.kv_bytes()) << kind;
    // A further turn on the kept cache: the same greedy tokens from both.
    GenerateOptions go;
    go.max_new_tokens = 6;
    std::vector<std::vector<int32_t>> ha = {prompt}, hb = {prompt};
    const GenerateResult ra = gen.generate_on(a, ha, go);
    const GenerateResult rb = gen.generate_on(b, hb, go);
    EXPECT_EQ(ra.tokens, rb.tokens) << kind;
    EXPECT_TRUE(a.kv[0] != nullptr) << "generate_on keeps the cache";
  }
}

}  // namespace
}  // namespace ramstream::inference
