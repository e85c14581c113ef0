// The Generator on a CUDA device (ctest label "gpu"; skipped where there is none): decode
// attention over the device twin of the KV pages (kv_mirror.h, kernels/kv_quant_cuda.cuh) against
// attention over the host pages, for the full and the KIVI caches, on the same model and text;
// prints both speeds.
#include <chrono>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "inference/evaluate.h"
#include "inference/generator.h"
#include "model/testing.h"
#include "pipeline/stages.h"

namespace ramstream::inference {
namespace {

TEST(GeneratorCuda, KvPagesOnTheDeviceMatchTheHostPages) {
  if (!pipeline::cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  model::testing::TinyOptions o;
  o.hidden = 256;
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 64;
  o.ffn = 512;
  o.layers = 4;
  o.vocab = 500;
  const model::ModelConfig cfg = model::testing::tiny_config(o);
  model::ModelParams params = model::allocate_model_params(cfg, at::kFloat);
  model::init_params_normal(params, 0.05, 5);
  pipeline::ParamStoreOptions so;
  so.optimizer_state = false;
  so.working_copy_bf16 = true;
  so.pin = true;
  pipeline::ParamStore store(pipeline::plan_stages(cfg), cfg, so);
  store.load(params);
  std::unique_ptr<pipeline::Device> dev = pipeline::make_cuda_device(0);
  std::vector<int32_t> ids;
  for (int i = 0; i < 2000; ++i) ids.push_back(static_cast<int32_t>((i * 37 + i / 7) % 500));
  PerplexityOptions po;
  po.context = 512;
  po.stride = 256;
  po.batch = 6;
  struct Case {
    const char* kind;
    int key_outliers;
  };
  for (const Case c : {Case{"bf16", 0}, Case{"kivi2", 0}, Case{"kivi4", 0}, Case{"kivi2", 2}}) {
    KvCacheConfig kv = KvCacheConfig::parse(c.kind, 32, 128, 0.5).value();
    kv.key_outliers = c.key_outliers;
    const std::string kind = kv.name();
    double ppl[2], secs[2];
    for (int twin = 0; twin < 2; ++twin) {
      GeneratorOptions g;
      g.kv = kv;
      g.kv_device_bytes = twin ? -1 : 0;
      Generator gen(*dev, store, g);
      ASSERT_EQ(gen.kv_mirror() != nullptr, twin == 1) << gen.describe();
      const auto t0 = std::chrono::steady_clock::now();
      const PerplexityResult r = perplexity(gen, ids, po);
      secs[twin] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ppl[twin] = r.perplexity();
      if (twin) {
        EXPECT_TRUE(gen.kv_mirror()->active()) << gen.kv_mirror()->reason();
        EXPECT_GT(gen.kv_mirror()->uploaded_bytes(), 0);
      }
      std::printf("%s, KV pages on the %s: ppl %.5f, %.2f s (%s)\n", kind.c_str(),
                  twin ? "device" : "host", ppl[twin], secs[twin], gen.describe().c_str());
    }
    // The same cache contents; only the attention kernel (fp32 sums in another order) differs.
    EXPECT_NEAR(ppl[1] / ppl[0], 1.0, 1e-3) << kind;
    std::printf("%s: device KV %.2fx the host KV's speed\n", kind.c_str(), secs[0] / secs[1]);
  }
}

}  // namespace
}  // namespace ramstream::inference
