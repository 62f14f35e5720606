#include "server/admin/dataset_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <tuple>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace lpdetr::admin {
namespace {

using json = nlohmann::json;

// The sections of the file, in the order their problems are listed.
enum Section : int { kImages = 0, kCategories = 1, kAnnotations = 2, kNumSections = 3 };
constexpr const char* kSectionNames[kNumSections] = {"images", "categories", "annotations"};

int SectionOf(const std::string& key) {
  for (int s = 0; s < kNumSections; ++s) {
    if (key == kSectionNames[s]) return s;
  }
  return -1;
}

// The keys of an entry that are checked; the others are skipped unread.
bool Kept(int section, const std::string& key) {
  switch (section) {
    case kImages:
      return key == "id" || key == "file_name" || key == "width" || key == "height";
    case kCategories:
      return key == "id" || key == "name";
    case kAnnotations:
      return key == "image_id" || key == "category_id" || key == "bbox" || key == "iscrowd";
    default:
      return false;
  }
}

// `s` cut to at most `max` bytes on a UTF-8 character boundary ("..." added).
std::string Shorten(std::string s, std::size_t max) {
  if (s.size() <= max) return s;
  std::size_t n = max - 3;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  s.resize(n);
  return s + "...";
}

// A JSON value, shortened for a message.
std::string Shown(const json& v, std::size_t max = 40) {
  return Shorten(v.dump(-1, ' ', false, json::error_handler_t::replace), max);
}

// "; "-joined items, after "(the first N of M)" when some are left out.
std::string Listing(int64_t total, const std::vector<std::string>& items) {
  std::string head;
  if (total > static_cast<int64_t>(items.size())) {
    head = absl::StrCat(" (the first ", items.size(), " of ", total, ")");
  }
  return absl::StrCat(head, ": ", absl::StrJoin(items, "; "));
}

// The first kMaxListedProblems problems by position in the file, and how many
// there are in all.
class Problems {
 public:
  // `index` -1: about the section as a whole (listed before its entries).
  void Add(int section, int64_t index, std::string text) {
    Item item{section, index, count_++, std::move(text)};
    if (kept_.size() == kMaxListedProblems && !Before(item, kept_.back())) return;
    kept_.insert(std::upper_bound(kept_.begin(), kept_.end(), item, Before), std::move(item));
    if (kept_.size() > kMaxListedProblems) kept_.pop_back();
  }
  int64_t count() const { return count_; }
  std::string Describe() const {
    std::vector<std::string> texts;
    for (const Item& i : kept_) texts.push_back(i.text);
    return absl::StrCat(count_, count_ == 1 ? " problem" : " problems",
                        " in the COCO annotations", Listing(count_, texts));
  }

 private:
  struct Item {
    int section;
    int64_t index;
    int64_t sequence;
    std::string text;
  };
  static bool Before(const Item& a, const Item& b) {
    return std::tie(a.section, a.index, a.sequence) < std::tie(b.section, b.index, b.sequence);
  }

  std::vector<Item> kept_;  // sorted by Before
  int64_t count_ = 0;
};

// Reads the checked keys of one entry, recording each missing or mistyped one.
class EntryReader {
 public:
  EntryReader(const json& entry, int section, int64_t index, Problems& problems)
      : entry_(entry),
        section_(section),
        index_(index),
        where_(absl::StrCat(kSectionNames[section], "[", index, "]")),
        problems_(problems) {}

  bool ok() const { return ok_; }
  const std::string& where() const { return where_; }

