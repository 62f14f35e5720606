// ModelRegistry: versioned model directories with atomic on-disk updates.
#include "server/admin/model_registry.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "server/admin/atomic_file.h"

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;

constexpr char kTmpPrefix[] = ".tmp-";
constexpr char kActiveFile[] = "ACTIVE";
constexpr char kDefaultFile[] = "DEFAULT";
constexpr char kHistoryFile[] = "HISTORY";
constexpr char kCounterFile[] = "NEXT_VERSION";
constexpr char kRegistryJson[] = "registry.json";
constexpr char kConfigJson[] = "config.json";
constexpr char kLabelsTxt[] = "labels.txt";
constexpr size_t kMaxNameLength = 64;
constexpr size_t kMaxVersionLength = 18;  // fits in int64

// absl here has its own string_view type; this bridges std::string_view.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string Quoted(std::string_view s) {
  return absl::StrCat("\"", absl::CHexEscape(Av(s)), "\"");
}

absl::Status ErrnoError(std::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(Av(what), " ", path, ": ", std::strerror(errno)));
}

absl::Status FsError(std::string_view what, const fs::path& path, const std::error_code& ec) {
  return absl::InternalError(absl::StrCat(Av(what), " ", path.string(), ": ", ec.message()));
}

// A random hex suffix for temp names.
std::string RandomSuffix() {
  thread_local std::mt19937_64 gen(std::random_device{}() ^
                                   (static_cast<uint64_t>(::getpid()) << 32));
  return absl::StrCat(absl::Hex(gen(), absl::kZeroPad16));
}

// Copies the regular file `src` to the new file `dst` and fsyncs it.
absl::Status CopyFile(const fs::path& src, const fs::path& dst) {
  const int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return ErrnoError("cannot open", src.string());
  const int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    absl::Status status = ErrnoError("cannot create", dst.string());
    ::close(in);
    return status;
  }
  absl::Status status;
  std::vector<char> buffer(1 << 20);
  while (status.ok()) {
    const ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      status = ErrnoError("cannot read", src.string());
    } else if (n == 0) {
      break;
    } else {
      status = WriteFully(out, absl::string_view(buffer.data(), static_cast<size_t>(n)), dst);
    }
  }
  if (status.ok() && ::fsync(out) != 0) status = ErrnoError("cannot fsync", dst.string());
  ::close(in);
  ::close(out);
  return status;
}

// Copies the tree under `src` into the existing empty directory `dst`,
// fsyncing every file and directory. Symlinks to files are copied as files;
// anything else that is not a file or directory is refused.
absl::Status CopyTree(const fs::path& src, const fs::path& dst) {
  std::error_code ec;
  std::vector<fs::path> dirs = {dst};
  fs::recursive_directory_iterator it(src, ec), end;
  if (ec) return FsError("cannot list", src, ec);
  for (; it != end; it.increment(ec)) {
    if (ec) return FsError("cannot list", src, ec);
    const fs::path from = it->path();
    const fs::path to = dst / fs::relative(from, src);
    const fs::file_status link_status = it->symlink_status(ec);
    if (ec) return FsError("cannot stat", from, ec);
    const fs::file_status status = fs::status(from, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot copy ", from.string(), ": ", ec.message()));
    }
    if (fs::is_directory(link_status)) {
      if (!fs::create_directory(to, ec)) return FsError("cannot create", to, ec);
      dirs.push_back(to);
    } else if (fs::is_regular_file(status)) {
      if (absl::Status s = CopyFile(from, to); !s.ok()) return s;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot copy ", from.string(), ": not a regular file or directory"));
    }
  }
  for (const fs::path& dir : dirs) {
    if (absl::Status s = SyncDirectory(dir); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSmallFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InternalError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path.string()));
  return os.str();
}

// The lines of a file without '\r' and without empty lines; none if absent.
absl::StatusOr<std::vector<std::string>> ReadLines(const fs::path& path, bool keep_empty) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::vector<std::string>{};
  absl::StatusOr<std::string> text = ReadSmallFile(path);
  if (!text.ok()) return text.status();
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (absl::EndsWith(line, "\r")) line.remove_suffix(1);
    if (keep_empty || !absl::StripAsciiWhitespace(line).empty()) lines.emplace_back(line);
  }
  if (keep_empty) {
    while (!lines.empty() && lines.back().empty()) lines.pop_back();
  } else {
    for (std::string& l : lines) l = std::string(absl::StripAsciiWhitespace(l));
  }
  return lines;
}

