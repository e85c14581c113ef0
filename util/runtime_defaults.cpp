#include "util/runtime_defaults.h"

#include <dlfcn.h>
#include <sched.h>
#include <strings.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

namespace ramstream {
namespace {

// Set in the re-executed process, so that it never re-executes again.
constexpr const char* kMarker = "RAMSTREAM_RUNTIME_DEFAULTS";

bool cpu_has_avx512_core() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

// The kernel family the loaded OpenBLAS picked ("Haswell", "Zen", "SkylakeX", ...), or nullptr
// when the BLAS is not OpenBLAS.
const char* openblas_core() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return fn != nullptr ? fn() : nullptr;
}

}  // namespace

void apply_runtime_defaults(char** argv) {
  if (std::getenv(kMarker) != nullptr) return;
  bool changed = false, threads = false;
  if (std::getenv("OMP_NUM_THREADS") == nullptr) {
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask) == 0) {
      char value[16];
      std::snprintf(value, sizeof value, "%d", CPU_COUNT(&mask));
      threads = setenv("OMP_NUM_THREADS", value, 1) == 0;
      changed |= threads;
    }
  }
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    changed |= setenv("OMP_WAIT_POLICY", "passive", 1) == 0;
  }
  if (!changed) return;
  // "threads": OMP_NUM_THREADS is ours, so a child process on fewer CPUs may set its own
  // (dist/launch.cpp).
  setenv(kMarker, threads ? "threads" : "1", 1);
  execv("/proc/self/exe", argv);
  // Still here: no /proc, or the binary is gone. Run on as started (the variables set above only
  // reach child processes).
}

std::string openblas_core_warning() {
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  if (forced == nullptr || !cpu_has_avx512_core()) return "";
  const char* core = openblas_core();
  if (core == nullptr) return "";
  for (const char* avx512 : {"skylakex", "cooperlake", "sapphirerapids"}) {
    if (strcasecmp(core, avx512) == 0) return "";
  }
  return std::string("OPENBLAS_CORETYPE=") + forced + " in the environment runs OpenBLAS's " +
         core +
         " kernels (no AVX-512) on this AVX-512 CPU: fp32 GEMMs run at about half the "
         "speed; unset it to let OpenBLAS choose";
}

}  // namespace ramstream
