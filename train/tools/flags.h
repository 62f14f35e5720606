// Command-line flags of the lpdetr-train subcommands: `--name value` or
// `--name=value` after the subcommand name, each from a known set. Errors
// throw UsageError (the subcommand prints it with its usage and exits 2).
#pragma once

#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

namespace lpdetr::train {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class CommandFlags {
 public:
  // argv[0] is the subcommand; every later argument must be a known flag.
  CommandFlags(int argc, char** argv, const std::set<std::string>& known) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + arg + "'");
      std::string name = arg.substr(2), value;
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else {
        if (i + 1 >= argc) throw UsageError("flag --" + name + " needs a value");
        value = argv[++i];
      }
      if (!known.count(name)) throw UsageError("unknown flag --" + name);
      values_[name] = value;
    }
  }

  bool Has(const std::string& name) const { return values_.count(name) > 0; }

  std::string Str(const std::string& name, const std::string& fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }

  std::string Required(const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) throw UsageError("missing required flag --" + name);
    return it->second;
  }

  int64_t Int(const std::string& name, int64_t fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    try {
      size_t pos = 0;
      const int64_t v = std::stoll(it->second, &pos);
      if (pos == it->second.size()) return v;
    } catch (const std::exception&) {
    }
    throw UsageError("--" + name + " must be an integer, got '" + it->second + "'");
  }

  double Double(const std::string& name, double fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    try {
      size_t pos = 0;
      const double v = std::stod(it->second, &pos);
      if (pos == it->second.size()) return v;
    } catch (const std::exception&) {
    }
    throw UsageError("--" + name + " must be a number, got '" + it->second + "'");
  }

  // A comma-separated list of integers ("" is the empty list).
  std::vector<int64_t> IntList(const std::string& name, std::vector<int64_t> fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    std::vector<int64_t> out;
    const std::string& text = it->second;
    size_t begin = 0;
    while (begin < text.size()) {
      size_t end = text.find(',', begin);
      if (end == std::string::npos) end = text.size();
      const std::string item = text.substr(begin, end - begin);
      try {
        size_t pos = 0;
        out.push_back(std::stoll(item, &pos));
        if (pos != item.size()) throw std::invalid_argument(item);
      } catch (const std::exception&) {
        throw UsageError("--" + name + " must be comma-separated integers, got '" + text + "'");
      }
      begin = end + 1;
    }
    return out;
  }

  // 0 or 1 (also false/true).
  bool Bool(const std::string& name, bool fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    if (it->second == "1" || it->second == "true") return true;
    if (it->second == "0" || it->second == "false") return false;
    throw UsageError("--" + name + " must be 0 or 1, got '" + it->second + "'");
  }

 private:
  std::map<std::string, std::string> values_;
};

// Runs one subcommand: `--help` / `-h` anywhere prints `usage` (exit 0);
// otherwise `run(argc, argv)`, with a UsageError printed beside the usage
// (exit 2) and any other error printed as "lpdetr-train NAME: error: ..."
// (exit 1).
template <typename RunFn>
int RunSubcommand(const char* name, const char* usage, int argc, char** argv, RunFn run) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
  }
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lpdetr-train %s: %s\n\n%s", name, e.what(), usage);
    return 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "lpdetr-train %s: error: %s\n", name, e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lpdetr-train %s: error: %s\n", name, e.what());
    return 1;
  }
}

}  // namespace lpdetr::train
