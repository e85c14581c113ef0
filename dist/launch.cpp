#include "dist/launch.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dist/gloo_communicator.h"
#include "memory/topology.h"

namespace ramstream::dist {
namespace {

volatile sig_atomic_t g_forward_signal = 0;

void on_signal(int sig) {
  g_forward_signal = sig;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = strsignal(WTERMSIG(status));
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + (name ? name : "?") +
           ")";
  }
  return "ended with wait status " + std::to_string(status);
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

struct Child {
  pid_t pid = -1;
  int rank = 0;
  bool running = false;
  int status = 0;
  long peak_rss_kib = 0;  // from wait4's rusage
};

// Share i of n of `cpus`, contiguous; empty when there are fewer CPUs than shares.
std::vector<int> split(const std::vector<int>& cpus, int i, int n) {
  const int total = static_cast<int>(cpus.size());
  if (total < n) return {};
  return std::vector<int>(cpus.begin() + i * total / n, cpus.begin() + (i + 1) * total / n);
}

}  // namespace

std::vector<int> child_cpus(const memory::Topology& topo, int i, int n) {
  const int nodes = static_cast<int>(topo.nodes.size());
  if (nodes >= 2 && n % nodes == 0) {
    // n / nodes children per NUMA node, each on its node's CPUs (and so near its memory).
    const int per_node = n / nodes;
    return split(topo.nodes[static_cast<size_t>(i / per_node)].cpus, i % per_node, per_node);
  }
  std::vector<int> all;
  for (const memory::NumaNode& node : topo.nodes)
    all.insert(all.end(), node.cpus.begin(), node.cpus.end());
  std::sort(all.begin(), all.end());
  return split(all, i, n);
}

int default_nproc(const memory::Topology& topo) {
  // One per GPU (the driver lists them without loading CUDA), else one per NUMA node.
  int gpus = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/driver/nvidia/gpus", ec), end;
       !ec && it != end; it.increment(ec)) {
    ++gpus;
  }
  return gpus > 0 ? gpus : std::max<int>(1, static_cast<int>(topo.nodes.size()));
}

namespace {}  // namespace

std::string check_launch_options(const LaunchOptions& o) {
  if (o.nproc < 0) return "--nproc must be at least 1 (or 0: one per GPU, else per NUMA node)";
  if (o.nnodes < 1) return "--nnodes must be at least 1";
  if (o.node_rank < 0 || o.node_rank >= o.nnodes) {
    return "--node-rank " + std::to_string(o.node_rank) + " is not in [0, " +
           std::to_string(o.nnodes) + ")";
  }
  if (o.nnodes > 1 && o.master_port == 0) {
    return "with --nnodes > 1 give --master HOST:PORT (the same on every node; node 0 hosts the "
           "store there)";
  }
  if (o.master_port < 0 || o.master_port > 65535) return "the master port must be in [1, 65535]";
  if (!(o.timeout_s >= 1 && o.timeout_s <= 86400)) return "--timeout must be in [1, 86400] seconds";
  if (!(o.grace_s >= 0 && o.grace_s <= 86400)) return "--grace must be in [0, 86400] seconds";
  if (o.master_addr.empty() || o.master_addr.size() > 253) {
    return "the master host must be a host name or address of 1 to 253 characters";
  }
  if (o.program.empty()) return "nothing to launch: give the command after `--`";
  return "";
}

