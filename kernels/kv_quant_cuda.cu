#include "kernels/kv_quant_cuda.cuh"

#include <cuda_fp16.h>

#include <cfloat>

namespace ramstream::kernels {
namespace {

__device__ float h2f(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}
__device__ uint16_t f2h(float f) {
  return __half_as_ushort(__float2half_rn(f));
}

__device__ QuantParams params_of(float lo, float hi, int bits) {
  QuantParams p;
  p.min = f2h(lo);
  p.scale = f2h((hi - lo) / float((1 << bits) - 1));
  return p;
}

__device__ uint32_t code_of(float x, float scale, float mn, int bits) {
  if (!(scale > 0.0f)) return 0;
  const float q = rintf((x - mn) / scale);
  return static_cast<uint32_t>(fminf(float((1 << bits) - 1), fmaxf(0.0f, q)));
}

__device__ float coded_error(const float* x, int n, QuantParams p, int bits) {
  const float s = h2f(p.scale), mn = h2f(p.min);
  float e = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float d = float(code_of(x[i], s, mn, bits)) * s + mn - x[i];
    e += d * d;
  }
  return e;
}

// kv_quant.cpp's fit_params for QuantFit::kMse, the same operations in the same order (this
// file builds with -fmad=false, so nothing is contracted): the CPU's params bit for bit.
__device__ QuantParams mse_params(const float* x, int n, float lo, float hi, int bits,
                                  QuantParams best) {
  float best_err = coded_error(x, n, best, bits);
  const float levels = float((1 << bits) - 1);
  for (int step = 0; step <= kMseFitSteps; ++step) {
    const float iscale = (levels - 1.0f + 2.0f * float(step) / float(kMseFitSteps)) / (hi - lo);
    float sq = 0.0f, sqq = 0.0f, sx = 0.0f, sqx = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float q = float(int(fminf(levels, iscale * (x[i] - lo)) + 0.5f));
      sq += q;
      sqq += q * q;
      sx += x[i];
      sqx += q * x[i];
    }
    const float det = float(n) * sqq - sq * sq;
    if (!(det > 0.0f)) continue;
    const float scale = (float(n) * sqx - sq * sx) / det;
    if (!(scale > 0.0f)) continue;
    QuantParams p;
    p.scale = f2h(scale);
    p.min = f2h((sx - scale * sq) / float(n));
    const float err = coded_error(x, n, p, bits);
    if (err < best_err) {
      best_err = err;
      best = p;
    }
  }
  return best;
}

// One thread per (group, channel): kv_quant.cpp's quantize_key_group for that channel, the same
// operations in the same order.
__global__ void quantize_keys(const float* k, int64_t n_groups, KeyGroupLayout l,
                              uint8_t* records) {
  const int D = l.D, G = l.G, bits = l.bits, n = l.outliers;
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n_groups * D) return;
  const int64_t g = i / D;
  const int d = static_cast<int>(i % D);
  const float* x = k + g * G * D + d;
  uint8_t* rec = records + g * l.bytes();
  uint8_t* slots = const_cast<uint8_t*>(l.slots(rec, d));
  uint32_t taken[256 / 32] = {};  // bit j: slot j is an outlier
  if (n > 0) {
    float mean = 0.0f;
    for (int j = 0; j < G; ++j) mean += x[j * D];
    mean /= float(G);
    for (int e = 0; e < n; ++e) {
      int far = -1;
      float far_dist = -1.0f;
      for (int j = 0; j < G; ++j) {
        const float dist = fabsf(x[j * D] - mean);
        if (!(taken[j / 32] >> (j % 32) & 1u) && dist > far_dist) {
          far = j;
          far_dist = dist;
        }
      }
      taken[far / 32] |= 1u << (far % 32);
      slots[e] = static_cast<uint8_t>(far);
    }
  }
  float lo = __int_as_float(0x7f800000), hi = -lo;
  for (int j = 0; j < G; ++j) {
    if (taken[j / 32] >> (j % 32) & 1u) continue;
    lo = fminf(lo, x[j * D]);
    hi = fmaxf(hi, x[j * D]);
  }
  const QuantParams p = params_of(lo, hi, bits);
  const int per = 32 / bits, words = G * bits / 32;
  const_cast<QuantParams*>(l.params(rec))[d] = p;
  const float s = h2f(p.scale), mn = h2f(p.min);
  uint32_t* out = record_codes(rec) + int64_t{d} * words;
  for (int w = 0; w < words; ++w) {
    uint32_t v = 0;
    for (int c = 0; c < per; ++c) v |= code_of(x[(w * per + c) * D], s, mn, bits) << (c * bits);
    out[w] = v;
  }
  uint16_t* deltas = const_cast<uint16_t*>(l.deltas(rec, d));
  for (int e = 0; e < n; ++e) {
    const float v = x[slots[e] * D];
    const float r = v - (float(code_of(v, s, mn, bits)) * s + mn);
    deltas[e] = f2h(fminf(65504.0f, fmaxf(-65504.0f, r)));
  }
}