bool IsVersion(std::string_view s) {
  return !s.empty() && s.size() <= kMaxVersionLength &&
         std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isdigit(c); });
}

absl::Status ValidateVersion(std::string_view version) {
  if (IsVersion(version)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("invalid model version ", Quoted(version), ": must be 1..",
                   kMaxVersionLength, " digits"));
}

int64_t VersionNumber(std::string_view version) {
  int64_t n = 0;
  return absl::SimpleAtoi(Av(version), &n) ? n : 0;
}

// The version directories under a model directory, in numeric order.
std::vector<std::string> VersionNames(const fs::path& model_dir) {
  std::vector<std::string> versions;
  std::error_code ec;
  for (fs::directory_iterator it(model_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (IsVersion(name) && it->is_directory(ec)) versions.push_back(name);
  }
  std::sort(versions.begin(), versions.end(), [](const std::string& a, const std::string& b) {
    return VersionNumber(a) < VersionNumber(b);
  });
  return versions;
}

// Removes the .tmp- entries directly under `dir`.
void RemoveTmpEntries(const fs::path& dir) {
  std::error_code ec;
  std::vector<fs::path> doomed;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (absl::StartsWith(it->path().filename().string(), kTmpPrefix)) doomed.push_back(it->path());
  }
  for (const fs::path& p : doomed) fs::remove_all(p, ec);
}

// Class names of a model directory: labels.txt when present, else the
// "classes" of config.json.
absl::StatusOr<std::vector<std::string>> ReadClasses(const fs::path& dir) {
  const fs::path labels = dir / kLabelsTxt;
  std::error_code ec;
  if (fs::exists(labels, ec)) return ReadLines(labels, /*keep_empty=*/true);
  absl::StatusOr<std::string> text = ReadSmallFile(dir / kConfigJson);
  if (!text.ok()) return text.status();
  const nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) {
    return absl::DataLossError(absl::StrCat((dir / kConfigJson).string(), " is not a JSON object"));
  }
  std::vector<std::string> classes;
  if (auto it = config.find("classes"); it != config.end() && it->is_array()) {
    for (const nlohmann::json& c : *it) classes.push_back(c.is_string() ? c.get<std::string>() : "");
  }
  return classes;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Open(const std::string& root) {
  if (root.empty()) return absl::InvalidArgumentError("empty registry root");
  std::error_code ec;
  const fs::path path(root);
  if (fs::exists(path, ec) && !fs::is_directory(path, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("registry root ", root, " exists and is not a directory"));
  }
  fs::create_directories(path, ec);
  if (ec) return FsError("cannot create registry root", path, ec);
  auto registry = std::unique_ptr<ModelRegistry>(new ModelRegistry(root));
  for (const std::string& name : registry->ModelNames()) RemoveTmpEntries(path / name);
  return registry;
}

absl::Status ModelRegistry::ValidateName(std::string_view name) {
  std::string why;
  if (name.empty() || name.size() > kMaxNameLength) {
    why = absl::StrCat("must be 1..", kMaxNameLength, " characters");
  } else if (name.front() == '.') {
    why = "must not start with '.'";
  } else if (!std::all_of(name.begin(), name.end(), [](char c) {
               return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-';
             })) {
    why = "may hold only letters, digits, '.', '_' and '-'";
  } else {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("invalid model name ", Quoted(name), ": ", why));
}

std::string ModelRegistry::ModelDir(std::string_view name) const {
  return (fs::path(root_) / std::string(name)).string();
}

std::string ModelRegistry::VersionDir(std::string_view name, std::string_view version) const {
  return (fs::path(root_) / std::string(name) / std::string(version)).string();
}

