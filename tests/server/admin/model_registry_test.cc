// ModelRegistry on real copies of models/lp-detr-shapes in temp directories.
#include "server/admin/model_registry.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/test_paths.h"

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void WriteFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The .tmp- entries anywhere under `root`.
std::vector<std::string> TmpEntries(const fs::path& root) {
  std::vector<std::string> found;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) found.push_back(e.path().string());
  }
  return found;
}

std::vector<std::string> Versions(const std::vector<ModelVersionInfo>& infos) {
  std::vector<std::string> v;
  for (const auto& i : infos) v.push_back(i.version);
  return v;
}

class ModelRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "model_registry_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    shapes_ = fs::path(testing_paths::SourceDir()) / "models" / "lp-detr-shapes";
    ASSERT_TRUE(fs::exists(shapes_ / "config.json")) << shapes_;
    source_ = dir_ / "src";
    fs::copy(shapes_, source_, fs::copy_options::recursive);
    root_ = dir_ / "registry";
    auto registry = ModelRegistry::Open(root_.string());
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = *std::move(registry);
  }
  void TearDown() override {
    registry_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string MustRegister(const std::string& name, const fs::path& src) {
    auto info = registry_->Register(name, src.string(), "job-x", 0.5);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->version : "";
  }

  std::vector<std::string> HistoryLines(const std::string& name) {
    std::vector<std::string> lines;
    std::ifstream in(root_ / name / "HISTORY");
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  fs::path dir_, shapes_, source_, root_;
  std::unique_ptr<ModelRegistry> registry_;
};

TEST_F(ModelRegistryTest, RegisterTwiceGivesVersionsOneAndTwoWithIdenticalFiles) {
  auto first = registry_->Register("shapes", source_.string(), "job-1", 0.25);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = registry_->Register("shapes", source_.string(), "job-2", 0.75);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->version, "1");
  EXPECT_EQ(second->version, "2");
  EXPECT_EQ(fs::path(first->path), root_ / "shapes" / "1");
  EXPECT_EQ(fs::path(second->path), root_ / "shapes" / "2");

  for (const auto* info : {&*first, &*second}) {
    size_t files = 0;
    for (const auto& e : fs::recursive_directory_iterator(shapes_)) {
      if (!e.is_regular_file()) continue;
      const fs::path copy = fs::path(info->path) / fs::relative(e.path(), shapes_);
      ASSERT_TRUE(fs::exists(copy)) << copy;
      EXPECT_EQ(ReadFile(copy), ReadFile(e.path())) << copy;
      ++files;
    }
    EXPECT_GE(files, 3u);
    EXPECT_FALSE(info->active);
  }
  auto list = registry_->List("shapes");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(Versions(*list), (std::vector<std::string>{"1", "2"}));
  EXPECT_TRUE(TmpEntries(root_).empty());
}

TEST_F(ModelRegistryTest, DefaultModelNamesAnActiveModelAndSurvivesReopen) {
  EXPECT_EQ(registry_->DefaultModel().status().code(), absl::StatusCode::kNotFound);
  const std::string v1 = MustRegister("shapes", source_);
  // A model without an active version cannot be the default.
  EXPECT_EQ(registry_->SetDefaultModel("shapes").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(registry_->SetActive("shapes", v1).ok());
  ASSERT_TRUE(registry_->SetDefaultModel("shapes").ok());
  const std::string v2 = MustRegister("shapes", source_);
  ASSERT_TRUE(registry_->SetActive("shapes", v2).ok());
  auto def = registry_->DefaultModel();
  ASSERT_TRUE(def.ok()) << def.status();
  EXPECT_EQ(def->first, "shapes");
  EXPECT_EQ(def->second, v2);  // follows the model's ACTIVE version
  EXPECT_EQ(registry_->SetDefaultModel("../x").code(), absl::StatusCode::kInvalidArgument);
  // DEFAULT is a file at the root, never listed as a model.
  EXPECT_EQ(registry_->ModelNames(), std::vector<std::string>{"shapes"});
  registry_.reset();
  auto reopened = ModelRegistry::Open(root_.string());
  ASSERT_TRUE(reopened.ok());
  auto again = (*reopened)->DefaultModel();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->second, v2);
}

