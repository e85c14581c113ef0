// dist/: the environment parser, the world-size-1 communicator, and Gloo over loopback with 2 and
// 3 processes (dist_test_worker): every collective, a rank that exits, stops or hangs (the others
// fail within the timeout naming it), and the data-parallel Engine against the one-process
// reference (bitwise for 2 ranks against the same sum, within a bound otherwise).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd/test_util.h"
#include "dist/communicator.h"
#include "dist/dp_testing.h"
#include "dist/env.h"
#include "dist/gloo_communicator.h"
#include "dist/launch.h"
#include "kernels/reduce.h"
#include "pipeline/engine_testing.h"

extern char** environ;

namespace ramstream::dist {
namespace {

using Vars = std::map<std::string, std::string>;

TEST(DistEnv, NoVariablesIsOneProcess) {
  Result<DistEnv> e = dist_env_from({});
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e.value().world_size, 1);
  EXPECT_FALSE(e.value().distributed());
  EXPECT_EQ(e.value().launcher, "none");
}

TEST(DistEnv, TorchrunVariables) {
  Result<DistEnv> e = dist_env_from({{"RANK", "3"},
                                     {"WORLD_SIZE", "4"},
                                     {"LOCAL_RANK", "1"},
                                     {"LOCAL_WORLD_SIZE", "2"},
                                     {"MASTER_ADDR", "10.0.0.7"},
                                     {"MASTER_PORT", "29600"},
                                     {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  ASSERT_TRUE(e.ok()) << e.error().message;
  const DistEnv& d = e.value();
  EXPECT_EQ(d.rank, 3);
  EXPECT_EQ(d.world_size, 4);
  EXPECT_EQ(d.local_rank, 1);
  EXPECT_EQ(d.master_addr, "10.0.0.7");
  EXPECT_EQ(d.master_port, 29600);
  EXPECT_TRUE(d.agent_store);
  EXPECT_EQ(d.describe(), "rank 3 of 4 (local 1 of 2), store 10.0.0.7:29600 (launcher's)");
}

TEST(DistEnv, SlurmVariables) {
  Result<DistEnv> e = dist_env_from({{"SLURM_PROCID", "5"},
                                     {"SLURM_NTASKS", "8"},
                                     {"SLURM_LOCALID", "1"},
                                     {"SLURM_NTASKS_PER_NODE", "4"},
                                     {"MASTER_ADDR", "node01"}});
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ(e.value().rank, 5);
  EXPECT_EQ(e.value().world_size, 8);
  EXPECT_EQ(e.value().local_world_size, 4);
  EXPECT_EQ(e.value().launcher, "slurm");
  Result<DistEnv> no_master = dist_env_from({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}});
  ASSERT_FALSE(no_master.ok());
  EXPECT_NE(no_master.error().message.find("MASTER_ADDR"), std::string::npos);
}

TEST(DistEnv, ErrorsNameTheVariable) {
  auto message = [](const Vars& v) {
    Result<DistEnv> e = dist_env_from(v);
    return e.ok() ? std::string("ok") : e.error().message;
  };
  EXPECT_EQ(message({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), "RANK=2 is not below WORLD_SIZE=2");
  EXPECT_EQ(message({{"RANK", "x"}, {"WORLD_SIZE", "2"}}),
            "RANK='x' is not an integer in [0, 1048576]");
  EXPECT_EQ(message({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}),
            "MASTER_PORT='70000' is not an integer in [1, 65535]");
  EXPECT_EQ(message({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"RAMSTREAM_DIST_TIMEOUT_S", "0"}}),
            "RAMSTREAM_DIST_TIMEOUT_S='0' is not an integer in [1, 86400]");
}

TEST(SingleCommunicator, CollectivesAreIdentities) {
  std::unique_ptr<Communicator> c = make_single_communicator();
  EXPECT_EQ(c->world_size(), 1);
  std::vector<float> a = {1, 2, 3}, b(3);
  c->all_reduce_sum(a.data(), 3, DType::kFloat32, "x")->wait();
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
  c->all_gather(a.data(), b.data(), 3, DType::kFloat32, "x")->wait();
  EXPECT_EQ(b, a);
  c->barrier("x");
}

TEST(Launch, SplitsTheCpusPerNumaNode) {
  memory::Topology two;
  two.nodes = {{0, {0, 1, 2, 3}, {}, 0}, {1, {4, 5, 6, 7}, {}, 0}};
  EXPECT_EQ(child_cpus(two, 0, 2), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(child_cpus(two, 1, 2), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(child_cpus(two, 3, 4), (std::vector<int>{6, 7}));
  EXPECT_EQ(child_cpus(two, 2, 3), (std::vector<int>{5, 6, 7}));  // not a multiple: all CPUs split
  memory::Topology one;
  one.nodes = {{0, {0, 1}, {}, 0}};
  EXPECT_EQ(child_cpus(one, 1, 2), (std::vector<int>{1}));
  EXPECT_TRUE(child_cpus(one, 0, 3).empty());  // fewer CPUs than processes: share them all
}

TEST(Launch, ChecksItsOptions) {
  LaunchOptions o;
  o.program = {"/bin/true"};
  EXPECT_EQ(check_launch_options(o), "");
  o.nnodes = 2;
  EXPECT_NE(check_launch_options(o).find("--master HOST:PORT"), std::string::npos);
  o.master_port = 29500;
  o.node_rank = 2;
  EXPECT_EQ(check_launch_options(o), "--node-rank 2 is not in [0, 2)");
  o.node_rank = 0;
  o.timeout_s = 0;
  EXPECT_EQ(check_launch_options(o), "--timeout must be in [1, 86400] seconds");
  o.timeout_s = 300;
  o.program.clear();
  EXPECT_NE(check_launch_options(o).find("after `--`"), std::string::npos);
}

std::string scratch_prefix(const std::string& name) {
  const ::testing::TestInfo* t = ::testing::UnitTest::GetInstance()->current_test_info();
  return "/tmp/ramstream_dist_" + std::to_string(getpid()) + "_" + t->name() + "_" + name;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Launched {
  int status = -1;
  double seconds = 0;
  std::string log;
};

Launched run_launch(int nproc, std::vector<std::string> args, double timeout_s, double grace_s) {
  LaunchOptions o;
  o.nproc = nproc;
  o.timeout_s = timeout_s;
  o.grace_s = grace_s;
  o.program = {RAMSTREAM_DIST_WORKER};
  o.program.insert(o.program.end(), args.begin(), args.end());
  FILE* log = std::tmpfile();
  const auto t0 = std::chrono::steady_clock::now();
  Launched r;
  r.status = launch(o, log);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::rewind(log);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, log)) > 0) r.log.append(buf, n);
  std::fclose(log);
  return r;
}

class GlooTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gloo_available()) GTEST_SKIP() << "built without c10d Gloo";
  }
};

