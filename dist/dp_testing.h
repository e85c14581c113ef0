// Shared by the data-parallel engine tests (internal to tests): N ranks as threads of this process
// (dist/thread_group.h), each an Engine with its own device and store on a tiny model, training
// on its micro-batch of the same global batches as dist_test_worker's `engine` scenario.
//
//   std::vector<DpRun> runs = run_thread_ranks(2, 4, {.clip = true}, [] { return
//   make_cpu_device({}); });
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include <ATen/ATen.h>

#include "autograd/test_util.h"
#include "dist/thread_group.h"
#include "pipeline/engine.h"
#include "pipeline/engine_testing.h"

namespace ramstream::dist::testing {

struct DpOptions {
  int steps = 4;
  bool clip = false, shard = false, bf16 = false;
  bool pin = false;  // CUDA: the store must be page-locked
};

struct DpRun {
  std::vector<double> loss, norm;
  std::vector<at::Tensor> masters, working;  // per stage, CPU copies (sharded bf16: the shard)
  std::string error;                         // what the rank threw, if it did
};

inline model::ModelConfig dp_test_config() {
  autograd::testing::TinyOptions to;
  to.layers = 3;
  return autograd::testing::tiny_config(to);
}

// The store and engine settings every data-parallel test uses (rank `rank` of `world`).
inline pipeline::ParamStoreOptions dp_store_options(const DpOptions& o, int rank, int world) {
  pipeline::ParamStoreOptions so;
  so.working_copy_bf16 = o.bf16;
  so.pin = o.pin;
  if (o.shard) {
    so.shard_rank = rank;
    so.shard_count = world;
  }
  return so;
}

inline pipeline::EngineOptions dp_engine_options(const DpOptions& o, Communicator* comm) {
  pipeline::EngineOptions eo;
  eo.adamw.lr = 1e-2f;
  eo.max_grad_norm = o.clip ? 0.05 : 0.0;
  eo.comm = comm;
  return eo;
}

inline std::vector<DpRun> run_thread_ranks(
    int world, const DpOptions& o,
    const std::function<std::unique_ptr<pipeline::Device>(int rank)>& make_device,
    ThreadGroup::Copy copy = [](void* d, const void* s, size_t n) { std::memcpy(d, s, n); }) {
  const model::ModelConfig cfg = dp_test_config();
  const model::ModelParams init = autograd::testing::random_params(cfg, at::kFloat, 61);
  const int64_t B = 2, T = 7;
  // The global batches, made once (at::manual_seed is process-wide, not per thread).
  std::vector<pipeline::testing::Batches> batches;
  for (int step = 0; step < o.steps; ++step) {
    batches.push_back(pipeline::testing::make_batches(cfg, world, B, T, 100 + step));
  }
  ThreadGroup group(world, std::move(copy));
  std::vector<DpRun> runs(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      DpRun& out = runs[static_cast<size_t>(rank)];
      try {
        std::unique_ptr<Communicator> comm = group.communicator(rank);
        std::unique_ptr<pipeline::Device> dev = make_device(rank);
        pipeline::ParamStore store(pipeline::plan_stages(cfg), cfg,
                                   dp_store_options(o, rank, world));
        store.load(init);
        pipeline::Engine e(*dev, store, dp_engine_options(o, comm.get()), B, T);
        for (const pipeline::testing::Batches& b : batches) {
          int64_t global = 0;
          for (const at::Tensor& t : b.targets) global += autograd::count_targets(t);
          const size_t r = static_cast<size_t>(rank);
          pipeline::StepResult s = e.train_step({b.ids[r]}, {b.targets[r]}, {}, global);
          out.loss.push_back(s.loss());
          out.norm.push_back(s.grad_norm());
        }
        e.synchronize();
        for (int64_t s = 0; s < store.plan().num_stages(); ++s) {
          out.masters.push_back(store.region(s).master.clone());
          if (store.region(s).working.defined())
            out.working.push_back(store.region(s).working.clone());
        }
      } catch (const std::exception& ex) {
        out.error = ex.what();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return runs;
}

}  // namespace ramstream::dist::testing
