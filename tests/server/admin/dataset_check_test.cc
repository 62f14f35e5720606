// The COCO dataset checks StartFineTune runs before queueing a job: real
// files in a temporary folder, one test per failure mode (its code and the
// bad item named in the message), and a 100k-image dataset for the cost.
#include "server/admin/dataset_check.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/test_paths.h"

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Whether `text` contains `part` (the failure shows both).
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" is not in \"" << text << "\"";
}
::testing::AssertionResult Lacks(const std::string& text, const std::string& part) {
  if (text.find(part) == std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" is in \"" << text << "\"";
}

class DatasetCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/dataset_check_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
    images_ = root_ / "images";
    fs::create_directories(images_ / "sub");
    annotations_ = root_ / "annotations.json";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  void WriteImage(const std::string& name, const std::string& bytes = "\xff\xd8 jpeg") {
    std::ofstream(images_ / name, std::ios::binary) << bytes;
  }
  void WriteText(const std::string& text) {
    std::ofstream(annotations_, std::ios::binary) << text;
  }

  // A valid dataset: 3 images (one in a subfolder), 2 sparse categories, 4
  // annotations (one crowd), with segmentation and keys the check skips.
  json ValidDataset() {
    WriteImage("a.jpg");
    WriteImage("b.png");
    WriteImage("sub/c.jpg");
    json d = {
        {"info", {{"description", "test"}, {"year", 2024}}},
        {"licenses", json::array({{{"id", 1}, {"name", "x"}}})},
        {"images", json::array({
                       {{"id", 10}, {"file_name", "a.jpg"}, {"width", 64}, {"height", 48}},
                       {{"id", 11}, {"file_name", "b.png"}, {"width", 32}, {"height", 32},
                        {"license", 1}},
                       {{"id", 12}, {"file_name", "sub/c.jpg"}, {"width", 20}, {"height", 30}},
                   })},
        {"categories", json::array({{{"id", 9}, {"name", "star"}, {"supercategory", "shape"}},
                                    {{"id", 5}, {"name", "circle"}}})},
        {"annotations",
         json::array({
             {{"id", 1}, {"image_id", 10}, {"category_id", 5}, {"bbox", {1, 2, 10, 20}},
              {"area", 200}, {"segmentation", {{1, 2, 11, 2, 11, 22}}}, {"iscrowd", 0}},
             {{"id", 2}, {"image_id", 10}, {"category_id", 9}, {"bbox", {0.5, 0.5, 3.25, 4}}},
             {{"id", 3}, {"image_id", 11}, {"category_id", 9}, {"bbox", {0, 0, 0, 0}},
              {"iscrowd", 1}, {"segmentation", {{"counts", {1, 2, 3}}, {"size", {32, 32}}}}},
             {{"id", 4}, {"image_id", 12}, {"category_id", 5}, {"bbox", {4, 4, 8, 8}},
              {"iscrowd", false}},
         })},
    };
    return d;
  }

  absl::Status Check(const json& d, DatasetSummary* summary = nullptr) {
    WriteText(d.dump());
    return CheckCocoDataset(annotations_.string(), images_.string(), summary);
  }
  absl::Status CheckText(const std::string& text) {
    WriteText(text);
    return CheckCocoDataset(annotations_.string(), images_.string(), nullptr);
  }

  fs::path root_, images_, annotations_;
};

std::string Message(const absl::Status& s) { return std::string(s.message()); }

TEST_F(DatasetCheckTest, ValidDatasetPassesWithItsCounts) {
  const json d = ValidDataset();
  DatasetSummary summary;
  ASSERT_TRUE(Check(d, &summary).ok()) << Check(d);
  EXPECT_EQ(summary.images, static_cast<int64_t>(d["images"].size()));
  EXPECT_EQ(summary.categories, static_cast<int64_t>(d["categories"].size()));
  EXPECT_EQ(summary.annotations, static_cast<int64_t>(d["annotations"].size()));
  EXPECT_EQ(summary.crowd_annotations, 1);
}

