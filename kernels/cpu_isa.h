// Run-time choice of the instruction set used by the CPU kernels.
//
// The project is compiled for baseline x86-64 (SSE2 only, no -march=native), so every kernel here
// has a portable scalar version and an AVX2+FMA version compiled with a function target
// attribute; the first kernel call picks the best one the CPU supports. Both versions produce the
// same bits (the scalar one places its FMAs with std::fma where the vector one uses vfmadd), so
// the choice changes speed, never results. Tests and benchmarks may force the scalar path:
//
//   set_kernel_isa(Isa::kScalar);   // e.g. to compare against the AVX2 path
//   set_kernel_isa(best_isa());     // back to the default
//
// A few kernels also have an AVX-512F variant of their AVX2 version that gives the same bits
// (kernel_avx512 below); it is chosen the same way, at run time.
#pragma once

namespace ramstream::kernels {

enum class Isa { kScalar, kAvx2Fma };

// The best instruction set this CPU and build support.
Isa best_isa();
// The instruction set the kernels use now (best_isa() unless set_kernel_isa changed it).
Isa kernel_isa();
// Throws std::invalid_argument when `isa` is beyond best_isa(). Not meant to race with running
// kernels: a kernel reads the choice once per call.
void set_kernel_isa(Isa isa);
const char* isa_name(Isa isa);

// CPUID feature bits of the bf16 matrix instructions (false off x86): AVX512-BF16 (vdpbf16ps) and
// AMX-BF16 (tile dot products). They say what the CPU has, not which kernels use it.
bool cpu_has_avx512_bf16();
bool cpu_has_amx_bf16();

// Kernels with an AVX-512 variant (gemm_rows) use it when kernel_isa() is kAvx2Fma, the CPU and
// OS have AVX-512F, and this is on (the default); each such variant gives the AVX2 variant's bits.
// Tests turn it off to compare the two. Same threading caveat as set_kernel_isa.
bool kernel_avx512();
void set_kernel_avx512(bool on);

}  // namespace ramstream::kernels
