// Tests of train/replica_pool.h: running a step's batches on model replicas
// gives the gradients and batch-norm statistics of running them one after
// another on one model, the replicas follow the master's updates, and errors
// come back to the caller.
#include "train/replica_pool.h"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/layers.h"
#include "model/runtime.h"
#include "train/train_setup.h"

namespace lpdetr::train {
namespace {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.backbone = "resnet18";
  c.backbone_width = 16;
  c.embed_dim = 32;
  c.num_heads = 4;
  c.relation_heads = 4;
  c.dim_feedforward = 64;
  c.enc_layers = 1;
  c.dec_layers = 2;
  c.num_queries = 12;
  c.hybrid_num_proposals = 12;
  c.denoising_nums = 6;
  c.num_classes = 3;
  c.num_select = 10;
  return c;
}

struct Batch {
  ImageBatch images;
  std::vector<TrainTarget> targets;
};

// Batch k: two 64x64 images with different content and one or two boxes.
Batch MakeBatch(int64_t k) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(100 + k);
  Batch b;
  b.images.images = at::randn({2, 3, 64, 64}, gen, at::TensorOptions());
  b.images.mask = at::zeros({2, 64, 64}, at::kBool);
  for (int64_t i = 0; i < 2; ++i) {
    TrainTarget t;
    const int64_t n = 1 + (k + i) % 2;
    t.labels = at::randint(0, 3, {n}, gen, at::TensorOptions().dtype(at::kLong));
    t.boxes = at::rand({n, 2}, gen, at::TensorOptions()) * 0.4 + 0.3;
    t.boxes = at::cat({t.boxes, at::full({n, 2}, 0.2)}, 1);
    b.targets.push_back(t);
  }
  return b;
}

// A loss over every output branch, so that every trainable tensor gets a
// gradient; the denoising noise comes from a generator of the batch's own.
void ForwardBackward(LpDetr& model, const Batch& batch, int64_t k, double scale) {
  model->denoising_generator->set_generator(at::make_generator<at::CPUGeneratorImpl>(7 + k));
  DetectorOutput out = model->forward(batch.images, &batch.targets);
  at::Tensor loss = out.layer_logits.sigmoid().mean() + out.layer_boxes.square().mean() +
                    out.enc_logits.sigmoid().mean() + out.enc_boxes.mean() +
                    out.dn_layer_logits.sigmoid().mean() + out.dn_layer_boxes.mean() +
                    out.hybrid_layer_logits.sigmoid().mean() + out.hybrid_layer_boxes.mean() +
                    out.hybrid_enc_logits.sigmoid().mean() + out.hybrid_enc_boxes.mean();
  (loss * scale).backward();
}

LpDetr MakeModel(uint64_t seed) {
  torch::manual_seed(seed);
  LpDetr model(TinyConfig());
  InitializeForTraining(*model);
  PrepareForTraining(*model, BackboneTraining::kFull);
  return model;
}

std::vector<FrozenBatchNorm2dImpl*> Norms(torch::nn::Module& model) {
  std::vector<FrozenBatchNorm2dImpl*> out;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* bn = m->as<FrozenBatchNorm2dImpl>(); bn != nullptr && bn->batch_statistics) {
      out.push_back(bn);
    }
  }
  return out;
}

class ReplicaPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_threads_ = at::get_num_threads();
    at::set_num_threads(1);  // the sequential reference computes like one replica
    blas_ = std::make_unique<ScopedBlasThreads>(1);
  }
  void TearDown() override {
    blas_.reset();
    at::set_num_threads(saved_threads_);
  }

  // Two models with the same weights: `sequential` runs the batches one after
  // another, `pooled` through a pool of `replicas`.
  void ExpectSameAsSequential(int replicas, int64_t batches) {
    LpDetr sequential = MakeModel(3);
    LpDetr pooled = MakeModel(3);
    ReplicaPool::Options o;
    o.replicas = replicas;
    o.threads_per_replica = 1;
    ReplicaPool pool(pooled, TinyConfig(), o);
    std::vector<Batch> data;
    for (int64_t k = 0; k < batches; ++k) data.push_back(MakeBatch(k));
    const double scale = 1.0 / static_cast<double>(batches);
    for (int64_t k = 0; k < batches; ++k) ForwardBackward(sequential, data[k], k, scale);
    pool.Run(batches, [&](LpDetr& model, int64_t k) { ForwardBackward(model, data[k], k, scale); });

    const auto a = TrainableParameters(*sequential), b = TrainableParameters(*pooled);
    ASSERT_EQ(a.size(), b.size());
    int64_t with_grad = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].name, b[i].name);
      ASSERT_EQ(a[i].tensor.grad().defined(), b[i].tensor.grad().defined()) << a[i].name;
      if (!a[i].tensor.grad().defined()) continue;
      ++with_grad;
      if (batches <= 2) {
        // Two terms add the same way whichever model ran them.
        EXPECT_TRUE(at::equal(a[i].tensor.grad(), b[i].tensor.grad())) << a[i].name;
      } else {
        EXPECT_TRUE(at::allclose(a[i].tensor.grad(), b[i].tensor.grad(), 1e-5, 1e-7)) << a[i].name;
      }
    }
    EXPECT_GT(with_grad, static_cast<int64_t>(a.size()) / 2);
    const auto na = Norms(*sequential), nb = Norms(*pooled);
    ASSERT_EQ(na.size(), nb.size());
    ASSERT_FALSE(na.empty());
    for (size_t i = 0; i < na.size(); ++i) {
      EXPECT_TRUE(at::allclose(na[i]->running_mean, nb[i]->running_mean, 1e-5, 1e-6)) << i;
      EXPECT_TRUE(at::allclose(na[i]->running_var, nb[i]->running_var, 1e-5, 1e-6)) << i;
    }
  }

  int saved_threads_ = 1;
  std::unique_ptr<ScopedBlasThreads> blas_;
};

