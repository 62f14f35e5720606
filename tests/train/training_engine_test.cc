// Unit tests of the training engine's parts: the data loader's order,
// determinism, prefetch bound and errors; checkpoint state (AdamW, the
// generator, atomic layout); the EMA; MultiStepLR; class-tensor
// initialisation; the run configuration's JSON round trip.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adamw.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/model_dir.h"
#include "train/checkpoint.h"
#include "train/data_loader.h"
#include "train/ema.h"
#include "train/lr_schedule.h"
#include "train/train_setup.h"
#include "train/trainer.h"

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;

// A sample whose pixels encode its index and one draw of its generator, so
// tests can see which item and which random stream built it.
TrainSample EncodedSample(int64_t index, std::mt19937_64& rng) {
  TrainSample s;
  const int64_t h = 8 + index % 3, w = 10;
  s.image = at::full({3, h, w}, static_cast<float>(index));
  s.image[1].fill_(static_cast<float>(rng() % 1000003));
  s.target.labels = at::tensor({index}, at::kLong);
  s.target.boxes = at::tensor({0.5f, 0.5f, 0.2f, 0.2f}).view({1, 4});
  return s;
}

std::vector<std::pair<int64_t, float>> Drain(TrainDataLoader& loader) {
  std::vector<std::pair<int64_t, float>> seen;  // (index, draw)
  while (auto batch = loader.Next()) {
    for (size_t i = 0; i < batch->indices.size(); ++i) {
      seen.emplace_back(batch->indices[i], batch->batch.images[i][1][0][0].item<float>());
    }
  }
  return seen;
}

TEST(EpochOrder, IsAPermutationThatDependsOnSeedAndEpoch) {
  const auto a = EpochOrder(50, 7, 0, true);
  std::set<int64_t> unique(a.begin(), a.end());
  EXPECT_EQ(unique.size(), 50u);
  EXPECT_EQ(*unique.begin(), 0);
  EXPECT_EQ(*unique.rbegin(), 49);
  EXPECT_EQ(a, EpochOrder(50, 7, 0, true));
  EXPECT_NE(a, EpochOrder(50, 7, 1, true));
  EXPECT_NE(a, EpochOrder(50, 8, 0, true));
  const auto plain = EpochOrder(5, 7, 3, false);
  EXPECT_EQ(plain, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_NE(SampleSeed(1, 0, 5), SampleSeed(1, 0, 6));
  EXPECT_NE(SampleSeed(1, 0, 5), SampleSeed(1, 1, 5));
}

TEST(TrainDataLoader, BatchesFollowTheOrderWhateverTheWorkerCount) {
  DataLoaderOptions o;
  o.batch_size = 3;
  o.seed = 11;
  std::vector<std::pair<int64_t, float>> reference;
  for (int workers : {1, 2, 4}) {
    o.num_workers = workers;
    TrainDataLoader loader(10, EncodedSample, o);
    EXPECT_EQ(loader.batches_per_epoch(), 4);
    loader.StartEpoch(2);
    const auto seen = Drain(loader);
    ASSERT_EQ(seen.size(), 10u);
    const auto order = EpochOrder(10, 11, 2, true);
    for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].first, order[i]);
    if (reference.empty()) reference = seen;
    EXPECT_EQ(seen, reference) << workers << " workers";
  }
}

TEST(TrainDataLoader, ResumingMidEpochSeesTheSameBatches) {
  DataLoaderOptions o;
  o.batch_size = 2;
  o.seed = 5;
  TrainDataLoader full(9, EncodedSample, o);
  full.StartEpoch(1);
  const auto all = Drain(full);
  TrainDataLoader resumed(9, EncodedSample, o);
  resumed.StartEpoch(1, 2);  // batches 2.. = positions 4..
  const auto rest = Drain(resumed);
  ASSERT_EQ(rest.size(), 5u);
  for (size_t i = 0; i < rest.size(); ++i) EXPECT_EQ(rest[i], all[i + 4]);
}

