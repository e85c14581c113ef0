// The CPU attention loops (forward + backward) on packed rows against the same rows unpacked:
// what document masking costs or saves. Shapes of autograd_bench's model (6 query heads, 2 kv
// heads, head dim 64), fp32, B=2 rows of T=512 by default.
//
//   build/bin/packed_attention_bench                 # unpacked, 3 and 8 documents per row
//   build/bin/packed_attention_bench --seq 1024 --iters 9 --json
//
// Packed rows compute each document's L x L block alone (autograd/ops.h), so their work is
// sum(L^2) rather than T^2, plus a copy of each document's q/k/v rows. Prints the median ms of
// forward+backward per layout; with --json the last stdout line is one JSON object.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "autograd/ops.h"
#include "autograd/positions.h"
#include "util/bench_flags.h"
#include "util/runtime_defaults.h"

namespace rs = ramstream;

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Positions of B rows of T tokens, each row cut into `docs` documents of unequal lengths
// (weights 1, 2, 3, ... so the layout is not a regular tiling).
at::Tensor positions_for(int64_t B, int64_t T, int64_t docs) {
  at::Tensor p = at::empty({B, T}, at::kLong);
  int64_t weights = 0;
  for (int64_t d = 1; d <= docs; ++d) weights += d;
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0;
    for (int64_t d = 1; d <= docs; ++d) {
      const int64_t len = d == docs ? T - t : std::max<int64_t>(1, T * d / weights);
      for (int64_t k = 0; k < len; ++k) p[b][t + k] = k;
      t += len;
    }
  }
  return p;
}

struct Layout {
  std::string name;
  rs::autograd::TokenPositions positions;
  double work = 0;  // sum over documents of L^2, relative to T^2 per row
};

}  // namespace

int main(int argc, char** argv) {
  ramstream::apply_runtime_defaults(argv);  // may re-execute with OMP_* / OPENBLAS_* defaults
  const rs::BenchFlags flags = rs::parse_bench_flags(argc, argv, "packed_attention_bench",
                                                     {{"batch", 2}, {"seq", 512}, {"iters", 5}});
  const int64_t B = flags.value("batch"), T = flags.value("seq");
  const int64_t NH = 6, NKV = 2, D = 64;
  at::manual_seed(0);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor q = at::randn({B, NH, T, D}, f32), k = at::randn({B, NKV, T, D}, f32);
  const at::Tensor v = at::randn({B, NKV, T, D}, f32), dout = at::randn({B, T, NH * D}, f32);
  at::Tensor out = at::empty({B, T, NH * D}, f32), lse = at::empty({B, NH, T}, f32);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);

  std::vector<Layout> layouts = {{"unpacked", {}, 1.0}};
  for (int64_t docs : {3, 8}) {
    if (docs > T) continue;
    const at::Tensor p = positions_for(B, T, docs);
    const rs::autograd::DocumentBounds bounds = rs::autograd::find_documents(p);
    double work = 0;
    for (size_t s = 0; s + 1 < bounds.cu_seqlens.size(); ++s) {
      const double len = bounds.cu_seqlens[s + 1] - bounds.cu_seqlens[s];
      work += len * len;
    }
    layouts.push_back({std::to_string(docs) + " documents per row",
                       rs::autograd::make_token_positions(p, at::kCPU),
                       work / (double(B) * double(T) * double(T))});
  }

  std::vector<std::vector<double>> ms(layouts.size());
  auto run = [&](const Layout& l) {
    const double t0 = now_ms();
    rs::autograd::attention_forward(out, lse, q, k, v, l.positions);
    rs::autograd::attention_backward(dq, dk, dv, dout, q, k, v, out, lse, l.positions);
    return now_ms() - t0;
  };
  for (const Layout& l : layouts) run(l);               // warm-up
  for (int64_t i = 0; i < flags.value("iters"); ++i) {  // interleaved: drift hits all alike
    for (size_t j = 0; j < layouts.size(); ++j) ms[j].push_back(run(layouts[j]));
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("packed_attention_bench: B=%lld T=%lld NH=%lld NKV=%lld D=%lld fp32, %lld iters\n",
              static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(NH),
              static_cast<long long>(NKV), static_cast<long long>(D),
              static_cast<long long>(flags.value("iters")));
  std::printf("%-24s %14s %14s %16s\n", "layout", "fwd+bwd ms", "vs unpacked", "sum L^2 / T^2");
  const double base = median(ms[0]);
  std::string json = "{\"bench\":\"packed_attention\",\"B\":" + std::to_string(B) +
                     ",\"T\":" + std::to_string(T) + ",\"layouts\":[";
  for (size_t j = 0; j < layouts.size(); ++j) {
    const double m = median(ms[j]);
    std::printf("%-24s %14.2f %14.2f %16.3f\n", layouts[j].name.c_str(), m, m / base,
                layouts[j].work);
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%s{\"name\":\"%s\",\"ms\":%.3f,\"work\":%.4f}", j ? "," : "",
                  layouts[j].name.c_str(), m, layouts[j].work);
    json += buf;
  }
  if (flags.json) std::printf("%s]}\n", json.c_str());
  return 0;
}
