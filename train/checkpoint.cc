#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/string_utils.h>

namespace fs = std::filesystem;

namespace lpdetr::train {
namespace {

constexpr const char* kLatest = "LATEST";
constexpr const char* kPrefix = "step-";

std::string ErrnoText() { return std::strerror(errno); }

// Writes and fsyncs one file (no rename).
void WriteSynced(const fs::path& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + path.string() + ": " + ErrnoText());
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const std::string why = ErrnoText();
      ::close(fd);
      throw std::runtime_error("cannot write " + path.string() + ": " + why);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    throw std::runtime_error("cannot sync " + path.string() + ": " + ErrnoText());
  }
}

void SyncDirectory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some file systems refuse directory fds
  ::fsync(fd);
  ::close(fd);
}

std::string StepDirName(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08lld", kPrefix, static_cast<long long>(step));
  return name;
}

template <typename T>
T Get(const nlohmann::json& j, const char* key) {
  if (!j.contains(key)) throw std::invalid_argument(std::string("state.json: missing key ") + key);
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw std::invalid_argument(std::string("state.json: key ") + key + " has the wrong type");
  }
}

}  // namespace

nlohmann::json TrainState::ToJson() const {
  return {{"epoch", epoch},
          {"batch_in_epoch", batch_in_epoch},
          {"step", step},
          {"eval_pending", eval_pending},
          {"ema_updates", ema_updates},
          {"eval_history", eval_history},
          {"best", best}};
}

TrainState TrainState::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) throw std::invalid_argument("state.json: not a JSON object");
  TrainState s;
  s.epoch = Get<int64_t>(j, "epoch");
  s.batch_in_epoch = Get<int64_t>(j, "batch_in_epoch");
  s.step = Get<int64_t>(j, "step");
  s.eval_pending = Get<bool>(j, "eval_pending");
  s.ema_updates = Get<int64_t>(j, "ema_updates");
  if (!j.contains("eval_history") || !j.at("eval_history").is_array()) {
    throw std::invalid_argument("state.json: eval_history must be an array");
  }
  s.eval_history = j.at("eval_history");
  s.best = j.contains("best") ? j.at("best") : nlohmann::json(nullptr);
  if (s.epoch < 0 || s.batch_in_epoch < 0 || s.step < 0 || s.ema_updates < 0) {
    throw std::invalid_argument("state.json: epoch, batch_in_epoch, step and ema_updates must "
                                "be >= 0");
  }
  return s;
}

NamedTensors AdamWStateTensors(torch::optim::AdamW& optimizer,
                               const std::vector<ParameterGroup>& groups) {
  NamedTensors out;
  auto& state = optimizer.state();
  for (const ParameterGroup& g : groups) {
    for (const NamedParameter& p : g.params) {
      auto it = state.find(c10::guts::to_string(p.tensor.unsafeGetTensorImpl()));
      if (it == state.end()) continue;  // no step taken for this parameter yet
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
      out.emplace_back("exp_avg." + p.name, s.exp_avg().detach().clone());
      out.emplace_back("exp_avg_sq." + p.name, s.exp_avg_sq().detach().clone());
      out.emplace_back("step." + p.name, at::scalar_tensor(s.step(), at::kLong));
    }
  }
  return out;
}

void LoadAdamWState(torch::optim::AdamW& optimizer, const std::vector<ParameterGroup>& groups,
                    const NamedTensors& tensors) {
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  auto& state = optimizer.state();
  state.clear();
  size_t used = 0;
  for (const ParameterGroup& g : groups) {
    for (const NamedParameter& p : g.params) {
      const std::string name = p.name;
      auto avg = by_name.find("exp_avg." + name);
      auto sq = by_name.find("exp_avg_sq." + name);
      auto step = by_name.find("step." + name);
      const int present = (avg != by_name.end()) + (sq != by_name.end()) + (step != by_name.end());
      if (present == 0) continue;
      if (present != 3) {
        throw std::invalid_argument("optimizer state of " + p.name +
                                    " is incomplete (needs exp_avg, exp_avg_sq and step)");
      }
      if (avg->second.sizes() != p.tensor.sizes() || sq->second.sizes() != p.tensor.sizes() ||
          step->second.numel() != 1) {
        throw std::invalid_argument("optimizer state of " + p.name + " does not match its shape");
      }
      auto s = std::make_unique<torch::optim::AdamWParamState>();
      s->step(step->second.item<int64_t>());
      s->exp_avg(avg->second.to(p.tensor.options()).clone());
      s->exp_avg_sq(sq->second.to(p.tensor.options()).clone());
      state[c10::guts::to_string(p.tensor.unsafeGetTensorImpl())] = std::move(s);
      used += 3;
    }
  }
  if (used != tensors.size()) {
    std::vector<std::string> unknown;
    std::map<std::string, bool> known;
    for (const ParameterGroup& g : groups) {
      for (const NamedParameter& p : g.params) {
        for (const char* k : {"exp_avg.", "exp_avg_sq.", "step."}) known[k + p.name] = true;
      }
    }
    for (const auto& [name, t] : tensors) {
      if (!known.count(name)) unknown.push_back(name);
    }
    std::string list;
    for (size_t i = 0; i < unknown.size() && i < 10; ++i) list += (i ? ", " : "") + unknown[i];
    throw std::invalid_argument("optimizer state has entries for unknown parameters: " + list);
  }
}