  const json* Find(const char* key, bool required = true) {
    auto it = entry_.find(key);
    if (it == entry_.end()) {
      if (required) Problem(absl::StrCat(where_, ": missing key \"", key, "\""));
      return nullptr;
    }
    return &*it;
  }
  bool Integer(const char* key, int64_t* out) {
    const json* v = Find(key);
    if (v == nullptr) return false;
    if (!IsInt64(*v)) {
      Mistyped(key, "an integer", *v);
      return false;
    }
    *out = v->get<int64_t>();
    return true;
  }
  void PositiveInteger(const char* key) {
    const json* v = Find(key);
    if (v != nullptr && (!IsInt64(*v) || v->get<int64_t>() <= 0)) {
      Mistyped(key, "a positive integer", *v);
    }
  }
  void String(const char* key, std::string* out) {
    const json* v = Find(key);
    if (v == nullptr) return;
    if (!v->is_string()) return Mistyped(key, "a string", *v);
    *out = v->get<std::string>();
  }
  // A file name: a non-empty string without NUL bytes.
  void FileName(const char* key, std::string* out) {
    const json* v = Find(key);
    if (v == nullptr) return;
    if (!v->is_string() || v->get_ref<const std::string&>().empty()) {
      return Mistyped(key, "a non-empty string", *v);
    }
    const std::string& name = v->get_ref<const std::string&>();
    if (name.find('\0') != std::string::npos) {
      return Problem(absl::StrCat(where_, ".", key, ": contains a NUL byte: ", Shown(*v)));
    }
    *out = name;
  }
  void Crowd(bool* out) {
    const json* v = Find("iscrowd", /*required=*/false);
    if (v == nullptr) return;
    if (v->is_boolean()) {
      *out = v->get<bool>();
    } else if (IsInt64(*v) && (v->get<int64_t>() == 0 || v->get<int64_t>() == 1)) {
      *out = v->get<int64_t>() == 1;
    } else {
      Mistyped("iscrowd", "0 or 1", *v);
    }
  }
  // [x, y, w, h]: 4 finite numbers, w and h not negative.
  void Bbox() {
    const json* v = Find("bbox");
    if (v == nullptr) return;
    if (!v->is_array() || v->size() != 4 ||
        !std::all_of(v->begin(), v->end(), [](const json& x) {
          return x.is_number() && std::isfinite(x.get<double>());
        })) {
      return Mistyped("bbox", "4 finite numbers [x, y, w, h]", *v);
    }
    static const char* const kDims[2] = {"width", "height"};
    for (int k = 0; k < 2; ++k) {
      if ((*v)[2 + k].get<double>() < 0) {
        Problem(absl::StrCat(where_, ".bbox: negative ", kDims[k], " ", Shown((*v)[2 + k]), " in ",
                             Shown(*v)));
      }
    }
  }
  void Problem(std::string text) {
    ok_ = false;
    problems_.Add(section_, index_, std::move(text));
  }

 private:
  static bool IsInt64(const json& v) {
    return v.is_number_integer() &&
           (!v.is_number_unsigned() ||
            v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  }
  void Mistyped(const char* key, const char* expected, const json& v) {
    Problem(absl::StrCat(where_, ".", key, ": must be ", expected, ", got ", Shown(v)));
  }

  const json& entry_;
  const int section_;
  const int64_t index_;
  const std::string where_;
  Problems& problems_;
  bool ok_ = true;
};

// Whether a relative file name stays inside its folder (lexically: `..`
// never goes above the start).
bool StaysInside(const std::string& name) {
  if (name.empty() || name.front() == '/') return false;
  int depth = 0;
  for (absl::string_view part : absl::StrSplit(name, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (--depth < 0) return false;
    } else {
      ++depth;
    }
  }
  return true;
}

// The SAX handler (nlohmann's json_sax interface): checks the file in one
// pass, keeping one entry at a time. The document is an object (the root)
// whose three sections are arrays of entries; only the entries' checked keys
// (and what is under them) are kept; everything else is skipped.
class CocoReader {
 public:
  bool null() { return Value(json(nullptr)); }
  bool boolean(bool v) { return Value(json(v)); }
  bool number_integer(json::number_integer_t v) { return Value(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return Value(json(v)); }
  bool number_float(json::number_float_t v, const json::string_t& /*text*/) {
    return Value(json(v));
  }
  bool string(json::string_t& v) { return Value(json(std::move(v))); }
  bool binary(json::binary_t& /*v*/) { return Value(json()); }  // not in JSON text
  bool start_object(std::size_t /*elements*/) { return Open(json::object()); }
  bool start_array(std::size_t /*elements*/) { return Open(json::array()); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }
  bool key(json::string_t& key) {
    if (skip_depth_ == 0) stack_.back().key = std::move(key);
    return true;
  }
  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& e) {
    error_ = absl::StrCat("not valid JSON at byte ", position, ": ", e.what());
    return false;
  }