int launch(const LaunchOptions& options, FILE* log) {
  const std::string problem = check_launch_options(options);
  if (!problem.empty()) {
    std::fprintf(log, "ramstream launch: %s\n", problem.c_str());
    return 2;
  }
  const memory::Topology topo = memory::Topology::probe();
  LaunchOptions o = options;
  if (o.nproc == 0) o.nproc = default_nproc(topo);
  const int world = o.nproc * o.nnodes;
  std::unique_ptr<StoreServer> store;
  int port = o.master_port;
  if (o.node_rank == 0) {
    Result<std::unique_ptr<StoreServer>> s = host_tcp_store(o.master_port, o.timeout_s);
    if (!s.ok()) {
      std::fprintf(log, "ramstream launch: %s\n", s.error().message.c_str());
      return 1;
    }
    store = std::move(s).value();
    port = store->port();
  }
  std::fprintf(log,
               "ramstream launch: %d process%s on this node (ranks %d..%d of %d), store %s:%d\n",
               o.nproc, o.nproc == 1 ? "" : "es", o.node_rank * o.nproc,
               o.node_rank * o.nproc + o.nproc - 1, world, o.master_addr.c_str(), port);
  std::fflush(log);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  std::vector<Child> children(static_cast<size_t>(o.nproc));
  for (int i = 0; i < o.nproc; ++i) {
    Child& c = children[static_cast<size_t>(i)];
    c.rank = o.node_rank * o.nproc + i;
    const std::vector<int> cpus = child_cpus(topo, i, o.nproc);
    std::vector<std::pair<std::string, std::string>> env = {
        {"RANK", std::to_string(c.rank)},  {"WORLD_SIZE", std::to_string(world)},
        {"LOCAL_RANK", std::to_string(i)}, {"LOCAL_WORLD_SIZE", std::to_string(o.nproc)},
        {"MASTER_ADDR", o.master_addr},    {"MASTER_PORT", std::to_string(port)},
        {"RAMSTREAM_AGENT_STORE", "1"},
    };
    if (std::getenv("RAMSTREAM_DIST_TIMEOUT_S") == nullptr) {
      env.emplace_back("RAMSTREAM_DIST_TIMEOUT_S", std::to_string(static_cast<int>(o.timeout_s)));
    }
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      std::fprintf(log, "ramstream launch: fork failed: %s\n", std::strerror(errno));
      for (Child& started : children) {
        if (started.running) kill(started.pid, SIGTERM);
      }
      return 1;
    }
    if (pid == 0) {
      sigaction(SIGINT, &old_int, nullptr);
      sigaction(SIGTERM, &old_term, nullptr);
      for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
      // OMP_NUM_THREADS that this launcher's own start-up defaults set (util/runtime_defaults.h)
      // counted all its CPUs: let the child count its share instead. A user's setting stays.
      const char* defaults = std::getenv("RAMSTREAM_RUNTIME_DEFAULTS");
      if (defaults != nullptr && std::string(defaults) == "threads") {
        unsetenv("OMP_NUM_THREADS");
        unsetenv("RAMSTREAM_RUNTIME_DEFAULTS");
      }
      if (!cpus.empty()) {
        cpu_set_t mask;
        CPU_ZERO(&mask);
        for (int cpu : cpus) CPU_SET(cpu, &mask);
        sched_setaffinity(0, sizeof mask, &mask);
      }
      std::vector<char*> argv;
      for (const std::string& a : o.program) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      std::fprintf(stderr, "ramstream launch: rank %d: cannot run %s: %s\n", c.rank, argv[0],
                   std::strerror(errno));
      _exit(127);
    }
    c.pid = pid;
    c.running = true;
  }
  std::string pids;
  for (const Child& c : children) {
    pids += (pids.empty() ? "" : ", ") + ("rank " + std::to_string(c.rank)) + " pid " +
            std::to_string(c.pid);
  }
  std::fprintf(log, "ramstream launch: started %s\n", pids.c_str());
  std::fflush(log);

  using Clock = std::chrono::steady_clock;
  int first_failure = -1;  // index into children
  Clock::time_point failed_at{}, terminated_at{};
  bool terminated = false, killed = false;
  int forwarded = 0;
  for (;;) {
    if (g_forward_signal != 0 && g_forward_signal != forwarded) {
      forwarded = g_forward_signal;
      std::fprintf(log, "ramstream launch: passing %s on to every rank\n", strsignal(forwarded));
      for (Child& c : children) {
        if (c.running) kill(c.pid, forwarded);
      }
    }
    int status = 0;
    struct rusage usage {};
    const pid_t pid = wait4(-1, &status, WNOHANG, &usage);
    if (pid > 0) {
      for (size_t i = 0; i < children.size(); ++i) {
        Child& c = children[i];
        if (c.pid != pid) continue;
        c.running = false;
        c.status = status;
        c.peak_rss_kib = usage.ru_maxrss;
        const bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (failed && first_failure < 0 && !terminated) {
          first_failure = static_cast<int>(i);
          failed_at = Clock::now();
          std::fprintf(log,
                       "ramstream launch: rank %d (pid %d) %s; the other ranks get %.0f s to "
                       "stop on their own\n",
                       c.rank, static_cast<int>(pid), describe_status(status).c_str(), o.grace_s);
          std::fflush(log);
        }
      }
      continue;
    }
    bool any = false;
    for (const Child& c : children) any = any || c.running;
    if (!any) break;
    const auto now = Clock::now();
    if (first_failure >= 0 && !terminated &&
        std::chrono::duration<double>(now - failed_at).count() > o.grace_s) {
      std::fprintf(log, "ramstream launch: stopping the ranks still running (SIGTERM)\n");
      for (Child& c : children) {
        if (c.running) kill(c.pid, SIGTERM);
      }
      terminated = true;
      terminated_at = now;
    }
    if (terminated && !killed && std::chrono::duration<double>(now - terminated_at).count() > 10) {
      for (Child& c : children) {
        if (c.running) kill(c.pid, SIGKILL);
      }
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  std::string rss;
  for (const Child& c : children) {
    char one[64];
    std::snprintf(one, sizeof one, "%s%d %.2f", rss.empty() ? "" : ", ", c.rank,
                  double(c.peak_rss_kib) / (1 << 20));
    rss += one;
  }
  std::fprintf(log, "ramstream launch: peak RSS per rank (GiB): %s\n", rss.c_str());

  if (first_failure >= 0) return exit_code_of(children[static_cast<size_t>(first_failure)].status);
  for (const Child& c : children) {
    if (exit_code_of(c.status) != 0) return exit_code_of(c.status);
  }
  return 0;
}

}  // namespace ramstream::dist