at::Tensor DefaultCpuGeneratorState() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::Tensor(gen.get_state()).clone();
}

void SetDefaultCpuGeneratorState(const at::Tensor& state) {
  TORCH_CHECK(state.scalar_type() == at::kByte && state.dim() == 1,
              "generator state must be a 1-d uint8 tensor, got ", state.scalar_type(), " ",
              state.sizes());
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state.contiguous());
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void WriteTextAtomically(const std::string& path, const std::string& text) {
  const fs::path target(path);
  const fs::path tmp = target.parent_path() / ("." + target.filename().string() + ".tmp");
  WriteSynced(tmp, text);
  fs::rename(tmp, target);
  SyncDirectory(target.parent_path().empty() ? fs::path(".") : target.parent_path());
}

std::string WriteCheckpoint(const std::string& run_dir, const Checkpoint& c, int keep) {
  if (keep < 1) throw std::invalid_argument("checkpoints to keep must be >= 1");
  const fs::path root = fs::path(run_dir) / "checkpoints";
  fs::create_directories(root);
  const std::string name = StepDirName(c.state.step);
  const fs::path final_dir = root / name;
  const fs::path tmp_dir = root / (name + ".tmp");
  fs::remove_all(tmp_dir);
  fs::create_directories(tmp_dir);
  WriteSynced(tmp_dir / "weights.safetensors", SerializeSafetensors(c.weights));
  WriteSynced(tmp_dir / "optimizer.safetensors", SerializeSafetensors(c.optimizer));
  if (!c.ema.empty()) WriteSynced(tmp_dir / "ema.safetensors", SerializeSafetensors(c.ema));
  WriteSynced(tmp_dir / "rng.safetensors", SerializeSafetensors({{"torch_cpu", c.rng_state}}));
  WriteSynced(tmp_dir / "state.json", c.state.ToJson().dump(2) + "\n");
  SyncDirectory(tmp_dir);
  fs::remove_all(final_dir);  // a checkpoint of the same step from an earlier attempt
  fs::rename(tmp_dir, final_dir);
  SyncDirectory(root);
  WriteTextAtomically((root / kLatest).string(), name + "\n");

  // Prune: keep the newest `keep` complete checkpoints (names sort by step).
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string n = entry.path().filename().string();
    if (entry.is_directory() && n.rfind(kPrefix, 0) == 0 &&
        n.find(".tmp") == std::string::npos) {
      names.push_back(n);
    }
  }
  std::sort(names.begin(), names.end());
  for (size_t i = 0; i + static_cast<size_t>(keep) < names.size(); ++i) {
    if (names[i] != name) fs::remove_all(root / names[i]);
  }
  return final_dir.string();
}

std::string LatestCheckpointDir(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path latest = root / kLatest;
  if (!fs::exists(latest)) {
    throw std::runtime_error(run_dir + " has no checkpoint (" + latest.string() + " is missing)");
  }
  std::string name = ReadTextFile(latest.string());
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  if (name.rfind(kPrefix, 0) != 0 || name.find('/') != std::string::npos) {
    throw std::runtime_error(latest.string() + " does not name a checkpoint: '" + name + "'");
  }
  const fs::path dir = root / name;
  if (!fs::is_directory(dir)) {
    throw std::runtime_error(latest.string() + " names " + dir.string() + ", which is missing");
  }
  return dir.string();
}

Checkpoint ReadCheckpoint(const std::string& dir) {
  const fs::path root(dir);
  Checkpoint c;
  c.weights = ReadSafetensors((root / "weights.safetensors").string()).tensors;
  c.optimizer = ReadSafetensors((root / "optimizer.safetensors").string()).tensors;
  if (fs::exists(root / "ema.safetensors")) {
    c.ema = ReadSafetensors((root / "ema.safetensors").string()).tensors;
  }
  c.rng_state = ReadSafetensors((root / "rng.safetensors").string()).Get("torch_cpu");
  const fs::path state_path = root / "state.json";
  try {
    c.state = TrainState::FromJson(nlohmann::json::parse(ReadTextFile(state_path.string())));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(state_path.string() + ": " + e.what());
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(state_path.string() + ": " + e.what());
  }
  return c;
}

}  // namespace lpdetr::train