// One thread per (token, group of G channels).
__global__ void quantize_values(const float* v, int64_t n, int D, int G, int bits, QuantFit fit,
                                uint8_t* records) {
  const int ng = D / G;
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n * ng) return;
  const int64_t t = i / ng;
  const int g = static_cast<int>(i % ng);
  const float* x = v + t * D + g * G;
  float lo = x[0], hi = x[0];
  for (int j = 1; j < G; ++j) {
    lo = fminf(lo, x[j]);
    hi = fmaxf(hi, x[j]);
  }
  QuantParams p = params_of(lo, hi, bits);
  if (fit == QuantFit::kMse && hi > lo) p = mse_params(x, G, lo, hi, bits, p);
  uint8_t* rec = records + t * value_token_record_bytes(D, G, bits);
  record_params(rec, value_token_words(D, bits))[g] = p;
  const float s = h2f(p.scale), mn = h2f(p.min);
  const int per = 32 / bits;
  uint32_t* out = record_codes(rec) + int64_t{g} * G * bits / 32;
  for (int w = 0; w < G / per; ++w) {
    uint32_t word = 0;
    for (int c = 0; c < per; ++c) word |= code_of(x[w * per + c], s, mn, bits) << (c * bits);
    out[w] = word;
  }
}

__device__ float code_at(const uint32_t* words, int i, int bits) {
  const int per = 32 / bits;
  return float((words[i / per] >> ((i % per) * bits)) & ((1u << bits) - 1));
}

__device__ float block_reduce(float v, bool is_max, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_down_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, other) : v + other;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  float r = is_max ? -FLT_MAX : 0.0f;
  for (int w = 0; w < warps; ++w) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
  return r;
}

// One block per view: logits of every token (threads over tokens), one softmax per query head,
// then the output (threads over channels, looping over tokens).
__global__ void decode_attention(const KvHeadView* views, const float* q, int64_t q_stride, int Hq,
                                 float scale, float* out, int64_t out_stride) {
  extern __shared__ float logits[];  // [Hq][N]
  __shared__ float scratch[32];
  const KvHeadView kv = views[blockIdx.x];
  const int D = kv.D, G = kv.G, b = kv.bits;
  const int64_t S = kv.n_sink, NQ = kv.n_key_groups * G, N = S + NQ + kv.n_key_window;
  const float* qv = q + blockIdx.x * q_stride;
  const int kwords = G * b / 32;
  for (int64_t t = threadIdx.x; t < N; t += blockDim.x) {
    for (int h = 0; h < Hq; ++h) {
      float s = 0.0f;
      if (t < S) {
        const float* k = kv.sink_keys.row(t);
        for (int d = 0; d < D; ++d) s += qv[h * D + d] * k[d];
      } else if (t < S + NQ) {
        const int64_t g = (t - S) / G;
        const int j = static_cast<int>((t - S) % G);
        const uint8_t* rec = kv.key_groups.at(g);
        const uint32_t* codes = record_codes(rec);
        const QuantParams* p = record_params(rec, int64_t{D} * kwords);
        for (int d = 0; d < D; ++d) {
          s +=
              qv[h * D + d] * (code_at(codes + d * kwords, j, b) * h2f(p[d].scale) + h2f(p[d].min));
        }
        const KeyGroupLayout kl = kv.key_layout();
        for (int d = 0; kl.outliers > 0 && d < D; ++d) {
          for (int e = 0; e < kl.outliers; ++e) {
            if (kl.slots(rec, d)[e] == j) s += qv[h * D + d] * h2f(kl.deltas(rec, d)[e]);
          }
        }
      } else {
        const float* k = kv.key_window.row(t - S - NQ);
        for (int d = 0; d < D; ++d) s += qv[h * D + d] * k[d];
      }
      const bool live = kv.alive == nullptr || kv.alive[t];
      logits[h * N + t] = live ? s * scale : -FLT_MAX;
    }
  }
  __syncthreads();
  for (int h = 0; h < Hq; ++h) {
    float m = -FLT_MAX;
    for (int64_t t = threadIdx.x; t < N; t += blockDim.x) m = fmaxf(m, logits[h * N + t]);
    m = block_reduce(m, true, scratch);
    float sum = 0.0f;
    for (int64_t t = threadIdx.x; t < N; t += blockDim.x) {
      const float l = logits[h * N + t];
      const float e = l == -FLT_MAX ? 0.0f : __expf(l - m);
      logits[h * N + t] = e;
      sum += e;
    }
    sum = block_reduce(sum, false, scratch);
    const float inv = sum > 0 ? 1.0f / sum : 0.0f;
    __syncthreads();
    for (int64_t t = threadIdx.x; t < N; t += blockDim.x) logits[h * N + t] *= inv;
  }
  __syncthreads();
  const int vwords = D * b / 32;
  float* o = out + blockIdx.x * out_stride;
  for (int i = threadIdx.x; i < Hq * D; i += blockDim.x) {
    const int h = i / D, d = i % D;
    float acc = 0.0f;
    for (int64_t t = 0; t < S; ++t) acc += logits[h * N + t] * kv.sink_values.row(t)[d];
    for (int64_t t = 0; t < kv.n_value_quant; ++t) {
      const uint8_t* rec = kv.value_tokens.at(t);
      const QuantParams p = record_params(rec, vwords)[d / G];
      acc += logits[h * N + S + t] * (code_at(record_codes(rec), d, b) * h2f(p.scale) + h2f(p.min));
    }
    for (int64_t t = 0; t < kv.n_value_window; ++t) {
      acc += logits[h * N + S + kv.n_value_quant + t] * kv.value_window.row(t)[d];
    }
    o[i] = acc;
  }
}