TEST_F(DatasetCheckTest, SectionsInAnyOrderAndAnIndentedFile) {
  const json d = ValidDataset();
  // Annotations first, categories last: ids are looked up after the pass.
  std::string text = "{\n  \"annotations\": " + d["annotations"].dump(2) +
                     ",\n  \"extra\": {\"images\": 3, \"nested\": [[{}], []]}" +
                     ",\n  \"images\": " + d["images"].dump(2) +
                     ",\n  \"categories\": " + d["categories"].dump(2) + "\n}\n";
  WriteText(text);
  DatasetSummary summary;
  const absl::Status s = CheckCocoDataset(annotations_.string(), images_.string(), &summary);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(summary.images, 3);
  EXPECT_EQ(summary.annotations, 4);
}

TEST_F(DatasetCheckTest, MissingAnnotationsFileIsNotFound) {
  const absl::Status s = CheckCocoDataset((root_ / "nope.json").string(), images_.string(),
                                          nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(Contains(Message(s), (root_ / "nope.json").string()));
}

TEST_F(DatasetCheckTest, UnreadableAnnotationsFileIsPermissionDenied) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads files whatever their mode";
  ValidDataset();
  WriteText("{}");
  ASSERT_EQ(chmod(annotations_.c_str(), 0), 0);
  const absl::Status s = CheckCocoDataset(annotations_.string(), images_.string(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(Contains(Message(s), annotations_.string()));
}

TEST_F(DatasetCheckTest, AFolderOrAFifoIsNotAnAnnotationsFile) {
  absl::Status s = CheckCocoDataset(images_.string(), images_.string(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "folder"));
  // A FIFO would block a reader forever: it is refused without reading.
  const fs::path fifo = root_ / "fifo.json";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  s = CheckCocoDataset(fifo.string(), images_.string(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "not a regular file"));
}

TEST_F(DatasetCheckTest, EmptyFileIsInvalid) {
  const absl::Status s = CheckText("");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "empty"));
}

TEST_F(DatasetCheckTest, SyntaxErrorGivesTheByteOffset) {
  // The comma after `"images": []` is missing.
  const std::string text = "{\"images\": [] \"annotations\": [], \"categories\": []}";
  const size_t bad = text.find("\"annotations\"");
  const absl::Status s = CheckText(text);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  const std::string m = Message(s);
  EXPECT_TRUE(Contains(m, annotations_.string()));
  const size_t at = m.find("not valid JSON at byte ");
  ASSERT_NE(at, std::string::npos) << m;
  const long offset = std::strtol(m.c_str() + at + strlen("not valid JSON at byte "), nullptr, 10);
  // The parser counts the bytes it read, up to the end of the offending token.
  EXPECT_GT(offset, static_cast<long>(bad)) << m;
  EXPECT_LE(offset, static_cast<long>(bad + strlen("\"annotations\""))) << m;
}

TEST_F(DatasetCheckTest, TruncatedFileIsASyntaxError) {
  const std::string text = ValidDataset().dump();
  const absl::Status s = CheckText(text.substr(0, text.size() / 2));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "not valid JSON at byte "));
}

TEST_F(DatasetCheckTest, TopLevelMustBeAnObject) {
  for (const char* text : {"[]", "3", "\"images\""}) {
    const absl::Status s = CheckText(text);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << text << ": " << s;
    EXPECT_TRUE(Contains(Message(s), "the top level must be a JSON object")) << text;
  }
}

TEST_F(DatasetCheckTest, MissingAndMistypedSectionsAreEachNamed) {
  json d = ValidDataset();
  d.erase("images");
  d["annotations"] = 7;
  d["categories"] = {{"id", 1}};
  const absl::Status s = Check(d);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  const std::string m = Message(s);
  EXPECT_TRUE(Contains(m, "3 problems"));
  EXPECT_TRUE(Contains(m, "missing top-level key \"images\""));
  EXPECT_TRUE(Contains(m, "annotations: must be an array, got 7"));
  EXPECT_TRUE(Contains(m, "categories: must be an array, got an object"));
  EXPECT_TRUE(Contains(m, annotations_.string()));
}

