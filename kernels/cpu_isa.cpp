#include "kernels/cpu_isa.h"

#include <atomic>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <stdexcept>
#include <string>

#include "kernels/parallel.h"

namespace ramstream::kernels {
namespace {

Isa detect() {
#if RAMSTREAM_KERNELS_X86
  // libgcc sets these only when the OS also saves the YMM state (XGETBV), so true means usable.
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2Fma;
#endif
  return Isa::kScalar;
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> isa{best_isa()};
  return isa;
}

}  // namespace

Isa best_isa() {
  static const Isa best = detect();
  return best;
}

Isa kernel_isa() {
  return current().load(std::memory_order_relaxed);
}

void set_kernel_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa())) {
    throw std::invalid_argument(std::string("set_kernel_isa: this CPU or build lacks ") +
                                isa_name(isa) + " (best is " + isa_name(best_isa()) + ")");
  }
  current().store(isa, std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2Fma:
      return "avx2+fma";
  }
  return "unknown";
}

namespace {

// CPUID leaf 7, sub-leaf `sub`: {eax, ebx, ecx, edx}, all zero when the leaf is missing.
struct Leaf7 {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};
Leaf7 cpuid7(unsigned sub) {
  Leaf7 r;
#if RAMSTREAM_KERNELS_X86
  if (__get_cpuid_count(7, sub, &r.eax, &r.ebx, &r.ecx, &r.edx) == 0) r = Leaf7{};
#else
  (void)sub;
#endif
  return r;
}

}  // namespace

bool cpu_has_avx512_bf16() {
  static const bool has = (cpuid7(1).eax >> 5) & 1u;  // CPUID.(7,1):EAX[5]
  return has;
}

namespace {

std::atomic<bool>& avx512_on() {
#if RAMSTREAM_KERNELS_X86
  static std::atomic<bool> on{__builtin_cpu_supports("avx512f") != 0};
#else
  static std::atomic<bool> on{false};
#endif
  return on;
}

}  // namespace

bool kernel_avx512() {
  return avx512_on().load(std::memory_order_relaxed);
}

void set_kernel_avx512(bool on) {
#if RAMSTREAM_KERNELS_X86
  avx512_on().store(on && __builtin_cpu_supports("avx512f"), std::memory_order_relaxed);
#else
  (void)on;
#endif
}

bool cpu_has_amx_bf16() {
  static const bool has = (cpuid7(0).edx >> 22) & 1u;  // CPUID.(7,0):EDX[22]
  return has;
}

}  // namespace ramstream::kernels