TEST(TrainDataLoader, CollatesWithOfficialPaddingAndSizes) {
  DataLoaderOptions o;
  o.batch_size = 3;
  o.shuffle = false;
  TrainDataLoader loader(3, EncodedSample, o);
  loader.StartEpoch(0);
  auto batch = loader.Next();
  ASSERT_TRUE(batch);
  EXPECT_TRUE(batch->batch.extents.empty());
  EXPECT_EQ(batch->batch.images.size(2), 32);  // max h 10 -> 32
  EXPECT_EQ(batch->image_sizes[0][0].item<int64_t>(), 8);
  EXPECT_EQ(batch->image_sizes[2][0].item<int64_t>(), 10);
  EXPECT_FALSE(batch->batch.mask[0][7][9].item<bool>());
  EXPECT_TRUE(batch->batch.mask[0][8][0].item<bool>());
  EXPECT_EQ(batch->targets[2].labels[0].item<int64_t>(), 2);
  EXPECT_FALSE(loader.Next());
}

TEST(TrainDataLoader, PrefetchIsBounded) {
  std::atomic<int> built{0};
  DataLoaderOptions o;
  o.batch_size = 1;
  o.num_workers = 3;
  o.prefetch_batches = 2;
  TrainDataLoader loader(
      100,
      [&](int64_t index, std::mt19937_64& rng) {
        ++built;
        return EncodedSample(index, rng);
      },
      o);
  // Waits (up to 10 s, for a loaded machine) until `n` samples are built,
  // then gives the workers time to overshoot if they would.
  auto settle = [&](int n) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (built.load() < n && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  };
  loader.StartEpoch(0);
  settle(2);
  EXPECT_EQ(built.load(), 2);  // nothing consumed: only the prefetch window
  ASSERT_TRUE(loader.Next());
  settle(3);
  EXPECT_EQ(built.load(), 3);
}

TEST(TrainDataLoader, ASampleErrorReachesTheConsumerAtItsBatch) {
  DataLoaderOptions o;
  o.batch_size = 2;
  o.shuffle = false;
  TrainDataLoader loader(
      6,
      [](int64_t index, std::mt19937_64& rng) {
        if (index == 3) throw std::runtime_error("cannot decode image 3");
        return EncodedSample(index, rng);
      },
      o);
  loader.StartEpoch(0);
  EXPECT_TRUE(loader.Next());
  try {
    loader.Next();
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "cannot decode image 3");
  }
  EXPECT_TRUE(loader.Next());  // later batches still come
}

TEST(TrainDataLoader, RejectsBadOptions) {
  DataLoaderOptions o;
  EXPECT_THROW(TrainDataLoader(0, EncodedSample, o), std::invalid_argument);
  o.batch_size = 0;
  EXPECT_THROW(TrainDataLoader(4, EncodedSample, o), std::invalid_argument);
  o.batch_size = 1;
  o.num_workers = 0;
  EXPECT_THROW(TrainDataLoader(4, EncodedSample, o), std::invalid_argument);
  o.num_workers = 1;
  TrainDataLoader loader(4, EncodedSample, o);
  EXPECT_THROW(loader.Next(), std::logic_error);
  EXPECT_THROW(loader.StartEpoch(0, 5), std::invalid_argument);
}

// A small module trained by AdamW for the checkpoint tests.
struct Toy {
  torch::nn::Linear linear{4, 3};
  std::vector<ParameterGroup> groups;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  Toy() {
    ParameterGroup g;
    for (auto& item : linear->named_parameters()) g.params.push_back({item.key(), item.value()});
    groups.push_back(g);
    optimizer = MakeAdamW(groups, OptimizerOptions());
  }
  void Step(int seed) {
    at::manual_seed(seed);
    linear->forward(at::randn({5, 4})).pow(2).sum().backward();
    optimizer->step();
    optimizer->zero_grad();
  }
};

TEST(Checkpoint, AdamWStateRoundTripContinuesIdentically) {
  at::manual_seed(0);
  Toy a;
  a.Step(1);
  a.Step(2);
  const NamedTensors state = AdamWStateTensors(*a.optimizer, a.groups);
  ASSERT_EQ(state.size(), 6u);  // 2 parameters x (exp_avg, exp_avg_sq, step)
  Toy b;
  {
    at::NoGradGuard no_grad;
    b.linear->weight.copy_(a.linear->weight);
    b.linear->bias.copy_(a.linear->bias);
  }
  LoadAdamWState(*b.optimizer, b.groups, state);
  a.Step(3);
  b.Step(3);
  EXPECT_TRUE(at::equal(a.linear->weight, b.linear->weight));
  EXPECT_TRUE(at::equal(a.linear->bias, b.linear->bias));

  NamedTensors broken = state;
  broken.pop_back();
  EXPECT_THROW(LoadAdamWState(*b.optimizer, b.groups, broken), std::invalid_argument);
  NamedTensors extra = state;
  extra.emplace_back("exp_avg.nonexistent", at::zeros({1}));
  EXPECT_THROW(LoadAdamWState(*b.optimizer, b.groups, extra), std::invalid_argument);
}

