// ResolveConfined on a real directory tree with real symbolic links.
#include "server/admin/confined_path.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;

// base/root      a.txt, sub/b.txt and symlinks (below)
// base/root2     x.txt   (a sibling whose name has root's as prefix)
// base/outside   secret.txt
class ConfinedPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "confined_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    base_ = fs::canonical(tmpl);
    root_ = base_ / "root";
    fs::create_directories(root_ / "sub");
    fs::create_directories(base_ / "root2");
    fs::create_directories(base_ / "outside");
    Touch(root_ / "a.txt");
    Touch(root_ / "sub" / "b.txt");
    Touch(base_ / "root2" / "x.txt");
    Touch(base_ / "outside" / "secret.txt");
    fs::create_symlink("../outside/secret.txt", root_ / "link_out_file");
    fs::create_directory_symlink(base_ / "outside", root_ / "link_out_dir");
    fs::create_directory_symlink("sub", root_ / "link_in");
    fs::create_symlink("sub/b.txt", root_ / "link_in_file");
    fs::create_symlink(base_ / "outside" / "nope", root_ / "dangling_out");
    fs::create_symlink("loop", root_ / "loop");
    fs::create_directory_symlink(root_, base_ / "root_link");
  }
  void TearDown() override { fs::remove_all(base_); }

  static void Touch(const fs::path& path) { std::ofstream(path) << "x"; }

  absl::StatusOr<std::string> Resolve(const std::string& path, bool must_exist = true) {
    return ResolveConfined(root_.string(), path, must_exist);
  }

  // PERMISSION_DENIED naming `path` and the root, not the outside directory.
  void ExpectOutside(const std::string& path, bool must_exist) {
    auto r = Resolve(path, must_exist);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied)
        << path << " must_exist=" << must_exist << ": " << r.status();
    const std::string message(r.status().message());
    EXPECT_NE(message.find("'" + path + "'"), std::string::npos) << message;
    EXPECT_NE(message.find(root_.string()), std::string::npos) << message;
    if (path.find("outside") == std::string::npos) {
      EXPECT_EQ(message.find("outside/"), std::string::npos) << message;
    }
  }

  fs::path base_;
  fs::path root_;
};

TEST_F(ConfinedPathTest, RelativePathsInside) {
  EXPECT_EQ(Resolve("a.txt").value(), (root_ / "a.txt").string());
  EXPECT_EQ(Resolve("sub/b.txt").value(), (root_ / "sub" / "b.txt").string());
  EXPECT_EQ(Resolve("./sub//b.txt").value(), (root_ / "sub" / "b.txt").string());
  EXPECT_EQ(Resolve("sub/../a.txt").value(), (root_ / "a.txt").string());
  EXPECT_EQ(Resolve("sub").value(), (root_ / "sub").string());
}

TEST_F(ConfinedPathTest, RootItselfIsInside) {
  EXPECT_EQ(Resolve(".").value(), root_.string());
  EXPECT_EQ(Resolve("sub/..").value(), root_.string());
  EXPECT_EQ(Resolve(root_.string()).value(), root_.string());
}

