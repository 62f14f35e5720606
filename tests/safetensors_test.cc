#include "model/safetensors.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/core/TensorOptions.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lpdetr {
namespace {

constexpr const char* kSource = "test.safetensors";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

std::string Le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// Assembles a file from a hand-written header and data section.
std::string MakeFile(const std::string& header, const std::string& data = "") {
  return Le64(header.size()) + header + data;
}

std::string Bytes(std::initializer_list<int> values) {
  std::string s;
  for (int v : values) s.push_back(static_cast<char>(v));
  return s;
}

SafetensorsContents Parse(const std::string& file) {
  return ParseSafetensors(file.data(), file.size(), kSource);
}

// Returns the message of the SafetensorsError thrown by parsing `file`.
std::string ParseError(const std::string& file) {
  try {
    Parse(file);
  } catch (const SafetensorsError& e) {
    return e.what();
  }
  return "<no SafetensorsError thrown>";
}

::testing::AssertionResult HasAll(const std::string& message,
                                  std::initializer_list<std::string> needles) {
  for (const std::string& needle : needles) {
    if (message.find(needle) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "message \"" << message << "\" lacks \"" << needle << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

// The raw bytes of a tensor (contiguous copy).
std::string RawBytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  const size_t n = c.numel() * c.element_size();
  if (n == 0) return "";
  return std::string(static_cast<const char*>(c.data_ptr()), n);
}

// A tensor of `type` whose bytes follow a deterministic pseudo-random pattern
// (so float tensors contain NaNs, infinities and denormals too).
at::Tensor Patterned(c10::ScalarType type, std::vector<int64_t> shape,
                     uint32_t seed) {
  at::Tensor t = at::empty(shape, c10::TensorOptions().dtype(type));
  auto* p = static_cast<unsigned char*>(t.data_ptr());
  const size_t n = t.numel() * t.element_size();
  uint32_t x = seed * 2654435761u + 12345u;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    p[i] = static_cast<unsigned char>(x >> 24);
    if (type == c10::ScalarType::Bool) p[i] &= 1;
  }
  return t;
}

template <typename T>
at::Tensor FromBits(c10::ScalarType type, const std::vector<T>& bits) {
  at::Tensor t = at::empty({static_cast<int64_t>(bits.size())},
                           c10::TensorOptions().dtype(type));
  std::memcpy(t.data_ptr(), bits.data(), bits.size() * sizeof(T));
  return t;
}

std::string TempPath(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return ::testing::TempDir() + "safetensors_test_" + std::to_string(getpid()) +
         "_" + info->name() + "_" + name;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A valid one-tensor file: "w" F32 [2] with 8 data bytes.
const char kOneTensorHeader[] =
    R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

TEST(SafetensorsTest, RoundTripEveryDtypeBitExact) {
  const std::vector<std::pair<std::string, c10::ScalarType>> dtypes = {
      {"f64", c10::ScalarType::Double}, {"f32", c10::ScalarType::Float},
      {"f16", c10::ScalarType::Half},   {"bf16", c10::ScalarType::BFloat16},
      {"i64", c10::ScalarType::Long},   {"i32", c10::ScalarType::Int},
      {"i16", c10::ScalarType::Short},  {"i8", c10::ScalarType::Char},
      {"u8", c10::ScalarType::Byte},    {"bool", c10::ScalarType::Bool},
  };
  NamedTensors in;
  uint32_t seed = 1;
  for (const auto& [name, type] : dtypes) {
    in.emplace_back(name, Patterned(type, {3, 5}, seed++));
  }
  in.emplace_back(
      "empty",
      at::empty({0, 4}, c10::TensorOptions().dtype(c10::ScalarType::Float)));
  in.emplace_back("scalar", Patterned(c10::ScalarType::Double, {}, 99));
  in.emplace_back("rank4",
                  Patterned(c10::ScalarType::BFloat16, {2, 1, 3, 2}, 7));
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "gr\xc3\xbc\xc3\x9f \"quoted\""}, {"", ""}};

  const std::string file = SerializeSafetensors(in, metadata);
  const SafetensorsContents out = Parse(file);

  EXPECT_EQ(out.metadata, metadata);
  ASSERT_EQ(out.tensors.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    SCOPED_TRACE(in[i].first);
    const at::Tensor& a = in[i].second;
    const at::Tensor& b = out.tensors[i].second;
    EXPECT_EQ(out.tensors[i].first, in[i].first);
    EXPECT_EQ(b.scalar_type(), a.scalar_type());
    EXPECT_EQ(b.sizes(), a.sizes());
    EXPECT_TRUE(b.device().is_cpu());
    EXPECT_TRUE(b.is_contiguous());
    EXPECT_EQ(RawBytes(b), RawBytes(a));
  }
  EXPECT_EQ(out.Get("empty").numel(), 0);
  EXPECT_EQ(out.Get("scalar").dim(), 0);
}

TEST(SafetensorsTest, RoundTripSpecialFloatBits) {
  // bf16: 1.0, -2.5, NaN with payload, smallest denormal, -0, +inf.
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC020, 0x7FC1,
                                      0x0001, 0x8000, 0x7F80};
  // f16: 1.0, -2.0, NaN with payload, smallest denormal, 65504.
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x7E01, 0x0001, 0x7BFF};
  const std::vector<uint32_t> f32 = {0x3F800000u, 0x7FC00001u, 0x80000000u,
                                     0x00000001u};
  const NamedTensors in = {
      {"bf16", FromBits(c10::ScalarType::BFloat16, bf16)},
      {"f16", FromBits(c10::ScalarType::Half, f16)},
      {"f32", FromBits(c10::ScalarType::Float, f32)},
  };
  const SafetensorsContents out = Parse(SerializeSafetensors(in));
  const at::Tensor& b = out.Get("bf16");
  ASSERT_EQ(b.numel(), 6);
  EXPECT_EQ(0, std::memcmp(b.data_ptr(), bf16.data(), 12));
  EXPECT_EQ(b[0].item<float>(), 1.0f);
  EXPECT_EQ(b[1].item<float>(), -2.5f);
  const at::Tensor& h = out.Get("f16");
  EXPECT_EQ(0, std::memcmp(h.data_ptr(), f16.data(), 10));
  EXPECT_EQ(h[1].item<float>(), -2.0f);
  EXPECT_EQ(h[4].item<float>(), 65504.0f);
  EXPECT_EQ(0, std::memcmp(out.Get("f32").data_ptr(), f32.data(), 16));
}

