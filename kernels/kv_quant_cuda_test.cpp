// The CUDA KV kernels against their CPU reference (kv_quant.h): the same codes and params bit for
// bit, and decode attention within fp32 rounding, for several shapes, windows, masks and GQA.
// Skips without a CUDA device (label gpu).
#include "kernels/kv_quant_cuda.cuh"

#include <cuda_runtime_api.h>

#include <algorithm>
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

// Records uploaded as one device buffer, read through a device page table of `per_page`
// records a page (page i = base + i * per_page records), so the kernel walks page boundaries.
struct DevicePaged {
  uint8_t* base = nullptr;
  const uint8_t** table = nullptr;
  PagedRecords records;
};

DevicePaged device_pages(const std::vector<uint8_t>& bytes, int64_t record_bytes,
                         int64_t per_page) {
  DevicePaged d;
  d.base = to_device(bytes);
  const int64_t n = static_cast<int64_t>(bytes.size()) / record_bytes;
  std::vector<const uint8_t*> table;
  for (int64_t i = 0; i * per_page < std::max<int64_t>(n, 1); ++i) {
    table.push_back(d.base + i * per_page * record_bytes);
  }
  d.table = to_device(table);
  d.records = PagedRecords{d.table, per_page, record_bytes, 0};
  return d;
}

void free_pages(DevicePaged& d) {
  cudaFree(d.base);
  cudaFree(d.table);
}

std::vector<uint8_t> float_bytes(const float* begin, const float* end) {
  return std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(begin),
                              reinterpret_cast<const uint8_t*>(end));
}