TEST_F(ConfinedPathTest, EmptyPathIsInvalid) {
  EXPECT_EQ(Resolve("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Resolve("", false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Resolve(std::string("a.txt\0/../x", 11)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ConfinedPathTest, DotDotEscapeIsDenied) {
  for (bool must_exist : {true, false}) {
    ExpectOutside("..", must_exist);
    ExpectOutside("../outside/secret.txt", must_exist);
    ExpectOutside("sub/../../outside/secret.txt", must_exist);
    ExpectOutside("../../../../../../../../etc", must_exist);
  }
  // Denied, not NOT_FOUND: whether something outside exists is not revealed.
  ExpectOutside("../outside/does-not-exist", true);
  ExpectOutside("../outside/new-dir/new-file", false);
}

TEST_F(ConfinedPathTest, AbsolutePaths) {
  EXPECT_EQ(Resolve((root_ / "sub" / "b.txt").string()).value(), (root_ / "sub" / "b.txt").string());
  EXPECT_EQ(Resolve((root_ / "new.txt").string(), false).value(), (root_ / "new.txt").string());
  ExpectOutside((base_ / "outside" / "secret.txt").string(), true);
  ExpectOutside((base_ / "outside" / "new.txt").string(), false);
  ExpectOutside("/", true);
  ExpectOutside((root_ / ".." / "outside").string(), true);
}

TEST_F(ConfinedPathTest, SiblingWithRootAsPrefixIsOutside) {
  for (bool must_exist : {true, false}) {
    ExpectOutside((base_ / "root2" / "x.txt").string(), must_exist);
    ExpectOutside((base_ / "root2").string(), must_exist);
    ExpectOutside("../root2/x.txt", must_exist);
  }
  ExpectOutside((base_ / "root2" / "new.txt").string(), false);
}

TEST_F(ConfinedPathTest, SymlinkEscapesAreDenied) {
  for (bool must_exist : {true, false}) {
    ExpectOutside("link_out_file", must_exist);      // file symlink
    ExpectOutside("link_out_dir", must_exist);       // directory symlink
    ExpectOutside("link_out_dir/secret.txt", must_exist);
    ExpectOutside("sub/../link_out_dir/secret.txt", must_exist);
  }
  ExpectOutside("link_out_dir/new.txt", false);
  ExpectOutside("link_out_dir/new-dir/new.txt", false);
  ExpectOutside("link_out_dir/not-there", true);
}

TEST_F(ConfinedPathTest, SymlinksInsideAreFollowed) {
  EXPECT_EQ(Resolve("link_in/b.txt").value(), (root_ / "sub" / "b.txt").string());
  EXPECT_EQ(Resolve("link_in").value(), (root_ / "sub").string());
  EXPECT_EQ(Resolve("link_in_file").value(), (root_ / "sub" / "b.txt").string());
  EXPECT_EQ(Resolve("link_in/new.txt", false).value(), (root_ / "sub" / "new.txt").string());
}

TEST_F(ConfinedPathTest, RootGivenThroughSymlink) {
  const std::string root_link = (base_ / "root_link").string();
  EXPECT_EQ(ResolveConfined(root_link, "a.txt", true).value(), (root_ / "a.txt").string());
  EXPECT_EQ(ResolveConfined(root_link, root_link + "/sub/b.txt", true).value(),
            (root_ / "sub" / "b.txt").string());
  auto r = ResolveConfined(root_link, "../outside/secret.txt", true);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(ConfinedPathTest, MissingLeafWithoutMustExist) {
  EXPECT_EQ(Resolve("new.txt", false).value(), (root_ / "new.txt").string());
  EXPECT_EQ(Resolve("sub/new.txt", false).value(), (root_ / "sub" / "new.txt").string());
  EXPECT_EQ(Resolve("new-dir/./deeper/new.txt", false).value(),
            (root_ / "new-dir" / "deeper" / "new.txt").string());
  EXPECT_EQ(Resolve((root_ / "new-dir" / "x").string(), false).value(),
            (root_ / "new-dir" / "x").string());
  EXPECT_FALSE(fs::exists(root_ / "new-dir"));  // nothing is created
}

TEST_F(ConfinedPathTest, DotDotAfterMissingComponentIsDenied) {
  ExpectOutside("new-dir/../../outside/secret.txt", false);
  ExpectOutside("new-dir/../a.txt", false);
}

TEST_F(ConfinedPathTest, MissingWithMustExistIsNotFound) {
  for (const std::string path : {"new.txt", "sub/new.txt", "new-dir/new.txt", "a.txt/x"}) {
    auto r = Resolve(path, true);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kNotFound) << path << ": " << r.status();
    EXPECT_NE(r.status().message().find("'" + path + "'"), absl::string_view::npos)
        << r.status();
  }
}

TEST_F(ConfinedPathTest, DanglingSymlinks) {
  EXPECT_EQ(Resolve("dangling_out", true).status().code(), absl::StatusCode::kNotFound);
  ExpectOutside("dangling_out", false);
  auto r = Resolve("dangling_out", false);
  EXPECT_EQ(r.status().message().find("nope"), absl::string_view::npos) << r.status();
}

TEST_F(ConfinedPathTest, ThroughAFileOrALoopIsInvalid) {
  EXPECT_EQ(Resolve("a.txt/x", false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Resolve("loop", true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Resolve("loop/x", false).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ConfinedPathTest, BadRootIsFailedPrecondition) {
  auto r = ResolveConfined((base_ / "no-such-root").string(), "a.txt", true);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("no-such-root"), absl::string_view::npos);
  EXPECT_EQ(ResolveConfined((root_ / "a.txt").string(), "x", false).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace lpdetr::admin