TEST(SafetensorsTest, SerializedLayoutIsExact) {
  const NamedTensors in = {
      {"x", FromBits(c10::ScalarType::Float, std::vector<float>{1.0f, -2.5f})},
      {"y", FromBits(c10::ScalarType::Short, std::vector<int16_t>{258})}};
  const std::string file = SerializeSafetensors(in, {{"k", "v"}});
  ASSERT_GE(file.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(file[i]);
  EXPECT_EQ(n % 8, 0u) << "header must be padded to a multiple of 8";
  ASSERT_EQ(file.size(), 8 + n + 10);
  const std::string header = file.substr(8, n);
  const size_t json_end = header.rfind('}') + 1;
  EXPECT_EQ(header.find_first_not_of(' ', json_end), std::string::npos)
      << "padding must be spaces: \"" << header << "\"";
  EXPECT_LT(header.size() - json_end, 8u) << "padding longer than needed";
  const nlohmann::json j = nlohmann::json::parse(header);
  EXPECT_EQ(j["x"]["dtype"], "F32");
  EXPECT_EQ(j["x"]["shape"], nlohmann::json::array({2}));
  EXPECT_EQ(j["x"]["data_offsets"], nlohmann::json::array({0, 8}));
  EXPECT_EQ(j["y"]["dtype"], "I16");
  EXPECT_EQ(j["y"]["data_offsets"], nlohmann::json::array({8, 10}));
  EXPECT_EQ(j["__metadata__"]["k"], "v");
  // Little-endian payload: 1.0f, -2.5f, int16 258.
  EXPECT_EQ(file.substr(8 + n), Bytes({0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x20,
                                       0xC0, 0x02, 0x01}));
}

TEST(SafetensorsTest, ParsesHandWrittenFile) {
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"BOOL","shape":[3],"data_offsets":[4,7]},)"
      R"("__metadata__":{"format":"pt"}}     )";  // padded with spaces
  const std::string data =
      Bytes({0x00, 0x3C, 0x00, 0xC0}) + Bytes({0x01, 0x00, 0x01});
  const SafetensorsContents c = Parse(MakeFile(header, data));
  ASSERT_EQ(c.tensors.size(), 2u);
  const at::Tensor& h = c.Get("h");
  EXPECT_EQ(h.scalar_type(), c10::ScalarType::Half);
  EXPECT_EQ(h[0].item<float>(), 1.0f);
  EXPECT_EQ(h[1].item<float>(), -2.0f);
  const at::Tensor& b = c.Get("b");
  EXPECT_EQ(b.scalar_type(), c10::ScalarType::Bool);
  EXPECT_TRUE(b[0].item<bool>());
  EXPECT_FALSE(b[1].item<bool>());
  EXPECT_TRUE(b[2].item<bool>());
  EXPECT_EQ(c.metadata.at("format"), "pt");
}