  // The result once the parser is done with the whole input.
  absl::StatusOr<CocoAnnotations> Finish(const std::string& path) {
    if (!error_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", error_));
    for (int s = 0; s < kNumSections; ++s) {
      if (!seen_[s]) {
        problems_.Add(s, -1, absl::StrCat("missing top-level key \"", kSectionNames[s], "\""));
      } else if (is_array_[s] && size_[s] == 0) {
        problems_.Add(s, -1, absl::StrCat(kSectionNames[s], ": is empty"));
      }
    }
    // The annotations' ids, against lists that exist.
    for (const Ref& r : refs_) {
      const std::string where = absl::StrCat("annotations[", r.index, "]");
      if (is_array_[kImages] && image_at_.count(r.image_id) == 0) {
        problems_.Add(kAnnotations, r.index,
                      absl::StrCat(where, ".image_id: unknown image id ", r.image_id));
      }
      if (is_array_[kCategories] && category_at_.count(r.category_id) == 0) {
        problems_.Add(kAnnotations, r.index,
                      absl::StrCat(where, ".category_id: unknown category id ", r.category_id));
      }
    }
    if (problems_.count() > 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", problems_.Describe()));
    }
    std::vector<std::string> escaping;
    int64_t escaping_count = 0;
    for (const CocoImageFile& im : out_.images) {
      if (StaysInside(im.file_name)) continue;
      if (escaping.size() < kMaxListedProblems) {
        escaping.push_back(
            absl::StrCat("images[", im.index, "].file_name ", Shown(json(im.file_name), 80)));
      }
      ++escaping_count;
    }
    if (escaping_count > 0) {
      return absl::PermissionDeniedError(absl::StrCat(
          path, ": ", escaping_count,
          escaping_count == 1 ? " file name leaves" : " file names leave",
          " the image folder (absolute, or `..` above it)", Listing(escaping_count, escaping)));
    }
    out_.path = path;
    out_.summary.images = size_[kImages];
    out_.summary.categories = size_[kCategories];
    out_.summary.annotations = size_[kAnnotations];
    return std::move(out_);
  }

 private:
  enum class Role { kRoot, kSection, kEntry, kValue };
  struct Frame {
    explicit Frame(Role r, json* t = nullptr) : role(r), target(t) {}
    Role role;
    json* target;     // kEntry, kValue: where values go
    std::string key;  // the last key read in this object
  };

  bool Value(json v) {
    if (skip_depth_ > 0) return true;
    if (stack_.empty()) return TopLevelNotAnObject(v);
    Frame& f = stack_.back();
    switch (f.role) {
      case Role::kRoot:
        if (const int s = SectionOf(f.key); s >= 0) NotAnArray(s, v);
        return true;
      case Role::kSection:
        NotAnObject(v);
        return true;
      case Role::kEntry:
        if (Kept(section_, f.key)) (*f.target)[f.key] = std::move(v);
        return true;
      case Role::kValue:
        if (f.target->is_array()) {
          f.target->push_back(std::move(v));
        } else {
          (*f.target)[f.key] = std::move(v);
        }
        return true;
    }
    return true;
  }

  bool Open(json container) {
    if (skip_depth_ > 0) {
      ++skip_depth_;
      return true;
    }
    if (stack_.empty()) {
      if (!container.is_object()) return TopLevelNotAnObject(container);
      stack_.emplace_back(Role::kRoot);
      return true;
    }
    Frame& f = stack_.back();
    switch (f.role) {
      case Role::kRoot: {
        const int s = SectionOf(f.key);
        if (s < 0 || !container.is_array()) {
          if (s >= 0) NotAnArray(s, container);
          skip_depth_ = 1;
          return true;
        }
        seen_[s] = true;
        is_array_[s] = true;
        section_ = s;
        stack_.emplace_back(Role::kSection);
        return true;
      }
      case Role::kSection:
        if (!container.is_object()) {
          NotAnObject(container);
          skip_depth_ = 1;
          return true;
        }
        entry_ = json::object();
        entry_index_ = size_[section_]++;
        stack_.emplace_back(Role::kEntry, &entry_);
        return true;
      case Role::kEntry: {
        if (!Kept(section_, f.key)) {
          skip_depth_ = 1;
          return true;
        }
        json* slot = &(*f.target)[f.key];
        *slot = std::move(container);
        stack_.emplace_back(Role::kValue, slot);
        return true;
      }
      case Role::kValue: {
        json* slot;
        if (f.target->is_array()) {
          f.target->push_back(std::move(container));
          slot = &f.target->back();
        } else {
          slot = &(*f.target)[f.key];
          *slot = std::move(container);
        }
        stack_.emplace_back(Role::kValue, slot);
        return true;
      }
    }
    return true;
  }

  bool Close() {
    if (skip_depth_ > 0) {
      --skip_depth_;
      return true;
    }
    const Role role = stack_.back().role;
    stack_.pop_back();
    if (role == Role::kEntry) CheckEntry();
    if (role == Role::kSection) section_ = -1;
    return true;
  }

  bool TopLevelNotAnObject(const json& v) {
    error_ = absl::StrCat("the top level must be a JSON object, got ",
                          v.is_array() ? "an array" : Shown(v));
    return false;  // stops the parser
  }
  void NotAnArray(int s, const json& v) {
    seen_[s] = true;
    problems_.Add(s, -1, absl::StrCat(kSectionNames[s], ": must be an array, got ",
                                      v.is_object() ? "an object" : Shown(v)));
  }
  void NotAnObject(const json& v) {
    const int64_t index = size_[section_]++;
    problems_.Add(section_, index,
                  absl::StrCat(kSectionNames[section_], "[", index, "]: must be an object, got ",
                               v.is_array() ? "an array" : Shown(v)));
  }

  void CheckEntry() {
    EntryReader r(entry_, section_, entry_index_, problems_);
    switch (section_) {
      case kImages: {
        CocoImageFile im;
        im.index = static_cast<std::size_t>(entry_index_);
        // An id that reads is known to the annotations even if the entry has
        // other problems.
        if (r.Integer("id", &im.id)) {
          auto [it, inserted] = image_at_.emplace(im.id, entry_index_);
          if (!inserted) {
            r.Problem(absl::StrCat(r.where(), ".id: duplicate image id ", im.id, " (also images[",
                                   it->second, "])"));
          }
        }
        r.FileName("file_name", &im.file_name);
        r.PositiveInteger("width");
        r.PositiveInteger("height");
        if (r.ok()) out_.images.push_back(std::move(im));
        break;
      }
      case kCategories: {
        int64_t id = 0;
        if (r.Integer("id", &id)) {
          auto [it, inserted] = category_at_.emplace(id, entry_index_);
          if (!inserted) {
            r.Problem(absl::StrCat(r.where(), ".id: duplicate category id ", id,
                                   " (also categories[", it->second, "])"));
          }
        }
        std::string name;
        r.String("name", &name);
        break;
      }
      case kAnnotations: {
        Ref ref{entry_index_, 0, 0};
        r.Integer("image_id", &ref.image_id);
        r.Integer("category_id", &ref.category_id);
        r.Bbox();
        bool crowd = false;
        r.Crowd(&crowd);
        // As lpdetr-train: ids are looked up only in an entry that reads.
        if (r.ok()) refs_.push_back(ref);
        if (r.ok() && crowd) ++out_.summary.crowd_annotations;
        break;
      }
      default:
        break;
    }
    entry_ = json();
  }

  // An annotation's ids, looked up once every section is read.
  struct Ref {
    int64_t index;
    int64_t image_id;
    int64_t category_id;
  };

  std::vector<Frame> stack_;
  int skip_depth_ = 0;  // > 0: inside a value that is skipped
  int section_ = -1;    // the section being read
  std::array<bool, kNumSections> seen_ = {};      // its key is present...
  std::array<bool, kNumSections> is_array_ = {};  // ...with an array
  std::array<int64_t, kNumSections> size_ = {};   // entries so far
  json entry_;  // the entry being read (its checked keys)
  int64_t entry_index_ = 0;
  std::string error_;  // not JSON, or not an object
  Problems problems_;
  std::unordered_map<int64_t, int64_t> image_at_, category_at_;  // id -> first index
  std::vector<Ref> refs_;
  CocoAnnotations out_;
};

// A file descriptor read in 1 MiB blocks, as the input iterators
// nlohmann's parser takes (FdIterator); read errors end the input and are
// kept in error().
class FdReader {
 public:
  explicit FdReader(int fd) : fd_(fd), buffer_(1 << 20) {}
  bool AtEnd() {
    if (pos_ < size_) return false;
    Fill();
    return pos_ >= size_;
  }
  const char& Current() const { return buffer_[pos_]; }
  void Advance() { ++pos_; }
  int error() const { return error_; }