absl::StatusOr<std::string> ModelRegistry::AssignVersion(std::string_view name) {
  const fs::path dir = ModelDir(name);
  int64_t next = 1;
  absl::StatusOr<std::vector<std::string>> counter =
      ReadLines(dir / kCounterFile, /*keep_empty=*/false);
  if (!counter.ok()) return counter.status();
  int64_t stored = 0;
  if (!counter->empty() && absl::SimpleAtoi(counter->front(), &stored)) {
    next = std::max(next, stored);
  }
  const std::vector<std::string> existing = VersionNames(dir);
  if (!existing.empty()) next = std::max(next, VersionNumber(existing.back()) + 1);
  // The counter moves first: a crash before the rename skips a number but
  // never hands one out twice.
  if (absl::Status s = WriteFileAtomically(dir / kCounterFile, absl::StrCat(next + 1, "\n"));
      !s.ok()) {
    return s;
  }
  return absl::StrCat(next);
}

absl::StatusOr<ModelVersionInfo> ModelRegistry::Register(std::string_view name,
                                                         const std::string& model_dir,
                                                         std::string_view job_id,
                                                         double eval_ap) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  std::error_code ec;
  const fs::path src(model_dir);
  if (!fs::is_regular_file(src / kConfigJson, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model directory ", Quoted(model_dir), " has no ", kConfigJson));
  }
  const fs::path dir = ModelDir(name);
  const bool created = fs::create_directories(dir, ec);
  if (ec) return FsError("cannot create", dir, ec);
  if (created) {
    if (absl::Status s = SyncDirectory(root_); !s.ok()) return s;
  }
  const fs::path tmp = dir / absl::StrCat(kTmpPrefix, RandomSuffix());
  const fs::path src_canonical = fs::weakly_canonical(src, ec);
  const fs::path tmp_canonical = fs::weakly_canonical(tmp, ec);
  if (absl::StartsWith(tmp_canonical.string(), src_canonical.string() + "/")) {
    return absl::InvalidArgumentError(
        absl::StrCat("model directory ", Quoted(model_dir), " contains the registry"));
  }
  if (!fs::create_directory(tmp, ec)) return FsError("cannot create", tmp, ec);

  const int64_t created_at = std::chrono::duration_cast<std::chrono::seconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  const nlohmann::json record = {
      {"job_id", std::string(job_id)}, {"created_at", created_at}, {"eval_ap", eval_ap}};
  absl::Status status = CopyTree(src, tmp);
  if (status.ok()) {
    fs::remove(tmp / kRegistryJson, ec);  // a registered directory carries one
    status = CreateSyncedFile(tmp / kRegistryJson, record.dump(2) + "\n");
  }
  if (status.ok()) status = SyncDirectory(tmp);
  if (!status.ok()) {
    fs::remove_all(tmp, ec);
    return status;
  }

  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> version = AssignVersion(name);
  if (version.ok() && ::rename(tmp.c_str(), VersionDir(name, *version).c_str()) != 0) {
    version = ErrnoError("cannot rename", tmp.string());
  }
  if (!version.ok()) {
    fs::remove_all(tmp, ec);
    return version.status();
  }
  if (absl::Status s = SyncDirectory(dir); !s.ok()) return s;
  return ReadVersion(name, *version);
}

absl::StatusOr<ModelVersionInfo> ModelRegistry::ReadVersion(std::string_view name,
                                                            std::string_view version) {
  const fs::path dir = VersionDir(name, version);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model ", Quoted(name), " has no version ", Quoted(version)));
  }
  ModelVersionInfo info;
  info.name = std::string(name);
  info.version = std::string(version);
  info.path = dir.string();
  if (fs::exists(dir / kRegistryJson, ec)) {
    absl::StatusOr<std::string> text = ReadSmallFile(dir / kRegistryJson);
    if (!text.ok()) return text.status();
    const nlohmann::json record = nlohmann::json::parse(*text, nullptr, false);
    if (!record.is_object()) {
      return absl::DataLossError(
          absl::StrCat((dir / kRegistryJson).string(), " is not a JSON object"));
    }
    info.job_id = record.value("job_id", std::string());
    info.created_at = record.value("created_at", int64_t{0});
    info.eval_ap = record.value("eval_ap", -1.0);
  }
  absl::StatusOr<std::vector<std::string>> classes = ReadClasses(dir);
  if (!classes.ok()) return classes.status();
  info.classes = *std::move(classes);
  absl::StatusOr<std::string> active = ReadActive(name);
  if (!active.ok()) return active.status();
  info.active = *active == version;
  return info;
}

