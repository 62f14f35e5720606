#include "model/safetensors.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/core/TensorOptions.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

namespace lpdetr {
namespace {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cc assumes a little-endian host"
#endif

using Json = nlohmann::ordered_json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as the reference reader
constexpr int kMaxJsonDepth = 16;
constexpr const char* kMetadataKey = "__metadata__";

struct DtypeInfo {
  const char* name;
  c10::ScalarType type;
  size_t itemsize;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", c10::ScalarType::Double, 8}, {"F32", c10::ScalarType::Float, 4},
    {"F16", c10::ScalarType::Half, 2},   {"BF16", c10::ScalarType::BFloat16, 2},
    {"I64", c10::ScalarType::Long, 8},   {"I32", c10::ScalarType::Int, 4},
    {"I16", c10::ScalarType::Short, 2},  {"I8", c10::ScalarType::Char, 1},
    {"U8", c10::ScalarType::Byte, 1},    {"BOOL", c10::ScalarType::Bool, 1},
};

const DtypeInfo* DtypeByName(const std::string& name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo* DtypeByType(c10::ScalarType type) {
  for (const DtypeInfo& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string Truncated(const std::string& s, size_t max_len = 64) {
  if (s.size() <= max_len) return s;
  return s.substr(0, max_len) + "...";
}

// Builds error messages of the form "<source>: [tensor '<name>': ]<problem>".
class ErrorContext {
 public:
  explicit ErrorContext(const std::string& source) : source_(source) {}

  [[noreturn]] void Fail(const std::string& problem) const {
    throw SafetensorsError(source_ + ": " + problem);
  }
  [[noreturn]] void FailTensor(const std::string& name,
                               const std::string& problem) const {
    Fail("tensor '" + Truncated(name, 200) + "': " + problem);
  }

 private:
  const std::string& source_;
};

// One validated header entry.
struct Entry {
  std::string name;
  const DtypeInfo* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
  size_t header_index = 0;  // tie-break for zero-size tensors
};

// Parses the header JSON, rejecting duplicate keys in any object (nlohmann
// would otherwise silently keep the last one) and absurd nesting.
Json ParseHeaderJson(const char* begin, const char* end,
                     const ErrorContext& ctx) {
  std::vector<std::set<std::string>> keys_stack;
  using Event = Json::parse_event_t;
  Json::parser_callback_t callback = [&](int depth, Event event, Json& parsed) {
    switch (event) {
      case Event::object_start:
        if (depth >= kMaxJsonDepth) ctx.Fail("header JSON nests too deeply");
        keys_stack.emplace_back();
        break;
      case Event::array_start:
        if (depth >= kMaxJsonDepth) ctx.Fail("header JSON nests too deeply");
        break;
      case Event::object_end:
        if (!keys_stack.empty()) keys_stack.pop_back();
        break;
      case Event::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!keys_stack.empty() && !keys_stack.back().insert(key).second) {
          if (depth == 1) {
            ctx.Fail("duplicate tensor name '" + Truncated(key, 200) +
                     "' in header");
          }
          ctx.Fail("duplicate key '" + Truncated(key) + "' in header JSON");
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return Json::parse(begin, end, callback, /*allow_exceptions=*/true);
  } catch (const nlohmann::json::exception& e) {
    ctx.Fail(std::string("header is not valid JSON: ") + e.what());
  }
}

uint64_t ParseOffset(const Json& v, const std::string& name,
                     const ErrorContext& ctx) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    ctx.FailTensor(name, "data_offsets contain a negative value " + v.dump());
  }
  ctx.FailTensor(name, "data_offsets must be two non-negative integers, got " +
                           Truncated(v.dump()));
}

Entry ParseEntry(const std::string& name, const Json& v, size_t index,
                 uint64_t data_size, const ErrorContext& ctx) {
  Entry e;
  e.name = name;
  e.header_index = index;
  if (!v.is_object()) {
    ctx.FailTensor(name, "header entry must be a JSON object, got " +
                             std::string(v.type_name()));
  }

  // dtype
  auto it = v.find("dtype");
  if (it == v.end()) ctx.FailTensor(name, "missing field 'dtype'");
  if (!it->is_string()) {
    ctx.FailTensor(name, "field 'dtype' must be a string, got " +
                             std::string(it->type_name()));
  }
  const std::string& dtype_name = it->get_ref<const std::string&>();
  e.dtype = DtypeByName(dtype_name);
  if (e.dtype == nullptr) {
    ctx.FailTensor(name, "unknown dtype '" + Truncated(dtype_name) +
                             "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 "
                             "U8 BOOL)");
  }

  // shape
  it = v.find("shape");
  if (it == v.end()) ctx.FailTensor(name, "missing field 'shape'");
  if (!it->is_array()) {
    ctx.FailTensor(name, "field 'shape' must be an array, got " +
                             std::string(it->type_name()));
  }
  constexpr uint64_t kInt64Max =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t numel = 1;
  uint64_t nonzero_product = 1;  // product of max(dim, 1): must fit int64
  for (const Json& d : *it) {
    if (d.is_number_integer() && !d.is_number_unsigned()) {
      ctx.FailTensor(name, "shape " + Truncated(it->dump()) +
                               " has a negative dimension " + d.dump());
    }
    if (!d.is_number_unsigned()) {
      ctx.FailTensor(name,
                     "shape must be an array of non-negative integers, "
                     "got " +
                         Truncated(it->dump()));
    }
    const uint64_t dim = d.get<uint64_t>();
    if (dim > kInt64Max ||
        __builtin_mul_overflow(nonzero_product, std::max<uint64_t>(dim, 1),
                               &nonzero_product) ||
        nonzero_product > kInt64Max) {
      ctx.FailTensor(name, "element count of shape " + Truncated(it->dump()) +
                               " overflows");
    }
    numel *= dim;  // <= nonzero_product, cannot overflow
    e.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(e.dtype->itemsize),
                             &nbytes) ||
      nbytes > kInt64Max) {
    ctx.FailTensor(name, "byte size of dtype " + dtype_name + " x shape " +
                             ShapeString(e.shape) + " overflows");
  }

  // data_offsets
  it = v.find("data_offsets");
  if (it == v.end()) ctx.FailTensor(name, "missing field 'data_offsets'");
  if (!it->is_array() || it->size() != 2) {
    ctx.FailTensor(name,
                   "data_offsets must be two non-negative integers, got " +
                       Truncated(it->dump()));
  }
  e.begin = ParseOffset((*it)[0], name, ctx);
  e.end = ParseOffset((*it)[1], name, ctx);
  const std::string offsets =
      "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
  if (e.begin > e.end) {
    ctx.FailTensor(name, "data_offsets " + offsets + " have begin > end");
  }
  if (e.end > data_size) {
    ctx.FailTensor(name, "data_offsets " + offsets +
                             " extend past the end of the data section (" +
                             std::to_string(data_size) +
                             " bytes; file truncated?)");
  }
  if (e.end - e.begin != nbytes) {
    ctx.FailTensor(name, "data_offsets " + offsets + " do not match dtype " +
                             dtype_name + " x shape " + ShapeString(e.shape) +
                             " = " + std::to_string(nbytes) + " bytes");
  }
  return e;
}

std::map<std::string, std::string> ParseMetadata(const Json& v,
                                                 const ErrorContext& ctx) {
  if (!v.is_object()) {
    ctx.Fail(std::string("__metadata__ must be an object of strings, got ") +
             v.type_name());
  }
  std::map<std::string, std::string> metadata;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_string()) {
      ctx.Fail("__metadata__ value of key '" + Truncated(it.key()) +
               "' must be a string, got " + it.value().type_name());
    }
    metadata.emplace(it.key(), it.value().get<std::string>());
  }
  return metadata;
}

std::string ReadFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw SafetensorsError(path + ": cannot read file: is a directory");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    throw SafetensorsError(path + ": cannot open file: " +
                           (err != 0 ? std::strerror(err) : "unknown error"));
  }
  std::string bytes;
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec) bytes.reserve(static_cast<size_t>(size));
  std::vector<char> chunk(1 << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    bytes.append(chunk.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) {
    const int err = errno;
    throw SafetensorsError(path + ": error reading file: " +
                           (err != 0 ? std::strerror(err) : "unknown error"));
  }
  return bytes;
}

}  // namespace

