// ModelService (lpdetr.v1): describes the model this server hosts (one model,
// the active default).
#pragma once

#include <grpcpp/grpcpp.h>

#include "lpdetr/v1/model.grpc.pb.h"
#include "server/model_runner.h"
#include "server/service_metrics.h"

namespace lpdetr::server {

class ModelServiceImpl final : public lpdetr::v1::ModelService::Service {
 public:
  // `model` and `metrics` must outlive the service.
  ModelServiceImpl(const ModelDescription* model, ServiceMetrics* metrics)
      : model_(model), metrics_(metrics) {}

  grpc::Status ListModels(grpc::ServerContext* context,
                          const lpdetr::v1::ListModelsRequest* request,
                          lpdetr::v1::ListModelsResponse* response) override;
  grpc::Status GetModel(grpc::ServerContext* context, const lpdetr::v1::GetModelRequest* request,
                        lpdetr::v1::ModelInfo* response) override;

 private:
  void Fill(lpdetr::v1::ModelInfo* info) const;
  const ModelDescription* model_;
  ServiceMetrics* metrics_;
};

}  // namespace lpdetr::server