absl::StatusOr<std::vector<ModelVersionInfo>> ModelRegistry::ListModel(std::string_view name) {
  std::error_code ec;
  if (!fs::is_directory(ModelDir(name), ec)) {
    return absl::NotFoundError(absl::StrCat("no model ", Quoted(name)));
  }
  std::vector<ModelVersionInfo> infos;
  for (const std::string& version : VersionNames(ModelDir(name))) {
    absl::StatusOr<ModelVersionInfo> info = ReadVersion(name, version);
    if (!info.ok()) return info.status();
    infos.push_back(*std::move(info));
  }
  return infos;
}

absl::StatusOr<std::vector<ModelVersionInfo>> ModelRegistry::List(std::string_view name) {
  std::vector<std::string> names;
  if (name.empty()) {
    names = ModelNames();
  } else {
    if (absl::Status s = ValidateName(name); !s.ok()) return s;
    names.emplace_back(name);
  }
  absl::ReaderMutexLock lock(&mu_);
  std::vector<ModelVersionInfo> all;
  for (const std::string& model : names) {
    absl::StatusOr<std::vector<ModelVersionInfo>> infos = ListModel(model);
    if (!infos.ok()) {
      if (name.empty() && absl::IsNotFound(infos.status())) continue;  // deleted meanwhile
      return infos.status();
    }
    for (ModelVersionInfo& info : *infos) all.push_back(std::move(info));
  }
  return all;
}

absl::StatusOr<ModelVersionInfo> ModelRegistry::Get(std::string_view name,
                                                    std::string_view version) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  if (absl::Status s = ValidateVersion(version); !s.ok()) return s;
  absl::ReaderMutexLock lock(&mu_);
  return ReadVersion(name, version);
}

absl::StatusOr<std::string> ModelRegistry::ReadActive(std::string_view name) {
  absl::StatusOr<std::vector<std::string>> lines =
      ReadLines(fs::path(ModelDir(name)) / kActiveFile, /*keep_empty=*/false);
  if (!lines.ok()) return lines.status();
  return lines->empty() ? std::string() : lines->front();
}

absl::StatusOr<std::string> ModelRegistry::ActiveVersion(std::string_view name) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  absl::ReaderMutexLock lock(&mu_);
  absl::StatusOr<std::string> active = ReadActive(name);
  if (active.ok() && active->empty()) {
    return absl::NotFoundError(absl::StrCat("model ", Quoted(name), " has no active version"));
  }
  return active;
}

