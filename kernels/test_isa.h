// Test helper: run a check under every instruction set the kernels can dispatch to here.
//
//   for_each_isa([&](Isa isa) { SCOPED_TRACE(isa_name(isa)); ...kernel calls... });
#pragma once

#include <vector>

#include "kernels/cpu_isa.h"

namespace ramstream::kernels {

inline std::vector<Isa> testable_isas() {
  std::vector<Isa> isas{Isa::kScalar};
  if (best_isa() == Isa::kAvx2Fma) isas.push_back(Isa::kAvx2Fma);
  return isas;
}

// Runs fn(isa) with the kernels forced to each ISA, restoring the default afterwards even when
// fn throws (a failed ASSERT returns normally).
template <class F>
void for_each_isa(const F& fn) {
  struct Restore {
    ~Restore() { set_kernel_isa(best_isa()); }
  } restore;
  for (Isa isa : testable_isas()) {
    set_kernel_isa(isa);
    fn(isa);
  }
}

}  // namespace ramstream::kernels
