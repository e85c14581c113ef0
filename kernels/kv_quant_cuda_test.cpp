// The CUDA KV kernels against their CPU reference (kv_quant.h): the same codes and params bit for
// bit, and decode attention within fp32 rounding, for several shapes, windows, masks and GQA.
// Skips without a CUDA device (label gpu).
#include "kernels/kv_quant_cuda.cuh"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace ramstream::kernels {
namespace {

bool have_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

template <class T>
T* to_device(const std::vector<T>& v) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(1, v.size()) * sizeof(T)),
            cudaSuccess);
  if (!v.empty()) cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return p;
}

template <class T>
std::vector<T> to_host(const T* p, size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

TEST(KvQuantCuda, QuantisersMatchTheCpuBitForBit) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  for (int bits : {2, 4}) {
    for (int G : {32, 64}) {
      const int D = 128;
      const int64_t groups = 5;
      const std::vector<float> k = randn(static_cast<size_t>(groups * G * D), 1);
      std::vector<uint32_t> kc(static_cast<size_t>(groups * key_group_words(D, G, bits)));
      std::vector<QuantParams> kp(static_cast<size_t>(groups * D));
      for (int64_t g = 0; g < groups; ++g) {
        quantize_key_group(k.data() + g * G * D, D, D, G, bits,
                           kc.data() + g * key_group_words(D, G, bits), kp.data() + g * D);
      }
      float* dk = to_device(k);
      uint32_t* dc = to_device(std::vector<uint32_t>(kc.size()));
      QuantParams* dp = to_device(std::vector<QuantParams>(kp.size()));
      ASSERT_EQ(kv_quantize_key_groups_cuda(dk, groups, D, G, bits, dc, dp, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(to_host(dc, kc.size()), kc);
      const std::vector<QuantParams> gp = to_host(dp, kp.size());
      for (size_t i = 0; i < kp.size(); ++i) {
        ASSERT_EQ(gp[i].scale, kp[i].scale) << i;
        ASSERT_EQ(gp[i].min, kp[i].min) << i;
      }
      const int64_t n = groups * G;
      std::vector<uint32_t> vc(static_cast<size_t>(n * value_token_words(D, bits)));
      std::vector<QuantParams> vp(static_cast<size_t>(n * (D / G)));
      for (int64_t t = 0; t < n; ++t) {
        quantize_value_token(k.data() + t * D, D, G, bits,
                             vc.data() + t * value_token_words(D, bits), vp.data() + t * (D / G));
      }
      uint32_t* dvc = to_device(std::vector<uint32_t>(vc.size()));
      QuantParams* dvp = to_device(std::vector<QuantParams>(vp.size()));
      ASSERT_EQ(kv_quantize_value_tokens_cuda(dk, n, D, G, bits, dvc, dvp, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      EXPECT_EQ(to_host(dvc, vc.size()), vc);
      cudaFree(dk);
      cudaFree(dc);
      cudaFree(dp);
      cudaFree(dvc);
      cudaFree(dvp);
    }
  }
}

TEST(KvQuantCuda, DecodeAttentionMatchesTheCpu) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int D, G, bits, Hq;
    int64_t groups, kwin, vq;
    bool mask;
  };
  const Case cases[] = {{64, 32, 2, 3, 0, 40, 0, false},
                        {64, 32, 2, 3, 6, 17, 100, false},
                        {128, 64, 4, 3, 3, 9, 150, true},
                        {128, 32, 4, 1, 40, 31, 1200, true},
                        {64, 32, 4, 7, 2, 64, 100, false}};
  for (const Case& c : cases) {
    const int64_t N = c.groups * c.G + c.kwin;
    const std::vector<float> k = randn(static_cast<size_t>(N * c.D), 3);
    const std::vector<float> v = randn(static_cast<size_t>(N * c.D), 4);
    std::vector<uint32_t> kc(static_cast<size_t>(c.groups * key_group_words(c.D, c.G, c.bits)));
    std::vector<QuantParams> kp(static_cast<size_t>(c.groups * c.D));
    for (int64_t g = 0; g < c.groups; ++g) {
      quantize_key_group(k.data() + g * c.G * c.D, c.D, c.D, c.G, c.bits,
                         kc.data() + g * key_group_words(c.D, c.G, c.bits), kp.data() + g * c.D);
    }
    std::vector<uint32_t> vc(static_cast<size_t>(c.vq * value_token_words(c.D, c.bits)));
    std::vector<QuantParams> vp(static_cast<size_t>(c.vq * (c.D / c.G)));
    for (int64_t t = 0; t < c.vq; ++t) {
      quantize_value_token(v.data() + t * c.D, c.D, c.G, c.bits,
                           vc.data() + t * value_token_words(c.D, c.bits),
                           vp.data() + t * (c.D / c.G));
    }
    const std::vector<float> kw(k.begin() + c.groups * c.G * c.D, k.end());
    const std::vector<float> vw(v.begin() + c.vq * c.D, v.end());
    std::vector<uint8_t> alive(static_cast<size_t>(N), 1);
    if (c.mask) {
      for (int64_t t = 0; t < N; t += 3) alive[static_cast<size_t>(t)] = 0;
    }
    KvHeadView h;
    h.D = c.D;
    h.G = c.G;
    h.bits = c.bits;
    h.key_codes = kc.data();
    h.key_params = kp.data();
    h.n_key_groups = c.groups;
    h.key_window = kw.data();
    h.n_key_window = c.kwin;
    h.key_window_ld = c.D;
    h.value_codes = vc.data();
    h.value_params = vp.data();
    h.n_value_quant = c.vq;
    h.value_window = vw.data();
    h.n_value_window = N - c.vq;
    h.value_window_ld = c.D;
    h.alive = c.mask ? alive.data() : nullptr;
    const std::vector<float> q = randn(static_cast<size_t>(c.Hq * c.D), 5);
    const float scale = 1.0f / std::sqrt(float(c.D));
    std::vector<float> want(static_cast<size_t>(c.Hq * c.D));
    std::vector<float> work(static_cast<size_t>(kv_attention_work_floats(h, c.Hq)));
    kv_decode_attention(h, q.data(), c.Hq, scale, want.data(), nullptr, work.data());

    KvHeadView d = h;  // the same view over device copies
    uint32_t* dkc = to_device(kc);
    QuantParams* dkp = to_device(kp);
    float* dkw = to_device(kw);
    uint32_t* dvc = to_device(vc);
    QuantParams* dvp = to_device(vp);
    float* dvw = to_device(vw);
    uint8_t* dal = to_device(alive);
    d.key_codes = dkc;
    d.key_params = dkp;
    d.key_window = dkw;
    d.value_codes = dvc;
    d.value_params = dvp;
    d.value_window = dvw;
    d.alive = c.mask ? dal : nullptr;
    KvHeadView* dview = to_device(std::vector<KvHeadView>{d});
    float* dq = to_device(q);
    float* dout = to_device(std::vector<float>(want.size()));
    ASSERT_EQ(kv_decode_attention_cuda(dview, 1, N, dq, c.Hq * c.D, c.Hq, scale, dout, c.Hq * c.D,
                                       nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> got = to_host(dout, want.size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, double(std::abs(got[i] - want[i])));
    std::printf("D%d G%d b%d Hq%d N%lld%s: max abs error vs CPU %.3g\n", c.D, c.G, c.bits, c.Hq,
                (long long)N, c.mask ? " masked" : "", worst);
    EXPECT_LT(worst, 1e-4);
    for (void* p : {static_cast<void*>(dkc), static_cast<void*>(dkp), static_cast<void*>(dkw),
                    static_cast<void*>(dvc), static_cast<void*>(dvp), static_cast<void*>(dvw),
                    static_cast<void*>(dal), static_cast<void*>(dview), static_cast<void*>(dq),
                    static_cast<void*>(dout)}) {
      cudaFree(p);
    }
  }
}

}  // namespace
}  // namespace ramstream::kernels