 private:
  void Fill() {
    pos_ = size_ = 0;
    while (!done_) {
      const ssize_t n = read(fd_, buffer_.data(), buffer_.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) error_ = errno;
      if (n <= 0) {
        done_ = true;
      } else {
        size_ = static_cast<std::size_t>(n);
      }
      return;
    }
  }

  const int fd_;
  std::vector<char> buffer_;
  std::size_t pos_ = 0, size_ = 0;
  bool done_ = false;
  int error_ = 0;
};

class FdIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  FdIterator() = default;  // the end
  explicit FdIterator(FdReader* reader) : reader_(reader) {}
  reference operator*() const { return reader_->Current(); }
  FdIterator& operator++() {
    reader_->Advance();
    return *this;
  }
  FdIterator operator++(int) {
    FdIterator before = *this;
    ++*this;
    return before;
  }
  bool operator==(const FdIterator& other) const { return AtEnd() == other.AtEnd(); }
  bool operator!=(const FdIterator& other) const { return !(*this == other); }

 private:
  bool AtEnd() const { return reader_ == nullptr || reader_->AtEnd(); }
  FdReader* reader_ = nullptr;
};

// The error for a file or folder that cannot be opened.
absl::Status OpenError(const std::string& what, const std::string& path, int error) {
  const std::string message = absl::StrCat(path, ": cannot open the ", what, ": ", strerror(error));
  switch (error) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOTDIR:
    case ELOOP:
    case ENAMETOOLONG:
      return absl::InvalidArgumentError(message);
    default:
      return absl::FailedPreconditionError(message);
  }
}

// Closes a file descriptor on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { close(fd_); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  const int fd_;
};

}  // namespace

