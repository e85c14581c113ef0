// The KV pages' device twin, with host memory standing in for the device: after every batch of
// appends the twin's attention equals the host pages' (bit for bit: the same kernel over the same
// bytes), while sequences grow, flush KIVI blocks, end and hand their pages to new ones; only what
// was written is uploaded; a budget too small stops the twin without losing anything; h2o stays
// on the host.
#include "inference/kv_mirror.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "inference/kv_cache.h"
#include "inference/kv_pages.h"
#include "kernels/test_values.h"
#include "model/testing.h"

namespace ramstream::inference {
namespace {

model::ModelConfig shape() {
  model::testing::TinyOptions o;
  o.layers = 2;
  o.heads = 4;
  o.kv_heads = 2;
  o.head_dim = 64;
  o.hidden = 256;
  return model::testing::tiny_config(o);
}

std::vector<float> randn(int64_t n, uint64_t seed) {
  return kernels::normal_values<float>(n, static_cast<uint32_t>(seed), 1.0f);
}

KvCacheConfig cache(const char* name, int sink = 0) {
  KvCacheConfig c = KvCacheConfig::parse(name, 32, 64, 0.5).value();
  c.sink = sink;
  return c;
}

struct Rig {
  model::ModelConfig m = shape();
  KvCacheConfig cfg;
  std::shared_ptr<KvPagePool> pool;
  std::unique_ptr<KvDeviceMirror> mirror;
  std::vector<std::unique_ptr<SequenceKv>> seqs;
  uint64_t seed = 1;

  Rig(const KvCacheConfig& c, int64_t budget) : cfg(c) {
    pool = std::make_shared<KvPagePool>(
        KvPagePool::page_bytes_for(SequenceKv::largest_record(cfg, m)), /*pin=*/false);
    mirror = std::make_unique<KvDeviceMirror>(make_host_mirror_backend(), budget);
    pool->set_mirror(mirror.get());
  }
  ~Rig() { pool->set_mirror(nullptr); }
  void add(int64_t prompt) {
    seqs.push_back(std::make_unique<SequenceKv>(cfg, m, 4096, pool));
    const int64_t row = m.num_kv_heads * m.head_dim;
    for (int64_t l = 0; l < m.num_layers; ++l) {
      const std::vector<float> k = randn(prompt * row, seed++), v = randn(prompt * row, seed++);
      seqs.back()->prefill(l, k.data(), v.data(), prompt, nullptr);
    }
  }
  void step() {
    const int64_t row = m.num_kv_heads * m.head_dim;
    for (auto& s : seqs) {
      for (int64_t l = 0; l < m.num_layers; ++l) {
        const std::vector<float> k = randn(row, seed++), v = randn(row, seed++);
        s->append(l, k.data(), v.data());
      }
    }
  }
  std::vector<SequenceKv*> ptrs() const {
    std::vector<SequenceKv*> p;
    for (const auto& s : seqs) p.push_back(s.get());
    return p;
  }
  // Twin attention vs host attention of every layer; false when the twin declined.
  bool same_attention() {
    const int64_t B = static_cast<int64_t>(seqs.size()), n = B * m.num_heads * m.head_dim;
    const std::vector<float> q = randn(n, seed++);
    for (int64_t l = 0; l < m.num_layers; ++l) {
      std::vector<float> host(static_cast<size_t>(n)), twin(static_cast<size_t>(n), -1.0f);
      attend(l, ptrs(), q.data(), host.data(), m);
      if (!mirror->attend(l, ptrs(), q.data(), twin.data(), m)) return false;
      EXPECT_EQ(0, std::memcmp(host.data(), twin.data(), host.size() * 4)) << "layer " << l;
    }
    return true;
  }
};

TEST(KvMirror, TwinAttentionEqualsHostAttentionAsSequencesGrowEndAndStart) {
  struct Case {
    const char* kind;
    int key_outliers;
  };
  for (const Case c : {Case{"bf16", 0}, Case{"kivi2", 0}, Case{"kivi4", 0}, Case{"kivi2", 2}}) {
    KvCacheConfig cfg = cache(c.kind, c.kind[0] == 'k' ? 3 : 0);
    cfg.key_outliers = c.key_outliers;
    const std::string kind = cfg.name();
    Rig r(cfg, int64_t{1} << 30);
    r.add(5);
    r.add(70);
    r.add(129);
    ASSERT_TRUE(r.same_attention()) << kind;
    const int64_t after_prefill = r.mirror->uploaded_bytes();
    for (int step = 0; step < 150; ++step) {
      r.step();
      if (step == 40) r.seqs.erase(r.seqs.begin() + 1);  // its pages go back to the pool
      if (step == 60) r.add(33);                         // and are reused
      ASSERT_TRUE(r.same_attention()) << kind << " step " << step;
    }
    // Only what was written travels: per step, sequence, layer and head a key and a value row
    // and at most one value record and one key group; not the whole cache every step.
    int64_t held = 0;
    for (const auto& s : r.seqs) held += s->bytes();
    const int64_t decode_upload = r.mirror->uploaded_bytes() - after_prefill;
    const int D = 64, bits = r.cfg.bits == 0 ? 2 : r.cfg.bits;
    const int64_t per_head_step = 2 * D * 4 + kernels::value_token_record_bytes(D, 32, bits) +
                                  kernels::key_group_record_bytes(D, 32, bits, r.cfg.key_outliers);
    const int64_t written_bound = 150 * 3 * r.m.num_layers * r.m.num_kv_heads * per_head_step;
    std::printf(
        "%s: prefill upload %lld B, 150 decode steps %lld B (bound %lld), cache now %lld B\n",
        kind.c_str(), static_cast<long long>(after_prefill), static_cast<long long>(decode_upload),
        static_cast<long long>(written_bound), static_cast<long long>(held));
    EXPECT_LE(decode_upload, written_bound) << kind;
    EXPECT_LT(decode_upload, 150 * held / 20) << kind;
    EXPECT_TRUE(r.mirror->active());
    EXPECT_EQ(r.mirror->device_bytes(), r.pool->reserved_bytes());
  }
}

TEST(KvMirror, ATooSmallBudgetStopsTheTwinAndTheHostPagesCarryOn) {
  Rig r(cache("kivi2"), /*budget=*/1);  // not even the first chunk
  r.add(100);
  EXPECT_FALSE(r.mirror->active());
  EXPECT_NE(r.mirror->reason().find("device budget"), std::string::npos) << r.mirror->reason();
  EXPECT_FALSE(r.same_attention());  // declines; the caller attends on the host
  const model::ModelConfig& m = r.m;
  std::vector<float> q = randn(m.num_heads * m.head_dim, 9), out(q.size());
  attend(0, r.ptrs(), q.data(), out.data(), m);
  EXPECT_TRUE(std::isfinite(out[0]));
}

TEST(KvMirror, H2oStaysOnTheHost) {
  Rig r(cache("h2o"), int64_t{1} << 30);
  r.add(40);
  EXPECT_FALSE(r.same_attention());
}

TEST(KvMirror, ScatterPutsEachRunInPlace) {
  std::vector<uint8_t> src(64), dst(32, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i);
  const kernels::KvCopyOp ops[2] = {{dst.data() + 4, 8, 8}, {dst.data() + 20, 60, 4}};
  kernels::kv_scatter(src.data(), ops, 2);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(dst[static_cast<size_t>(4 + i)], 8 + i);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(dst[static_cast<size_t>(20 + i)], 60 + i);
  EXPECT_EQ(dst[0], 0);
  EXPECT_EQ(dst[12], 0);
}

}  // namespace
}  // namespace ramstream::inference
