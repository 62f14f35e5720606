#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/model_dir.h"
#include "model/precision.h"
#include "model/runtime.h"
#include "train/checkpoint.h"
#include "train/coco_dataset.h"
#include "train/criterion.h"
#include "train/data_loader.h"
#include "train/evaluate.h"
#include "train/plots.h"
#include "train/replica_pool.h"

namespace fs = std::filesystem;

namespace lpdetr::train {
namespace {

// ---------------------------------------------------------------- config JSON

template <typename T>
void Read(const nlohmann::json& j, const char* key, T* out) {
  if (!j.contains(key)) return;
  try {
    *out = j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw std::invalid_argument(std::string("run configuration: key '") + key +
                                "' has the wrong type");
  }
}

nlohmann::json ReadJsonFile(const fs::path& path) {
  try {
    return nlohmann::json::parse(ReadTextFile(path.string()));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path.string() + ": " + e.what());
  }
}

// Stop requests arrive as an exception out of the evaluation's progress
// callback, which is the only long call the training thread makes.
struct StopDuringEvaluation {};

// ------------------------------------------------------------------ helpers

// Whether every output tensor is finite, with one host sync for all of them.
bool OutputsFinite(const DetectorOutput& o) {
  std::vector<at::Tensor> checks;
  for (const at::Tensor* t : {&o.layer_logits, &o.layer_boxes, &o.enc_logits, &o.enc_boxes,
                              &o.dn_layer_logits, &o.dn_layer_boxes, &o.hybrid_layer_logits,
                              &o.hybrid_layer_boxes, &o.hybrid_enc_logits, &o.hybrid_enc_boxes}) {
    if (t->defined()) checks.push_back(at::isfinite(t->detach()).all().reshape({1}));
  }
  return checks.empty() || at::cat(checks).all().item<bool>();
}

// The seed of the denoising noise of one batch: a function of the run's seed
// and the batch's place in the run only, so that the draws are the same
// whichever thread or replica runs the batch, and after a resume.
uint64_t BatchSeed(uint64_t seed, int64_t epoch, int64_t batch_in_epoch) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(epoch) * 0xbf58476d1ce4e5b9ULL +
               static_cast<uint64_t>(batch_in_epoch) * 0x94d049bb133111ebULL + 1;
  x ^= x >> 30;  // splitmix64 finaliser
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// The values of `loss.total` and then of each of `loss.losses`, as doubles,
// fetched from the device with one copy instead of one sync per term.
std::vector<double> LossValues(const CriterionResult& loss) {
  std::vector<at::Tensor> parts;
  parts.reserve(loss.losses.size() + 1);
  parts.push_back(loss.total.detach().reshape({1}).to(at::kDouble));
  for (const auto& [name, value] : loss.losses) {
    parts.push_back(value.detach().reshape({1}).to(at::kDouble));
  }
  const at::Tensor host = at::cat(parts).cpu().contiguous();
  const double* data = host.data_ptr<double>();
  return std::vector<double>(data, data + host.numel());
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

nlohmann::json StatsJson(const CocoEvalResult& r) {
  nlohmann::json j = nlohmann::json::object();
  for (int i = 0; i < CocoEvalResult::kNumStats; ++i) j[CocoEvalResult::kStatNames[i]] = r.stats[i];
  nlohmann::json per = nlohmann::json::object();
  for (const auto& [id, ap] : r.per_category_ap) per[std::to_string(id)] = ap;
  j["per_category_AP"] = per;
  return j;
}

// Replaces directory `target` by `source` (both in the same parent).
void ReplaceDirectory(const fs::path& source, const fs::path& target) {
  const fs::path old = target.string() + ".old";
  fs::remove_all(old);
  if (fs::exists(target)) fs::rename(target, old);
  fs::rename(source, target);
  fs::remove_all(old);
}

// The storage dtype named by TrainConfig::export_dtype.
at::ScalarType ExportDtype(const std::string& name) {
  if (name == "fp32") return at::kFloat;
  if (name == "fp16") return at::kHalf;
  if (name == "bf16") return at::kBFloat16;
  throw std::invalid_argument("export dtype must be fp32, fp16 or bf16, got '" + name + "'");
}

// Writes a model directory under a temporary name, then moves it into place.
void WriteModelDirectory(const fs::path& target, const ModelConfig& config,
                         const torch::nn::Module& module, const nlohmann::json* metrics,
                         const std::string& dtype) {
  const fs::path tmp = target.string() + ".tmp";
  fs::remove_all(tmp);
  SaveModelDir(tmp.string(), config, module, ExportDtype(dtype));
  if (metrics) WriteTextAtomically((tmp / "metrics.json").string(), metrics->dump(2) + "\n");
  ReplaceDirectory(tmp, target);
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out;
}

// ------------------------------------------------------------------ trainer

class Trainer {
 public:
  Trainer(TrainConfig config, std::string run_dir, RunOptions options)
      : config_(std::move(config)), run_dir_(std::move(run_dir)), options_(options) {}

  RunResult Start();
  RunResult Resume();
  // An error event for a failure that ends the run (the caller rethrows).
  void ReportFailure(const std::exception& e) {
    if (!progress_) return;
    ProgressEvent ev = Event("error");
    ev.message = e.what();
    try {
      progress_->Report(ev);
    } catch (const std::exception&) {
    }
  }

 private:
  void LoadDatasets();
  // The progress reporter: console per the run options, RUN_DIR/progress.jsonl appended.
  void OpenProgress() {
    ProgressReporter::Options po;
    po.jsonl_path = (fs::path(run_dir_) / "progress.jsonl").string();
    po.mode = options_.progress_mode;
    progress_ = ProgressReporter::Create(po);
  }
  void BuildNewModel();
  void LoadRunModel();
  void SetUpOptimization();
  void StartLoader();
  void WriteCheckpointNow();
  void RestoreCheckpoint();
  RunResult Loop();
  RunResult TrainOneStep(int64_t batches);
  // One batch's forward, loss and backward (of the loss / `batches`) on
  // `model`, one of the replicas when the step's batches run in parallel.
  struct BatchOutcome {
    std::vector<double> values;  // the total, then each term (LossValues)
    std::vector<std::string> names;  // the terms' names
    std::string bad_term;        // non-empty: what was NaN/Inf (no backward ran)
  };
  BatchOutcome RunBatch(LpDetr& model, const TrainBatch& batch, int64_t batches) const;
  // The --parallel-batches replicas (none: the step's batches run one after
  // another on model_).
  void SetUpReplicas();
  // The base learning rate of the next step (schedule and warm-up), and
  // setting every group's rate from it (returns that base rate).
  double LearningRate() const;
  double SetLearningRates();
  void Evaluate();
  void FinishRun();
  void WritePlots();
  bool StopRequested() const {
    return options_.stop_requested && options_.stop_requested->load();
  }
  int64_t StepsPerEpoch() const {
    return (loader_->batches_per_epoch() + config_.accumulate_steps - 1) /
           config_.accumulate_steps;
  }
  int64_t TotalSteps() const {
    const int64_t all = StepsPerEpoch() * config_.epochs;
    return config_.max_steps > 0 ? std::min(all, config_.max_steps) : all;
  }
  bool RunComplete() const {
    return state_.step >= TotalSteps() || state_.epoch >= config_.epochs;
  }
  LpDetr& EvalModel() { return ema_ ? ema_->model() : model_; }
  ProgressEvent Event(const char* kind) const {
    ProgressEvent e;
    e.event = kind;
    e.epoch = state_.epoch;
    e.step = state_.step;
    e.total_steps = TotalSteps();
    return e;
  }
  void Info(const std::string& line) {
    std::fprintf(stderr, "lpdetr-train: %s\n", line.c_str());
    std::fflush(stderr);
  }

  TrainConfig config_;
  std::string run_dir_;
  RunOptions options_;

  std::unique_ptr<CocoTrainDataset> train_set_, val_set_;
  ModelConfig model_config_;
  LpDetr model_{nullptr};
  std::vector<std::string> reinitialized_;
  std::vector<ParameterGroup> groups_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::unique_ptr<HybridSetCriterion> criterion_;
  std::unique_ptr<ModelEma> ema_;
  std::unique_ptr<TrainDataLoader> loader_;
  std::unique_ptr<ReplicaPool> replicas_;
  std::unique_ptr<ProgressReporter> progress_;
  TrainState state_;
  int64_t steps_this_invocation_ = 0;
  double mean_step_seconds_ = 0;  // running mean over this invocation
};

void Trainer::LoadDatasets() {
  std::vector<std::string> errors;
  try {
    train_set_ = std::make_unique<CocoTrainDataset>(config_.train_annotations, config_.train_images);
  } catch (const std::exception& e) {
    errors.push_back(e.what());
  }
  if (!config_.val_annotations.empty()) {
    try {
      val_set_ = std::make_unique<CocoTrainDataset>(config_.val_annotations, config_.val_images);
    } catch (const std::exception& e) {
      errors.push_back(e.what());
    }
  }
  if (train_set_ && val_set_ &&
      train_set_->categories().category_ids() != val_set_->categories().category_ids()) {
    errors.push_back("the validation categories (" + config_.val_annotations +
                     ") are not the training categories (" + config_.train_annotations +
                     "): both files must list the same category ids");
  }
  if (!errors.empty()) {
    std::string all;
    for (const std::string& e : errors) all += (all.empty() ? "" : "\n") + e;
    throw std::invalid_argument(all);
  }
  Info("training set: " + train_set_->stats().Summary());
  if (val_set_) Info("validation set: " + val_set_->stats().Summary());
}

void Trainer::BuildNewModel() {
  const CategoryMap& categories = train_set_->categories();
  at::manual_seed(static_cast<uint64_t>(config_.seed));
  if (!config_.base_model.empty()) {
    LoadedModel base = LoadModelDir(config_.base_model);
    const ModelConfig& b = base.config;
    const bool same_classes =
        b.num_classes == categories.num_classes() && b.classes == categories.names() &&
        (b.category_ids.empty() || b.category_ids == categories.category_ids());
    model_config_ = b;
    model_config_.num_classes = static_cast<int>(categories.num_classes());
    model_config_.classes = categories.names();
    model_config_.category_ids = categories.category_ids();
    if (same_classes) {
      model_ = base.model;
    } else {
      model_ = LpDetr(model_config_);
      // Everything but the class-dependent tensors loads by name.
      NamedTensors weights;
      const std::vector<std::string> class_names = ClassDependentTensorNames(*model_);
      const std::set<std::string> skip(class_names.begin(), class_names.end());
      const NamedTensors own = StateDict(*model_);
      std::map<std::string, at::Tensor> from_base;
      for (auto& [name, t] : StateDict(*base.model)) from_base.emplace(name, t);
      for (const auto& [name, t] : own) {
        weights.emplace_back(name, skip.count(name) || !from_base.count(name) ? t : from_base[name]);
      }
      LoadStateDict(*model_, weights, config_.base_model);
      reinitialized_ = InitializeClassTensors(*model_);
      Info("the base model's classes (" + std::to_string(b.num_classes) +
           ") differ from the dataset's (" + std::to_string(categories.num_classes()) +
           "): re-initialised " + std::to_string(reinitialized_.size()) +
           " tensors: " + JoinNames(reinitialized_));
    }
  } else {
    model_config_ = ModelConfig::FromFile(config_.model_config);
    model_config_.num_classes = static_cast<int>(categories.num_classes());
    model_config_.classes = categories.names();
    model_config_.category_ids = categories.category_ids();
    model_config_.Validate();
    model_ = LpDetr(model_config_);
    InitializeForTraining(*model_);
  }
  model_->to(at::kFloat);
}

void Trainer::LoadRunModel() {
  model_config_ = ModelConfig::FromJson(ReadJsonFile(fs::path(run_dir_) / "base_config.json"));
  model_ = LpDetr(model_config_);
}

void Trainer::SetUpOptimization() {
  const BackboneTraining backbone = ParseBackboneTraining(config_.backbone_training);
  PrepareForTraining(*model_, backbone);
  groups_ = FinetuneBackboneAndLinearProjection(*model_, backbone);
  params_ = GroupTensors(groups_);
  optimizer_ = MakeAdamW(groups_, config_.optimizer);
  CriterionOptions criterion_options;
  criterion_options.hybrid_assign = model_config_.hybrid_assign;
  criterion_ = std::make_unique<HybridSetCriterion>(criterion_options);
  if (config_.ema) ema_ = std::make_unique<ModelEma>(model_config_, *model_, config_.ema_options);
}

void Trainer::StartLoader() {
  const CocoTrainDataset* dataset = train_set_.get();
  const bool augment = config_.augment;
  const DetrAugmentOptions augment_options = config_.augment_options;
  const int64_t min_size = model_config_.min_size, max_size = model_config_.max_size;
  SampleFn fn = [dataset, augment, augment_options, min_size, max_size](
                    int64_t index, std::mt19937_64& rng) {
    const CocoImage& image = dataset->image(index);
    AugmentedImage a{dataset->LoadImageRgb(index), image.targets};
    a = augment ? DetrAugment(a.rgb, a.targets, augment_options, rng)
                : ResizeShortestSide(a.rgb, a.targets, min_size, max_size);
    TrainSample s;
    s.image = NormalizedImageTensor(a.rgb);
    s.target = ToTrainTarget(a.targets, a.rgb.rows, a.rgb.cols);
    return s;
  };
  DataLoaderOptions o;
  o.batch_size = config_.batch_size;
  o.num_workers = static_cast<int>(config_.workers);
  o.prefetch_batches = config_.prefetch;
  o.seed = config_.seed;
  loader_ = std::make_unique<TrainDataLoader>(train_set_->size(), std::move(fn), o);
}

void Trainer::WriteCheckpointNow() {
  Checkpoint c;
  for (auto& [name, t] : StateDict(*model_)) c.weights.emplace_back(name, t.detach().clone());
  c.optimizer = AdamWStateTensors(*optimizer_, groups_);
  if (ema_) {
    c.ema = ema_->Weights();
    state_.ema_updates = ema_->updates();
  }
  c.rng_state = DefaultCpuGeneratorState();
  c.state = state_;
  const std::string dir =
      WriteCheckpoint(run_dir_, c, static_cast<int>(std::max<int64_t>(config_.keep_checkpoints, 1)));
  ProgressEvent e = Event("checkpoint");
  e.message = dir;
  progress_->Report(e);
}

void Trainer::RestoreCheckpoint() {
  const std::string dir = LatestCheckpointDir(run_dir_);
  Checkpoint c = ReadCheckpoint(dir);
  {
    at::NoGradGuard no_grad;
    LoadStateDict(*model_, c.weights, dir + "/weights.safetensors");
  }
  LoadAdamWState(*optimizer_, groups_, c.optimizer);
  if (ema_) {
    if (c.ema.empty()) throw std::runtime_error(dir + " has no EMA state but the run uses EMA");
    ema_->Restore(c.ema, c.state.ema_updates);
  }
  SetDefaultCpuGeneratorState(c.rng_state);
  state_ = c.state;
  Info("resuming from " + dir + " (epoch " + std::to_string(state_.epoch) + ", step " +
       std::to_string(state_.step) + ")");
}

// bf16 training needs native bf16 here and the fused ops (the composed
// reference ops do not take a bf16 value); throws std::invalid_argument.
void CheckTrainingPrecision(const TrainConfig& config) {
  if (config.precision != "bf16") return;
  ResolvePrecision(PrecisionRequest::kBf16, c10::Device(c10::kCPU));  // throws without bf16
  if (GetOpBackend() != OpBackend::kKernels) {
    throw std::invalid_argument("bf16 training needs the fused ops (--ops kernels)");
  }
}

RunResult Trainer::Start() {
  config_.Validate();
  CheckTrainingPrecision(config_);
  if (config_.backbone_training.empty()) {
    config_.backbone_training = BackboneTrainingName(
        config_.base_model.empty() ? BackboneTraining::kFull : BackboneTraining::kFinetune);
  }
  LoadDatasets();  // every dataset problem before anything is written
  if (fs::exists(run_dir_) && !fs::is_empty(run_dir_)) {
    throw std::invalid_argument("output directory " + run_dir_ +
                                " exists and is not empty (use `lpdetr-train resume " + run_dir_ +
                                "` to continue a run)");
  }
  BuildNewModel();
  if (!config_.augment_options.scales.empty()) config_.augment_options.Validate();
  if (config_.augment_options.scales.empty()) {
    config_.augment_options =
        DetrAugmentOptions::ForMinSize(model_config_.min_size, model_config_.max_size);
  }
  SetUpOptimization();
  SetUpReplicas();
  StartLoader();
  fs::create_directories(run_dir_);
  WriteTextAtomically((fs::path(run_dir_) / "run.json").string(), config_.ToJson().dump(2) + "\n");
  WriteTextAtomically((fs::path(run_dir_) / "base_config.json").string(),
                      model_config_.ToJson().dump(2) + "\n");
  OpenProgress();
  ProgressEvent start = Event("start");
  start.message = "training " + model_config_.name + " on " + train_set_->stats().Summary();
  if (!reinitialized_.empty()) {
    start.message += "; classes differ from the base model: re-initialised " +
                     JoinNames(reinitialized_);
  }
  progress_->Report(start);
  WriteCheckpointNow();  // step 0: even a run that fails at once is resumable
  return Loop();
}

RunResult Trainer::Resume() {
  const fs::path run_json = fs::path(run_dir_) / "run.json";
  if (!fs::exists(run_json)) {
    throw std::invalid_argument(run_dir_ + " is not a training run directory (no run.json)");
  }
  const int64_t max_steps_override = config_.max_steps;
  config_ = TrainConfig::FromJson(ReadJsonFile(run_json));
  if (max_steps_override > 0) config_.max_steps = max_steps_override;
  // Runs recorded before the setting existed fine-tuned.
  if (config_.backbone_training.empty()) config_.backbone_training = "finetune";
  config_.Validate();
  CheckTrainingPrecision(config_);
  LoadDatasets();
  LoadRunModel();
  SetUpOptimization();
  RestoreCheckpoint();
  SetUpReplicas();
  StartLoader();
  OpenProgress();
  ProgressEvent start = Event("start");
  start.message = "resuming " + run_dir_ + " at epoch " + std::to_string(state_.epoch) +
                  ", step " + std::to_string(state_.step);
  progress_->Report(start);
  return Loop();
}

double Trainer::LearningRate() const {
  return config_.optimizer.lr * config_.schedule.Factor(state_.epoch, state_.step, TotalSteps());
}

double Trainer::SetLearningRates() {
  const double lr = LearningRate();
  for (size_t g = 0; g < optimizer_->param_groups().size(); ++g) {
    auto& opts = static_cast<torch::optim::AdamWOptions&>(optimizer_->param_groups()[g].options());
    opts.lr(lr * groups_[g].lr_scale);
  }
  return lr;
}

Trainer::BatchOutcome Trainer::RunBatch(LpDetr& model, const TrainBatch& batch,
                                        int64_t batches) const {
  BatchOutcome o;
  model->denoising_generator->set_generator(at::make_generator<at::CPUGeneratorImpl>(
      BatchSeed(config_.seed, batch.epoch, batch.batch_in_epoch)));
  DetectorOutput out;
  {
    // The forward only: the losses, the matching and the backward's own
    // dtypes follow from the fp32 outputs.
    ScopedBf16Autocast autocast(config_.precision == "bf16", c10::DeviceType::CPU);
    out = model->forward(batch.batch, &batch.targets);
  }
  // Non-finite outputs cannot be matched (the assignment rejects NaN
  // costs): they are this step's failure, reported as such.
  if (!OutputsFinite(out)) {
    o.bad_term = "the model's outputs";
    return o;
  }
  CriterionResult loss = (*criterion_)(out, batch.targets);
  o.values = LossValues(loss);
  for (const auto& [name, value] : loss.losses) o.names.push_back(name);
  if (!std::isfinite(o.values[0])) {
    for (size_t i = 0; i < loss.losses.size(); ++i) {
      if (!std::isfinite(o.values[1 + i])) {
        o.bad_term = "the loss (" + loss.losses[i].first + ")";
        return o;
      }
    }
    o.bad_term = "the loss (loss_total)";
    return o;
  }
  (loss.total / static_cast<double>(batches)).backward();
  return o;
}

void Trainer::SetUpReplicas() {
  replicas_.reset();
  if (options_.parallel_batches <= 1) return;
  if (options_.parallel_batches > config_.accumulate_steps) {
    throw std::invalid_argument(
        "--parallel-batches " + std::to_string(options_.parallel_batches) +
        " needs --accumulate-steps >= it (it runs a step's accumulated batches at once), got " +
        std::to_string(config_.accumulate_steps));
  }
  const int threads = options_.threads > 0 ? options_.threads : at::get_num_threads();
  ReplicaPool::Options o;
  o.replicas = options_.parallel_batches;
  o.threads_per_replica = std::max(1, threads / options_.parallel_batches);
  o.backbone_training = ParseBackboneTraining(config_.backbone_training);
  replicas_ = std::make_unique<ReplicaPool>(model_, model_config_, o);
  Info("running " + std::to_string(o.replicas) + " batches at once on model replicas, " +
       std::to_string(o.threads_per_replica) + " intra-op thread(s) each");
}

RunResult Trainer::TrainOneStep(int64_t batches) {
  const auto t0 = std::chrono::steady_clock::now();
  const double lr = SetLearningRates();
  auto next_batch = [this]() {
    std::optional<TrainBatch> batch = loader_->Next();
    if (!batch) throw std::runtime_error("the data loader ended before the epoch did");
    return std::move(*batch);
  };
  std::vector<BatchOutcome> outcomes(static_cast<size_t>(batches));
  int64_t images = 0;
  if (replicas_) {
    std::vector<TrainBatch> group;
    for (int64_t k = 0; k < batches; ++k) group.push_back(next_batch());
    for (const TrainBatch& b : group) images += static_cast<int64_t>(b.targets.size());
    std::atomic<bool> failed{false};
    replicas_->Run(batches, [&](LpDetr& model, int64_t k) {
      if (failed.load()) return;
      outcomes[k] = RunBatch(model, group[k], batches);
      if (!outcomes[k].bad_term.empty()) failed.store(true);
    });
  } else {
    for (int64_t k = 0; k < batches; ++k) {
      const TrainBatch batch = next_batch();
      images += static_cast<int64_t>(batch.targets.size());
      outcomes[k] = RunBatch(model_, batch, batches);
      if (!outcomes[k].bad_term.empty()) break;
    }
  }
  double loss_sum = 0;
  std::vector<std::pair<std::string, double>> losses;
  std::string bad_term;
  for (const BatchOutcome& o : outcomes) {
    if (!o.bad_term.empty()) {
      bad_term = o.bad_term;
      break;
    }
    if (o.values.empty()) break;  // not run: an earlier batch failed
    loss_sum += o.values[0] / static_cast<double>(batches);
    if (losses.empty()) {
      for (const std::string& name : o.names) losses.emplace_back(name, 0.0);
    }
    for (size_t i = 0; i < o.names.size() && i < losses.size(); ++i) {
      losses[i].second += o.values[1 + i] / static_cast<double>(batches);
    }
  }
  const int64_t failed_step = state_.step + 1;
  auto fail = [&](const std::string& what) {
    ClearGradients(params_);
    ProgressEvent e = Event("error");
    e.step = failed_step;
    e.message = what + " at step " + std::to_string(failed_step) + " (epoch " +
                std::to_string(state_.epoch) + "); stopped without saving it, the last "
                "checkpoint " + LatestCheckpointDir(run_dir_) + " is kept (lpdetr-train resume " +
                run_dir_ + " continues from it, e.g. after lowering the learning rate)";
    progress_->Report(e);
    return RunResult::kFailed;
  };
  if (!bad_term.empty()) return fail("NaN/Inf in " + bad_term);
  const double grad_norm = ClipGradients(params_, config_.optimizer.max_grad_norm);
  if (!std::isfinite(grad_norm)) return fail("the gradient norm became NaN/Inf");
  optimizer_->step();
  ClearGradients(params_);
  if (ema_) ema_->Update(*model_);
  ++state_.step;
  ++steps_this_invocation_;
  state_.batch_in_epoch += batches;

  const double seconds = Seconds(std::chrono::steady_clock::now() - t0);
  mean_step_seconds_ += (seconds - mean_step_seconds_) / static_cast<double>(steps_this_invocation_);
  if (state_.step % std::max<int64_t>(config_.log_every, 1) == 0 || state_.step == TotalSteps()) {
    ProgressEvent e = Event("step");
    e.loss = loss_sum;
    e.losses = std::move(losses);
    e.losses.emplace_back("grad_norm", grad_norm);
    e.lr = lr;
    e.images_per_s = seconds > 0 ? static_cast<double>(images) / seconds : 0.0;
    e.eta_s = mean_step_seconds_ * static_cast<double>(TotalSteps() - state_.step);
    progress_->Report(e);
  }
  return RunResult::kDone;
}

void Trainer::Evaluate() {
  if (!val_set_) return;
  EvaluateOptions o;
  o.batch_size = config_.eval_batch_size;
  // A line on stderr every 10 s, so a long evaluation shows it is moving.
  auto last_note = std::chrono::steady_clock::now();
  o.on_progress = [this, &last_note](int64_t done, int64_t total) {
    if (StopRequested()) throw StopDuringEvaluation{};
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_note > std::chrono::seconds(10)) {
      last_note = now;
      Info("evaluating: " + std::to_string(done) + "/" + std::to_string(total) + " images");
    }
  };
  const CocoEvalResult result =
      EvaluateOnDataset(EvalModel(), model_config_, model_config_.category_ids,
                        config_.val_annotations, config_.val_images, o);
  nlohmann::json entry = {{"epoch", state_.epoch}, {"step", state_.step}, {"stats", StatsJson(result)}};
  state_.eval_history.push_back(entry);
  state_.eval_pending = false;
  const nlohmann::json& stats = entry["stats"];
  if (!stats.contains(config_.best_metric)) {
    throw std::invalid_argument("--best-metric " + config_.best_metric + " is not a COCO stat");
  }
  const double value = stats[config_.best_metric].get<double>();
  const bool better = state_.best.is_null() ||
                      value > state_.best["stats"][config_.best_metric].get<double>();
  ProgressEvent e = Event("eval");
  for (int i = 0; i < CocoEvalResult::kNumStats; ++i) {
    e.metrics.emplace_back(CocoEvalResult::kStatNames[i], result.stats[i]);
  }
  e.message = better ? "new best " + config_.best_metric : "";
  progress_->Report(e);
  if (better) {
    state_.best = entry;
    nlohmann::json metrics = {{"metric", config_.best_metric}, {"epoch", state_.epoch},
                              {"step", state_.step}, {"stats", stats}};
    WriteModelDirectory(fs::path(run_dir_) / "best", model_config_, *EvalModel(), &metrics,
                        config_.export_dtype);
  }
}

RunResult Trainer::Loop() {
  try {
    if (state_.eval_pending) Evaluate();
    while (!RunComplete()) {
      model_->train();
      loader_->StartEpoch(state_.epoch, state_.batch_in_epoch);
      while (state_.batch_in_epoch < loader_->batches_per_epoch() && !RunComplete()) {
        const int64_t batches = std::min(config_.accumulate_steps,
                                         loader_->batches_per_epoch() - state_.batch_in_epoch);
        const RunResult r = TrainOneStep(batches);
        if (r != RunResult::kDone) return r;
        const bool end_of_epoch = state_.batch_in_epoch >= loader_->batches_per_epoch();
        if (end_of_epoch) {
          ++state_.epoch;
          state_.batch_in_epoch = 0;
          state_.eval_pending = val_set_ && config_.eval_every == 0;
        }
        if (config_.eval_every > 0 && state_.step % config_.eval_every == 0) Evaluate();
        if (state_.eval_pending && !StopRequested()) Evaluate();
        const bool checkpoint_due =
            (config_.checkpoint_every > 0 && state_.step % config_.checkpoint_every == 0) ||
            (config_.checkpoint_every == 0 && end_of_epoch);
        const bool stop = StopRequested() || (options_.stop_after_steps > 0 &&
                                              steps_this_invocation_ >= options_.stop_after_steps);
        if (stop && !RunComplete()) {
          WriteCheckpointNow();
          ProgressEvent e = Event("done");
          e.message = "stopped at step " + std::to_string(state_.step) +
                      " with a resumable checkpoint (lpdetr-train resume " + run_dir_ + ")";
          progress_->Report(e);
          return RunResult::kStopped;
        }
        if (checkpoint_due && !RunComplete()) WriteCheckpointNow();
        if (end_of_epoch) break;
      }
    }
    FinishRun();
    return RunResult::kDone;
  } catch (const StopDuringEvaluation&) {
    state_.eval_pending = true;
    WriteCheckpointNow();
    ProgressEvent e = Event("done");
    e.message = "stopped during evaluation with a resumable checkpoint (lpdetr-train resume " +
                run_dir_ + ")";
    progress_->Report(e);
    return RunResult::kStopped;
  }
}

void Trainer::FinishRun() {
  // The final weights are evaluated once unless the last evaluation saw them.
  const bool evaluated_last = !state_.eval_history.empty() &&
                              state_.eval_history.back()["step"].get<int64_t>() == state_.step;
  if (val_set_ && !evaluated_last) Evaluate();
  WriteCheckpointNow();
  WriteModelDirectory(fs::path(run_dir_) / "model", model_config_, *EvalModel(), nullptr,
                      config_.export_dtype);
  nlohmann::json metrics = {{"metric", config_.best_metric},
                            {"steps", state_.step},
                            {"epochs", state_.epoch},
                            {"history", state_.eval_history}};
  if (!state_.eval_history.empty()) {
    metrics["final"] = state_.eval_history.back()["stats"];
    metrics["best"] = state_.best["stats"];
    metrics["best_epoch"] = state_.best["epoch"];
    metrics["best_step"] = state_.best["step"];
  } else {
    metrics["final"] = nullptr;
    metrics["best"] = nullptr;
    metrics["best_epoch"] = nullptr;
    metrics["best_step"] = nullptr;
  }
  WriteTextAtomically((fs::path(run_dir_) / "metrics.json").string(), metrics.dump(2) + "\n");
  WritePlots();
  ProgressEvent e = Event("done");
  if (!state_.eval_history.empty()) {
    for (int i = 0; i < CocoEvalResult::kNumStats; ++i) {
      const char* key = CocoEvalResult::kStatNames[i];
      e.metrics.emplace_back(key, metrics["final"][key].get<double>());
    }
  }
  e.message = "model written to " + (fs::path(run_dir_) / "model").string();
  progress_->Report(e);
}

void Trainer::WritePlots() {
  // The loss of every step from progress.jsonl (a resumed run repeats steps
  // after its checkpoint: the last report of a step wins).
  std::map<int64_t, double> loss_by_step;
  std::map<int64_t, double> ap_by_step;
  std::ifstream in(fs::path(run_dir_) / "progress.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("event") || !j.contains("step")) continue;
    const std::string event = j["event"].get<std::string>();
    if (event == "step" && j.contains("loss") && j["loss"].is_number()) {
      loss_by_step[j["step"].get<int64_t>()] = j["loss"].get<double>();
    }
    if (event == "eval" && j.contains("metrics") && j["metrics"].contains("AP") &&
        j["metrics"]["AP"].is_number()) {
      ap_by_step[j["step"].get<int64_t>()] = j["metrics"]["AP"].get<double>();
    }
  }
  std::vector<std::pair<int64_t, double>> losses(loss_by_step.begin(), loss_by_step.end());
  std::vector<std::pair<int64_t, double>> aps(ap_by_step.begin(), ap_by_step.end());
  WriteLossCurvePng((fs::path(run_dir_) / "loss_curve.png").string(), losses, aps);
  const at::Tensor alpha = EvalModel()->ScaleAlpha();
  if (alpha.defined()) {
    WriteAlphaPng((fs::path(run_dir_) / "alpha.png").string(), alpha.detach().to(at::kFloat));
  } else {
    Info("no alpha.png: the " + std::string(RelationVariantName(model_config_.relation_variant)) +
         " variant has no learned scale weights");
  }
}

}  // namespace