TEST(Checkpoint, GeneratorStateRestoresTheSameDraws) {
  at::manual_seed(3);
  const at::Tensor state = DefaultCpuGeneratorState();
  const at::Tensor first = at::rand({5});
  SetDefaultCpuGeneratorState(state);
  EXPECT_TRUE(at::equal(first, at::rand({5})));
}

TEST(Checkpoint, WriteReadPruneAndLatest) {
  const fs::path run = fs::temp_directory_path() / ("lpdetr-ckpt-" + std::to_string(::getpid()));
  fs::remove_all(run);
  EXPECT_THROW(LatestCheckpointDir(run.string()), std::runtime_error);
  Checkpoint c;
  c.weights = {{"w", at::arange(6, at::kFloat)}};
  c.optimizer = {};
  c.rng_state = DefaultCpuGeneratorState();
  for (int64_t step : {0, 5, 10}) {
    c.state.step = step;
    c.state.epoch = step / 5;
    WriteCheckpoint(run.string(), c, 2);
  }
  const std::string latest = LatestCheckpointDir(run.string());
  EXPECT_EQ(fs::path(latest).filename(), "step-00000010");
  EXPECT_FALSE(fs::exists(run / "checkpoints" / "step-00000000"));  // pruned
  EXPECT_TRUE(fs::exists(run / "checkpoints" / "step-00000005"));
  for (const auto& e : fs::directory_iterator(run / "checkpoints")) {
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  }
  const Checkpoint back = ReadCheckpoint(latest);
  EXPECT_EQ(back.state.step, 10);
  EXPECT_EQ(back.state.epoch, 2);
  EXPECT_TRUE(at::equal(back.weights[0].second, c.weights[0].second));
  EXPECT_TRUE(back.ema.empty());
  // A damaged state.json is an error naming the file.
  std::ofstream(fs::path(latest) / "state.json") << "{\"epoch\": 1}";
  try {
    ReadCheckpoint(latest);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("state.json"), std::string::npos) << e.what();
  }
  fs::remove_all(run);
}

ModelConfig TinyConfig() {
  ModelConfig c;
  c.backbone = "resnet18";
  c.embed_dim = 32;
  c.num_heads = 4;
  c.dim_feedforward = 32;
  c.enc_layers = 1;
  c.dec_layers = 2;
  c.num_queries = 10;
  c.hybrid_num_proposals = 10;
  c.num_classes = 3;
  c.relation_heads = 4;
  return c;
}

at::Tensor Param(const torch::nn::Module& m, const std::string& name) {
  for (const auto& item : m.named_parameters()) {
    if (item.key() == name) return item.value();
  }
  throw std::out_of_range(name);
}

TEST(ModelEma, KeepingOneLeavesTheRandomStreamUntouched) {
  const ModelConfig config = TinyConfig();
  LpDetr model(config);
  at::manual_seed(7);
  const at::Tensor without = at::rand({8});
  at::manual_seed(7);
  ModelEma ema(config, *model, EmaOptions{});
  const at::Tensor with = at::rand({8});
  EXPECT_TRUE(at::equal(with, without));
  // The EMA starts as an exact copy of the source, not of its own random init.
  EXPECT_TRUE(at::equal(Param(*ema.model(), "transformer.tgt_embed.weight"),
                        Param(*model, "transformer.tgt_embed.weight")));
}