std::vector<std::string> ModelRegistry::ModelNames() {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(root_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (ValidateName(name).ok() && it->is_directory(ec)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<std::vector<std::string>> ModelRegistry::ReadHistory(std::string_view name) {
  return ReadLines(fs::path(ModelDir(name)) / kHistoryFile, /*keep_empty=*/false);
}

absl::Status ModelRegistry::WriteHistory(std::string_view name, std::vector<std::string> history) {
  if (history.size() > kMaxHistory) {
    history.erase(history.begin(), history.end() - static_cast<std::ptrdiff_t>(kMaxHistory));
  }
  std::string text;
  for (const std::string& v : history) absl::StrAppend(&text, v, "\n");
  return WriteFileAtomically(fs::path(ModelDir(name)) / kHistoryFile, text);
}

absl::Status ModelRegistry::SetActive(std::string_view name, std::string_view version) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  if (absl::Status s = ValidateVersion(version); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  std::error_code ec;
  if (!fs::is_directory(VersionDir(name, version), ec)) {
    return absl::NotFoundError(
        absl::StrCat("model ", Quoted(name), " has no version ", Quoted(version)));
  }
  absl::StatusOr<std::string> previous = ReadActive(name);
  if (!previous.ok()) return previous.status();
  if (*previous == version) return absl::OkStatus();
  if (!previous->empty()) {
    absl::StatusOr<std::vector<std::string>> history = ReadHistory(name);
    if (!history.ok()) return history.status();
    history->push_back(*previous);
    if (absl::Status s = WriteHistory(name, *std::move(history)); !s.ok()) return s;
  }
  return WriteFileAtomically(fs::path(ModelDir(name)) / kActiveFile,
                             absl::StrCat(Av(version), "\n"));
}

absl::StatusOr<ModelRegistry::RollbackPlan> ModelRegistry::PlanRollback(std::string_view name) {
  absl::StatusOr<std::string> active = ReadActive(name);
  if (!active.ok()) return active.status();
  absl::StatusOr<std::vector<std::string>> history = ReadHistory(name);
  if (!history.ok()) return history.status();
  std::error_code ec;
  for (size_t i = history->size(); i-- > 0;) {
    const std::string& v = (*history)[i];
    if (v != *active && IsVersion(v) && fs::is_directory(VersionDir(name, v), ec)) {
      return RollbackPlan{*std::move(history), i};
    }
  }
  return absl::FailedPreconditionError(
      absl::StrCat("model ", Quoted(name), " has no earlier version to roll back to"));
}

absl::StatusOr<std::string> ModelRegistry::RollbackTarget(std::string_view name) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  absl::ReaderMutexLock lock(&mu_);
  absl::StatusOr<RollbackPlan> plan = PlanRollback(name);
  if (!plan.ok()) return plan.status();
  return plan->history[plan->target];
}

absl::StatusOr<std::string> ModelRegistry::Rollback(std::string_view name) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  absl::StatusOr<RollbackPlan> plan = PlanRollback(name);
  if (!plan.ok()) return plan.status();
  std::string target = plan->history[plan->target];
  plan->history.resize(plan->target);
  if (absl::Status s = WriteHistory(name, std::move(plan->history)); !s.ok()) return s;
  if (absl::Status s = WriteFileAtomically(fs::path(ModelDir(name)) / kActiveFile, target + "\n");
      !s.ok()) {
    return s;
  }
  return target;
}

absl::Status ModelRegistry::Delete(std::string_view name, std::string_view version) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  if (absl::Status s = ValidateVersion(version); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  const fs::path dir = VersionDir(name, version);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model ", Quoted(name), " has no version ", Quoted(version)));
  }
  absl::StatusOr<std::string> active = ReadActive(name);
  if (!active.ok()) return active.status();
  if (*active == version) {
    return absl::FailedPreconditionError(absl::StrCat(
        "version ", Quoted(version), " of model ", Quoted(name), " is active; activate another first"));
  }
  const fs::path doomed =
      fs::path(ModelDir(name)) / absl::StrCat(kTmpPrefix, "deleted-", Av(version), "-", RandomSuffix());
  if (::rename(dir.c_str(), doomed.c_str()) != 0) return ErrnoError("cannot rename", dir.string());
  if (absl::Status s = SyncDirectory(ModelDir(name)); !s.ok()) return s;
  fs::remove_all(doomed, ec);
  if (ec) return FsError("cannot remove", doomed, ec);
  return absl::OkStatus();
}

absl::Status ModelRegistry::SetDefaultModel(std::string_view name) {
  if (absl::Status s = ValidateName(name); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::string> active = ReadActive(name);
  if (!active.ok()) return active.status();
  if (active->empty()) {
    return absl::NotFoundError(absl::StrCat("model ", Quoted(name), " has no active version"));
  }
  return WriteFileAtomically(fs::path(root_) / kDefaultFile, absl::StrCat(Av(name), "\n"));
}

absl::StatusOr<std::pair<std::string, std::string>> ModelRegistry::DefaultModel() {
  absl::ReaderMutexLock lock(&mu_);
  std::ifstream in(fs::path(root_) / kDefaultFile);
  std::string name;
  if (!in || !std::getline(in, name) || ValidateName(name).ok() == false) {
    return absl::NotFoundError(absl::StrCat("the registry ", root_, " names no default model"));
  }
  absl::StatusOr<std::string> active = ReadActive(name);
  if (!active.ok()) return active.status();
  if (active->empty()) {
    return absl::NotFoundError(
        absl::StrCat("the registry's default model ", Quoted(name), " has no active version"));
  }
  return std::make_pair(name, *active);
}

}  // namespace lpdetr::admin
