// One rank of the dist tests (dist_test.cpp starts N of them through dist::launch or by hand):
//   dist_test_worker collectives OUT          every collective against its expected result
//   dist_test_worker fault OUT MODE VICTIM    VICTIM exits (MODE exit), stops itself (stop) or
//                                             sleeps outside the collectives (hang) at round 20;
//                                             the others report the CommError they get
//   dist_test_worker engine OUT STEPS CLIP SHARD BF16   data-parallel Engine steps on a tiny
//                                             model, one micro-batch of the global batch per
//                                             rank; SHARD 1: the sharded optimizer; BF16 1: the
//                                             bf16 layout (bf16 compute)
// Each rank writes OUT.<rank> (text: "ok" or the error; engine: binary, see write_engine_result)
// and exits 0, or 4 after a CommError, 1 on a wrong result.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "autograd/test_util.h"
#include "dist/dp_testing.h"
#include "dist/gloo_communicator.h"
#include "pipeline/engine.h"
#include "pipeline/engine_testing.h"

namespace rs = ramstream;
using rs::dist::Communicator;
using rs::dist::DType;

namespace {

std::string g_out;
int g_rank = 0;

void write_text(const std::string& text) {
  std::ofstream(g_out + "." + std::to_string(g_rank)) << text << "\n";
}

int fail(const std::string& why) {
  write_text("FAIL " + why);
  std::fprintf(stderr, "rank %d: %s\n", g_rank, why.c_str());
  return 1;
}

int collectives(Communicator& c) {
  const int n = c.world_size(), r = c.rank();
  const int64_t count = 1000;
  // Sums of small integers are exact whatever the order.
  std::vector<float> f(count);
  for (int64_t i = 0; i < count; ++i) f[static_cast<size_t>(i)] = float((r + 1) * (i % 17));
  c.all_reduce_sum(f.data(), count, DType::kFloat32, "float sum")->wait();
  for (int64_t i = 0; i < count; ++i) {
    if (f[static_cast<size_t>(i)] != float(n * (n + 1) / 2 * (i % 17))) return fail("float sum");
  }
  std::vector<double> d = {double(r), 0.5};
  c.all_reduce_sum(d.data(), 2, DType::kFloat64, "double sum")->wait();
  if (d[0] != n * (n - 1) / 2.0 || d[1] != 0.5 * n) return fail("double sum");
  int64_t k = int64_t{1} << (40 + r);
  c.all_reduce_sum(&k, 1, DType::kInt64, "int64 sum")->wait();
  int64_t want = 0;
  for (int q = 0; q < n; ++q) want += int64_t{1} << (40 + q);
  if (k != want) return fail("int64 sum");

  // Rounding sums: the result must be the same bits on every rank.
  std::vector<float> noisy(count);
  uint32_t x = 12345u + 977u * uint32_t(r);
  for (float& v : noisy) {
    x = x * 1664525u + 1013904223u;
    v = float(x >> 8) / float(1 << 24) - 0.5f;
  }
  c.all_reduce_sum(noisy.data(), count, DType::kFloat32, "noisy sum")->wait();
  uint64_t h = 1469598103934665603ull;
  for (float v : noisy) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    h = (h ^ bits) * 1099511628211ull;
  }
  const int64_t mine = static_cast<int64_t>(h >> 1);
  std::vector<int64_t> all(static_cast<size_t>(n));
  c.all_gather(&mine, all.data(), 1, DType::kInt64, "hashes")->wait();
  for (int64_t v : all) {
    if (v != mine) return fail("the all-reduced bits differ between ranks");
  }

  // reduce-scatter: block q of rank p's input holds p*100 + q.
  const int64_t block = 37;
  std::vector<float> in(static_cast<size_t>(n * block)), out(static_cast<size_t>(block));
  for (int q = 0; q < n; ++q) {
    for (int64_t i = 0; i < block; ++i) in[static_cast<size_t>(q * block + i)] = float(r * 100 + q);
  }
  c.reduce_scatter_sum(in.data(), out.data(), block, DType::kFloat32, "reduce-scatter")->wait();
  for (float v : out) {
    if (v != float(100 * n * (n - 1) / 2 + n * r)) return fail("reduce-scatter");
  }
  std::vector<float> gathered(static_cast<size_t>(n * block));
  std::vector<float> piece(static_cast<size_t>(block), float(r) + 0.25f);
  c.all_gather(piece.data(), gathered.data(), block, DType::kFloat32, "all-gather")->wait();
  for (int q = 0; q < n; ++q) {
    for (int64_t i = 0; i < block; ++i) {
      if (gathered[static_cast<size_t>(q * block + i)] != float(q) + 0.25f) return fail("gather");
    }
  }
  std::vector<double> b = {r == n - 1 ? 3.5 : -1.0};
  c.broadcast(b.data(), 1, DType::kFloat64, n - 1, "broadcast")->wait();
  if (b[0] != 3.5) return fail("broadcast");
  c.barrier("barrier");
  if (c.traffic().collectives < 8 || c.traffic().bytes_sent <= 0) return fail("traffic counters");
  write_text("ok");
  return 0;
}

