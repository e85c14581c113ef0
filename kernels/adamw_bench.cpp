// Fused CPU AdamW (kernels/adamw.h) against torch::optim::AdamW on one flat tensor, with a plain
// memory copy of the same traffic as the ceiling, all measured in one process.
//
//   build/bin/adamw_bench                     # 50M parameters, 7 timed rounds
//   build/bin/adamw_bench --json --params 10000000 --iters 3
//
// Ours reads p, m, v and an fp32 grad (16 B) and writes p, m, v and the bf16 working copy (14 B):
// 30 B per parameter. The copies move 15 B per parameter (read 15, write 15: the same 30 B),
// chunked and threaded like the optimizer, once with glibc memcpy and once with streaming stores.
// bandwidth_fraction = optimizer bytes/s over the faster copy's bytes/s at the same thread count
// (all TBB threads); speedup_vs_torch compares ours at libtorch's thread count
// (at::get_num_threads(), 1 in Debian's build) with libtorch. Variants run interleaved, round
// by round, so load from neighbours on a shared VM hits all of them alike. With --json the last
// stdout line is one JSON object.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <tbb/task_arena.h>
#include <torch/types.h>  // before adamw.h, which uses torch::Tensor

#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include "kernels/adamw.h"
#include "kernels/cpu_isa.h"
#include "kernels/parallel.h"
#include "util/bench_flags.h"

#if RAMSTREAM_KERNELS_X86
#include <immintrin.h>
#endif

namespace rk = ramstream::kernels;