TEST(SafetensorsTest, TensorsOwnTheirMemory) {
  std::string file = MakeFile(kOneTensorHeader, Bytes({0, 0, 0x80, 0x3F,  //
                                                       0, 0, 0, 0x40}));
  const SafetensorsContents c = Parse(file);
  std::fill(file.begin(), file.end(), '\xff');  // clobber the source buffer
  EXPECT_EQ(c.Get("w")[0].item<float>(), 1.0f);
  EXPECT_EQ(c.Get("w")[1].item<float>(), 2.0f);
}

TEST(SafetensorsTest, ReturnsTensorsInFileOrder) {
  // Header order and name order both differ from data order.
  const std::string header =
      R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[8,12]},)"
      R"("z":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},)"
      R"("e":{"dtype":"I32","shape":[0],"data_offsets":[12,12]},)"
      R"("m":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}})";
  const std::string data = Bytes({1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0});
  const SafetensorsContents c = Parse(MakeFile(header, data));
  ASSERT_EQ(c.tensors.size(), 4u);
  EXPECT_EQ(c.tensors[0].first, "z");
  EXPECT_EQ(c.tensors[1].first, "m");
  EXPECT_EQ(c.tensors[2].first, "a");
  EXPECT_EQ(c.tensors[3].first, "e");
  EXPECT_EQ(c.tensors[0].second[0].item<int32_t>(), 1);
  EXPECT_EQ(c.tensors[1].second[0].item<int32_t>(), 2);
  EXPECT_EQ(c.tensors[2].second[0].item<int32_t>(), 3);
}

TEST(SafetensorsTest, SerializeKeepsGivenOrder) {
  const NamedTensors in = {
      {"z", Patterned(c10::ScalarType::Float, {2}, 1)},
      {"a", Patterned(c10::ScalarType::Byte, {3}, 2)},
      {"m", Patterned(c10::ScalarType::Long, {1}, 3)},
  };
  const SafetensorsContents out = Parse(SerializeSafetensors(in));
  ASSERT_EQ(out.tensors.size(), 3u);
  EXPECT_EQ(out.tensors[0].first, "z");
  EXPECT_EQ(out.tensors[1].first, "a");
  EXPECT_EQ(out.tensors[2].first, "m");
}

TEST(SafetensorsTest, SerializesNonContiguousTensors) {
  const at::Tensor base =
      at::arange(12, c10::TensorOptions().dtype(c10::ScalarType::Long))
          .reshape({3, 4});
  const at::Tensor transposed = base.t();       // non-contiguous
  const at::Tensor sliced = base.select(1, 2);  // strided view with offset
  ASSERT_FALSE(transposed.is_contiguous());
  const SafetensorsContents out =
      Parse(SerializeSafetensors({{"t", transposed}, {"s", sliced}}));
  EXPECT_TRUE(out.Get("t").equal(transposed));
  EXPECT_TRUE(out.Get("s").equal(sliced));
  EXPECT_EQ(out.Get("s")[1].item<int64_t>(), 6);
}

TEST(SafetensorsTest, EmptyFileWithoutTensors) {
  const SafetensorsContents c = Parse(SerializeSafetensors({}));
  EXPECT_TRUE(c.tensors.empty());
  EXPECT_TRUE(c.metadata.empty());
  const SafetensorsContents m =
      Parse(MakeFile(R"({"__metadata__":{"a":"b"}})"));
  EXPECT_TRUE(m.tensors.empty());
  EXPECT_EQ(m.metadata.at("a"), "b");
}