__global__ void scatter(const uint8_t* src, const KvCopyOp* ops) {
  const KvCopyOp op = ops[blockIdx.x];
  const uint32_t* from = reinterpret_cast<const uint32_t*>(src + op.src_offset);
  uint32_t* to = reinterpret_cast<uint32_t*>(op.dst);
  for (int64_t i = threadIdx.x; i < op.bytes / 4; i += blockDim.x) to[i] = from[i];
}

}  // namespace

cudaError_t kv_scatter_cuda(const uint8_t* src, const KvCopyOp* ops, int64_t n_ops,
                            cudaStream_t stream) {
  if (n_ops == 0) return cudaSuccess;
  if (n_ops > 0x7FFFFFFF) return cudaErrorInvalidValue;
  scatter<<<static_cast<unsigned>(n_ops), 128, 0, stream>>>(src, ops);
  return cudaGetLastError();
}

cudaError_t kv_quantize_key_groups_cuda(const float* k, int64_t n_groups, KeyGroupLayout layout,
                                        uint8_t* records, cudaStream_t stream) {
  if (!check_key_group_layout(layout).empty()) return cudaErrorInvalidValue;
  const int64_t n = n_groups * layout.D;
  if (n == 0) return cudaSuccess;
  quantize_keys<<<static_cast<unsigned>((n + 127) / 128), 128, 0, stream>>>(k, n_groups, layout,
                                                                            records);
  return cudaGetLastError();
}

cudaError_t kv_quantize_value_tokens_cuda(const float* v, int64_t n, int D, int G, int bits,
                                          QuantFit fit, uint8_t* records, cudaStream_t stream) {
  if (!check_kv_quant_shape(D, G, bits).empty()) return cudaErrorInvalidValue;
  const int64_t threads = n * (D / G);
  if (threads == 0) return cudaSuccess;
  quantize_values<<<static_cast<unsigned>((threads + 127) / 128), 128, 0, stream>>>(
      v, n, D, G, bits, fit, records);
  return cudaGetLastError();
}

cudaError_t kv_decode_attention_cuda(const KvHeadView* views, int64_t n_views, int64_t max_tokens,
                                     const float* q, int64_t q_stride, int Hq, float scale,
                                     float* out, int64_t out_stride, cudaStream_t stream) {
  if (n_views == 0) return cudaSuccess;
  const size_t shared = static_cast<size_t>(Hq) * static_cast<size_t>(max_tokens) * sizeof(float);
  if (shared > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(
        decode_attention, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
    if (e != cudaSuccess) return e;
  }
  decode_attention<<<static_cast<unsigned>(n_views), 256, shared, stream>>>(views, q, q_stride, Hq,
                                                                            scale, out, out_stride);
  return cudaGetLastError();
}

}  // namespace ramstream::kernels
