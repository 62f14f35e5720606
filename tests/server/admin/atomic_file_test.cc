// WriteFileAtomically and its helpers on a scratch directory: contents land
// exactly, overwrites replace, nothing but the target is left behind (also
// after failures and with concurrent writers), and errors name the path and
// the errno text.
#include "server/admin/atomic_file.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// The names of the entries directly under `dir`, sorted.
std::set<std::string> Entries(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

bool Contains(absl::string_view haystack, const std::string& needle) {
  return haystack.find(needle) != absl::string_view::npos;
}

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::path(::testing::TempDir()) / "atomic_file_XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }

  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, ec);
    fs::remove_all(dir_, ec);
  }

  fs::path dir_;
};

TEST_F(AtomicFileTest, WritesANewFile) {
  const fs::path path = dir_ / "ACTIVE";
  ASSERT_TRUE(WriteFileAtomically(path, "7\n").ok());
  EXPECT_EQ(ReadFile(path), "7\n");
  EXPECT_EQ(Entries(dir_), std::set<std::string>{"ACTIVE"});
}

TEST_F(AtomicFileTest, OverwritesWithExactBytes) {
  const fs::path path = dir_ / "data.bin";
  ASSERT_TRUE(WriteFileAtomically(path, "a much longer first version\n").ok());
  const std::string binary("x\0y\n\xff", 5);
  ASSERT_TRUE(WriteFileAtomically(path, binary).ok());
  EXPECT_EQ(ReadFile(path), binary);  // shorter: nothing of the old tail remains
  ASSERT_TRUE(WriteFileAtomically(path, "").ok());
  EXPECT_EQ(fs::file_size(path), 0u);
  EXPECT_EQ(Entries(dir_), std::set<std::string>{"data.bin"});
}

TEST_F(AtomicFileTest, ConcurrentWritersLeaveOneWholeVersion) {
  const fs::path path = dir_ / "HISTORY";
  std::vector<std::string> versions;
  for (int i = 0; i < 8; ++i) versions.push_back(std::string(4096 + i, static_cast<char>('a' + i)));
  std::vector<std::thread> writers;
  std::vector<absl::Status> results(versions.size());
  for (size_t i = 0; i < versions.size(); ++i) {
    writers.emplace_back([&, i] {
      for (int round = 0; round < 20 && results[i].ok(); ++round) {
        results[i] = WriteFileAtomically(path, versions[i]);
      }
    });
  }
  for (std::thread& t : writers) t.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
  const std::string final_contents = ReadFile(path);
  bool whole = false;
  for (const std::string& v : versions) whole = whole || final_contents == v;
  EXPECT_TRUE(whole) << "a mix of writes, " << final_contents.size() << " bytes";
  EXPECT_EQ(Entries(dir_), std::set<std::string>{"HISTORY"});
}

TEST_F(AtomicFileTest, PathUnderARegularFileFailsNamingPathAndErrno) {
  // Fails for root too: a regular file cannot hold directory entries.
  const fs::path file = dir_ / "plain";
  std::ofstream(file) << "keep me";
  const fs::path path = file / "child";
  const absl::Status status = WriteFileAtomically(path, "x");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(Contains(status.message(), file.string())) << status;
  EXPECT_TRUE(Contains(status.message(), std::strerror(ENOTDIR))) << status;
  EXPECT_EQ(ReadFile(file), "keep me");
  EXPECT_EQ(Entries(dir_), std::set<std::string>{"plain"});
}

TEST_F(AtomicFileTest, FailedRenameRemovesTheTempFile) {
  // A non-empty directory where the file should go: the rename fails.
  const fs::path path = dir_ / "target";
  fs::create_directories(path / "inside");
  const absl::Status status = WriteFileAtomically(path, "x");
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), path.string())) << status;
  EXPECT_TRUE(fs::is_directory(path / "inside"));
  EXPECT_EQ(Entries(dir_), std::set<std::string>{"target"});
}

TEST_F(AtomicFileTest, UnwritableDirectoryFailsAndKeepsTheOldFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes into read-only directories";
  const fs::path path = dir_ / "ACTIVE";
  ASSERT_TRUE(WriteFileAtomically(path, "1\n").ok());
  fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec);
  const absl::Status status = WriteFileAtomically(path, "2\n");
  fs::permissions(dir_, fs::perms::owner_all);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), dir_.string())) << status;
  EXPECT_TRUE(Contains(status.message(), std::strerror(EACCES))) << status;
  EXPECT_EQ(ReadFile(path), "1\n");
  EXPECT_EQ(Entries(dir_), std::set<std::string>{"ACTIVE"});
}

TEST_F(AtomicFileTest, CreateSyncedFileRefusesAnExistingFile) {
  const fs::path path = dir_ / "registry.json";
  ASSERT_TRUE(CreateSyncedFile(path, "{}\n").ok());
  EXPECT_EQ(ReadFile(path), "{}\n");
  const absl::Status again = CreateSyncedFile(path, "{\"x\":1}\n");
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(Contains(again.message(), std::strerror(EEXIST))) << again;
  EXPECT_EQ(ReadFile(path), "{}\n");
}

TEST_F(AtomicFileTest, WriteFullyWritesEverythingAndNamesThePathOnError) {
  const fs::path path = dir_ / "big";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0);
  const std::string big(3 << 20, 'z');
  EXPECT_TRUE(WriteFully(fd, big, path).ok());
  ::close(fd);
  EXPECT_EQ(fs::file_size(path), big.size());
  const int read_only = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(read_only, 0);
  const absl::Status status = WriteFully(read_only, "x", path);
  ::close(read_only);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), path.string())) << status;
  EXPECT_TRUE(Contains(status.message(), std::strerror(EBADF))) << status;
}

TEST_F(AtomicFileTest, SyncDirectoryNeedsAnExistingDirectory) {
  EXPECT_TRUE(SyncDirectory(dir_).ok());
  const absl::Status status = SyncDirectory(dir_ / "missing");
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), (dir_ / "missing").string())) << status;
}

}  // namespace
}  // namespace lpdetr::admin
