// Test-only helpers that write safetensors bytes by hand, including deliberately broken files.
//
//   std::string bytes = safetensors_bytes({{"w", at::ones({2, 3})}});
//   write_file(dir + "/model.safetensors", bytes);
//   write_file(dir + "/bad.safetensors", raw_safetensors(R"({"w": {"dtype": "F32"}})", ""));
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

namespace ramstream::checkpoint::testing {

inline const char* dtype_tag(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return "F64";
    case at::kFloat:
      return "F32";
    case at::kHalf:
      return "F16";
    case at::kBFloat16:
      return "BF16";
    case at::kLong:
      return "I64";
    case at::kInt:
      return "I32";
    case at::kShort:
      return "I16";
    case at::kChar:
      return "I8";
    case at::kByte:
      return "U8";
    case at::kBool:
      return "BOOL";
    default:
      return "?";
  }
}

inline std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// The 8-byte length, the header text as given, then `data`. No validation: for hostile cases.
inline std::string raw_safetensors(const std::string& header, const std::string& data) {
  return u64_le(header.size()) + header + data;
}

// A well-formed file. The header is padded with spaces to a multiple of 8 bytes as the reference
// writer does, so the data starts 8-aligned.
inline std::string safetensors_bytes(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                     const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string data;
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor t = tensor.contiguous();
    const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype_tag(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {data.size(), data.size() + n}}};
    data.append(static_cast<const char*>(t.data_ptr()), n);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return raw_safetensors(text, data);
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace ramstream::checkpoint::testing
