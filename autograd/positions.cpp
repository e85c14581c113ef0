#include "autograd/positions.h"

#include <algorithm>
#include <limits>

namespace ramstream::autograd {

DocumentBounds find_documents(const int64_t* positions, int64_t B, int64_t T) {
  TORCH_CHECK(B >= 0 && T >= 0 && B * T <= std::numeric_limits<int32_t>::max(), "position ids: ", B,
              " x ", T, " tokens do not fit the int32 document offsets");
  DocumentBounds d;
  int64_t start = 0;  // of the current document, in the B*T tokens
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t;
      const int64_t p = positions[i];
      if (p == 0) {
        if (i > start) {
          d.cu_seqlens.push_back(static_cast<int32_t>(start));
          d.max_seqlen = std::max(d.max_seqlen, i - start);
        }
        start = i;
        continue;
      }
      TORCH_CHECK(t > 0, "position ids: row ", b, " starts at position ", p,
                  "; every row must start a document (position 0)");
      TORCH_CHECK(p == positions[i - 1] + 1, "position ids: row ", b, ", token ", t,
                  " has position ", p, " after ", positions[i - 1],
                  "; expected 0 (a new document) or ", positions[i - 1] + 1);
    }
  }
  if (B * T > start) {
    d.cu_seqlens.push_back(static_cast<int32_t>(start));
    d.max_seqlen = std::max(d.max_seqlen, B * T - start);
  }
  d.cu_seqlens.push_back(static_cast<int32_t>(B * T));
  d.packed = static_cast<int64_t>(d.cu_seqlens.size()) - 1 != B;
  return d;
}

DocumentBounds find_documents(const at::Tensor& positions) {
  TORCH_CHECK(positions.dim() == 2 && positions.scalar_type() == at::kLong,
              "position ids must be int64 [B,T], got ", positions.sizes(), " ",
              positions.scalar_type());
  const at::Tensor host = positions.to(at::kCPU).contiguous();
  return find_documents(host.data_ptr<int64_t>(), host.size(0), host.size(1));
}

TokenPositions make_token_positions(const at::Tensor& positions, at::Device device) {
  if (!positions.defined()) return {};
  const DocumentBounds d = find_documents(positions);
  if (!d.packed) return {};
  TokenPositions tp;
  tp.pos = positions.to(device, at::kLong).contiguous();
  tp.cu_seqlens =
      at::tensor(at::ArrayRef<int32_t>(d.cu_seqlens), at::TensorOptions().dtype(at::kInt))
          .to(device);
  tp.max_seqlen = d.max_seqlen;
  return tp;
}

}  // namespace ramstream::autograd