TEST_F(ModelRegistryTest, RegistryJsonRecordsJobTimeAndAp) {
  const int64_t before = static_cast<int64_t>(::time(nullptr));
  auto info = registry_->Register("shapes", source_.string(), "job-42", 0.625);
  ASSERT_TRUE(info.ok()) << info.status();
  const int64_t after = static_cast<int64_t>(::time(nullptr));
  const auto record = nlohmann::json::parse(ReadFile(fs::path(info->path) / "registry.json"));
  EXPECT_EQ(record.at("job_id").get<std::string>(), "job-42");
  EXPECT_DOUBLE_EQ(record.at("eval_ap").get<double>(), 0.625);
  const int64_t created = record.at("created_at").get<int64_t>();
  EXPECT_GE(created, before);
  EXPECT_LE(created, after);

  auto got = registry_->Get("shapes", info->version);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->name, "shapes");
  EXPECT_EQ(got->job_id, "job-42");
  EXPECT_DOUBLE_EQ(got->eval_ap, 0.625);
  EXPECT_EQ(got->created_at, created);
}

TEST_F(ModelRegistryTest, ClassesComeFromLabelsThenConfig) {
  const auto config = nlohmann::json::parse(ReadFile(source_ / "config.json"));
  const auto config_classes = config.at("classes").get<std::vector<std::string>>();
  ASSERT_FALSE(config_classes.empty());

  auto shipped = registry_->Register("shapes", source_.string(), "", -1);
  ASSERT_TRUE(shipped.ok()) << shipped.status();
  EXPECT_EQ(shipped->classes, config_classes);  // labels.txt agrees with config.json

  WriteFile(source_ / "labels.txt", "one\r\ntwo\nthree\nfour\nfive\nsix\n\n");
  auto relabelled = registry_->Register("shapes", source_.string(), "", -1);
  ASSERT_TRUE(relabelled.ok()) << relabelled.status();
  EXPECT_EQ(relabelled->classes,
            (std::vector<std::string>{"one", "two", "three", "four", "five", "six"}));

  fs::remove(source_ / "labels.txt");
  auto from_config = registry_->Register("shapes", source_.string(), "", -1);
  ASSERT_TRUE(from_config.ok()) << from_config.status();
  EXPECT_EQ(from_config->classes, config_classes);
}

TEST_F(ModelRegistryTest, SourceWithoutConfigLeavesNothingVisible) {
  fs::remove(source_ / "config.json");
  auto info = registry_->Register("shapes", source_.string(), "job", 0.1);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(info.status().message().find("config.json"), std::string::npos);
  auto all = registry_->List("");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE(all->empty());
  EXPECT_TRUE(TmpEntries(root_).empty());
}

TEST_F(ModelRegistryTest, CopyFailingMidwayLeavesNothingAndUsesNoNumber) {
  fs::create_symlink(dir_ / "does-not-exist", source_ / "dangling");
  auto info = registry_->Register("shapes", source_.string(), "job", 0.1);
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.status().message().find("dangling"), std::string::npos) << info.status();
  auto list = registry_->List("shapes");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_TRUE(list->empty());
  EXPECT_TRUE(TmpEntries(root_).empty());

  fs::remove(source_ / "dangling");
  EXPECT_EQ(MustRegister("shapes", source_), "1");
}

TEST_F(ModelRegistryTest, OpenRemovesTmpLeftovers) {
  ASSERT_EQ(MustRegister("shapes", source_), "1");
  fs::create_directories(root_ / "shapes" / ".tmp-0123abcd" / "sub");
  WriteFile(root_ / "shapes" / ".tmp-0123abcd" / "config.json", "{}");
  WriteFile(root_ / "shapes" / ".tmp-ACTIVE-feed", "1\n");
  fs::create_directories(root_ / "shapes" / ".tmp-deleted-7-beef");
  registry_.reset();

  auto reopened = ModelRegistry::Open(root_.string());
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_TRUE(TmpEntries(root_).empty());
  auto list = (*reopened)->List("shapes");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(Versions(*list), (std::vector<std::string>{"1"}));
  EXPECT_TRUE(fs::exists(root_ / "shapes" / "1" / "weights.safetensors"));
}