TEST_F(DatasetCheckTest, EmptySectionsAreInvalid) {
  for (const char* section : {"images", "annotations", "categories"}) {
    json d = ValidDataset();
    d[section] = json::array();
    const absl::Status s = Check(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << section << ": " << s;
    EXPECT_TRUE(Contains(Message(s), std::string(section) + ": is empty"));
  }
}

TEST_F(DatasetCheckTest, BadImageEntriesAreNamedByIndexAndKey) {
  json d = ValidDataset();
  d["images"][0]["id"] = "10";
  d["images"][1].erase("file_name");
  d["images"][2]["width"] = 0;
  d["images"].push_back("not an entry");
  const absl::Status s = Check(d);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  const std::string m = Message(s);
  EXPECT_TRUE(Contains(m, "images[0].id: must be an integer, got \"10\""));
  EXPECT_TRUE(Contains(m, "images[1]: missing key \"file_name\""));
  EXPECT_TRUE(Contains(m, "images[2].width: must be a positive integer, got 0"));
  EXPECT_TRUE(Contains(m, "images[3]: must be an object, got \"not an entry\""));
  // images[0]'s id did not read, so its annotations' image id is unknown.
  EXPECT_TRUE(Contains(m, "annotations[0].image_id: unknown image id 10"));
}

TEST_F(DatasetCheckTest, FileNameMustBeANonEmptyString) {
  for (const json& bad : {json(17), json(""), json(nullptr)}) {
    json d = ValidDataset();
    d["images"][1]["file_name"] = bad;
    const absl::Status s = Check(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
    EXPECT_TRUE(Contains(Message(s), "images[1].file_name: must be a non-empty string"));
  }
}

TEST_F(DatasetCheckTest, DuplicateIdsNameBothEntries) {
  json d = ValidDataset();
  d["images"][2]["id"] = 10;
  d["categories"][1]["id"] = 9;
  const absl::Status s = Check(d);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "images[2].id: duplicate image id 10 (also images[0])"));
  EXPECT_TRUE(Contains(Message(s),
                       "categories[1].id: duplicate category id 9 (also categories[0])"));
}

TEST_F(DatasetCheckTest, AnnotationsOnUnknownIdsAreNamed) {
  json d = ValidDataset();
  d["annotations"][1]["image_id"] = 99;
  d["annotations"][3]["category_id"] = 6;
  const absl::Status s = Check(d);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "annotations[1].image_id: unknown image id 99"));
  EXPECT_TRUE(Contains(Message(s), "annotations[3].category_id: unknown category id 6"));
  EXPECT_TRUE(Contains(Message(s), "2 problems"));
}

TEST_F(DatasetCheckTest, BadBoxesAreNamed) {
  struct Case {
    json bbox;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {json::array({1, 2, 3}), "annotations[2].bbox: must be 4 finite numbers"},
      {json::array({1, 2, "3", 4}), "annotations[2].bbox: must be 4 finite numbers"},
      {json(5), "annotations[2].bbox: must be 4 finite numbers"},
      {json::array({1, 2, -3, 4}), "annotations[2].bbox: negative width -3"},
      {json::array({1, 2, 3, -0.5}), "annotations[2].bbox: negative height -0.5"},
  };
  for (const Case& c : cases) {
    json d = ValidDataset();
    d["annotations"][2]["bbox"] = c.bbox;
    const absl::Status s = Check(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.bbox << ": " << s;
    EXPECT_TRUE(Contains(Message(s), c.expected)) << c.bbox;
  }
  // A number too large for a double is refused by the parser.
  json d = ValidDataset();
  std::string text = d.dump();
  const std::string box = "[0.5,0.5,3.25,4]";
  ASSERT_NE(text.find(box), std::string::npos) << text;
  text.replace(text.find(box), box.size(), "[0.5,0.5,1e999,4]");
  const absl::Status s = CheckText(text);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "not valid JSON at byte "));
  EXPECT_TRUE(Contains(Message(s), "1e999"));
}

TEST_F(DatasetCheckTest, CrowdMustBeZeroOrOne) {
  json d = ValidDataset();
  d["annotations"][0]["iscrowd"] = 2;
  const absl::Status s = Check(d);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "annotations[0].iscrowd: must be 0 or 1, got 2"));
}