TEST(ModelEma, FollowsTheDecayRamp) {
  const ModelConfig config = TinyConfig();
  LpDetr model(config);
  EmaOptions o;
  o.decay = 0.9;
  o.warmup_steps = 2;
  ModelEma ema(config, *model, o);
  const at::Tensor start = Param(*model, "transformer.tgt_embed.weight").detach().clone();
  {
    at::NoGradGuard no_grad;
    Param(*model, "transformer.tgt_embed.weight").add_(1.0);
  }
  const double d1 = 0.9 * (1 - std::exp(-1.0 / 2));
  EXPECT_DOUBLE_EQ(ema.NextDecay(), d1);
  ema.Update(*model);
  EXPECT_EQ(ema.updates(), 1);
  const at::Tensor averaged = Param(*ema.model(), "transformer.tgt_embed.weight");
  EXPECT_TRUE(at::allclose(averaged, start + (1 - d1), 1e-6, 1e-6));
  EXPECT_FALSE(ema.model()->is_training());
  // Restore gives back a saved average and its count.
  const NamedTensors saved = ema.Weights();
  ema.Update(*model);
  ema.Restore(saved, 1);
  EXPECT_EQ(ema.updates(), 1);
  EXPECT_TRUE(at::allclose(Param(*ema.model(), "transformer.tgt_embed.weight"), start + (1 - d1)));
  o.decay = 1.0;
  EXPECT_THROW(ModelEma(config, *model, o), std::invalid_argument);
}

TEST(LrSchedule, StepFactorsAndValidation) {
  LrSchedule s;
  s.milestones = {2, 4};
  s.gamma = 0.5;
  EXPECT_DOUBLE_EQ(s.Factor(0), 1.0);
  EXPECT_DOUBLE_EQ(s.Factor(1), 1.0);
  EXPECT_DOUBLE_EQ(s.Factor(2), 0.5);
  EXPECT_DOUBLE_EQ(s.Factor(5), 0.25);
  LrSchedule official;  // [10], 0.1 over 12 epochs
  EXPECT_DOUBLE_EQ(official.Factor(9), 1.0);
  EXPECT_NEAR(official.Factor(10), 0.1, 1e-15);
  // Warm-up: (step + 1) / N over the first N steps, times the epoch factor.
  s.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(s.Factor(0, 0, 1000), 0.25);
  EXPECT_DOUBLE_EQ(s.Factor(0, 3, 1000), 1.0);
  EXPECT_DOUBLE_EQ(s.Factor(2, 1, 1000), 0.5 * 0.5);
  EXPECT_DOUBLE_EQ(s.Factor(2, 100, 1000), 0.5);
  s.warmup_steps = -1;
  EXPECT_THROW(s.Validate(), std::invalid_argument);
  s.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(s.Factor(0, 0, 1000), 1.0);
  s.milestones = {4, 2};
  EXPECT_THROW(s.Validate(), std::invalid_argument);
  s.milestones = {2};
  s.gamma = 0;
  EXPECT_THROW(s.Validate(), std::invalid_argument);
}

TEST(LrSchedule, CosineFallsFromOneToTheFinalFactorAfterTheWarmUp) {
  LrSchedule s;
  s.kind = "cosine";
  s.final_factor = 0.1;
  s.warmup_steps = 10;
  s.milestones = {0};  // not used by the cosine
  const int64_t total = 110;
  EXPECT_DOUBLE_EQ(s.Factor(0, 0, total), 0.1);   // warm-up ramp: 1 / 10
  EXPECT_DOUBLE_EQ(s.Factor(0, 4, total), 0.5);
  EXPECT_DOUBLE_EQ(s.Factor(0, 10, total), 1.0);  // first step after the warm-up
  // The cosine runs over the 100 steps after the warm-up (t = 0 .. 1 over
  // steps 10 .. 109); half-way it is (1 + 0.1) / 2.
  EXPECT_NEAR(s.Factor(3, 59, total), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 49.0 / 99.0)),
              1e-12);
  EXPECT_NEAR(s.Factor(3, 59, total), 0.55, 0.01);
  EXPECT_DOUBLE_EQ(s.Factor(9, total - 1, total), 0.1);  // the run's last step
  EXPECT_DOUBLE_EQ(s.Factor(9, total + 5, total), 0.1);  // past it (a longer resume)
  double previous = 2;
  for (int64_t step = 10; step < total; ++step) {
    const double f = s.Factor(step / 20, step, total);
    EXPECT_LT(f, previous) << "step " << step;
    previous = f;
  }
  EXPECT_DOUBLE_EQ(s.Factor(0, 0, /*total_steps=*/1), 0.1);  // a 1-step run: the ramp alone
  s.Validate();
  s.final_factor = 1.5;
  EXPECT_THROW(s.Validate(), std::invalid_argument);
  s.final_factor = 0;
  s.kind = "linear";
  EXPECT_THROW(s.Validate(), std::invalid_argument);
}

