// Process-wide threading defaults for ramstream's executables (the first line of their main()),
// and a check of the BLAS kernel choice for the start-up table.
//
// Debian's libtorch runs ATen and oneDNN on OpenMP (libgomp), which reads its environment once,
// when it is loaded, before main(). Left alone on these machines ATen gets one OpenMP thread
// (at::get_num_threads() == 1 on the 2-core VMs), and when told more, idle workers spin for up to
// ~300k iterations after every parallel region, taking the cores from the BLAS threads, the TBB
// loops and the optimizer that run next.
// Measured on SmolLM2-135M (2 vCPUs, AMD EPYC with AVX-512): the fp32 step at 87 tokens/s with
// OMP_NUM_THREADS=2 spinning, 153 passive; bf16 226 with one OpenMP thread, 317 with two passive.
// So, unless the user set them, the process re-executes itself once with
//   OMP_NUM_THREADS = the CPUs it may run on (sched_getaffinity: taskset and cgroups count)
//   OMP_WAIT_POLICY = passive (idle workers sleep at once)
// which costs one more exec (~0.1 s) at start-up. Later is too late, and an ELF pre-initialiser
// runs before libc has its environment. OpenBLAS reads OMP_NUM_THREADS too and already defaulted
// to every CPU.
//
//   int main(int argc, char** argv) {
//     ramstream::apply_runtime_defaults(argv);   // may not return: re-executes the binary
//     ...
//   OMP_NUM_THREADS=1 ramstream run ...           # the user's setting wins
//   taskset -c 0 ramstream run ...                # 1 thread: the affinity mask counts
#pragma once

#include <string>

namespace ramstream {

// Re-executes /proc/self/exe with the defaults added when one is missing; returns (changing
// nothing in this process's libraries) when none is, after one re-execution, or when the exec
// fails.
void apply_runtime_defaults(char** argv);

// A warning for the start-up table when OPENBLAS_CORETYPE pins OpenBLAS to kernels without
// AVX-512 on a CPU that has AVX-512 F/BW/DQ/VL, else "". Some machine images set it (this
// project's VMs export OPENBLAS_CORETYPE=Haswell): there fp32 GEMMs ran at 230 GFLOP/s against 430
// with the variable unset, and the SmolLM2-135M fp32 step at 165 against 260 tokens/s. The
// setting is the user's, so it is kept, and named.
std::string openblas_core_warning();

}  // namespace ramstream
