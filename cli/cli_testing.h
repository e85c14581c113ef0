// Runs the `ramstream` binary as a child process under hard limits, for the robustness tests that
// feed it generated malformed inputs: the child gets an address-space cap and a wall-clock limit,
// and the result says how it ended (exit code, signal, killed for time), with its output.
//
//   CliRun r = run_cli({"inspect", "--model", dir});
//   EXPECT_TRUE(r.clean_failure()) << r.describe();   // exit != 0, no signal, within the limits
//   EXPECT_NE(r.err.find(dir + "/config.json"), std::string::npos) << r.describe();
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace ramstream::cli::testing {

struct CliLimits {
  double seconds = 30;                            // wall clock; the child is killed after it
  unsigned long long address_space = 6ull << 30;  // RLIMIT_AS (libtorch maps ~1 GiB at start)
  size_t max_output = 1 << 20;                    // bytes of stdout/stderr kept (the rest counted)
  // Once stdout contains `signal_after` (when not empty), each of `signals` is sent to the child,
  // in order (e.g. SIGINT mid-run, once a step was logged).
  std::string signal_after;
  std::vector<int> signals;
};

struct CliRun {
  std::vector<std::string> args;
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal ended it (SIGKILL after the time limit too)
  bool timed_out = false;
  double seconds = 0;
  std::string out, err;                 // first max_output bytes of each
  size_t out_bytes = 0, err_bytes = 0;  // total bytes written

  bool exited() const { return signal == 0 && !timed_out; }
  // What every malformed input must give: a non-zero exit of its own, no signal, in time.
  bool clean_failure() const { return exited() && exit_code != 0; }
  std::string describe() const {
    std::string s = "ramstream";
    for (const std::string& a : args) s += " " + a;
    s += "\n  -> ";
    if (timed_out)
      s += "killed after the time limit";
    else if (signal != 0)
      s += std::string("signal ") + strsignal(signal);
    else
      s += "exit " + std::to_string(exit_code);
    s += " in " + std::to_string(seconds) + " s, stderr (" + std::to_string(err_bytes) +
         " bytes): " + err.substr(0, 2000);
    return s;
  }
};

// The binary under test: $RAMSTREAM_BIN, else the `ramstream` next to the test binary (both are
// in build/bin).
inline std::string cli_binary() {
  if (const char* bin = std::getenv("RAMSTREAM_BIN")) return bin;
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "ramstream";
  std::string dir(self, size_t(n));
  return dir.substr(0, dir.rfind('/')) + "/ramstream";
}

inline CliRun run_cli(const std::vector<std::string>& args, const CliLimits& limits = {},
                      const std::string& working_dir = "") {
  CliRun r;
  r.args = args;
  int out_pipe[2], err_pipe[2];
  if (::pipe(out_pipe) != 0 || ::pipe(err_pipe) != 0) {
    r.err = "pipe failed";
    return r;
  }
  const std::string bin = cli_binary();
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    struct rlimit as {
      limits.address_space, limits.address_space
    };
    ::setrlimit(RLIMIT_AS, &as);
    struct rlimit core {
      0, 0
    };
    ::setrlimit(RLIMIT_CORE, &core);
    if (!working_dir.empty() && ::chdir(working_dir.c_str()) != 0) ::_exit(126);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(bin.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  size_t* counts[2] = {&r.out_bytes, &r.err_bytes};
  int open_fds = 2;
  bool signalled = false;
  char buf[1 << 15];
  while (open_fds > 0) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed > limits.seconds) {
      ::kill(pid, SIGKILL);
      r.timed_out = true;
      break;
    }
    if (::poll(fds, 2, 100) < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
        continue;
      }
      *counts[i] += size_t(n);
      if (sinks[i]->size() < limits.max_output) {
        sinks[i]->append(buf, std::min(size_t(n), limits.max_output - sinks[i]->size()));
      }
      if (!signalled && !limits.signal_after.empty() &&
          r.out.find(limits.signal_after) != std::string::npos) {
        signalled = true;
        for (int sig : limits.signals) ::kill(pid, sig);
      }
    }
  }
  for (struct pollfd& f : fds) {
    if (f.fd >= 0) ::close(f.fd);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  if (r.timed_out) r.signal = 0;
  return r;
}

}  // namespace ramstream::cli::testing
