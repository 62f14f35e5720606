// ModelService (lpdetr.v1): describes the models this server serves (the
// version serving each name; `active` marks the default, the one a request
// that names no model gets) and, with a model registry, every registered
// version that is not serving.
// Thread-safe: reads the ModelHost and the registry per call.
#pragma once

#include <memory>

#include <grpcpp/grpcpp.h>

#include "lpdetr/v1/model.grpc.pb.h"
#include "server/admin/model_registry.h"
#include "server/model_host.h"
#include "server/service_metrics.h"

namespace lpdetr::server {

class ModelServiceImpl final : public lpdetr::v1::ModelService::Service {
 public:
  // `registry` may be null (no registry configured).
  ModelServiceImpl(std::shared_ptr<ModelHost> models, std::shared_ptr<ServiceMetrics> metrics,
                   std::shared_ptr<admin::ModelRegistry> registry = nullptr)
      : models_(std::move(models)), metrics_(std::move(metrics)), registry_(std::move(registry)) {}

  grpc::Status ListModels(grpc::ServerContext* context,
                          const lpdetr::v1::ListModelsRequest* request,
                          lpdetr::v1::ListModelsResponse* response) override;
  grpc::Status GetModel(grpc::ServerContext* context, const lpdetr::v1::GetModelRequest* request,
                        lpdetr::v1::ModelInfo* response) override;

  // The ModelInfo of a serving version.
  static void Fill(const ModelDescription& m, bool is_default, lpdetr::v1::ModelInfo* info);

 private:
  const std::shared_ptr<ModelHost> models_;
  const std::shared_ptr<ServiceMetrics> metrics_;
  const std::shared_ptr<admin::ModelRegistry> registry_;
};

}  // namespace lpdetr::server
