// CUDA kernels for the KV-cache formats of kv_quant.h (the CPU functions there are their
// reference): quantise key groups and value tokens, and decode attention straight over the packed
// codes with GQA, batched over (sequence, KV head) views. flashinfer style: device pointers and a
// stream in, cudaError_t out; no libtorch. Views live in device memory and point at device
// memory: the page tables of their PagedRecords too (full-precision windows are fp32).
//
//   kv_quantize_key_groups_cuda(d_k, n_groups, {D, G, bits, outliers}, d_records, stream);
//   kv_decode_attention_cuda(d_views, n_views, max_tokens, d_q, Hq * D, Hq, scale, d_out, Hq * D,
//                            stream);
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/kv_quant.h"

namespace ramstream::kernels {

// k: n_groups * G rows of D floats (group g = rows g*G .. g*G+G-1) -> n_groups key group
// records of kv_quant.h in `layout`, one after another (a page's worth).
cudaError_t kv_quantize_key_groups_cuda(const float* k, int64_t n_groups, KeyGroupLayout layout,
                                        uint8_t* records, cudaStream_t stream);
// v: n rows of D floats -> n value token records, one after another.
cudaError_t kv_quantize_value_tokens_cuda(const float* v, int64_t n, int D, int G, int bits,
                                          QuantFit fit, uint8_t* records, cudaStream_t stream);
// ops [n_ops] and src in device memory: one thread block per op copies its bytes as 4-byte words
// (kv_quant.h's KvCopyOp); the CPU reference is kv_scatter.
cudaError_t kv_scatter_cuda(const uint8_t* src, const KvCopyOp* ops, int64_t n_ops,
                            cudaStream_t stream);
// One thread block per view; max_tokens >= every view's tokens() (shared memory holds Hq x
// max_tokens logits: Hq * max_tokens * 4 bytes must fit, e.g. 3 x 8192).
cudaError_t kv_decode_attention_cuda(const KvHeadView* views, int64_t n_views, int64_t max_tokens,
                                     const float* q, int64_t q_stride, int Hq, float scale,
                                     float* out, int64_t out_stride, cudaStream_t stream);

}  // namespace ramstream::kernels