TEST_F(DatasetCheckTest, ManyProblemsListTheFirstFiveInFileOrder) {
  json d = ValidDataset();
  // 12 bad annotations; the unknown image ids (found after the pass) and the
  // bad boxes (found during it) interleave by index.
  json annotations = json::array();
  for (int i = 0; i < 12; ++i) {
    json a = {{"image_id", 10}, {"category_id", 5}, {"bbox", {0, 0, 1, 1}}};
    if (i % 2 == 0) a["image_id"] = 1000 + i;
    if (i % 2 == 1) a["bbox"] = {0, 0, -1, 1};
    annotations.push_back(a);
  }
  d["annotations"] = annotations;
  const absl::Status s = Check(d);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  const std::string m = Message(s);
  EXPECT_TRUE(Contains(m, "12 problems"));
  EXPECT_TRUE(Contains(m, "(the first 5 of 12)"));
  size_t last = 0;
  for (size_t i = 0; i < kMaxListedProblems; ++i) {
    const size_t at = m.find("annotations[" + std::to_string(i) + "]");
    ASSERT_NE(at, std::string::npos) << i << ": " << m;
    EXPECT_GT(at, last) << i << ": " << m;
    last = at;
  }
  EXPECT_TRUE(Lacks(m, "annotations[" + std::to_string(kMaxListedProblems) + "]"));
}

TEST_F(DatasetCheckTest, FileNamesLeavingTheFolderAreRefused) {
  std::ofstream(root_ / "outside.jpg") << "x";
  for (const std::string& name : std::vector<std::string>{
           "../outside.jpg", "sub/../../outside.jpg", (root_ / "outside.jpg").string()}) {
    json d = ValidDataset();
    d["images"][1]["file_name"] = name;
    const absl::Status s = Check(d);
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << name << ": " << s;
    EXPECT_TRUE(Contains(Message(s), "images[1].file_name \"" + name + "\"")) << s;
  }
  // `..` that stays inside is a plain path.
  json d = ValidDataset();
  d["images"][1]["file_name"] = "sub/../b.png";
  EXPECT_TRUE(Check(d).ok()) << Check(d);
}

TEST_F(DatasetCheckTest, MissingImageFilesAreCountedAndTheFirstFiveNamed) {
  json d = ValidDataset();
  // 8 more images: 6 missing, one empty, one a folder.
  for (int i = 0; i < 8; ++i) {
    d["images"].push_back({{"id", 100 + i},
                           {"file_name", "gone" + std::to_string(i) + ".jpg"},
                           {"width", 8},
                           {"height", 8}});
  }
  WriteImage("gone6.jpg", "");
  fs::create_directory(images_ / "gone7.jpg");
  const absl::Status s = Check(d);
  ASSERT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  const std::string m = Message(s);
  EXPECT_TRUE(Contains(m, images_.string()));
  EXPECT_TRUE(Contains(m, "8 of 11 image files"));
  EXPECT_TRUE(Contains(m, "(the first 5 of 8)"));
  EXPECT_TRUE(Contains(m, "images[3].file_name \"gone0.jpg\": not found"));
  EXPECT_TRUE(Contains(m, "images[7].file_name \"gone4.jpg\""));
  EXPECT_TRUE(Lacks(m, "gone5.jpg"));

  // Listed alone, the empty file and the folder say what is wrong with them.
  d["images"].erase(d["images"].begin() + 3, d["images"].begin() + 9);
  const absl::Status two = Check(d);
  ASSERT_EQ(two.code(), absl::StatusCode::kNotFound) << two;
  EXPECT_TRUE(Contains(Message(two), "2 of 5 image files"));
  EXPECT_TRUE(Contains(Message(two), "\"gone6.jpg\": empty"));
  EXPECT_TRUE(Contains(Message(two), "\"gone7.jpg\": not a regular file"));
}