TEST_F(GlooTest, EveryCollectiveOnTwoAndThreeRanks) {
  for (int n : {2, 3}) {
    const std::string out = scratch_prefix(std::to_string(n));
    const Launched r = run_launch(n, {"collectives", out}, 60, 30);
    EXPECT_EQ(r.status, 0) << r.log;
    for (int rank = 0; rank < n; ++rank) {
      EXPECT_EQ(read_file(out + "." + std::to_string(rank)), "ok\n") << "rank " << rank;
      std::remove((out + "." + std::to_string(rank)).c_str());
    }
  }
}

// What a surviving rank wrote: "fault <rank at fault> <message>".
void expect_fault_named(const std::string& file, int victim, const std::string& phrase) {
  const std::string text = read_file(file);
  EXPECT_EQ(text.rfind("fault " + std::to_string(victim) + " ", 0), 0u) << text;
  EXPECT_NE(text.find(phrase), std::string::npos) << text;
  std::remove(file.c_str());
}

TEST_F(GlooTest, ARankThatExitsIsNamedByTheOthersAndByTheLauncher) {
  const std::string out = scratch_prefix("exit");
  const Launched r = run_launch(3, {"fault", out, "exit", "1"}, 20, 30);
  EXPECT_EQ(r.status, 3) << r.log;  // the dead rank's status
  EXPECT_NE(r.log.find("rank 1 (pid "), std::string::npos) << r.log;
  EXPECT_NE(r.log.find("exited with status 3"), std::string::npos) << r.log;
  EXPECT_LT(r.seconds, 20.0);  // well inside the collective timeout: a closed connection
  for (int rank : {0, 2}) {
    expect_fault_named(out + "." + std::to_string(rank), 1, "rank 1 has died or stopped");
  }
}