int fault(Communicator& c, const std::string& mode, int victim) {
  std::vector<float> buf(1000, 1.0f);
  for (int round = 0; round < 100000; ++round) {
    if (round == 20 && c.rank() == victim) {
      if (mode == "exit") _exit(3);
      if (mode == "stop") raise(SIGSTOP);
      if (mode == "hang") std::this_thread::sleep_for(std::chrono::hours(1));
    }
    try {
      c.all_reduce_sum(buf.data(), 1000, DType::kFloat32, "round " + std::to_string(round))->wait();
    } catch (const rs::dist::CommError& e) {
      write_text("fault " + std::to_string(e.rank_at_fault()) + " " + e.what());
      return 4;
    }
    for (float& v : buf) v = 1.0f;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return fail("no fault seen");
}

// OUT.<rank>: int64 steps, then steps doubles of loss, steps doubles of grad norm, then per stage
// its master and working copy, each after its element count (see below).
int engine(Communicator& c, int steps, bool clip, bool shard, bool bf16) {
  namespace at_testing = rs::autograd::testing;
  namespace pl = rs::pipeline;
  const rs::model::ModelConfig cfg = rs::dist::testing::dp_test_config();
  const rs::model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 61);
  const int64_t B = 2, T = 7;
  rs::dist::testing::DpOptions o;
  o.clip = clip;
  o.shard = shard;
  o.bf16 = bf16;
  pl::CpuDeviceOptions dopt = pl::CpuDeviceOptions::faults(true, 5 + c.rank(), 200);
  if (bf16) dopt.compute_dtype = at::kBFloat16;
  auto dev = pl::make_cpu_device(dopt);
  pl::ParamStore store(pl::plan_stages(cfg), cfg,
                       rs::dist::testing::dp_store_options(o, c.rank(), c.world_size()));
  store.load(init);
  pl::Engine e(*dev, store, rs::dist::testing::dp_engine_options(o, &c), B, T);
  std::vector<double> losses, norms;
  for (int step = 0; step < steps; ++step) {
    const pl::testing::Batches b = pl::testing::make_batches(cfg, c.world_size(), B, T, 100 + step);
    int64_t global = 0;
    for (const at::Tensor& t : b.targets) global += rs::autograd::count_targets(t);
    const size_t r = static_cast<size_t>(c.rank());
    // Odd steps leave the count to the engine (a collective).
    pl::StepResult s = e.train_step({b.ids[r]}, {b.targets[r]}, {}, step % 2 ? 0 : global);
    losses.push_back(s.loss());
    norms.push_back(s.grad_norm());
  }
  e.synchronize();
  std::ofstream f(g_out + "." + std::to_string(c.rank()), std::ios::binary);
  const int64_t n = steps;
  f.write(reinterpret_cast<const char*>(&n), sizeof n);
  f.write(reinterpret_cast<const char*>(losses.data()), static_cast<std::streamsize>(n * 8));
  f.write(reinterpret_cast<const char*>(norms.data()), static_cast<std::streamsize>(n * 8));
  // Per stage: the master (this rank's shard when sharded in the bf16 layout), then the bf16
  // working copy (bf16 layout), each after its element count.
  for (int64_t s = 0; s < store.plan().num_stages(); ++s) {
    for (const at::Tensor& t : {store.region(s).master, store.region(s).working}) {
      const int64_t numel = t.defined() ? t.numel() : 0;
      f.write(reinterpret_cast<const char*>(&numel), sizeof numel);
      if (numel > 0) {
        f.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: dist_test_worker collectives|fault|engine OUT ...\n");
    return 2;
  }
  const std::string scenario = argv[1];
  g_out = argv[2];
  rs::Result<rs::dist::DistEnv> env = rs::dist::dist_env_from(rs::dist::environ_map());
  if (!env.ok()) return fail(env.error().message);
  g_rank = env.value().rank;
  rs::dist::GlooOptions go;
  go.heartbeat_s = 0.2;
  auto comm = rs::dist::make_gloo_communicator(env.value(), go);
  if (!comm.ok()) return fail(comm.error().message);
  Communicator& c = *comm.value();
  try {
    if (scenario == "collectives") return collectives(c);
    if (scenario == "fault" && argc >= 5) return fault(c, argv[3], std::atoi(argv[4]));
    if (scenario == "engine" && argc >= 7) {
      return engine(c, std::atoi(argv[3]), argv[4][0] == '1', argv[5][0] == '1', argv[6][0] == '1');
    }
  } catch (const rs::dist::CommError& e) {
    write_text("fault " + std::to_string(e.rank_at_fault()) + " " + e.what());
    return 4;
  }
  return fail("unknown scenario " + scenario);
}