TEST(SafetensorsTest, GetAndContains) {
  const SafetensorsContents c = Parse(
      SerializeSafetensors({{"w", Patterned(c10::ScalarType::Float, {2}, 1)}}));
  EXPECT_TRUE(c.Contains("w"));
  EXPECT_FALSE(c.Contains("missing.weight"));
  EXPECT_EQ(c.Get("w").numel(), 2);
  try {
    c.Get("missing.weight");
    ADD_FAILURE() << "Get of a missing tensor did not throw";
  } catch (const SafetensorsError& e) {
    EXPECT_TRUE(HasAll(e.what(), {"missing.weight"}));
  }
}

// ---------------------------------------------------------------------------
// Writer errors
// ---------------------------------------------------------------------------

std::string SerializeError(const NamedTensors& tensors) {
  try {
    SerializeSafetensors(tensors);
  } catch (const SafetensorsError& e) {
    return e.what();
  }
  return "<no SafetensorsError thrown>";
}

TEST(SafetensorsTest, SerializeRejectsUnsupportedDtype) {
  const at::Tensor c =
      at::empty({2}, c10::TensorOptions().dtype(c10::ScalarType::ComplexFloat));
  EXPECT_TRUE(
      HasAll(SerializeError({{"cplx", c}}), {"cplx", "unsupported dtype"}));
}

TEST(SafetensorsTest, SerializeRejectsDuplicateAndReservedNames) {
  const at::Tensor t = Patterned(c10::ScalarType::Float, {1}, 1);
  EXPECT_TRUE(HasAll(SerializeError({{"a", t}, {"b", t}, {"a", t}}),
                     {"'a'", "duplicate"}));
  EXPECT_TRUE(HasAll(SerializeError({{"__metadata__", t}}), {"reserved"}));
  EXPECT_TRUE(
      HasAll(SerializeError({{"u", at::Tensor()}}), {"'u'", "undefined"}));
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

TEST(SafetensorsTest, WriteAndReadFile) {
  const std::string path = TempPath("model.safetensors");
  const NamedTensors in = {{"a", Patterned(c10::ScalarType::BFloat16, {4}, 1)},
                           {"b", Patterned(c10::ScalarType::Bool, {5}, 2)}};
  WriteSafetensors(path, in, {{"format", "pt"}});
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_EQ(ReadAll(path), SerializeSafetensors(in, {{"format", "pt"}}));
  SafetensorsContents c = ReadSafetensors(path);
  ASSERT_EQ(c.tensors.size(), 2u);
  EXPECT_EQ(RawBytes(c.Get("a")), RawBytes(in[0].second));
  EXPECT_EQ(RawBytes(c.Get("b")), RawBytes(in[1].second));
  EXPECT_EQ(c.metadata.at("format"), "pt");

  // Overwriting replaces the file.
  WriteSafetensors(path, {{"only", Patterned(c10::ScalarType::Int, {1}, 3)}});
  c = ReadSafetensors(path);
  ASSERT_EQ(c.tensors.size(), 1u);
  EXPECT_EQ(c.tensors[0].first, "only");
  EXPECT_TRUE(c.metadata.empty());
  std::remove(path.c_str());
}

TEST(SafetensorsTest, WriteFailsInMissingDirectory) {
  const std::string path = TempPath("no/such/dir/model.safetensors");
  try {
    WriteSafetensors(path, {{"a", Patterned(c10::ScalarType::Float, {1}, 1)}});
    ADD_FAILURE() << "WriteSafetensors did not throw";
  } catch (const SafetensorsError& e) {
    EXPECT_TRUE(HasAll(e.what(), {path, "cannot open"}));
  }
}

TEST(SafetensorsTest, ReadRejectsMissingFile) {
  const std::string path = TempPath("does_not_exist.safetensors");
  try {
    ReadSafetensors(path);
    ADD_FAILURE() << "ReadSafetensors did not throw";
  } catch (const SafetensorsError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
    EXPECT_TRUE(HasAll(msg, {"cannot open"}));
  }
}

TEST(SafetensorsTest, ReadErrorsStartWithPath) {
  const std::string path = TempPath("bad.safetensors");
  WriteAll(path, MakeFile(kOneTensorHeader, "1234"));  // 4 of 8 bytes
  try {
    ReadSafetensors(path);
    ADD_FAILURE() << "ReadSafetensors did not throw";
  } catch (const SafetensorsError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_TRUE(HasAll(msg, {"tensor 'w'", "past the end"}));
  }
  std::remove(path.c_str());
}

// ---------------------------------------------------------------------------
// Malformed files
// ---------------------------------------------------------------------------

TEST(SafetensorsTest, RejectsFileTruncatedInDataSection) {
  const NamedTensors in = {{"a", Patterned(c10::ScalarType::Float, {4}, 1)},
                           {"b", Patterned(c10::ScalarType::Float, {4}, 2)}};
  std::string file = SerializeSafetensors(in);
  file.resize(file.size() - 3);
  EXPECT_TRUE(HasAll(ParseError(file),
                     {kSource, "tensor 'b'", "past the end", "truncated"}));
}

TEST(SafetensorsTest, RejectsFileShorterThanEightBytes) {
  EXPECT_TRUE(HasAll(ParseError(""), {kSource, "shorter than"}));
  EXPECT_TRUE(
      HasAll(ParseError(Le64(2).substr(0, 7)), {kSource, "shorter than"}));
}

TEST(SafetensorsTest, RejectsBadHeaderLength) {
  EXPECT_TRUE(HasAll(ParseError(Le64(1000) + "{}"),
                     {kSource, "header length 1000", "past the end"}));
  EXPECT_TRUE(
      HasAll(ParseError(Le64(0) + "{}"), {kSource, "header length is 0"}));
  EXPECT_TRUE(HasAll(ParseError(Le64(uint64_t{1} << 62) + "{}"),
                     {kSource, "absurdly large"}));
}

TEST(SafetensorsTest, RejectsHeaderThatIsNotJson) {
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile("{not json")), {kSource, "not valid JSON"}));
  EXPECT_TRUE(HasAll(ParseError(MakeFile(std::string("{\"a\":1}\0\0", 9))),
                     {kSource, "not valid JSON"}));
  EXPECT_TRUE(HasAll(ParseError(MakeFile("[1, 2]")),
                     {kSource, "must be a JSON object"}));
  EXPECT_TRUE(HasAll(ParseError(MakeFile(R"({"a": 5})")),
                     {kSource, "tensor 'a'", "must be a JSON object"}));
}