namespace {

constexpr int64_t kBytesPerParam = 30;         // read p,m,v,g fp32 + write p,m,v fp32 + write bf16
constexpr int64_t kBytesPerParamInPlace = 28;  // bf16 grads read from the working copy

// A copy with non-temporal (streaming) stores: no read-for-ownership of the destination, the
// fastest way to move bytes through memory here. The head up to 32-byte alignment goes by memcpy.
RAMSTREAM_TARGET_AVX2 void stream_copy(char* dst, const char* src, size_t len) {
#if RAMSTREAM_KERNELS_X86
  const size_t head = std::min(len, (32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31);
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 32 <= len; i += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
  }
  _mm_sfence();
  std::memcpy(dst + i, src + i, len - i);
#else
  std::memcpy(dst, src, len);
#endif
}

struct Variant {
  std::function<void()> run;
  std::vector<double> seconds;
  double median() {
    std::sort(seconds.begin(), seconds.end());
    return seconds[seconds.size() / 2];
  }
};

// One untimed warm-up each (faults pages in), then `rounds` rounds that time every variant once,
// so a neighbour's load on the shared VM hits all variants alike; the median of each is kept.
void measure(std::vector<Variant*> variants, int rounds) {
  for (Variant* v : variants) v->run();
  for (int r = 0; r < rounds; ++r) {
    for (Variant* v : variants) {
      const auto t0 = std::chrono::steady_clock::now();
      v->run();
      v->seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const ramstream::BenchFlags flags = ramstream::parse_bench_flags(
      argc, argv, "adamw_bench", {{"params", 50'000'000}, {"iters", 7}});
  struct {
    int64_t params;
    int iters;
    bool json;
  } const args{flags.value("params"), static_cast<int>(flags.value("iters")), flags.json};
  const int64_t n = args.params;
  const int threads_all = tbb::this_task_arena::max_concurrency();
  const int threads_torch = at::get_num_threads();

  torch::manual_seed(0);
  const at::Tensor p0 = torch::randn({n});
  const at::Tensor g = torch::randn({n}) * 1e-2;

  // Ours: raw arrays inside tensors (only as storage), zero state like torch's first step.
  at::Tensor p = p0.clone(), m = torch::zeros({n}), v = torch::zeros({n});
  at::Tensor working = torch::empty({n}, torch::kBFloat16);
  float* pp = p.data_ptr<float>();
  float* pm = m.data_ptr<float>();
  float* pv = v.data_ptr<float>();
  const float* pg = g.data_ptr<float>();
  auto* pw = reinterpret_cast<rk::bf16*>(working.data_ptr());
  rk::AdamWConfig cfg;
  int64_t step = 0;
  auto ours = [&](int max_threads) {
    return [&, max_threads] {
      rk::adamw_update(pp, pm, pv, pg, n, cfg, ++step, 1.0f, pw, max_threads);
    };
  };
  Variant ours_all{ours(0), {}}, ours_1t{ours(1), {}}, ours_eq{ours(threads_torch), {}};
  // The in-place variant reads bf16 grads from the working copy and overwrites them with the new
  // weights, so it takes whatever the previous variant left there as grads: same work, same time.
  Variant inplace{[&] {
                    rk::adamw_update(pp, pm, pv, static_cast<const rk::bf16*>(pw), n, cfg, ++step,
                                     1.0f, pw);
                  },
                  {}};

  // libtorch: one flat parameter with its grad, the same options (amsgrad off).
  at::Tensor tp = p0.clone().set_requires_grad(true);
  tp.mutable_grad() = g.clone();
  torch::optim::AdamW opt({tp}, torch::optim::AdamWOptions(cfg.lr)
                                    .betas({cfg.beta1, cfg.beta2})
                                    .eps(cfg.eps)
                                    .weight_decay(cfg.weight_decay));
  Variant torch_step{[&] { opt.step(); }, {}};

  // The ceiling: a copy of the same traffic, chunked and threaded like the optimizer, two ways.
  // glibc's memcpy on 1 MB pieces uses ordinary stores, whose read-for-ownership costs a third
  // stream the byte count does not show; the streaming copy does not, and is the faster one on
  // the dev VM. The fraction uses the faster of the two, so it never flatters the optimizer.
  const int64_t copy_bytes_per_param = kBytesPerParam / 2;
  std::vector<char> src(static_cast<size_t>(n * copy_bytes_per_param), 1);
  std::vector<char> dst(src.size(), 0);
  auto copy = [&](int max_threads, bool streaming) {
    return [&, max_threads, streaming] {
      rk::parallel_chunks(n, max_threads, [&](int64_t, int64_t b, int64_t e) {
        char* d = dst.data() + b * copy_bytes_per_param;
        const char* s = src.data() + b * copy_bytes_per_param;
        const size_t len = static_cast<size_t>((e - b) * copy_bytes_per_param);
        if (streaming) {
          stream_copy(d, s, len);
        } else {
          std::memcpy(d, s, len);
        }
      });
    };
  };
  const bool can_stream = rk::kernel_isa() == rk::Isa::kAvx2Fma;
  Variant memcpy_all{copy(0, false), {}}, memcpy_1t{copy(1, false), {}};
  Variant stream_all{copy(0, true), {}}, stream_1t{copy(1, true), {}};

  std::vector<Variant*> all{&ours_all, &ours_1t, &inplace, &torch_step, &memcpy_all, &memcpy_1t};
  if (threads_torch != 1 && threads_torch != threads_all) all.push_back(&ours_eq);
  if (can_stream) {
    all.push_back(&stream_all);
    all.push_back(&stream_1t);
  }
  measure(all, args.iters);
  const double s_all = ours_all.median(), s_1t = ours_1t.median();
  const double s_eq = threads_torch == 1             ? s_1t
                      : threads_torch == threads_all ? s_all
                                                     : ours_eq.median();
  const double s_inplace = inplace.median(), s_torch = torch_step.median();
  const double c_all = memcpy_all.median(), c_1t = memcpy_1t.median();
  const double cs_all = can_stream ? stream_all.median() : c_all;
  const double cs_1t = can_stream ? stream_1t.median() : c_1t;
  const double ceil_all = std::min(c_all, cs_all), ceil_1t = std::min(c_1t, cs_1t);

  const double bytes = static_cast<double>(n) * kBytesPerParam;
  auto gbs = [&](double s) { return bytes / s / 1e9; };
  const double speedup = s_torch / s_eq;
  const double frac_all = ceil_all / s_all;  // = (bytes/s_all) / (bytes/ceil_all)
  const double frac_1t = ceil_1t / s_1t;

  std::printf("adamw_bench: %lld params, kernels ISA %s, TBB threads %d, libtorch threads %d\n",
              static_cast<long long>(n), rk::isa_name(rk::kernel_isa()), threads_all,
              threads_torch);
  std::printf("  %-40s %7s %10s %12s %8s\n", "variant", "threads", "ms/step", "Mparams/s", "GB/s");
  auto row = [&](const char* name, int t, double s, double bytes_per_param) {
    std::printf("  %-40s %7d %10.2f %12.1f %8.2f\n", name, t, s * 1e3, n / s / 1e6,
                n * bytes_per_param / s / 1e9);
  };
  row("ours: fp32 grads + bf16 copy (30 B/param)", threads_all, s_all, kBytesPerParam);
  row("ours: fp32 grads + bf16 copy (30 B/param)", 1, s_1t, kBytesPerParam);
  if (threads_torch != 1 && threads_torch != threads_all) {
    row("ours: fp32 grads + bf16 copy", threads_torch, s_eq, kBytesPerParam);
  }
  row("ours: bf16 grads in place (28 B/param)", threads_all, s_inplace, kBytesPerParamInPlace);
  row("torch::optim::AdamW (fp32, no bf16 copy)", threads_torch, s_torch, 0);
  row("memcpy of the same 30 B/param", threads_all, c_all, kBytesPerParam);
  row("memcpy of the same 30 B/param", 1, c_1t, kBytesPerParam);
  if (can_stream) {
    row("streaming copy of the same 30 B/param", threads_all, cs_all, kBytesPerParam);
    row("streaming copy of the same 30 B/param", 1, cs_1t, kBytesPerParam);
  }
  std::printf("speedup vs torch at equal threads (%d): %.2fx (ours with %d threads: %.2fx)\n",
              threads_torch, speedup, threads_all, s_torch / s_all);
  std::printf(
      "bandwidth fraction (vs the faster copy): %.2f with %d threads, %.2f single-threaded; "
      "vs memcpy: %.2f, %.2f\n",
      frac_all, threads_all, frac_1t, c_all / s_all, c_1t / s_1t);

  if (args.json) {
    std::printf(
        "{\"params\": %lld, \"isa\": \"%s\", \"threads_ours\": %d, \"threads_torch\": %d, "
        "\"bytes_per_param\": %lld, \"ms_ours\": %.4f, \"ms_ours_1t\": %.4f, "
        "\"ms_ours_eq_threads\": %.4f, \"ms_ours_bf16_inplace\": %.4f, \"ms_torch\": %.4f, "
        "\"ms_memcpy\": %.4f, \"ms_memcpy_1t\": %.4f, \"ms_stream_copy\": %.4f, "
        "\"ms_stream_copy_1t\": %.4f, \"optimizer_gb_per_s\": %.3f, "
        "\"optimizer_gb_per_s_1t\": %.3f, \"copy_gb_per_s\": %.3f, \"copy_gb_per_s_1t\": %.3f, "
        "\"memcpy_gb_per_s\": %.3f, \"memcpy_gb_per_s_1t\": %.3f, "
        "\"params_per_s\": %.6g, \"params_per_s_1t\": %.6g, \"speedup_vs_torch\": %.4f, "
        "\"speedup_vs_torch_threads\": %d, \"speedup_vs_torch_all_threads\": %.4f, "
        "\"bandwidth_fraction\": %.4f, \"bandwidth_fraction_1t\": %.4f, "
        "\"bandwidth_fraction_vs_memcpy\": %.4f}\n",
        static_cast<long long>(n), rk::isa_name(rk::kernel_isa()), threads_all, threads_torch,
        static_cast<long long>(kBytesPerParam), s_all * 1e3, s_1t * 1e3, s_eq * 1e3,
        s_inplace * 1e3, s_torch * 1e3, c_all * 1e3, c_1t * 1e3, cs_all * 1e3, cs_1t * 1e3,
        gbs(s_all), gbs(s_1t), gbs(ceil_all), gbs(ceil_1t), gbs(c_all), gbs(c_1t), n / s_all,
        n / s_1t, speedup, threads_torch, s_torch / s_all, frac_all, frac_1t, c_all / s_all);
  }
  return 0;
}
