#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>

#include <nlohmann/json.hpp>

#include "util/json_read.h"
#include "util/user_file.h"

namespace ramstream::checkpoint {

// The data blob is used in place; a big-endian host would need byte swapping.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors reader assumes little-endian");

namespace {

using nlohmann::json;

struct DtypeRow {
  const char* name;
  SafetensorsDtype dtype;
  size_t size;
  at::ScalarType torch;
};

const DtypeRow kDtypes[] = {
    {"F64", SafetensorsDtype::kF64, 8, at::kDouble},
    {"F32", SafetensorsDtype::kF32, 4, at::kFloat},
    {"F16", SafetensorsDtype::kF16, 2, at::kHalf},
    {"BF16", SafetensorsDtype::kBF16, 2, at::kBFloat16},
    {"I64", SafetensorsDtype::kI64, 8, at::kLong},
    {"I32", SafetensorsDtype::kI32, 4, at::kInt},
    {"I16", SafetensorsDtype::kI16, 2, at::kShort},
    {"I8", SafetensorsDtype::kI8, 1, at::kChar},
    {"U8", SafetensorsDtype::kU8, 1, at::kByte},
    {"BOOL", SafetensorsDtype::kBool, 1, at::kBool},
};

const DtypeRow& row_of(SafetensorsDtype d) {
  return kDtypes[static_cast<int>(d)];
}

std::string supported_dtypes() {
  std::string s;
  for (const DtypeRow& r : kDtypes) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

const char* safetensors_dtype_name(SafetensorsDtype d) {
  return row_of(d).name;
}
size_t safetensors_dtype_size(SafetensorsDtype d) {
  return row_of(d).size;
}
at::ScalarType safetensors_dtype_to_torch(SafetensorsDtype d) {
  return row_of(d).torch;
}

int64_t SafetensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // checked against overflow when the header was read
  return n;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto fail = [&](const std::string& what) -> Error { return Error{path + ": " + what}; };
  Result<std::shared_ptr<const MappedFile>> mapped = MappedFile::open(path, "a safetensors file");
  if (!mapped.ok()) return mapped.error();
  std::shared_ptr<const MappedFile> mapping = std::move(mapped).value();
  const uint64_t file_size = mapping->size();
  if (file_size < 8) {
    return fail("truncated: " + std::to_string(file_size) +
                " bytes, shorter than the 8-byte header length");
  }
  const uint8_t* base = mapping->data();

  const uint64_t header_len = read_u64_le(base);
  if (header_len > kMaxHeaderBytes) {
    return fail("header length " + std::to_string(header_len) + " exceeds the " +
                std::to_string(kMaxHeaderBytes) + "-byte limit (corrupt or not safetensors)");
  }
  if (header_len > file_size - 8) {
    return fail("header length " + std::to_string(header_len) + " runs past end of file (" +
                std::to_string(file_size) + " bytes): truncated");
  }
  const char* header = reinterpret_cast<const char*>(base + 8);

  // Duplicate names would make lookups ambiguous (the tree keeps only the last). A real header
  // nests 3 levels ({name: {shape: [...]}}); deeper or denser ones only cost memory.
  JsonLimits limits;
  limits.max_depth = 8;
  limits.max_values = 1u << 22;
  limits.unique_keys = true;
  Result<json> parsed = parse_json(std::string_view(header, header_len), path + ": header", limits);
  if (!parsed.ok()) return parsed.error();
  const json& j = parsed.value();
  if (!j.is_object()) {
    return fail("header is " + describe_json(j) + ", expected an object");
  }

  SafetensorsFile f;
  f.path_ = path;
  f.data_start_ = 8 + header_len;
  const uint64_t data_len = file_size - f.data_start_;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return fail("__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return fail("__metadata__ key " + quote_bounded(m.key()) +
                      ": value must be a string, got " + m.value().type_name());
        }
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) {
      return fail("tensor " + quote_bounded(name, 120) + ": " + what);
    };
    if (!v.is_object()) return bad(std::string("entry must be an object, got ") + v.type_name());
    SafetensorInfo info;
    info.name = name;

    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) return bad("missing or non-string 'dtype'");
    const std::string dtype = dt->get<std::string>();
    const DtypeRow* row = nullptr;
    for (const DtypeRow& r : kDtypes) {
      if (dtype == r.name) row = &r;
    }
    if (row == nullptr) {
      return bad("unsupported dtype " + quote_bounded(dtype, 32) +
                 " (supported: " + supported_dtypes() + ")");
    }
    info.dtype = row->dtype;

    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) return bad("missing or non-array 'shape'");
    int64_t numel = 1;
    // Hostile headers can nest deeply; messages never dump() the raw JSON (recursive).
    for (const json& d : *sh) {
      const std::string dim = "shape dim " + std::to_string(info.shape.size());
      if (!d.is_number_integer()) return bad(dim + ": expected an integer, got " + d.type_name());
      if (!d.is_number_unsigned())
        return bad(dim + ": negative (" + std::to_string(d.get<int64_t>()) + ")");
      const uint64_t u = d.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX) ||
          __builtin_mul_overflow(numel, static_cast<int64_t>(u), &numel)) {
        return bad(dim + " (" + std::to_string(u) + "): element count overflows");
      }
      info.shape.push_back(static_cast<int64_t>(u));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel), row->size, &nbytes)) {
      return bad("shape " + shape_str(info.shape) + ": byte size overflows");
    }

    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return bad("'data_offsets' must be [begin, end] with non-negative integers");
    }
    info.begin = (*off)[0].get<uint64_t>();
    info.end = (*off)[1].get<uint64_t>();
    if (info.end < info.begin) {
      return bad("data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                 "]: end before begin");
    }
    if (info.end > data_len) {
      return bad("data_offsets end " + std::to_string(info.end) + " past the " +
                 std::to_string(data_len) + "-byte data section (file truncated?)");
    }
    if (info.end - info.begin != nbytes) {
      return bad(std::string(row->name) + " shape " + shape_str(info.shape) + " needs " +
                 std::to_string(nbytes) + " bytes, data_offsets span " +
                 std::to_string(info.end - info.begin));
    }
    f.infos_.push_back(std::move(info));
  }

  std::sort(f.infos_.begin(), f.infos_.end(), [](const SafetensorInfo& a, const SafetensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 0; i < f.infos_.size(); ++i) {
    if (i > 0 && f.infos_[i].begin < f.infos_[i - 1].end) {
      return fail("tensors " + quote_bounded(f.infos_[i - 1].name, 120) + " and " +
                  quote_bounded(f.infos_[i].name, 120) + " overlap in the data section");
    }
    f.names_.push_back(f.infos_[i].name);
    f.index_.emplace(f.infos_[i].name, i);
  }
  f.mapping_ = std::move(mapping);
  return f;
}

