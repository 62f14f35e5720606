#include "server/model_host.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "model/runtime.h"

namespace lpdetr::server {

absl::StatusOr<std::shared_ptr<ServedModel>> ServedModel::Create(
    std::unique_ptr<ModelRunner> runner, const Batcher::Options& options, BatchFn run_batch) {
  if (!runner) return absl::InvalidArgumentError("ServedModel needs a loaded model");
  std::shared_ptr<ServedModel> model(new ServedModel(std::move(runner)));
  // The batcher belongs to the model and is stopped in its destructor, so
  // its workers never outlive `self`.
  ServedModel* self = model.get();
  absl::StatusOr<std::unique_ptr<Batcher>> batcher = Batcher::Create(
      options, [self, run_batch](std::vector<Batcher::TaskPtr>& batch) { run_batch(*self, batch); });
  if (!batcher.ok()) return batcher.status();
  model->batcher_ = *std::move(batcher);
  return model;
}

ServedModel::~ServedModel() {
  if (batcher_) batcher_->Stop();
}

absl::StatusOr<std::unique_ptr<ModelHost>> ModelHost::Create(Options options,
                                                             ServedModel::BatchFn run_batch,
                                                             Loader loader, OnSwitch on_switch) {
  if (!run_batch) return absl::InvalidArgumentError("ModelHost needs a batch function");
  if (!loader) loader = &ModelRunner::Create;
  std::unique_ptr<ModelHost> host(new ModelHost(std::move(options), std::move(run_batch),
                                                std::move(loader), std::move(on_switch)));
  host->janitor_ = std::thread([h = host.get()] { h->JanitorLoop(); });
  return host;
}

ModelHost::ModelHost(Options options, ServedModel::BatchFn run_batch, Loader loader,
                     OnSwitch on_switch)
    : options_(std::move(options)),
      run_batch_(std::move(run_batch)),
      loader_(std::move(loader)),
      on_switch_(std::move(on_switch)) {}

ModelHost::~ModelHost() { Stop(); }

absl::StatusOr<std::shared_ptr<ServedModel>> ModelHost::Activate(const ModelSource& source) {
  absl::MutexLock serial(&activate_mu_);
  {
    absl::ReaderMutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the server is stopping");
  }
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = loader_(source.dir, options_.device);
  if (!runner.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load ", source.dir, ": ", runner.status().message()));
  }
  (*runner)->SetIdentity(source.name, source.version);
  if (absl::Status warm = (*runner)->WarmUp(); !warm.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the warm-up batch of ", source.dir, " failed: ", warm.message()));
  }
  absl::StatusOr<std::shared_ptr<ServedModel>> model =
      ServedModel::Create(*std::move(runner), options_.batcher, run_batch_);
  if (!model.ok()) return model.status();
  const std::string name = (*model)->description().name;
  std::shared_ptr<ServedModel> before;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the server is stopping");
    auto it = serving_.find(name);
    if (it != serving_.end()) {
      before = it->second;
      retiring_.push_back(before);
    }
    serving_[name] = *model;
    default_name_ = name;
  }
  if (on_switch_) on_switch_((*model)->description(), before ? &before->description() : nullptr);
  return *model;
}

std::shared_ptr<ServedModel> ModelHost::Find(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = serving_.find(name.empty() ? default_name_ : name);
  return it == serving_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<ServedModel>> ModelHost::Serving() const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::shared_ptr<ServedModel>> out;
  if (auto it = serving_.find(default_name_); it != serving_.end()) out.push_back(it->second);
  for (const auto& [name, model] : serving_) {
    if (name != default_name_) out.push_back(model);
  }
  return out;
}

std::string ModelHost::DefaultName() const {
  absl::ReaderMutexLock lock(&mu_);
  return default_name_;
}

int ModelHost::QueueDepth() const {
  absl::ReaderMutexLock lock(&mu_);
  int depth = 0;
  for (const auto& [name, model] : serving_) depth += model->batcher().QueueDepth();
  for (const auto& model : retiring_) depth += model->batcher().QueueDepth();
  return depth;
}

int ModelHost::RetiringCount() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<int>(retiring_.size());
}

void ModelHost::JanitorLoop() {
  for (;;) {
    std::vector<std::shared_ptr<ServedModel>> released;
    {
      absl::MutexLock lock(&mu_);
      auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&done), options_.janitor_interval);
      if (stopping_) return;
      // A retired version nobody else holds has no request left: it is
      // released here, on this thread, never on one of its own workers.
      for (auto it = retiring_.begin(); it != retiring_.end();) {
        if (it->use_count() == 1) {
          released.push_back(std::move(*it));
          it = retiring_.erase(it);
        } else {
          ++it;
        }
      }
    }
    if (released.empty()) continue;
    released.clear();  // ~ServedModel: drains (nothing left) and joins its workers
    // The released version's memory sits free in the malloc arenas of the
    // threads that used it; without this the process keeps it (and a little
    // more at every swap).
    ReleaseFreedMemory();
  }
}

void ModelHost::Stop() {
  std::map<std::string, std::shared_ptr<ServedModel>> serving;
  std::vector<std::shared_ptr<ServedModel>> retiring;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    serving.swap(serving_);
    retiring.swap(retiring_);
  }
  if (janitor_.joinable()) janitor_.join();
  // Drain every batcher first (requests still hold their models), then let
  // the last references go.
  for (auto& [name, model] : serving) model->batcher().Stop();
  for (auto& model : retiring) model->batcher().Stop();
}

}  // namespace lpdetr::server