TEST(SafetensorsTest, RejectsMissingOrMistypedFields) {
  EXPECT_TRUE(HasAll(
      ParseError(MakeFile(R"({"a":{"dtype":"F32","shape":[1]}})", "1234")),
      {kSource, "tensor 'a'", "missing field 'data_offsets'"}));
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(R"({"a":{"shape":[1],"data_offsets":[0,4]}})",
                                 "1234")),
             {"tensor 'a'", "missing field 'dtype'"}));
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(
                 R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", "1234")),
             {"tensor 'a'", "missing field 'shape'"}));
  EXPECT_TRUE(HasAll(
      ParseError(MakeFile(
          R"({"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", "1234")),
      {"tensor 'a'", "'dtype' must be a string"}));
  EXPECT_TRUE(HasAll(
      ParseError(MakeFile(
          R"({"a":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", "1234")),
      {"tensor 'a'", "'shape' must be an array"}));
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(
                 R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
                 "1234")),
             {"tensor 'a'", "non-negative integers"}));
  EXPECT_TRUE(HasAll(
      ParseError(MakeFile(
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":"0-4"}})", "1234")),
      {"tensor 'a'", "two non-negative integers"}));
}

TEST(SafetensorsTest, RejectsUnknownDtype) {
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(
                 R"({"a":{"dtype":"F8_E9","shape":[4],"data_offsets":[0,4]}})",
                 "1234")),
             {kSource, "tensor 'a'", "unknown dtype", "F8_E9"}));
}

TEST(SafetensorsTest, RejectsNegativeShape) {
  EXPECT_TRUE(HasAll(
      ParseError(MakeFile(
          R"({"a":{"dtype":"U8","shape":[-1,2],"data_offsets":[0,2]}})", "12")),
      {kSource, "tensor 'a'", "negative"}));
}

