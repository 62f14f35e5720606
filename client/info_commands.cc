// `lpdetr-client health` (grpc.health.v1 Check / Watch) and
// `lpdetr-client models` (ModelService.ListModels / GetModel).
#include <cstdio>
#include <stdexcept>
#include <string>

#include <google/protobuf/util/json_util.h>

#include "commands.h"
#include "grpc_health/v1/health.grpc.pb.h"
#include "lpdetr/v1/model.grpc.pb.h"

namespace lpdetr::client {

int RunHealth(const ClientOptions& options) {
  using grpc::health::v1::HealthCheckResponse;
  auto stub = grpc::health::v1::Health::NewStub(MakeChannel(options.connection));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(options.service);
  const std::string name = options.service.empty() ? "(server)" : options.service;
  grpc::ClientContext context;
  ApplyDeadline(options.connection, &context);
  if (options.watch) {
    auto reader = stub->Watch(&context, request);
    HealthCheckResponse response;
    HealthCheckResponse::ServingStatus last = HealthCheckResponse::UNKNOWN;
    while (reader->Read(&response)) {
      last = response.status();
      std::printf("%s: %s\n", name.c_str(), HealthCheckResponse::ServingStatus_Name(last).c_str());
      std::fflush(stdout);
    }
    const grpc::Status status = reader->Finish();
    // The deadline is how a watch normally ends.
    if (!status.ok() && status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      std::fprintf(stderr, "health watch failed: %s\n", DescribeStatus(status).c_str());
      return 1;
    }
    return last == HealthCheckResponse::SERVING ? 0 : 1;
  }
  HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    std::fprintf(stderr, "health check failed: %s\n", DescribeStatus(status).c_str());
    return 1;
  }
  std::printf("%s: %s\n", name.c_str(),
              HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return response.status() == HealthCheckResponse::SERVING ? 0 : 1;
}

CategoryMap FetchCategoryMap(const ClientOptions& options) {
  auto stub = lpdetr::v1::ModelService::NewStub(MakeChannel(options.connection));
  grpc::ClientContext context;
  ApplyDeadline(options.connection, &context);
  lpdetr::v1::GetModelRequest request;
  request.set_name(options.model);
  lpdetr::v1::ModelInfo info;
  const grpc::Status status = stub->GetModel(&context, request, &info);
  if (!status.ok()) {
    throw std::runtime_error("cannot read the model's category ids (ModelService.GetModel): " +
                             DescribeStatus(status));
  }
  CategoryMap map;
  map.model = info.name();
  map.version = info.version();
  map.ids.assign(info.category_ids().begin(), info.category_ids().end());
  if (!map.ids.empty() && map.ids.size() != static_cast<size_t>(info.num_classes())) {
    throw std::runtime_error("model '" + info.name() + "' reports " +
                             std::to_string(map.ids.size()) + " category ids for " +
                             std::to_string(info.num_classes()) + " classes");
  }
  return map;
}

namespace {

void PrintModel(const lpdetr::v1::ModelInfo& m) {
  std::printf("%s%s\n", m.name().c_str(), m.active() ? " (active)" : "");
  std::printf("  version: %s  variant: %s  device: %s\n", m.version().c_str(),
              m.variant().c_str(), m.device().c_str());
  std::printf("  backbone: %s  decoder layers: %d  relation heads: %d\n", m.backbone().c_str(),
              m.decoder_layers(), m.relation_heads());
  std::printf("  input: short side %d, long side <= %d  queries: %d  num_select: %d\n",
              m.min_size(), m.max_size(), m.num_queries(), m.num_select());
  std::string classes;
  for (int i = 0; i < m.classes_size() && i < 12; ++i) {
    classes += (i ? ", " : "") + m.classes(i);
  }
  if (m.classes_size() > 12) classes += ", ...";
  std::printf("  classes (%d): %s\n", m.num_classes(), classes.c_str());
  if (m.category_ids_size() > 0) {
    std::string ids;
    for (int i = 0; i < m.category_ids_size() && i < 12; ++i) {
      ids += (i ? ", " : "") + std::to_string(m.category_ids(i));
    }
    if (m.category_ids_size() > 12) ids += ", ...";
    std::printf("  category ids: %s\n", ids.c_str());
  }
  for (int l = 0; l < m.scale_alpha_size(); ++l) {
    const auto& a = m.scale_alpha(l);
    std::printf("  alpha layer %d: local %.3f  medium %.3f  global %.3f\n", l, a.local(),
                a.medium(), a.global());
  }
}

}  // namespace

int RunModels(const ClientOptions& options) {
  auto stub = lpdetr::v1::ModelService::NewStub(MakeChannel(options.connection));
  grpc::ClientContext context;
  ApplyDeadline(options.connection, &context);
  lpdetr::v1::ListModelsResponse models;
  grpc::Status status;
  if (options.model.empty()) {
    status = stub->ListModels(&context, lpdetr::v1::ListModelsRequest(), &models);
  } else {
    lpdetr::v1::GetModelRequest request;
    request.set_name(options.model);
    status = stub->GetModel(&context, request, models.add_models());
  }
  if (!status.ok()) {
    std::fprintf(stderr, "models failed: %s\n", DescribeStatus(status).c_str());
    return 1;
  }
  if (!options.json.empty()) {
    std::string json;
    google::protobuf::util::JsonPrintOptions print;
    print.add_whitespace = true;
    print.preserve_proto_field_names = true;
    print.always_print_primitive_fields = true;
    if (!google::protobuf::util::MessageToJsonString(models, &json, print).ok()) {
      std::fprintf(stderr, "cannot convert the model list to JSON\n");
      return 1;
    }
    nlohmann::json parsed = nlohmann::json::parse(json);
    // The proto JSON mapping writes int64 as strings; category ids are
    // written as the numbers COCO files use (protobuf parsers accept both).
    if (!parsed.contains("models")) parsed["models"] = nlohmann::json::array();
    for (nlohmann::json& m : parsed["models"]) {
      if (!m.contains("category_ids")) continue;
      for (nlohmann::json& id : m["category_ids"]) {
        if (id.is_string()) id = std::stoll(id.get<std::string>());
      }
    }
    WriteJson(parsed, options.json);
    return 0;
  }
  for (const auto& m : models.models()) PrintModel(m);
  if (models.models_size() == 0) std::printf("no models\n");
  return 0;
}

}  // namespace lpdetr::client
