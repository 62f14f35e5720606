// LoadAdminToken on real token files, ConstantTimeEquals, CheckBearerToken.
#include "server/admin/admin_auth.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;

constexpr char kToken[] = "s3cr3t-Admin-Token-0123";  // 23 characters

class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "admin_auth_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `contents` to a file in the temp dir with `mode`; returns its path.
  std::string WriteToken(const std::string& contents, mode_t mode) {
    const std::string path = (dir_ / "token").string();
    std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
  }

  fs::path dir_;
};

TEST_F(TokenFileTest, FileTokenHasTrailingWhitespaceTrimmed) {
  auto token = LoadAdminToken(WriteToken(std::string(kToken) + "\n", 0600), nullptr);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, kToken);

  token = LoadAdminToken(WriteToken(std::string(kToken) + " \t\r\n\n", 0400), nullptr);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, kToken);
}

TEST_F(TokenFileTest, FileWinsOverEnvironment) {
  auto token = LoadAdminToken(WriteToken(kToken, 0600), "another-token-from-the-env");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, kToken);
}

TEST_F(TokenFileTest, FileReadableByOthersIsRefused) {
  const std::string path = WriteToken(kToken, 0644);
  auto token = LoadAdminToken(path, nullptr);
  ASSERT_EQ(token.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(token.status().message());
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("chmod 600"), std::string::npos) << message;
  EXPECT_EQ(message.find(kToken), std::string::npos) << message;

  EXPECT_EQ(LoadAdminToken(WriteToken(kToken, 0604), nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(TokenFileTest, GroupReadableFileIsAccepted) {
  auto token = LoadAdminToken(WriteToken(kToken, 0640), nullptr);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, kToken);
}

TEST_F(TokenFileTest, MissingEmptyAndNonRegularFilesAreErrors) {
  const std::string missing = (dir_ / "nope").string();
  auto token = LoadAdminToken(missing, kToken);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(token.status().message().find(missing), absl::string_view::npos);

  EXPECT_EQ(LoadAdminToken(WriteToken("", 0600), kToken).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadAdminToken(WriteToken("\n\n  \n", 0600), kToken).status().code(),
            absl::StatusCode::kInvalidArgument);

  fs::create_directory(dir_ / "adir");
  ::chmod((dir_ / "adir").c_str(), 0700);
  EXPECT_EQ(LoadAdminToken((dir_ / "adir").string(), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TokenFileTest, BadTokensInFileAreRefusedWithoutPrintingThem) {
  const std::vector<std::string> bad = {
      "short-secret-xy",           // 15 characters
      "  " + std::string(kToken),  // leading whitespace is not trimmed
      "first-half-AAAA second-half-BBBB",
      "control-char-\x01-inside-it",
  };
  for (const std::string& contents : bad) {
    auto token = LoadAdminToken(WriteToken(contents + "\n", 0600), nullptr);
    ASSERT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument) << contents;
    const std::string message(token.status().message());
    EXPECT_EQ(message.find("short-secret"), std::string::npos) << message;
    EXPECT_EQ(message.find(kToken), std::string::npos) << message;
    EXPECT_EQ(message.find("half"), std::string::npos) << message;
    EXPECT_EQ(message.find("control-char"), std::string::npos) << message;
  }
}

TEST(LoadAdminTokenTest, EnvironmentIsUsedWithoutFile) {
  auto token = LoadAdminToken("", kToken);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, kToken);
}

TEST(LoadAdminTokenTest, NoTokenConfiguredIsEmpty) {
  auto token = LoadAdminToken("", nullptr);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "");
  token = LoadAdminToken("", "");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "");
}

TEST(LoadAdminTokenTest, LengthLimits) {
  const std::string sixteen(kMinAdminTokenLength, 'k');
  auto token = LoadAdminToken("", sixteen.c_str());
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, sixteen);

  const std::string fifteen(kMinAdminTokenLength - 1, 'k');
  token = LoadAdminToken("", fifteen.c_str());
  ASSERT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(token.status().message().find("LPDETR_ADMIN_TOKEN"), absl::string_view::npos);
  EXPECT_EQ(token.status().message().find(fifteen), absl::string_view::npos);

  const std::string too_long(kMaxAdminTokenLength + 1, 'k');
  EXPECT_EQ(LoadAdminToken("", too_long.c_str()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LoadAdminTokenTest, EnvTokenWithWhitespaceOrNonAsciiIsRefused) {
  for (const char* bad : {"secret-part-one secret-part-two", "secret-part-one\tsecret-part-two",
                          "secret-part-one\nsecret-part-two", "secret-part-\xc3\xa9-accented",
                          "secret-part-one\x7f"}) {
    auto token = LoadAdminToken("", bad);
    ASSERT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(token.status().message().find("secret-part"), absl::string_view::npos)
        << token.status().message();
  }
}

TEST(ConstantTimeEqualsTest, Correctness) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals(kToken, kToken));
  EXPECT_TRUE(ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0b", 3)));
  EXPECT_FALSE(ConstantTimeEquals("", "a"));
  EXPECT_FALSE(ConstantTimeEquals("a", ""));
  EXPECT_FALSE(ConstantTimeEquals("Xbcdef", "abcdef"));  // first byte
  EXPECT_FALSE(ConstantTimeEquals("abcdeX", "abcdef"));  // last byte
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcdef"));     // prefix
  EXPECT_FALSE(ConstantTimeEquals("abcdef", "abc"));
  // A shorter string is not "padded with NULs" into equality.
  EXPECT_FALSE(ConstantTimeEquals("a", std::string("a\0", 2)));
  EXPECT_FALSE(ConstantTimeEquals(std::string("a\0", 2), "a"));
  // Bytes with the high bit set.
  EXPECT_FALSE(ConstantTimeEquals("\xff", "\x7f"));
  EXPECT_TRUE(ConstantTimeEquals("\xff\x80", "\xff\x80"));
}