const at::Tensor& SafetensorsContents::Get(const std::string& name) const {
  for (const auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  throw SafetensorsError("no tensor named '" + name + "' (" +
                         std::to_string(tensors.size()) + " tensors present)");
}

bool SafetensorsContents::Contains(const std::string& name) const {
  for (const auto& entry : tensors) {
    if (entry.first == name) return true;
  }
  return false;
}

SafetensorsContents ParseSafetensors(const void* data, size_t size,
                                     const std::string& source) {
  const ErrorContext ctx(source);
  const auto* bytes = static_cast<const unsigned char*>(data);
  if (size < 8 || bytes == nullptr) {
    ctx.Fail("file is " + std::to_string(size) +
             " bytes, shorter than the 8-byte header length");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len == 0) ctx.Fail("header length is 0");
  if (header_len > kMaxHeaderBytes) {
    ctx.Fail("header length " + std::to_string(header_len) +
             " is absurdly large (limit " + std::to_string(kMaxHeaderBytes) +
             " bytes)");
  }
  if (header_len > size - 8) {
    ctx.Fail("header length " + std::to_string(header_len) +
             " extends past the end of the file (" + std::to_string(size) +
             " bytes; file truncated?)");
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  // nlohmann's lexer stops at a NUL byte and ignores what follows; JSON never
  // contains a raw NUL, so reject it rather than silently skip bytes.
  if (const void* nul = std::memchr(header_begin, '\0', header_len)) {
    ctx.Fail("header is not valid JSON: NUL byte at header offset " +
             std::to_string(static_cast<const char*>(nul) - header_begin));
  }
  const Json header =
      ParseHeaderJson(header_begin, header_begin + header_len, ctx);
  if (!header.is_object()) {
    ctx.Fail(std::string("header must be a JSON object, got ") +
             header.type_name());
  }

  const unsigned char* data_section = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  SafetensorsContents contents;
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      contents.metadata = ParseMetadata(it.value(), ctx);
      continue;
    }
    entries.push_back(
        ParseEntry(it.key(), it.value(), entries.size(), data_size, ctx));
  }

  // File order; zero-size tensors at the same offset keep header order.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.header_index < b.header_index;
  });

  // The tensors must tile the data section exactly.
  uint64_t pos = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < pos) {
      ctx.FailTensor(e.name, "data_offsets [" + std::to_string(e.begin) + ", " +
                                 std::to_string(e.end) + "] overlap tensor '" +
                                 Truncated(prev->name, 200) + "' [" +
                                 std::to_string(prev->begin) + ", " +
                                 std::to_string(prev->end) + "]");
    }
    if (e.begin > pos) {
      ctx.FailTensor(e.name, "data_offsets [" + std::to_string(e.begin) + ", " +
                                 std::to_string(e.end) + "] leave a gap of " +
                                 std::to_string(e.begin - pos) +
                                 " unused bytes at data offset " +
                                 std::to_string(pos));
    }
    pos = e.end;
    if (e.end > e.begin) prev = &e;
  }
  if (pos != data_size) {
    ctx.Fail("trailing garbage: the tensors cover " + std::to_string(pos) +
             " bytes but the data section has " + std::to_string(data_size) +
             " bytes (" + std::to_string(data_size - pos) +
             " bytes after the last tensor)");
  }

  contents.tensors.reserve(entries.size());
  for (const Entry& e : entries) {
    const size_t nbytes = static_cast<size_t>(e.end - e.begin);
    const unsigned char* src = data_section + e.begin;
    if (e.dtype->type == c10::ScalarType::Bool) {
      for (size_t i = 0; i < nbytes; ++i) {
        if (src[i] > 1) {
          ctx.FailTensor(
              e.name, "BOOL element " + std::to_string(i) + " has byte value " +
                          std::to_string(src[i]) + " (must be 0 or 1)");
        }
      }
    }
    at::Tensor t =
        at::empty(e.shape, c10::TensorOptions().dtype(e.dtype->type));
    if (nbytes > 0) std::memcpy(t.data_ptr(), src, nbytes);
    contents.tensors.emplace_back(e.name, std::move(t));
  }
  return contents;
}