TEST(SafetensorsTest, RejectsElementCountOverflow) {
  EXPECT_TRUE(HasAll(
      ParseError(
          MakeFile(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],)"
                   R"("data_offsets":[0,0]}})")),
      {kSource, "tensor 'a'", "overflow"}));
  EXPECT_TRUE(HasAll(ParseError(MakeFile(
                         R"({"a":{"dtype":"F64","shape":[4611686018427387904],)"
                         R"("data_offsets":[0,0]}})")),
                     {kSource, "tensor 'a'", "overflow"}));
  // Zero-element shapes whose other dims overflow are rejected too (torch
  // would overflow computing the strides).
  EXPECT_TRUE(HasAll(
      ParseError(
          MakeFile(R"({"a":{"dtype":"U8","shape":[0,4294967296,4294967296],)"
                   R"("data_offsets":[0,0]}})")),
      {"tensor 'a'", "overflow"}));
}

TEST(SafetensorsTest, RejectsOffsetsOutOfRange) {
  EXPECT_TRUE(HasAll(
      ParseError(MakeFile(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234")),
      {kSource, "tensor 'a'", "[0, 8]", "past the end of the data section"}));
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(
                 R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})",
                 "12345678")),
             {"tensor 'a'", "begin > end"}));
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(
                 R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})",
                 "1234")),
             {"tensor 'a'", "negative"}));
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(
                 R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})",
                 "1234")),
             {"tensor 'a'", "two non-negative integers"}));
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(R"({"a":{"dtype":"F32","shape":[1],)"
                                 R"("data_offsets":[0,18446744073709551616]}})",
                                 "1234")),
             {"tensor 'a'", "two non-negative integers"}));
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  EXPECT_TRUE(HasAll(ParseError(MakeFile(header, std::string(12, 'x'))),
                     {kSource, "tensor 'b'", "overlap", "'a'"}));
}

TEST(SafetensorsTest, RejectsGapBetweenTensors) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  EXPECT_TRUE(HasAll(ParseError(MakeFile(header, std::string(12, 'x'))),
                     {kSource, "tensor 'b'", "gap"}));
}

TEST(SafetensorsTest, RejectsSizeMismatch) {
  const std::string header =
      R"({"a.weight":{"dtype":"F32","shape":[5,6],"data_offsets":[0,100]}})";
  EXPECT_EQ(ParseError(MakeFile(header, std::string(100, 'x'))),
            "test.safetensors: tensor 'a.weight': data_offsets [0, 100] do not "
            "match dtype F32 x shape [5,6] = 120 bytes");
}

TEST(SafetensorsTest, RejectsTrailingGarbage) {
  const std::string file =
      SerializeSafetensors({{"a", Patterned(c10::ScalarType::Float, {3}, 1)}});
  EXPECT_TRUE(HasAll(ParseError(file + "xyz"),
                     {kSource, "trailing garbage", "3 bytes after"}));
  EXPECT_TRUE(HasAll(ParseError(MakeFile("{}", "x")), {"trailing garbage"}));
}

TEST(SafetensorsTest, RejectsBadMetadata) {
  EXPECT_TRUE(HasAll(ParseError(MakeFile(R"({"__metadata__":{"epoch":3}})")),
                     {kSource, "__metadata__", "'epoch'", "must be a string"}));
  EXPECT_TRUE(HasAll(ParseError(MakeFile(R"({"__metadata__":["a"]})")),
                     {kSource, "__metadata__", "object of strings"}));
  EXPECT_TRUE(HasAll(ParseError(MakeFile(R"({"__metadata__":null})")),
                     {"__metadata__", "object of strings"}));
}

TEST(SafetensorsTest, RejectsDuplicateNames) {
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  EXPECT_TRUE(HasAll(ParseError(MakeFile(header, "xy")),
                     {kSource, "duplicate tensor name 'a'"}));
  const std::string dup_field =
      R"({"a":{"dtype":"U8","shape":[1],"dtype":"I8","data_offsets":[0,1]}})";
  EXPECT_TRUE(HasAll(ParseError(MakeFile(dup_field, "x")),
                     {kSource, "duplicate key 'dtype'"}));
}

TEST(SafetensorsTest, RejectsInvalidBoolBytes) {
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(
                 R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
                 Bytes({0, 1, 2}))),
             {kSource, "tensor 'm'", "BOOL", "must be 0 or 1"}));
}

TEST(SafetensorsTest, RejectsDeeplyNestedHeader) {
  const std::string header =
      "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_TRUE(
      HasAll(ParseError(MakeFile(header)), {kSource, "nests too deeply"}));
}

}  // namespace
}  // namespace lpdetr