Result<const SafetensorInfo*> SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return Error{path_ + ": no tensor '" + name + "'"};
  return &infos_[it->second];
}

const uint8_t* SafetensorsFile::data(const SafetensorInfo& info) const {
  return mapping_->data() + data_start_ + info.begin;
}

Result<at::Tensor> SafetensorsFile::tensor(const std::string& name) const {
  Result<const SafetensorInfo*> r = info(name);
  if (!r.ok()) return r.error();
  const SafetensorInfo& in = *r.value();
  // Bytes other than 0/1 are not valid bools in torch; normalise through u8.
  const bool is_bool = in.dtype == SafetensorsDtype::kBool;
  at::Tensor t = at::empty(in.shape, is_bool ? at::kByte : safetensors_dtype_to_torch(in.dtype));
  if (in.end > in.begin) std::memcpy(t.data_ptr(), data(in), in.end - in.begin);
  return is_bool ? t.ne(0) : t;
}

Status SafetensorsFile::read_into(const std::string& name, at::Tensor& dst) const {
  Result<const SafetensorInfo*> r = info(name);
  if (!r.ok()) return r.error();
  const SafetensorInfo& in = *r.value();
  if (!dst.defined() || !dst.device().is_cpu()) {
    return Error{path_ + ": tensor '" + name + "': destination must be a defined CPU tensor"};
  }
  if (dst.sizes() != at::IntArrayRef(in.shape)) {
    return Error{path_ + ": tensor '" + name + "': shape " + shape_str(in.shape) +
                 " in file, destination has " + shape_str(dst.sizes())};
  }
  if (in.end == in.begin) return Ok{};
  const uint8_t* src = data(in);
  const size_t elem = safetensors_dtype_size(in.dtype);
  if (in.dtype != SafetensorsDtype::kBool && reinterpret_cast<uintptr_t>(src) % elem == 0) {
    // copy_ only reads the source, so wrapping the read-only mapping is safe.
    at::Tensor view =
        at::from_blob(const_cast<uint8_t*>(src), in.shape,
                      at::TensorOptions().dtype(safetensors_dtype_to_torch(in.dtype)));
    dst.copy_(view);
    return Ok{};
  }
  Result<at::Tensor> t = tensor(name);
  if (!t.ok()) return t.error();
  dst.copy_(t.value());
  return Ok{};
}

}  // namespace ramstream::checkpoint