SafetensorsContents ReadSafetensors(const std::string& path) {
  const std::string bytes = ReadFile(path);
  return ParseSafetensors(bytes.data(), bytes.size(), path);
}

std::string SerializeSafetensors(
    const NamedTensors& tensors,
    const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header[kMetadataKey] = std::move(meta);
  }

  std::vector<at::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    const std::string where =
        "serialize: tensor '" + Truncated(name, 200) + "'";
    if (name == kMetadataKey) {
      throw SafetensorsError(where + ": name is reserved for metadata");
    }
    if (!names.insert(name).second) {
      throw SafetensorsError(where + ": duplicate tensor name");
    }
    if (!tensor.defined()) {
      throw SafetensorsError(where + ": tensor is undefined");
    }
    const DtypeInfo* dtype = DtypeByType(tensor.scalar_type());
    if (dtype == nullptr) {
      throw SafetensorsError(
          where + ": unsupported dtype " +
          std::string(c10::toString(tensor.scalar_type())) +
          " (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
    }
    at::Tensor t = tensor.device().is_cpu() ? tensor : tensor.cpu();
    t = t.contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype->itemsize;
    Json shape = Json::array();
    for (int64_t d : t.sizes()) shape.push_back(d);
    Json entry = Json::object();
    entry["dtype"] = dtype->name;
    entry["shape"] = std::move(shape);
    entry["data_offsets"] = Json::array({offset, offset + nbytes});
    header[name] = std::move(entry);
    offset += nbytes;
    contiguous.push_back(std::move(t));
  }

  std::string header_str = header.dump();
  header_str.append((8 - header_str.size() % 8) % 8, ' ');
  const uint64_t header_len = header_str.size();

  std::string out;
  out.reserve(8 + header_str.size() + static_cast<size_t>(offset));
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<char>((header_len >> (8 * i)) & 0xff));
  }
  out += header_str;
  for (const at::Tensor& t : contiguous) {
    const size_t nbytes = t.numel() * t.element_size();
    if (nbytes > 0) {
      out.append(static_cast<const char*>(t.data_ptr()), nbytes);
    }
  }
  return out;
}

void WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::string bytes;
  try {
    bytes = SerializeSafetensors(tensors, metadata);
  } catch (const SafetensorsError& e) {
    throw SafetensorsError(path + ": " + e.what());
  }
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      const int err = errno;
      throw SafetensorsError(path + ": cannot open '" + tmp +
                             "' for writing: " + std::strerror(err));
    }
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      const int err = errno;
      out.close();
      std::remove(tmp.c_str());
      throw SafetensorsError(path + ": error writing '" + tmp +
                             "': " + std::strerror(err));
    }
    out.close();
    if (out.fail()) {
      std::remove(tmp.c_str());
      throw SafetensorsError(path + ": error closing '" + tmp + "'");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw SafetensorsError(path + ": cannot rename '" + tmp +
                           "' into place: " + std::strerror(err));
  }
}

}  // namespace lpdetr
