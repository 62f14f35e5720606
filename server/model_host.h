// The model versions a server serves and the switch between them.
//
// ServedModel is one loaded model version with its own Batcher: a batch only
// ever holds requests for that version. A request holds a shared_ptr to the
// ServedModel it was admitted to, from preprocessing to its response.
//
// ModelHost keeps, for every model name, the version that serves it, and
// which name is the default (the one a request that names no model gets).
// Activate() loads a model directory, warms it up with one batch and only
// then switches; requests admitted before the switch finish on the old
// version. A replaced version is retired: a janitor thread releases it (its
// batcher drains, its workers join, its memory is freed) once nothing but
// the host refers to it, so the last reference never drops on one of its
// own workers. Activations are serialised; a failed load leaves the serving
// version in place and says why.
//
// Threading: thread-safe. Find() takes a shared lock for a pointer copy;
// Activate() loads and warms up outside the lock and takes it exclusively
// only to switch. Knobs: Options (batcher settings of every version, how
// often the janitor looks).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/batcher.h"
#include "server/model_runner.h"

namespace lpdetr::server {

class ServedModel {
 public:
  // Runs one batch of this version's requests (on one of its workers).
  using BatchFn = std::function<void(ServedModel& model, std::vector<Batcher::TaskPtr>& batch)>;

  static absl::StatusOr<std::shared_ptr<ServedModel>> Create(std::unique_ptr<ModelRunner> runner,
                                                             const Batcher::Options& options,
                                                             BatchFn run_batch);
  // Stops the batcher: every accepted request still runs.
  ~ServedModel();
  ServedModel(const ServedModel&) = delete;
  ServedModel& operator=(const ServedModel&) = delete;

  const ModelDescription& description() const { return runner_->description(); }
  ModelRunner& runner() { return *runner_; }
  Batcher& batcher() { return *batcher_; }

 private:
  explicit ServedModel(std::unique_ptr<ModelRunner> runner) : runner_(std::move(runner)) {}

  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<Batcher> batcher_;
};

// What to load and under which name and version it serves.
struct ModelSource {
  std::string dir;      // a model directory
  std::string name;     // empty: the name in its config.json
  std::string version;  // empty: the version in its config.json
};

class ModelHost {
 public:
  struct Options {
    Batcher::Options batcher;
    // "cpu" or "cuda": where loaded models run.
    std::string device = "cpu";
    // How often the janitor checks retired versions.
    absl::Duration janitor_interval = absl::Milliseconds(50);
  };
  // Loads a model directory (ModelRunner::Create by default; tests inject).
  using Loader =
      std::function<absl::StatusOr<std::unique_ptr<ModelRunner>>(const std::string& dir,
                                                                 const std::string& device)>;
  // Called after each switch with the new version and the one it replaced
  // (nullptr for a first load), under no lock.
  using OnSwitch = std::function<void(const ModelDescription& now, const ModelDescription* before)>;

  static absl::StatusOr<std::unique_ptr<ModelHost>> Create(Options options,
                                                           ServedModel::BatchFn run_batch,
                                                           Loader loader = nullptr,
                                                           OnSwitch on_switch = nullptr);
  // Stop().
  ~ModelHost();

  // Loads `source`, runs one warm-up batch, then makes it the version that
  // serves its name and the default model. Serialised. On failure nothing
  // changes (FAILED_PRECONDITION with the loader's or the warm-up's error).
  absl::StatusOr<std::shared_ptr<ServedModel>> Activate(const ModelSource& source);

  // The version serving `name` (empty: the default); nullptr when none.
  std::shared_ptr<ServedModel> Find(const std::string& name) const;
  // Every serving version, the default first.
  std::vector<std::shared_ptr<ServedModel>> Serving() const;
  // The default model's name ("" before the first activation).
  std::string DefaultName() const;
  // Requests waiting in every version's queue.
  int QueueDepth() const;
  // Versions replaced but not yet released (for tests and logs).
  int RetiringCount() const;

  // Stops every batcher (each drains) and releases all versions. After it
  // Find() returns nullptr. Idempotent.
  void Stop();

 private:
  ModelHost(Options options, ServedModel::BatchFn run_batch, Loader loader, OnSwitch on_switch);
  void JanitorLoop();

  const Options options_;
  const ServedModel::BatchFn run_batch_;
  const Loader loader_;
  const OnSwitch on_switch_;

  absl::Mutex activate_mu_;  // serialises Activate (held across the load)
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<ServedModel>> serving_ ABSL_GUARDED_BY(mu_);
  std::string default_name_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<ServedModel>> retiring_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread janitor_;
};

}  // namespace lpdetr::server
