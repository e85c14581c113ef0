// `ramstream launch`: starts the processes of one node of a job, as torchrun does, and watches
// them.
//
// Each child runs the same program (this binary, with the arguments after `--`) with RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and RAMSTREAM_AGENT_STORE=1
// set (dist/env.h). The launcher of node 0 hosts the TCPStore, so the store outlives any rank.
// The CPUs this launcher may use are split into nproc disjoint sets, one per child (its affinity
// mask, which OpenMP, OpenBLAS and TBB all follow), so N ranks do not each start one thread per
// core and fight over them: with several NUMA nodes and nproc a multiple of them, each child gets
// CPUs of one node; with fewer CPUs than processes every child gets them all. nproc 0 starts one
// process per GPU (as /proc/driver/nvidia lists them), else one per NUMA node.
//
// When a child fails (non-zero exit or a signal) the launcher says which rank and how, gives the
// others `grace_s` to notice through their collectives and exit on their own, then stops them
// (SIGTERM, then SIGKILL after 10 s) and exits with the first failure's status (128 + signal for
// a signal). SIGINT and SIGTERM sent to the launcher are passed on to every child (which save a
// checkpoint and exit), as a shell passes Ctrl-C on to a foreground job. At the end it prints each
// rank's peak resident memory (wait4's ru_maxrss).
//
//   LaunchOptions o;  o.nproc = 2;  o.program = {"/proc/self/exe", "run", "tiny-debug"};
//   int status = launch(o, stderr);
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "memory/topology.h"

namespace ramstream::dist {

struct LaunchOptions {
  int nproc = 0;  // processes on this node; 0: one per GPU, else one per NUMA node
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;               // 0: a free port (single node only)
  double grace_s = 30;               // after a failure, time the others get to exit on their own
  double timeout_s = 300;            // RAMSTREAM_DIST_TIMEOUT_S for the children, unless set
  std::vector<std::string> program;  // argv of each child; program[0] is the executable
};

// Checks the options (an error message, or "" when they are fine).
std::string check_launch_options(const LaunchOptions& options);

// Child i of n's CPUs (see above); empty: leave its affinity alone.
std::vector<int> child_cpus(const memory::Topology& topo, int i, int n);
int default_nproc(const memory::Topology& topo);

// Runs the children to the end; returns the exit status for the launcher (0 when all exited 0).
int launch(const LaunchOptions& options, FILE* log);

}  // namespace ramstream::dist