TEST_F(GlooTest, ARankThatHangsOutsideTheCollectivesIsNamedAfterTheTimeout) {
  const std::string out = scratch_prefix("hang");
  const Launched r = run_launch(3, {"fault", out, "hang", "2"}, 6, 3);
  // The launcher stops the hung rank after the others failed (SIGTERM ends its sleep).
  EXPECT_NE(r.status, 0) << r.log;
  EXPECT_LT(r.seconds, 40.0) << r.log;
  for (int rank : {0, 1}) {
    expect_fault_named(out + "." + std::to_string(rank), 2,
                       "rank 2 is alive but has not reached it");
  }
}

// Without a launcher (as under srun): rank 0 hosts the store; rank 1 stops itself (SIGSTOP).
TEST_F(GlooTest, AStoppedRankIsNamedWithoutALauncher) {
  const std::string out = scratch_prefix("stop");
  const int port = 20000 + getpid() % 20000;
  std::vector<pid_t> pids;
  for (int rank = 0; rank < 2; ++rank) {
    std::vector<std::string> env_strings;
    for (char** p = environ; *p; ++p) env_strings.emplace_back(*p);
    for (const std::string& kv :
         {"RANK=" + std::to_string(rank), std::string("WORLD_SIZE=2"),
          std::string("MASTER_ADDR=127.0.0.1"), "MASTER_PORT=" + std::to_string(port),
          std::string("RAMSTREAM_DIST_TIMEOUT_S=6")}) {
      env_strings.push_back(kv);
    }
    std::vector<char*> envp;
    for (std::string& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = {RAMSTREAM_DIST_WORKER, "fault", out, "stop", "1"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    ASSERT_EQ(posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), envp.data()), 0);
    pids.push_back(pid);
  }
  int status = 0;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(waitpid(pids[0], &status, 0), pids[0]);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  kill(pids[1], SIGKILL);
  waitpid(pids[1], nullptr, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 4) << status;
  EXPECT_LT(seconds, 30.0);
  expect_fault_named(out + ".0", 1, "rank 1 has died or stopped");
}

struct EngineRun {
  std::vector<double> loss, norm;
  std::vector<at::Tensor> masters, working;  // per stage; working empty in the fp32 layout
};

EngineRun read_engine_run(const std::string& file, const pipeline::StagePlan& plan) {
  const std::string b = read_file(file);
  EngineRun r;
  int64_t steps = 0;
  if (b.size() < 8) return r;
  std::memcpy(&steps, b.data(), 8);
  size_t off = 8;
  r.loss.resize(static_cast<size_t>(steps));
  r.norm.resize(static_cast<size_t>(steps));
  std::memcpy(r.loss.data(), b.data() + off, static_cast<size_t>(steps) * 8);
  off += static_cast<size_t>(steps) * 8;
  std::memcpy(r.norm.data(), b.data() + off, static_cast<size_t>(steps) * 8);
  off += static_cast<size_t>(steps) * 8;
  for (size_t s = 0; s < plan.stages.size(); ++s) {
    for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      int64_t numel = 0;
      if (off + 8 > b.size()) return {};
      std::memcpy(&numel, b.data() + off, 8);
      off += 8;
      at::Tensor t = at::empty({numel}, dtype);
      if (off + t.nbytes() > b.size()) return {};
      std::memcpy(t.data_ptr(), b.data() + off, t.nbytes());
      off += t.nbytes();
      (dtype == at::kFloat ? r.masters : r.working).push_back(t);
    }
  }
  return r;
}