TEST(ClassTensors, NamesAndOfficialInitialisation) {
  const ModelConfig config = TinyConfig();
  LpDetr model(config);
  const auto names = ClassDependentTensorNames(*model);
  // 2 decoder heads + encoder + hybrid (weight and bias each) + label encoder.
  EXPECT_EQ(names.size(), 2u * 2 + 2 + 2 + 1);
  for (const std::string& n : names) {
    bool found = false;
    for (const auto& item : model->named_parameters()) {
      if (item.key() == n) {
        EXPECT_EQ(item.value().size(0), config.num_classes) << n;
        found = true;
      }
    }
    EXPECT_TRUE(found) << n;
  }
  const auto reinit = InitializeClassTensors(*model);
  EXPECT_EQ(reinit, names);
  const float prior_bias = static_cast<float>(-std::log(99.0));
  for (const auto& item : model->named_parameters()) {
    const std::string& n = item.key();
    if (std::find(names.begin(), names.end(), n) == names.end()) continue;
    if (n.size() > 5 && n.substr(n.size() - 5) == ".bias") {
      EXPECT_TRUE(at::allclose(item.value(), at::full_like(item.value(), prior_bias))) << n;
    } else if (n.find("label_encoder") == std::string::npos) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(config.embed_dim));
      EXPECT_LE(item.value().abs().max().item<double>(), bound) << n;
    }
  }
  InitializeForTraining(*model);
  for (const auto& item : model->named_parameters()) {
    if (item.key().rfind("transformer.encoder_bbox_head.layers.2.", 0) == 0 ||
        item.key().rfind("transformer.decoder.bbox_head.1.layers.2.", 0) == 0) {
      EXPECT_EQ(item.value().abs().max().item<double>(), 0.0) << item.key();
    }
  }
}

TEST(TrainConfig, JsonRoundTripAndValidation) {
  TrainConfig c;
  c.train_annotations = "a.json";
  c.train_images = "img";
  c.model_config = "tiny.json";
  c.epochs = 3;
  c.ema = true;
  c.schedule.milestones = {1, 2};
  c.augment_options.scales = {96, 128};
  c.schedule.warmup_steps = 7;
  c.backbone_training = "full";
  c.export_dtype = "fp16";
  c.precision = "bf16";
  c.schedule.kind = "cosine";
  c.schedule.final_factor = 0.05;
  const TrainConfig back = TrainConfig::FromJson(c.ToJson());
  EXPECT_EQ(back.precision, "bf16");
  EXPECT_EQ(back.schedule.kind, "cosine");
  EXPECT_DOUBLE_EQ(back.schedule.final_factor, 0.05);
  // Runs recorded before the setting trained in fp32.
  nlohmann::json old_run = c.ToJson();
  old_run.erase("precision");
  EXPECT_EQ(TrainConfig::FromJson(old_run).precision, "fp32");
  // ... and stepped their rate at milestones.
  old_run.erase("lr_schedule");
  EXPECT_EQ(TrainConfig::FromJson(old_run).schedule.kind, "step");
  EXPECT_EQ(back.schedule.warmup_steps, 7);
  EXPECT_EQ(back.backbone_training, "full");
  EXPECT_EQ(back.export_dtype, "fp16");
  EXPECT_EQ(back.ToJson(), c.ToJson());
  EXPECT_NO_THROW(back.Validate());
  TrainConfig bad = c;
  bad.base_model = "dir";  // both a model and a config
  EXPECT_THROW(bad.Validate(), std::invalid_argument);
  bad = c;
  bad.best_metric = "mAP";
  EXPECT_THROW(bad.Validate(), std::invalid_argument);
  bad = c;
  bad.backbone_training = "frozen";
  EXPECT_THROW(bad.Validate(), std::invalid_argument);
  bad = c;
  bad.precision = "fp16";
  EXPECT_THROW(bad.Validate(), std::invalid_argument);
  bad = c;
  bad.schedule.kind = "linear";
  EXPECT_THROW(bad.Validate(), std::invalid_argument);
  bad = c;
  bad.export_dtype = "int8";
  EXPECT_THROW(bad.Validate(), std::invalid_argument);
  bad = c;
  bad.val_annotations = "v.json";  // without images
  EXPECT_THROW(bad.Validate(), std::invalid_argument);
  EXPECT_THROW(TrainConfig::FromJson({{"epochs", "three"}}), std::invalid_argument);
}

}  // namespace
}  // namespace lpdetr::train