// Metadata as a server sees it; owns the strings the string_refs point to.
class Metadata {
 public:
  Metadata& Add(std::string key, std::string value) {
    storage_.emplace_back(std::move(key), std::move(value));
    return *this;
  }
  std::multimap<grpc::string_ref, grpc::string_ref> Map() const {
    std::multimap<grpc::string_ref, grpc::string_ref> map;
    for (const auto& [k, v] : storage_) map.emplace(grpc::string_ref(k), grpc::string_ref(v));
    return map;
  }

 private:
  std::vector<std::pair<std::string, std::string>> storage_;
};

grpc::Status Check(const std::string& authorization, std::string_view expected = kToken) {
  Metadata md;
  md.Add("user-agent", "test").Add("authorization", authorization);
  return CheckBearerToken(md.Map(), expected);
}

void ExpectUnauthenticated(const grpc::Status& status, const std::string& message) {
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(status.error_message(), message);
  EXPECT_EQ(status.error_message().find(kToken), std::string::npos);
}

TEST(CheckBearerTokenTest, MissingMetadata) {
  ExpectUnauthenticated(CheckBearerToken({}, kToken), "missing authorization metadata");
  Metadata md;
  md.Add("user-agent", "test").Add("x-authorization", std::string("Bearer ") + kToken);
  ExpectUnauthenticated(CheckBearerToken(md.Map(), kToken), "missing authorization metadata");
}

TEST(CheckBearerTokenTest, RightTokenAnySchemeCase) {
  EXPECT_TRUE(Check(std::string("Bearer ") + kToken).ok());
  EXPECT_TRUE(Check(std::string("bearer ") + kToken).ok());
  EXPECT_TRUE(Check(std::string("BEARER ") + kToken).ok());
  EXPECT_TRUE(Check(std::string("bEaReR ") + kToken).ok());
}

TEST(CheckBearerTokenTest, ExtraSpacesAndTabsAroundTheTokenAreIgnored) {
  EXPECT_TRUE(Check(std::string("Bearer    ") + kToken).ok());
  EXPECT_TRUE(Check(std::string("Bearer\t") + kToken).ok());
  EXPECT_TRUE(Check(std::string("  Bearer ") + kToken + "  \t").ok());
}

TEST(CheckBearerTokenTest, WrongScheme) {
  const std::string format = "authorization must be 'Bearer <token>'";
  ExpectUnauthenticated(Check(std::string("Basic ") + kToken), format);
  ExpectUnauthenticated(Check(kToken), format);
  ExpectUnauthenticated(Check(std::string("Bearer") + kToken), format);  // no separator
  ExpectUnauthenticated(Check("Bearer"), format);
  ExpectUnauthenticated(Check("Bearer    "), format);
  ExpectUnauthenticated(Check(""), format);
  ExpectUnauthenticated(Check(std::string("Bearerr ") + kToken), format);
}

TEST(CheckBearerTokenTest, WrongToken) {
  const std::string wrong = "the admin token is wrong";
  const std::string token = kToken;
  ExpectUnauthenticated(Check("Bearer not-the-admin-token-at-all"), wrong);
  ExpectUnauthenticated(Check("Bearer " + token.substr(0, token.size() - 1)), wrong);
  ExpectUnauthenticated(Check("Bearer " + token + "x"), wrong);
  ExpectUnauthenticated(Check("Bearer " + token.substr(0, 5) + " " + token.substr(5)), wrong);
  ExpectUnauthenticated(Check("Bearer " + token + " " + token), wrong);
  std::string upper = token;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  ExpectUnauthenticated(Check("Bearer " + upper), wrong);  // tokens are case-sensitive
}

TEST(CheckBearerTokenTest, MoreThanOneAuthorizationEntry) {
  Metadata md;
  md.Add("authorization", std::string("Bearer ") + kToken)
      .Add("authorization", std::string("Bearer ") + kToken);
  ExpectUnauthenticated(CheckBearerToken(md.Map(), kToken),
                        "more than one authorization metadata entry");
}

TEST(CheckBearerTokenTest, NoExpectedTokenRefusesEverything) {
  ExpectUnauthenticated(Check("Bearer anything-at-all-here", ""),
                        "the admin service has no token configured");
}

}  // namespace
}  // namespace lpdetr::admin