// N ranks of dist_test_worker `engine` against the one-process reference over the same global
// batches (N micro-batches). The tolerance: the ranks sum N separately computed grads where the
// one-process step accumulates micro-batch after micro-batch into one buffer, so each grad
// differs by a few fp32 roundings (relative ~1e-7 of its terms); AdamW's first steps move each
// weight by about lr * sign(m), so weights differ by ~lr * 1e-6 and losses by less than 1e-6
// relative after a few steps. The bound below is 100x that.
EngineRun run_engine_ranks(int n, int steps, bool clip, bool shard, const pipeline::StagePlan& plan,
                           std::vector<EngineRun>* all = nullptr, bool bf16 = false) {
  const std::string out = scratch_prefix(std::to_string(n) + (shard ? "s" : "u"));
  const Launched r = run_launch(
      n,
      {"engine", out, std::to_string(steps), clip ? "1" : "0", shard ? "1" : "0", bf16 ? "1" : "0"},
      60, 30);
  EXPECT_EQ(r.status, 0) << r.log;
  std::vector<EngineRun> runs;
  for (int rank = 0; rank < n; ++rank) {
    runs.push_back(read_engine_run(out + "." + std::to_string(rank), plan));
    std::remove((out + "." + std::to_string(rank)).c_str());
    EXPECT_EQ(runs.back().loss.size(), size_t(steps)) << "rank " << rank;
    EXPECT_EQ(runs.back().masters.size(), plan.stages.size()) << "rank " << rank;
  }
  if (all) *all = runs;
  return runs[0];
}

void check_data_parallel(int n, bool clip) {
  namespace at_testing = autograd::testing;
  const model::ModelConfig cfg = testing::dp_test_config();
  const model::ModelParams init = at_testing::random_params(cfg, at::kFloat, 61);
  const pipeline::StagePlan plan = pipeline::plan_stages(cfg);
  const int steps = 4;
  std::vector<EngineRun> runs;
  run_engine_ranks(n, steps, clip, /*shard=*/false, plan, &runs);
  ASSERT_FALSE(::testing::Test::HasFailure());
  // The ranks are replicas: the same bits everywhere.
  for (int rank = 1; rank < n; ++rank) {
    EXPECT_EQ(runs[size_t(rank)].loss, runs[0].loss);
    EXPECT_EQ(runs[size_t(rank)].norm, runs[0].norm);
    for (size_t s = 0; s < plan.stages.size(); ++s) {
      EXPECT_TRUE(pipeline::testing::same_bits(runs[size_t(rank)].masters[s], runs[0].masters[s]))
          << "rank " << rank << " stage " << s;
    }
  }
  pipeline::EngineOptions o;
  o.adamw.lr = 1e-2f;
  o.max_grad_norm = clip ? 0.05 : 0.0;
  const int64_t B = 2, T = 7;
  pipeline::testing::ReferenceTrainer accumulate(cfg, init, o, B, T);
  pipeline::testing::ReferenceTrainer separate(cfg, init, o, B, T);
  separate.set_separate_micro_batch_grads(true);
  double max_loss_rel = 0, max_weight_abs = 0;
  for (int step = 0; step < steps; ++step) {
    const pipeline::testing::Batches b = pipeline::testing::make_batches(cfg, n, B, T, 100 + step);
    const double want = accumulate.step(b);
    const double want_separate = separate.step(b);
    max_loss_rel = std::max(max_loss_rel, std::abs(runs[0].loss[size_t(step)] - want) / want);
    if (n == 2) {
      EXPECT_EQ(runs[0].loss[size_t(step)], want_separate) << "step " << step;
      EXPECT_EQ(runs[0].norm[size_t(step)], separate.grad_norm()) << "step " << step;
    }
  }
  for (size_t s = 0; s < plan.stages.size(); ++s) {
    max_weight_abs = std::max(
        max_weight_abs, (runs[0].masters[s] - accumulate.masters()[s]).abs().max().item<double>());
    if (n == 2) {
      EXPECT_TRUE(pipeline::testing::same_bits(runs[0].masters[s], separate.masters()[s]))
          << "stage " << s;
    }
  }
  std::printf(
      "%d ranks%s: vs one process accumulating %d micro-batches: max loss rel diff %.3g, "
      "max weight abs diff %.3g (lr %.0e)\n",
      n, clip ? " (clipped)" : "", n, max_loss_rel, max_weight_abs, double(o.adamw.lr));
  EXPECT_LT(max_loss_rel, 1e-4);
  EXPECT_LT(max_weight_abs, 1e-4 * o.adamw.lr * 100);
}