// ------------------------------------------------------------ TrainConfig JSON

namespace {

// Calls `visit(key, member)` for every member of run.json: the one list of
// its keys, shared by ToJson and FromJson. "betas" is the one key that holds
// two members: `visit(key, beta1, beta2)`. `Config` is TrainConfig or
// const TrainConfig.
template <typename Config, typename Visitor>
void VisitRunJsonFields(Config& c, Visitor&& visit) {
  visit("train_annotations", c.train_annotations);
  visit("train_images", c.train_images);
  visit("val_annotations", c.val_annotations);
  visit("val_images", c.val_images);
  visit("base_model", c.base_model);
  visit("model_config", c.model_config);
  visit("backbone_training", c.backbone_training);
  visit("export_dtype", c.export_dtype);
  visit("precision", c.precision);
  visit("epochs", c.epochs);
  visit("batch_size", c.batch_size);
  visit("accumulate_steps", c.accumulate_steps);
  visit("max_steps", c.max_steps);
  visit("lr", c.optimizer.lr);
  visit("weight_decay", c.optimizer.weight_decay);
  visit("betas", c.optimizer.beta1, c.optimizer.beta2);
  visit("eps", c.optimizer.eps);
  visit("max_grad_norm", c.optimizer.max_grad_norm);
  visit("lr_schedule", c.schedule.kind);
  visit("lr_milestones", c.schedule.milestones);
  visit("lr_gamma", c.schedule.gamma);
  visit("lr_warmup_steps", c.schedule.warmup_steps);
  visit("lr_final_factor", c.schedule.final_factor);
  visit("ema", c.ema);
  visit("ema_decay", c.ema_options.decay);
  visit("ema_warmup_steps", c.ema_options.warmup_steps);
  visit("eval_every", c.eval_every);
  visit("best_metric", c.best_metric);
  visit("checkpoint_every", c.checkpoint_every);
  visit("keep_checkpoints", c.keep_checkpoints);
  visit("augment", c.augment);
  visit("scales", c.augment_options.scales);
  visit("max_size", c.augment_options.max_size);
  visit("crop_resize_scales", c.augment_options.crop_resize_scales);
  visit("crop_min", c.augment_options.crop_min);
  visit("crop_max", c.augment_options.crop_max);
  visit("flip_prob", c.augment_options.flip_prob);
  visit("seed", c.seed);
  visit("workers", c.workers);
  visit("prefetch", c.prefetch);
  visit("eval_batch_size", c.eval_batch_size);
  visit("log_every", c.log_every);
}

// The ToJson visitor: each member becomes `key: value`, a pair `[a, b]`.
struct RunJsonWriter {
  nlohmann::json* out;
  template <typename T>
  void operator()(const char* key, const T& value) const {
    (*out)[key] = value;
  }
  void operator()(const char* key, double first, double second) const {
    (*out)[key] = {first, second};
  }
};

// The FromJson visitor: keys that are absent keep the member's default; a
// pair is taken only when the array has exactly two entries.
struct RunJsonReader {
  const nlohmann::json* in;
  template <typename T>
  void operator()(const char* key, T& value) const {
    Read(*in, key, &value);
  }
  void operator()(const char* key, double& first, double& second) const {
    std::vector<double> pair;
    Read(*in, key, &pair);
    if (pair.size() == 2) {
      first = pair[0];
      second = pair[1];
    }
  }
};

}  // namespace

