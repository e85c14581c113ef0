// Positions of tokens in their documents, for rows that pack several documents: every document
// sees only itself (block-causal attention) and starts at RoPE position 0, so a packed row trains
// exactly like its documents run one by one.
//
// positions [B,T] int64: positions[b][t] is token t's place in its document: 0 where a document
// starts (always at t = 0), else positions[b][t-1] + 1. Query t of row b sees keys
// start..t with start = t - positions[b][t].
//
//   TokenPositions tp = make_token_positions(positions, device);  // validated on the host
//   block_forward(y, acts, scratch, params, x, rope, cfg, tp);    // rope_*, attention_* take it
//   too
//   // TokenPositions{} (or positions 0..T-1 in every row): plain causal attention, the fast path.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace ramstream::autograd {

// What the host finds in positions [B,T]: the documents of all rows laid end to end (row 0 first),
// in the form of the variable-length attention kernels (cumulative sequence lengths).
struct DocumentBounds {
  std::vector<int32_t> cu_seqlens;  // [S+1]: where each of the S documents starts in the B*T
                                    // tokens, then B*T
  int64_t max_seqlen = 0;           // the longest document
  bool packed = false;              // false: every row is one document, positions 0..T-1
};

// Throws c10::Error naming the row and token of the first position that is neither 0 nor the
// previous position + 1 (every row must start at 0). `positions` points at B*T int64 values.
DocumentBounds find_documents(const int64_t* positions, int64_t B, int64_t T);
// The same for a [B,T] int64 tensor on any device (read to the host).
DocumentBounds find_documents(const at::Tensor& positions);

// The per-token positions as the ops use them, on the compute device.
struct TokenPositions {
  at::Tensor pos;         // [B,T] int64; undefined: not packed (positions 0..T-1 in every row)
  at::Tensor cu_seqlens;  // [S+1] int32, DocumentBounds::cu_seqlens
  int64_t max_seqlen = 0;
  bool packed() const { return pos.defined(); }
};

// Validates `positions` ([B,T] int64, any device; undefined means not packed) and puts what the
// ops need on `device`. Rows that are all one document give TokenPositions{}.
TokenPositions make_token_positions(const at::Tensor& positions, at::Device device);

}  // namespace ramstream::autograd