TEST_F(GlooTest, DataParallelTwoRanksBitwiseEqualToTheSummedMicroBatches) {
  check_data_parallel(2, /*clip=*/true);
}

TEST_F(GlooTest, DataParallelThreeRanksWithinTheBoundOfOneProcess) {
  check_data_parallel(3, /*clip=*/false);
}

// ZeRO-2: each rank updates its shard from reduce-scattered grads and the shards are gathered;
// the norm from every rank's block partials. Same bits as the replicated optimizer, in both store
// layouts (bf16: each rank's master shard equals that part of the replicated master, and the
// gathered bf16 working copy equals the replicated one).
void check_sharded_equals_unsharded(bool bf16) {
  const model::ModelConfig cfg = testing::dp_test_config();
  const pipeline::StagePlan plan = pipeline::plan_stages(cfg);
  for (auto [n, clip] : {std::pair<int, bool>{2, true}, {3, false}, {3, true}}) {
    std::vector<EngineRun> sharded;
    const EngineRun whole = run_engine_ranks(n, 4, clip, false, plan, nullptr, bf16);
    run_engine_ranks(n, 4, clip, true, plan, &sharded, bf16);
    ASSERT_FALSE(::testing::Test::HasFailure());
    for (int rank = 0; rank < n; ++rank) {
      const EngineRun& s = sharded[size_t(rank)];
      EXPECT_EQ(s.loss, whole.loss) << n << " ranks, rank " << rank;
      EXPECT_EQ(s.norm, whole.norm) << n << " ranks, rank " << rank;
      for (size_t st = 0; st < plan.stages.size(); ++st) {
        const pipeline::ShardSpan span = pipeline::shard_span(plan.stages[st].numel, rank, n);
        const at::Tensor want =
            bf16 ? whole.masters[st].narrow(0, span.begin, span.numel) : whole.masters[st];
        EXPECT_TRUE(pipeline::testing::same_bits(s.masters[st], want))
            << n << " ranks, rank " << rank << ", stage " << st;
        if (bf16) {
          EXPECT_TRUE(pipeline::testing::same_bits(s.working[st], whole.working[st]))
              << n << " ranks, rank " << rank << ", stage " << st << " (working copy)";
        }
      }
    }
  }
}

TEST_F(GlooTest, ShardedOptimizerEqualsUnshardedBitwise) {
  check_sharded_equals_unsharded(false);
}

TEST_F(GlooTest, ShardedBf16LayoutEqualsUnshardedBitwise) {
  check_sharded_equals_unsharded(true);
}

