#include "server/model_service.h"

#include <chrono>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace lpdetr::server {
namespace {
double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

void ModelServiceImpl::Fill(const ModelDescription& m, bool is_default,
                            lpdetr::v1::ModelInfo* info) {
  info->set_name(m.name);
  info->set_version(m.version);
  info->set_variant(m.variant);
  for (const std::string& c : m.classes) info->add_classes(c);
  for (const int64_t id : m.category_ids) info->add_category_ids(id);
  info->set_num_classes(m.num_classes);
  info->set_min_size(m.min_size);
  info->set_max_size(m.max_size);
  info->set_num_queries(m.num_queries);
  info->set_num_select(m.num_select);
  info->set_backbone(m.backbone);
  info->set_decoder_layers(m.decoder_layers);
  info->set_relation_heads(m.relation_heads);
  for (const auto& a : m.scale_alpha) {
    lpdetr::v1::ScaleAlpha* s = info->add_scale_alpha();
    s->set_local(a[0]);
    s->set_medium(a[1]);
    s->set_global(a[2]);
  }
  info->set_device(m.device);
  info->set_active(is_default);
}

grpc::Status ModelServiceImpl::ListModels(grpc::ServerContext*,
                                          const lpdetr::v1::ListModelsRequest*,
                                          lpdetr::v1::ListModelsResponse* response) {
  const auto t0 = std::chrono::steady_clock::now();
  std::set<std::pair<std::string, std::string>> serving;
  bool first = true;
  for (const std::shared_ptr<ServedModel>& model : models_->Serving()) {
    Fill(model->description(), first, response->add_models());
    serving.emplace(model->description().name, model->description().version);
    first = false;
  }
  // Registered versions that do not serve: name, version and classes.
  if (registry_) {
    absl::StatusOr<std::vector<admin::ModelVersionInfo>> versions = registry_->List("");
    if (versions.ok()) {
      for (const admin::ModelVersionInfo& v : *versions) {
        if (serving.count({v.name, v.version})) continue;
        lpdetr::v1::ModelInfo* info = response->add_models();
        info->set_name(v.name);
        info->set_version(v.version);
        for (const std::string& c : v.classes) info->add_classes(c);
        info->set_num_classes(static_cast<int>(v.classes.size()));
        info->set_active(false);
      }
    }
  }
  metrics_->CountRequest("ListModels", absl::StatusCode::kOk, Since(t0));
  return grpc::Status::OK;
}

grpc::Status ModelServiceImpl::GetModel(grpc::ServerContext*,
                                        const lpdetr::v1::GetModelRequest* request,
                                        lpdetr::v1::ModelInfo* response) {
  const auto t0 = std::chrono::steady_clock::now();
  absl::Status status;
  std::shared_ptr<ServedModel> model = models_->Find(request->name());
  if (!model) {
    status = absl::NotFoundError(absl::StrCat("model '", request->name(),
                                              "' is not loaded (the default is '",
                                              models_->DefaultName(), "')"));
  } else {
    Fill(model->description(), model->description().name == models_->DefaultName(), response);
  }
  metrics_->CountRequest("GetModel", status.code(), Since(t0));
  return ToGrpcStatus(status);
}

}  // namespace lpdetr::server