TEST_F(ReplicaPoolTest, TwoReplicasGiveTheGradientsAndStatisticsOfTwoSequentialBatches) {
  ExpectSameAsSequential(/*replicas=*/2, /*batches=*/2);
}

TEST_F(ReplicaPoolTest, UnevenChunksMatchTooUpToRounding) {
  ExpectSameAsSequential(/*replicas=*/2, /*batches=*/3);
}

TEST_F(ReplicaPoolTest, MoreReplicasThanBatchesLeavesSomeIdle) {
  ExpectSameAsSequential(/*replicas=*/3, /*batches=*/2);
  ExpectSameAsSequential(/*replicas=*/2, /*batches=*/1);
}

TEST_F(ReplicaPoolTest, ReplicasFollowTheMastersUpdatedWeights) {
  LpDetr sequential = MakeModel(5);
  LpDetr pooled = MakeModel(5);
  ReplicaPool::Options o;
  ReplicaPool pool(pooled, TinyConfig(), o);
  const std::vector<Batch> data = {MakeBatch(0), MakeBatch(1)};
  for (int step = 0; step < 2; ++step) {
    for (LpDetr* m : {&sequential, &pooled}) {
      // An update of every weight, as an optimizer step would make.
      torch::NoGradGuard no_grad;
      for (const NamedParameter& p : TrainableParameters(**m)) {
        if (p.tensor.grad().defined()) p.tensor.sub_(p.tensor.grad().sign() * 1e-2);
        p.tensor.mutable_grad() = at::Tensor();
      }
    }
    for (int64_t k = 0; k < 2; ++k) ForwardBackward(sequential, data[k], k, 0.5);
    pool.Run(2, [&](LpDetr& model, int64_t k) { ForwardBackward(model, data[k], k, 0.5); });
    const auto a = TrainableParameters(*sequential), b = TrainableParameters(*pooled);
    for (size_t i = 0; i < a.size(); ++i) {
      if (!a[i].tensor.grad().defined()) continue;
      EXPECT_TRUE(at::equal(a[i].tensor.grad(), b[i].tensor.grad())) << step << " " << a[i].name;
    }
  }
}

TEST_F(ReplicaPoolTest, TheFirstErrorComesBackAfterEveryChunkRan) {
  LpDetr pooled = MakeModel(1);
  ReplicaPool::Options o;
  ReplicaPool pool(pooled, TinyConfig(), o);
  std::vector<int> ran(4, 0);
  try {
    pool.Run(4, [&](LpDetr&, int64_t k) {
      ran[k] = 1;
      if (k == 2) throw std::runtime_error("batch 2 failed");
    });
    FAIL() << "Run did not rethrow";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "batch 2 failed");
  }
  EXPECT_EQ(ran, (std::vector<int>{1, 1, 1, 0}));  // chunk 2..3 stops at its error
  // The pool still works afterwards.
  const Batch b = MakeBatch(0);
  pool.Run(2, [&](LpDetr& model, int64_t k) { ForwardBackward(model, b, k, 0.5); });
  EXPECT_TRUE(TrainableParameters(*pooled)[0].tensor.grad().defined());
}

TEST(ReplicaPool, RejectsBadOptions) {
  LpDetr model = MakeModel(1);
  ReplicaPool::Options o;
  o.replicas = 0;
  EXPECT_THROW(ReplicaPool(model, TinyConfig(), o), std::invalid_argument);
  o.replicas = 2;
  o.threads_per_replica = 0;
  EXPECT_THROW(ReplicaPool(model, TinyConfig(), o), std::invalid_argument);
  o.threads_per_replica = 1;
  EXPECT_THROW(ReplicaPool(LpDetr(nullptr), TinyConfig(), o), std::invalid_argument);
}

}  // namespace
}  // namespace lpdetr::train
