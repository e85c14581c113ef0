// The one place where differences between libtorch 1.13 (Debian, CPU) and 2.x (CUDA) live.
//
//   #include "util/torch_compat.h"
//   #if RAMSTREAM_TORCH_HAS_SDPA ... #endif
#pragma once

#include <torch/csrc/api/include/torch/version.h>

#define RAMSTREAM_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||            \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// Fused scaled-dot-product attention (flash / memory-efficient kernels) arrived in 2.0.
#define RAMSTREAM_TORCH_HAS_SDPA RAMSTREAM_TORCH_AT_LEAST(2, 0)

// c10::Allocator::allocate lost its `const` in 2.3, which also made copy_data pure virtual.
#if RAMSTREAM_TORCH_AT_LEAST(2, 3)
#define RAMSTREAM_ALLOCATE_CONST
#define RAMSTREAM_ALLOCATOR_COPY_DATA                                             \
  void copy_data(void* dest, const void* src, std::size_t count) const override { \
    default_copy_data(dest, src, count);                                          \
  }
#else
#define RAMSTREAM_ALLOCATE_CONST const
#define RAMSTREAM_ALLOCATOR_COPY_DATA
#endif

// at::_scaled_dot_product_flash_attention{,_backward} with the `scale` argument and the
// (out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset, ...) result
// used by autograd/ops_composite.cpp: 2.1 and later, CUDA builds.
#if RAMSTREAM_TORCH_AT_LEAST(2, 1) && defined(RAMSTREAM_WITH_CUDA)
#define RAMSTREAM_TORCH_HAS_FLASH_SDPA 1
#else
#define RAMSTREAM_TORCH_HAS_FLASH_SDPA 0
#endif
