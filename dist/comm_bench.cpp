// Collective bandwidth over the Gloo back-end on this machine (loopback TCP between processes):
//   build/bin/comm_bench [NPROC]        starts NPROC (default 2) copies of itself via dist::launch
// Rank 0 prints, per buffer size, the time of an all-reduce, a reduce-scatter and an all-gather
// (median of 7 after 2 warm-ups) with the algorithm bandwidth (buffer bytes / time) and the bus
// bandwidth (bytes each rank puts on its link / time: 2(N-1)/N of the buffer for an all-reduce,
// (N-1)/N for an all-gather), the figure to put into a scaling model.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

#include "dist/env.h"
#include "dist/gloo_communicator.h"
#include "dist/launch.h"

namespace rs = ramstream;

namespace {

double median_seconds(rs::dist::Communicator& c, const std::function<void()>& op) {
  std::vector<double> t;
  for (int i = 0; i < 9; ++i) {
    c.barrier("bench");
    const auto t0 = std::chrono::steady_clock::now();
    op();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 2) t.push_back(s);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int bench(rs::dist::Communicator& c) {
  const int n = c.world_size();
  if (c.rank() == 0) {
    std::printf("Gloo over loopback, %d processes (one per CPU share of `ramstream launch`)\n", n);
    std::printf("%10s  %-14s %10s %12s %12s\n", "MB", "collective", "ms", "algbw GB/s",
                "busbw GB/s");
  }
  for (int64_t mb : {1, 4, 16, 64}) {
    const int64_t count = mb * (1 << 20) / 4 / n * n;
    std::vector<float> buf(static_cast<size_t>(count), 1.0f), out(buf.size());
    struct Op {
      const char* name;
      double bus_factor;
      std::function<void()> run;
    };
    const double f = double(n - 1) / n;
    std::vector<Op> ops = {
        {"all-reduce", 2 * f,
         [&] { c.all_reduce_sum(buf.data(), count, rs::dist::DType::kFloat32, "b")->wait(); }},
        {"reduce-scatter", f,
         [&] {
           c.reduce_scatter_sum(buf.data(), out.data(), count / n, rs::dist::DType::kFloat32, "b")
               ->wait();
         }},
        {"all-gather", f,
         [&] {
           c.all_gather(buf.data(), out.data(), count / n, rs::dist::DType::kFloat32, "b")->wait();
         }},
    };
    for (const Op& op : ops) {
      const double s = median_seconds(c, op.run);
      const double bytes = double(count) * 4;
      if (c.rank() == 0) {
        std::printf("%10lld  %-14s %10.2f %12.2f %12.2f\n", (long long)mb, op.name, s * 1e3,
                    bytes / s / 1e9, bytes * op.bus_factor / s / 1e9);
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  rs::Result<rs::dist::DistEnv> env = rs::dist::dist_env_from(rs::dist::environ_map());
  if (!env.ok()) {
    std::fprintf(stderr, "comm_bench: %s\n", env.error().message.c_str());
    return 2;
  }
  if (!env.value().distributed()) {
    rs::dist::LaunchOptions o;
    o.nproc = argc > 1 ? std::atoi(argv[1]) : 2;
    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) return 1;
    o.program = {std::string(self, static_cast<size_t>(len))};
    return rs::dist::launch(o, stderr);
  }
  auto comm = rs::dist::make_gloo_communicator(env.value(), {});
  if (!comm.ok()) {
    std::fprintf(stderr, "comm_bench: %s\n", comm.error().message.c_str());
    return 1;
  }
  return bench(*comm.value());
}