absl::StatusOr<CocoAnnotations> ReadCocoAnnotations(const std::string& annotations_path,
                                                    const std::string& shown_as) {
  const std::string& name = shown_as.empty() ? annotations_path : shown_as;
  // O_NONBLOCK: a FIFO in place of the file must not block the call.
  const int fd = open(annotations_path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return OpenError("annotations file", name, errno);
  FdCloser closer(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) return OpenError("annotations file", name, errno);
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": is a folder, not a COCO annotations file"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": is not a regular file"));
  }
  if (st.st_size == 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not valid JSON: the file is empty"));
  }
  FdReader input(fd);
  CocoReader reader;
  json::sax_parse(FdIterator(&input), FdIterator(), &reader);
  if (input.error() != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, ": cannot read the annotations file: ", strerror(input.error())));
  }
  return reader.Finish(name);
}

absl::Status CheckImageFiles(const CocoAnnotations& annotations, const std::string& images_dir,
                             const std::string& shown_as) {
  const std::string& name = shown_as.empty() ? images_dir : shown_as;
  const int dir = open(images_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(name, ": image folder not found"));
    if (errno == ENOTDIR) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": is not a folder"));
    }
    return OpenError("image folder", name, errno);
  }
  FdCloser closer(dir);
  std::vector<std::string> listed;
  int64_t missing = 0;
  for (const CocoImageFile& im : annotations.images) {
    struct stat st;
    const char* problem = nullptr;
    if (fstatat(dir, im.file_name.c_str(), &st, 0) != 0) {
      problem = errno == ENOENT ? "not found" : strerror(errno);
    } else if (!S_ISREG(st.st_mode)) {
      problem = "not a regular file";
    } else if (st.st_size == 0) {
      problem = "empty";
    }
    if (problem == nullptr) continue;
    if (listed.size() < kMaxListedProblems) {
      listed.push_back(absl::StrCat("images[", im.index, "].file_name ",
                                    Shown(json(im.file_name), 80), ": ", problem));
    }
    ++missing;
  }
  if (missing == 0) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat(
      name, ": ", missing, " of ", annotations.images.size(), " image files named in ",
      annotations.path, missing == 1 ? " is" : " are", " missing or empty",
      Listing(missing, listed)));
}

absl::Status CheckCocoDataset(const std::string& annotations_path, const std::string& images_dir,
                              DatasetSummary* summary) {
  absl::StatusOr<CocoAnnotations> annotations = ReadCocoAnnotations(annotations_path);
  if (!annotations.ok()) return annotations.status();
  if (absl::Status s = CheckImageFiles(*annotations, images_dir); !s.ok()) return s;
  if (summary != nullptr) *summary = annotations->summary;
  return absl::OkStatus();
}

}  // namespace lpdetr::admin