TEST_F(DatasetCheckTest, MissingOrFileImageFolder) {
  const json d = ValidDataset();
  WriteText(d.dump());
  absl::Status s = CheckCocoDataset(annotations_.string(), (root_ / "nope").string(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(Contains(Message(s), (root_ / "nope").string()));
  s = CheckCocoDataset(annotations_.string(), annotations_.string(), nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Contains(Message(s), "not a folder"));
}

TEST_F(DatasetCheckTest, MessagesNameThePathsAsShown) {
  json d = ValidDataset();
  d["images"][0]["file_name"] = "missing.jpg";
  WriteText("{\"images\": 1}");
  const absl::StatusOr<CocoAnnotations> bad =
      ReadCocoAnnotations(annotations_.string(), "user/ann.json");
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_EQ(Message(bad.status()).rfind("user/ann.json: ", 0), 0u) << bad.status();
  EXPECT_TRUE(Lacks(Message(bad.status()), root_.string()));
  WriteText(d.dump());
  const absl::StatusOr<CocoAnnotations> read =
      ReadCocoAnnotations(annotations_.string(), "user/ann.json");
  ASSERT_TRUE(read.ok()) << read.status();
  const absl::Status missing = CheckImageFiles(*read, images_.string(), "user/images");
  ASSERT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_EQ(Message(missing).rfind("user/images: ", 0), 0u) << missing;
  EXPECT_TRUE(Contains(Message(missing), "named in user/ann.json"));
  EXPECT_TRUE(Lacks(Message(missing), root_.string()));
}

TEST_F(DatasetCheckTest, StructureIsCheckedBeforeTheFiles) {
  json d = ValidDataset();
  d["images"][0]["file_name"] = "missing.jpg";
  d["annotations"][0]["bbox"] = {0, 0, -1, 1};
  EXPECT_EQ(Check(d).code(), absl::StatusCode::kInvalidArgument);
}

// What `lpdetr-train make-shapes` writes, lpdetr-train trains on: it passes.
TEST_F(DatasetCheckTest, TheTrainersShapesDatasetPasses) {
  const fs::path train = fs::path(testing_paths::BinDir()) / "lpdetr-train";
  if (!fs::exists(train)) GTEST_SKIP() << train << " is not built";
  const fs::path out = root_ / "shapes";
  const std::string command = train.string() + " make-shapes --output " + out.string() +
                              " --images 6 --seed 3 >/dev/null 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  DatasetSummary summary;
  const absl::Status s = CheckCocoDataset((out / "annotations.json").string(),
                                          (out / "images").string(), &summary);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(summary.images, 6);
  EXPECT_GT(summary.annotations, 0);
}

// 100k images with a file each and 300k annotations with polygons: the check
// takes seconds, not minutes (one SAX pass, one stat per image).
TEST_F(DatasetCheckTest, HundredThousandImagesAreQuick) {
  constexpr int kImages = 100000;
  constexpr int kPerImage = 3;
  for (int i = 0; i < 100; ++i) fs::create_directory(images_ / std::to_string(i));
  {
    std::FILE* out = std::fopen(annotations_.c_str(), "w");
    ASSERT_NE(out, nullptr);
    std::fputs("{\"images\": [", out);
    for (int i = 0; i < kImages; ++i) {
      const std::string name = std::to_string(i % 100) + "/" + std::to_string(i) + ".jpg";
      std::fprintf(out, "%s{\"id\": %d, \"file_name\": \"%s\", \"width\": 640, \"height\": 480}",
                   i ? "," : "", i + 1, name.c_str());
      std::ofstream(images_ / name) << "x";
    }
    std::fputs("], \"annotations\": [", out);
    for (int i = 0; i < kImages * kPerImage; ++i) {
      std::fprintf(out,
                   "%s{\"id\": %d, \"image_id\": %d, \"category_id\": %d, \"bbox\": [1.5, 2.5, "
                   "30.25, 40.75], \"area\": 1232.4, \"iscrowd\": 0, \"segmentation\": [[1.5, "
                   "2.5, 31.75, 2.5, 31.75, 43.25, 1.5, 43.25]]}",
                   i ? "," : "", i + 1, i / kPerImage + 1, 1 + i % 80);
    }
    std::fputs("], \"categories\": [", out);
    for (int c = 1; c <= 80; ++c) {
      std::fprintf(out, "%s{\"id\": %d, \"name\": \"c%d\"}", c > 1 ? "," : "", c, c);
    }
    std::fputs("]}", out);
    std::fclose(out);
  }
  const auto t0 = std::chrono::steady_clock::now();
  DatasetSummary summary;
  const absl::Status s = CheckCocoDataset(annotations_.string(), images_.string(), &summary);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(summary.images, kImages);
  EXPECT_EQ(summary.annotations, kImages * kPerImage);
  EXPECT_EQ(summary.categories, 80);
  std::fprintf(stderr, "[ timing ] %d images, %d annotations, %.1f MB: %.2f s\n", kImages,
               kImages * kPerImage, fs::file_size(annotations_) / 1e6, seconds);
  EXPECT_LT(seconds, 30.0);  // generous: a shared 2-core machine
}

}  // namespace
}  // namespace lpdetr::admin