nlohmann::json TrainConfig::ToJson() const {
  nlohmann::json j = nlohmann::json::object();
  VisitRunJsonFields(*this, RunJsonWriter{&j});
  return j;
}

TrainConfig TrainConfig::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) throw std::invalid_argument("run configuration: not a JSON object");
  TrainConfig c;
  VisitRunJsonFields(c, RunJsonReader{&j});
  return c;
}

void TrainConfig::Validate() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
  };
  need(!train_annotations.empty() && !train_images.empty(),
       "the training annotations and images are required");
  need(val_annotations.empty() == val_images.empty(),
       "the validation annotations and images go together (give both or neither)");
  need(base_model.empty() != model_config.empty(),
       "give exactly one of a base model directory (--model) or a configuration (--config)");
  need(epochs >= 1, "epochs must be >= 1, got " + std::to_string(epochs));
  need(batch_size >= 1, "batch size must be >= 1, got " + std::to_string(batch_size));
  need(accumulate_steps >= 1,
       "accumulate steps must be >= 1, got " + std::to_string(accumulate_steps));
  need(max_steps >= 0, "max steps must be >= 0, got " + std::to_string(max_steps));
  need(optimizer.lr > 0 && std::isfinite(optimizer.lr),
       "the learning rate must be > 0, got " + std::to_string(optimizer.lr));
  need(optimizer.weight_decay >= 0, "weight decay must be >= 0");
  need(eval_every >= 0, "eval-every must be >= 0");
  need(checkpoint_every >= 0, "checkpoint-every must be >= 0");
  need(keep_checkpoints >= 1, "keep-checkpoints must be >= 1");
  need(workers >= 1, "workers must be >= 1");
  need(prefetch >= 1, "prefetch must be >= 1");
  need(eval_batch_size >= 1, "eval batch size must be >= 1");
  need(log_every >= 1, "log-every must be >= 1");
  bool known_metric = false;
  for (const char* name : CocoEvalResult::kStatNames) known_metric |= best_metric == name;
  need(known_metric, "best metric '" + best_metric + "' is not one of the 12 COCO stats (AP, "
                     "AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl)");
  if (!backbone_training.empty()) ParseBackboneTraining(backbone_training);
  ExportDtype(export_dtype);
  need(precision == "fp32" || precision == "bf16",
       "precision must be fp32 or bf16, got '" + precision + "'");
  schedule.Validate();
  if (ema) ema_options.Validate();
  if (!augment_options.scales.empty()) augment_options.Validate();
}

namespace {

// --threads also bounds OpenBLAS's own thread pool (it ignores LibTorch's
// setting), so that `--threads 1` computes on one core.
std::optional<ScopedBlasThreads> ApplyThreads(const RunOptions& options) {
  if (options.threads <= 0) return std::nullopt;
  at::set_num_threads(options.threads);
  return std::make_optional<ScopedBlasThreads>(options.threads);
}

}  // namespace

RunResult StartTraining(const TrainConfig& config, const std::string& run_dir,
                        const RunOptions& options) {
  const auto blas_threads = ApplyThreads(options);
  Trainer trainer(config, run_dir, options);
  try {
    return trainer.Start();
  } catch (const std::exception& e) {
    trainer.ReportFailure(e);
    throw;
  }
}

RunResult ResumeTraining(const std::string& run_dir, const RunOptions& options,
                         int64_t max_steps) {
  const auto blas_threads = ApplyThreads(options);
  TrainConfig placeholder;
  placeholder.max_steps = max_steps;
  Trainer trainer(placeholder, run_dir, options);
  try {
    return trainer.Resume();
  } catch (const std::exception& e) {
    trainer.ReportFailure(e);
    throw;
  }
}

}  // namespace lpdetr::train