TEST_F(ModelRegistryTest, OpenCreatesRootAndRefusesAFile) {
  auto nested = ModelRegistry::Open((dir_ / "a" / "b").string());
  ASSERT_TRUE(nested.ok()) << nested.status();
  EXPECT_TRUE(fs::is_directory(dir_ / "a" / "b"));

  WriteFile(dir_ / "plain", "x");
  auto file = ModelRegistry::Open((dir_ / "plain").string());
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelRegistryTest, SetActiveWritesActiveAndHistory) {
  ASSERT_EQ(MustRegister("shapes", source_), "1");
  ASSERT_EQ(MustRegister("shapes", source_), "2");
  EXPECT_EQ(registry_->ActiveVersion("shapes").status().code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(registry_->SetActive("shapes", "1").ok());
  EXPECT_EQ(*registry_->ActiveVersion("shapes"), "1");
  EXPECT_TRUE(HistoryLines("shapes").empty());

  ASSERT_TRUE(registry_->SetActive("shapes", "2").ok());
  EXPECT_EQ(*registry_->ActiveVersion("shapes"), "2");
  EXPECT_EQ(ReadFile(root_ / "shapes" / "ACTIVE"), "2\n");
  EXPECT_EQ(HistoryLines("shapes"), (std::vector<std::string>{"1"}));
  ASSERT_TRUE(registry_->SetActive("shapes", "2").ok());  // no change
  EXPECT_EQ(HistoryLines("shapes"), (std::vector<std::string>{"1"}));

  auto list = registry_->List("shapes");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_FALSE((*list)[0].active);
  EXPECT_TRUE((*list)[1].active);

  EXPECT_EQ(registry_->SetActive("shapes", "9").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->SetActive("shapes", "x1").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_->SetActive("other", "1").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*registry_->ActiveVersion("shapes"), "2");
  EXPECT_TRUE(TmpEntries(root_).empty());

  registry_.reset();
  auto reopened = ModelRegistry::Open(root_.string());
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(*(*reopened)->ActiveVersion("shapes"), "2");
}

TEST_F(ModelRegistryTest, RollbackWalksBackThroughHistory) {
  for (const char* v : {"1", "2", "3"}) ASSERT_EQ(MustRegister("shapes", source_), v);
  for (const char* v : {"1", "2", "3"}) ASSERT_TRUE(registry_->SetActive("shapes", v).ok());
  EXPECT_EQ(*registry_->RollbackTarget("shapes"), "2");

  auto back = registry_->Rollback("shapes");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, "2");
  EXPECT_EQ(*registry_->ActiveVersion("shapes"), "2");
  EXPECT_EQ(HistoryLines("shapes"), (std::vector<std::string>{"1"}));

  back = registry_->Rollback("shapes");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, "1");
  EXPECT_EQ(*registry_->ActiveVersion("shapes"), "1");

  EXPECT_EQ(registry_->Rollback("shapes").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(registry_->RollbackTarget("shapes").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*registry_->ActiveVersion("shapes"), "1");
}