TEST(KvQuantCuda, QuantisersMatchTheCpuBitForBit) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  for (int bits : {2, 4}) {
    for (int G : {32, 64}) {
      const int D = 128;
      const int64_t groups = 5;
      const std::vector<float> k = randn(static_cast<size_t>(groups * G * D), 1);
      float* dk = to_device(k);
      for (int outliers : {0, 1, 3}) {
        const KeyGroupLayout l{D, G, bits, outliers};
        std::vector<uint8_t> kr(static_cast<size_t>(groups * l.bytes()));
        for (int64_t g = 0; g < groups; ++g) {
          quantize_key_group(k.data() + g * G * D, D, l, kr.data() + g * l.bytes());
        }
        uint8_t* dkr = to_device(std::vector<uint8_t>(kr.size()));
        ASSERT_EQ(kv_quantize_key_groups_cuda(dk, groups, l, dkr, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        EXPECT_EQ(to_host(dkr, kr.size()), kr) << "key outliers " << outliers;
        cudaFree(dkr);
      }
      const int64_t n = groups * G;
      const int64_t vrec = value_token_record_bytes(D, G, bits);
      for (QuantFit fit : {QuantFit::kMinMax, QuantFit::kMse}) {
        std::vector<uint8_t> vr(static_cast<size_t>(n * vrec));
        for (int64_t t = 0; t < n; ++t) {
          uint8_t* rec = vr.data() + t * vrec;
          quantize_value_token(k.data() + t * D, D, G, bits, record_codes(rec),
                               record_params(rec, value_token_words(D, bits)), fit);
        }
        uint8_t* dvr = to_device(std::vector<uint8_t>(vr.size()));
        ASSERT_EQ(kv_quantize_value_tokens_cuda(dk, n, D, G, bits, fit, dvr, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        EXPECT_EQ(to_host(dvr, vr.size()), vr) << "fit " << static_cast<int>(fit);
        cudaFree(dvr);
      }
      cudaFree(dk);
    }
  }
}

TEST(KvQuantCuda, DecodeAttentionMatchesTheCpu) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  struct Case {
    int D, G, bits, Hq;
    int64_t groups, kwin, vq;
    bool mask;
    int key_outliers = 0;
  };
  const Case cases[] = {{64, 32, 2, 3, 0, 40, 0, false},    {64, 32, 2, 3, 6, 17, 100, false},
                        {128, 64, 4, 3, 3, 9, 150, true},   {128, 32, 4, 1, 40, 31, 1200, true},
                        {64, 32, 4, 7, 2, 64, 100, false},  {64, 32, 2, 3, 6, 17, 100, false, 1},
                        {128, 64, 4, 3, 3, 9, 150, true, 4}};
  for (const Case& c : cases) {
    const int64_t N = c.groups * c.G + c.kwin;
    const std::vector<float> k = randn(static_cast<size_t>(N * c.D), 3);
    const std::vector<float> v = randn(static_cast<size_t>(N * c.D), 4);
    const KeyGroupLayout kl{c.D, c.G, c.bits, c.key_outliers};
    const int64_t krec = kl.bytes();
    std::vector<uint8_t> kr(static_cast<size_t>(c.groups * krec));
    for (int64_t g = 0; g < c.groups; ++g) {
      quantize_key_group(k.data() + g * c.G * c.D, c.D, kl, kr.data() + g * krec);
    }
    const int64_t vrec = value_token_record_bytes(c.D, c.G, c.bits);
    std::vector<uint8_t> vr(static_cast<size_t>(c.vq * vrec));
    for (int64_t t = 0; t < c.vq; ++t) {
      uint8_t* rec = vr.data() + t * vrec;
      quantize_value_token(v.data() + t * c.D, c.D, c.G, c.bits, record_codes(rec),
                           record_params(rec, value_token_words(c.D, c.bits)));
    }
    const std::vector<uint8_t> kw =
        float_bytes(k.data() + c.groups * c.G * c.D, k.data() + N * c.D);
    const std::vector<uint8_t> vw = float_bytes(v.data() + c.vq * c.D, v.data() + N * c.D);
    std::vector<uint8_t> alive(static_cast<size_t>(N), 1);
    if (c.mask) {
      for (int64_t t = 0; t < N; t += 3) alive[static_cast<size_t>(t)] = 0;
    }
    // The CPU reference reads the same records as one page each.
    const uint8_t* host_pages[4] = {kr.data(), kw.data(), vr.data(), vw.data()};
    KvHeadView h;
    h.D = c.D;
    h.G = c.G;
    h.bits = c.bits;
    h.key_outliers = c.key_outliers;
    h.key_groups = PagedRecords{&host_pages[0], std::max<int64_t>(1, c.groups), krec, 0};
    h.n_key_groups = c.groups;
    h.key_window = PagedRecords{&host_pages[1], std::max<int64_t>(1, c.kwin), c.D * 4, 0};
    h.n_key_window = c.kwin;
    h.value_tokens = PagedRecords{&host_pages[2], std::max<int64_t>(1, c.vq), vrec, 0};
    h.n_value_quant = c.vq;
    h.value_window = PagedRecords{&host_pages[3], std::max<int64_t>(1, N - c.vq), c.D * 4, 0};
    h.n_value_window = N - c.vq;
    h.alive = c.mask ? alive.data() : nullptr;
    const std::vector<float> q = randn(static_cast<size_t>(c.Hq * c.D), 5);
    const float scale = 1.0f / std::sqrt(float(c.D));
    std::vector<float> want(static_cast<size_t>(c.Hq * c.D));
    std::vector<float> work(static_cast<size_t>(kv_attention_work_floats(h, c.Hq)));
    kv_decode_attention(h, q.data(), c.Hq, scale, want.data(), nullptr, work.data());

    KvHeadView d = h;  // the same view over device pages
    DevicePaged dkq = device_pages(kr, krec, 3), dkw = device_pages(kw, c.D * 4, 5);
    DevicePaged dvq = device_pages(vr, vrec, 7), dvw = device_pages(vw, c.D * 4, 4);
    uint8_t* dal = to_device(alive);
    d.key_groups = dkq.records;
    d.key_window = dkw.records;
    d.value_tokens = dvq.records;
    d.value_window = dvw.records;
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
    std::printf("D%d G%d b%d Hq%d N%lld outliers %d%s: max abs error vs CPU %.3g\n", c.D, c.G,
                c.bits, c.Hq, (long long)N, c.key_outliers, c.mask ? " masked" : "", worst);
    EXPECT_LT(worst, 1e-4);
    for (DevicePaged* p : {&dkq, &dkw, &dvq, &dvw}) free_pages(*p);
    for (void* p : {static_cast<void*>(dal), static_cast<void*>(dview), static_cast<void*>(dq),
                    static_cast<void*>(dout)}) {
      cudaFree(p);
    }
  }
}

}  // namespace
}  // namespace ramstream::kernels
