// Reader and writer of the safetensors format
// (8-byte little-endian header length, JSON header, raw little-endian data).
//
// The reader trusts nothing in the file: the header length must fit in the
// file, the header must be a JSON object whose entries have a known dtype, a
// shape of non-negative dims and `data_offsets` [begin, end] that lie inside
// the data section, match dtype size x element count, do not overlap, and
// together cover the data section exactly (no trailing garbage). Any violation
// throws SafetensorsError with a message naming the tensor and the problem.
//
// Supported dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
#pragma once

#include <cstddef>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace lpdetr {

class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct SafetensorsContents {
  NamedTensors tensors;  // in file order (sorted by data offset)
  std::map<std::string, std::string> metadata;  // "__metadata__"

  // Returns the tensor called `name`; throws SafetensorsError if absent.
  const at::Tensor& Get(const std::string& name) const;
  bool Contains(const std::string& name) const;
};

// Parses an in-memory file. Tensors own their memory (copied out of `data`).
SafetensorsContents ParseSafetensors(const void* data, size_t size,
                                     const std::string& source = "<memory>");
// Reads and parses a file; the message of any error starts with the path.
SafetensorsContents ReadSafetensors(const std::string& path);

// Serialises CPU tensors (made contiguous) with their own dtypes.
std::string SerializeSafetensors(
    const NamedTensors& tensors,
    const std::map<std::string, std::string>& metadata = {});
// Writes atomically (temporary file + rename).
void WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace lpdetr