TEST_F(ModelRegistryTest, RollbackWithoutHistoryIsFailedPrecondition) {
  ASSERT_EQ(MustRegister("shapes", source_), "1");
  EXPECT_EQ(registry_->Rollback("shapes").status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(registry_->SetActive("shapes", "1").ok());
  EXPECT_EQ(registry_->Rollback("shapes").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*registry_->ActiveVersion("shapes"), "1");
}

TEST_F(ModelRegistryTest, RollbackSkipsDeletedVersions) {
  for (const char* v : {"1", "2", "3"}) ASSERT_EQ(MustRegister("shapes", source_), v);
  for (const char* v : {"1", "2", "3"}) ASSERT_TRUE(registry_->SetActive("shapes", v).ok());
  ASSERT_TRUE(registry_->Delete("shapes", "2").ok());
  EXPECT_EQ(*registry_->RollbackTarget("shapes"), "1");
  EXPECT_EQ(*registry_->Rollback("shapes"), "1");
  EXPECT_TRUE(HistoryLines("shapes").empty());
}

TEST_F(ModelRegistryTest, DeleteRefusesActiveAndNeverReusesNumbers) {
  ASSERT_EQ(MustRegister("shapes", source_), "1");
  ASSERT_EQ(MustRegister("shapes", source_), "2");
  ASSERT_TRUE(registry_->SetActive("shapes", "1").ok());

  EXPECT_EQ(registry_->Delete("shapes", "1").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(fs::exists(root_ / "shapes" / "1" / "config.json"));
  EXPECT_EQ(registry_->Delete("shapes", "7").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry_->Delete("shapes", "..").code(), absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(registry_->Delete("shapes", "2").ok());
  EXPECT_FALSE(fs::exists(root_ / "shapes" / "2"));
  EXPECT_TRUE(TmpEntries(root_).empty());
  EXPECT_EQ(registry_->Get("shapes", "2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(MustRegister("shapes", source_), "3");

  registry_.reset();  // the counter survives a reopen
  auto reopened = ModelRegistry::Open(root_.string());
  ASSERT_TRUE(reopened.ok());
  registry_ = *std::move(reopened);
  ASSERT_TRUE(registry_->Delete("shapes", "3").ok());
  EXPECT_EQ(MustRegister("shapes", source_), "4");
  EXPECT_EQ(Versions(*registry_->List("shapes")), (std::vector<std::string>{"1", "4"}));
}

TEST_F(ModelRegistryTest, BadNamesAreRefused) {
  for (const std::string& bad :
       {std::string("../x"), std::string(""), std::string("a/b"), std::string(65, 'a'),
        std::string("."), std::string(".."), std::string(".hidden"), std::string("sp ace")}) {
    const absl::Status status = ModelRegistry::ValidateName(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    if (!bad.empty()) EXPECT_NE(status.message().find(bad), std::string::npos) << status;
    auto info = registry_->Register(bad, source_.string(), "job", 0);
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(registry_->SetActive(bad, "1").code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(registry_->ModelNames().empty());
  EXPECT_FALSE(fs::exists(dir_ / "x"));
  for (const std::string& good : {std::string(64, 'a'), std::string("Lp-DETR_v1.2")}) {
    EXPECT_TRUE(ModelRegistry::ValidateName(good).ok()) << good;
  }
}

TEST_F(ModelRegistryTest, GetAndListReportUnknownsAndOrderNumerically) {
  auto missing = registry_->Get("shapes", "1");
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("shapes"), std::string::npos);
  EXPECT_NE(missing.status().message().find("\"1\""), std::string::npos);
  EXPECT_EQ(registry_->Get("shapes", "1a").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_->Get("shapes", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry_->List("nobody").status().code(), absl::StatusCode::kNotFound);

  for (int i = 1; i <= 11; ++i) ASSERT_EQ(MustRegister("b-model", source_), std::to_string(i));
  ASSERT_EQ(MustRegister("a-model", source_), "1");
  EXPECT_EQ(registry_->ModelNames(), (std::vector<std::string>{"a-model", "b-model"}));
  auto b = registry_->List("b-model");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(Versions(*b), (std::vector<std::string>{"1", "2", "3", "4", "5", "6", "7", "8", "9",
                                                    "10", "11"}));
  auto all = registry_->List("");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 12u);
  EXPECT_EQ((*all)[0].name, "a-model");
  EXPECT_EQ((*all)[1].name, "b-model");
}

TEST_F(ModelRegistryTest, ConcurrentRegistrationsGetDistinctVersions) {
  std::vector<std::string> got[2];
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        auto info = registry_->Register("shapes", source_.string(), "job-" + std::to_string(t), i);
        if (info.ok()) got[t].push_back(info->version);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(got[0].size(), 5u);
  ASSERT_EQ(got[1].size(), 5u);
  std::set<std::string> distinct(got[0].begin(), got[0].end());
  distinct.insert(got[1].begin(), got[1].end());
  std::set<std::string> expected;
  for (int i = 1; i <= 10; ++i) expected.insert(std::to_string(i));
  EXPECT_EQ(distinct, expected);
  auto list = registry_->List("shapes");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 10u);
  EXPECT_TRUE(TmpEntries(root_).empty());
}

}  // namespace
}  // namespace lpdetr::admin