TEST(ShardSpan, BlocksSplitEvenlyAndCoverTheStage) {
  const int64_t b = kernels::kSumOfSquaresBlock;
  for (int64_t numel : {int64_t{1}, b - 1, b, 5 * b + 7, 64 * b}) {
    for (int count : {1, 2, 3, 4, 7}) {
      int64_t covered = 0;
      for (int r = 0; r < count; ++r) {
        const pipeline::ShardSpan s = pipeline::shard_span(numel, r, count);
        EXPECT_EQ(s.begin, std::min(numel, r * s.stride));
        EXPECT_EQ(s.stride % b == 0 || count == 1, true);
        EXPECT_LE(s.numel, s.stride);
        covered += s.numel;
      }
      EXPECT_EQ(covered, numel) << numel << " over " << count;
    }
  }
  // Bytes: 4 (the whole fp32 weights) + 12 / N per parameter, plus padding.
  const model::ModelConfig cfg = testing::dp_test_config();
  const pipeline::StagePlan plan = pipeline::plan_stages(cfg);
  pipeline::ParamStoreOptions whole, half;
  half.shard_count = 2;
  EXPECT_LT(pipeline::ParamStore::bytes_needed(plan, half),
            pipeline::ParamStore::bytes_needed(plan, whole));
}

// The same data-parallel engine with the ranks as threads of one process (what the GPU check runs
// on one GPU): the ranks agree bitwise, the sharded optimizer equals the replicated one bitwise in
// both layouts, and two ranks equal the one-process sum of their two shards.
TEST(ThreadRanks, EngineDataParallelAgreesWithTheProcessRanks) {
  auto cpu = [](bool bf16) {
    return [bf16](int) {
      pipeline::CpuDeviceOptions o = pipeline::CpuDeviceOptions::faults(true, 5, 200);
      if (bf16) o.compute_dtype = at::kBFloat16;
      return pipeline::make_cpu_device(o);
    };
  };
  for (bool bf16 : {false, true}) {
    testing::DpOptions o;
    o.clip = true;
    o.bf16 = bf16;
    const std::vector<testing::DpRun> whole = testing::run_thread_ranks(2, o, cpu(bf16));
    o.shard = true;
    const std::vector<testing::DpRun> sharded = testing::run_thread_ranks(2, o, cpu(bf16));
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(whole[size_t(r)].error, "");
      ASSERT_EQ(sharded[size_t(r)].error, "");
      EXPECT_EQ(whole[size_t(r)].loss, whole[0].loss);
      EXPECT_EQ(sharded[size_t(r)].loss, whole[0].loss) << "bf16 " << bf16;
      EXPECT_EQ(sharded[size_t(r)].norm, whole[0].norm) << "bf16 " << bf16;
      for (size_t st = 0; st < whole[0].masters.size(); ++st) {
        const pipeline::ShardSpan span = pipeline::shard_span(whole[0].masters[st].numel(), r, 2);
        const at::Tensor want =
            bf16 ? whole[0].masters[st].narrow(0, span.begin, span.numel) : whole[0].masters[st];
        EXPECT_TRUE(pipeline::testing::same_bits(sharded[size_t(r)].masters[st], want))
            << "bf16 " << bf16 << " rank " << r << " stage " << st;
        if (bf16) {
          EXPECT_TRUE(
              pipeline::testing::same_bits(sharded[size_t(r)].working[st], whole[0].working[st]));
        }
      }
    }
    if (!bf16) {
      // The processes' run: two Gloo ranks gave the reference's bits (DataParallelTwoRanks...).
      pipeline::EngineOptions eo;
      eo.adamw.lr = 1e-2f;
      eo.max_grad_norm = 0.05;
      const model::ModelConfig cfg = testing::dp_test_config();
      pipeline::testing::ReferenceTrainer ref(
          cfg, autograd::testing::random_params(cfg, at::kFloat, 61), eo, 2, 7);
      ref.set_separate_micro_batch_grads(true);
      for (int step = 0; step < 4; ++step) {
        const double loss = ref.step(pipeline::testing::make_batches(cfg, 2, 2, 7, 100 + step));
        EXPECT_EQ(whole[0].loss[size_t(step)], loss) << "step " << step;
      }
    }
  }
}

}  // namespace
}  // namespace ramstream::dist
