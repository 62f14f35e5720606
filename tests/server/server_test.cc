// End-to-end tests of the real lpdetr-server binary on 127.0.0.1 (ports
// picked by the server: port 0, read back from its "startup" log line),
// through generated C++ stubs: Detect / DetectStream round trips, ModelService,
// health (Check, Watch), reflection, /metrics (checked by promtool and scraped
// by a real Prometheus), every bad
// input of issue 4 item 8, overload, deadlines and cancellation, graceful
// shutdown under load, TLS and mutual TLS with certificates made by openssl.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "grpc_health/v1/health.grpc.pb.h"
#include "lpdetr/v1/detection.grpc.pb.h"
#include "lpdetr/v1/model.grpc.pb.h"
#include "reflection.grpc.pb.h"
#include "tests/metrics/prometheus_util.h"
#include "tests/test_paths.h"

#ifndef LPDETR_PROMETHEUS
#define LPDETR_PROMETHEUS ""
#endif

namespace lpdetr::server {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using lpdetr::v1::DetectionService;
using lpdetr::v1::DetectRequest;
using lpdetr::v1::DetectResponse;
using nlohmann::json;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One lpdetr-server child process with its log file.
class ServerProcess {
 public:
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // Starts the server and waits for its startup line (false on failure).
  bool Start(const std::vector<std::string>& extra, const fs::path& log) {
    log_ = log;
    std::vector<std::string> args = {testing_paths::BinDir() + "/lpdetr-server",
                                     "--grpc_address=127.0.0.1:0",
                                     "--metrics_address=127.0.0.1:0", "--intra_op_threads=2",
                                     "--precision=fp32"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
      dup2(fd, 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    const auto until = std::chrono::steady_clock::now() + 120s;
    while (std::chrono::steady_clock::now() < until) {
      for (const json& e : Events()) {
        if (e.value("event", "") == "startup") {
          grpc_port_ = e["grpc_port"].get<int>();
          metrics_port_ = e["metrics_port"].get<int>();
          return true;
        }
        if (e.value("event", "") == "startup_failed") return false;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  std::vector<json> Events() const {
    std::vector<json> out;
    std::ifstream in(log_);
    std::string line;
    while (std::getline(in, line)) {
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object()) out.push_back(j);
    }
    return out;
  }
  std::string Log() const { return ReadAll(log_); }

  void Signal(int sig) { kill(pid_, sig); }
  // Exit code, or -1 when it does not exit in time (it is then killed).
  int WaitExit(std::chrono::seconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

  std::string target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int metrics_port() const { return metrics_port_; }
  std::shared_ptr<grpc::Channel> Channel() const {
    return grpc::CreateChannel(target(), grpc::InsecureChannelCredentials());
  }

 private:
  pid_t pid_ = -1;
  fs::path log_;
  int grpc_port_ = 0, metrics_port_ = 0;
};

// GET http://127.0.0.1:port/path -> body ("" on failure).
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, n);
  close(fd);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? "" : resp.substr(body + 4);
}

// lpdetr_queue_depth of a server's /metrics (0 when unreadable).
int QueueDepth(int metrics_port) {
  const std::string text = HttpGet(metrics_port, "/metrics");
  const std::string key = "\nlpdetr_queue_depth ";
  const size_t at = text.find(key);
  return at == std::string::npos ? 0 : std::atoi(text.c_str() + at + key.size());
}

// Polls QueueDepth every `step` until it reaches `depth` or `tries` run out;
// returns the last depth seen.
int WaitForQueueDepth(int metrics_port, int depth, int tries = 500,
                      std::chrono::milliseconds step = std::chrono::milliseconds(10)) {
  int seen = QueueDepth(metrics_port);
  for (int i = 0; i < tries && seen < depth; ++i) {
    std::this_thread::sleep_for(step);
    seen = QueueDepth(metrics_port);
  }
  return seen;
}

int Shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path src = fs::path(testing_paths::TestModelsDir()) / "lp-detr-tiny";
    if (!fs::exists(src / "config.json")) return;  // tests skip
    dir_ = new fs::path(fs::temp_directory_path() /
                        ("lpdetr_server_test_" + std::to_string(getpid())));
    fs::create_directories(*dir_ / "model");
    fs::copy(src, *dir_ / "model", fs::copy_options::recursive);
    // Small inputs keep inference fast on a shared CPU.
    json config = json::parse(ReadAll(*dir_ / "model" / "config.json"));
    config["min_size"] = 256;
    config["max_size"] = 384;
    std::ofstream(*dir_ / "model" / "config.json") << config.dump(2);

    cv::Mat sample = cv::imread(testing_paths::SourceDir() + "/tests/data/shapes_sample.png");
    ASSERT_FALSE(sample.empty());
    std::vector<unsigned char> buf;
    cv::imencode(".png", sample, buf);
    png_ = new std::string(buf.begin(), buf.end());
    cv::Mat small;
    cv::resize(sample, small, cv::Size(), 0.5, 0.7);
    cv::imencode(".jpg", small, buf);
    jpeg_ = new std::string(buf.begin(), buf.end());
    sample_size_ = new cv::Size(sample.cols, sample.rows);
    jpeg_size_ = new cv::Size(small.cols, small.rows);

    server_ = new ServerProcess();
    ASSERT_TRUE(server_->Start({"--model_dir=" + (*dir_ / "model").string(),
                                "--max_images_per_request=4", "--max_message_bytes=1048576",
                                "--max_image_pixels=4000000", "--max_batch_size=4",
                                "--max_queue_delay_us=1000"},
                               *dir_ / "main.log"))
        << server_->Log();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    if (dir_) fs::remove_all(*dir_);
  }
  void SetUp() override {
    if (!dir_) GTEST_SKIP() << "no converted fixture model (fixture_models did not run)";
  }

  static ServerProcess* StartServer(const std::string& name, std::vector<std::string> flags) {
    auto* s = new ServerProcess();
    flags.push_back("--model_dir=" + (*dir_ / "model").string());
    EXPECT_TRUE(s->Start(flags, *dir_ / (name + ".log"))) << s->Log();
    return s;
  }

  static DetectRequest Request(std::vector<const std::string*> images, float threshold = 0.0f,
                               int max_det = 5) {
    DetectRequest r;
    int i = 0;
    for (const std::string* bytes : images) {
      auto* im = r.add_images();
      im->set_data(*bytes);
      im->set_id("img" + std::to_string(i++));
    }
    r.set_request_id("req-1");
    r.mutable_options()->set_score_threshold(threshold);
    r.mutable_options()->set_max_detections(max_det);
    return r;
  }

  static grpc::Status Detect(const std::shared_ptr<grpc::Channel>& ch, const DetectRequest& req,
                             DetectResponse* resp, std::chrono::milliseconds timeout = 60s) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    return DetectionService::NewStub(ch)->Detect(&ctx, req, resp);
  }

  // The server still answers a good request.
  static void ExpectAlive(const std::shared_ptr<grpc::Channel>& ch) {
    DetectResponse resp;
    grpc::Status s = Detect(ch, Request({png_}), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.results_size(), 1);
  }

  static fs::path* dir_;
  static std::string *png_, *jpeg_;
  static cv::Size *sample_size_, *jpeg_size_;
  static ServerProcess* server_;
};

fs::path* ServerTest::dir_ = nullptr;
std::string* ServerTest::png_ = nullptr;
std::string* ServerTest::jpeg_ = nullptr;
cv::Size* ServerTest::sample_size_ = nullptr;
cv::Size* ServerTest::jpeg_size_ = nullptr;
ServerProcess* ServerTest::server_ = nullptr;

TEST_F(ServerTest, DetectRoundTrip) {
  DetectResponse resp;
  grpc::Status s = Detect(server_->Channel(), Request({png_, jpeg_}, 0.0f, 5), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.request_id(), "req-1");
  EXPECT_EQ(resp.model(), "lp-detr");
  EXPECT_EQ(resp.timing().batch_size(), 2);
  EXPECT_GT(resp.timing().inference_seconds(), 0.0);
  ASSERT_EQ(resp.results_size(), 2);
  const cv::Size sizes[] = {*sample_size_, *jpeg_size_};
  for (int i = 0; i < 2; ++i) {
    const auto& r = resp.results(i);
    EXPECT_EQ(r.id(), "img" + std::to_string(i));
    EXPECT_EQ(r.width(), sizes[i].width);
    EXPECT_EQ(r.height(), sizes[i].height);
    ASSERT_EQ(r.detections_size(), 5);  // threshold 0: num_select candidates, capped at 5
    for (int k = 0; k < r.detections_size(); ++k) {
      const auto& d = r.detections(k);
      if (k > 0) EXPECT_LE(d.score(), r.detections(k - 1).score());
      EXPECT_GE(d.score(), 0.f);
      EXPECT_LE(d.score(), 1.f);
      EXPECT_GE(d.box().x_min(), 0.f);
      EXPECT_LE(d.box().x_min(), d.box().x_max());
      EXPECT_LE(d.box().x_max(), r.width());
      EXPECT_LE(d.box().y_min(), d.box().y_max());
      EXPECT_LE(d.box().y_max(), r.height());
      EXPECT_GE(d.label_id(), 0);
      EXPECT_LT(d.label_id(), 91);
      EXPECT_FALSE(d.label().empty());
    }
  }
  // Batched with another image or alone: the same detections.
  DetectResponse alone;
  ASSERT_TRUE(Detect(server_->Channel(), Request({png_}, 0.0f, 5), &alone).ok());
  for (int k = 0; k < 5; ++k) {
    EXPECT_NEAR(alone.results(0).detections(k).score(), resp.results(0).detections(k).score(),
                1e-3);
    EXPECT_NEAR(alone.results(0).detections(k).box().x_max(),
                resp.results(0).detections(k).box().x_max(), 0.5);
  }
  // Class filter and score threshold.
  const int label = resp.results(0).detections(0).label_id();
  DetectRequest filtered = Request({png_}, 0.0f, 0);
  filtered.mutable_options()->add_class_ids(label);
  DetectResponse f;
  ASSERT_TRUE(Detect(server_->Channel(), filtered, &f).ok());
  ASSERT_GT(f.results(0).detections_size(), 0);
  for (const auto& d : f.results(0).detections()) EXPECT_EQ(d.label_id(), label);
  const float top = alone.results(0).detections(0).score();
  const float second = alone.results(0).detections(1).score();
  DetectResponse high, mid;
  ASSERT_TRUE(Detect(server_->Channel(), Request({png_}, top + 1e-3f, 0), &high).ok());
  EXPECT_EQ(high.results(0).detections_size(), 0);
  if (top - second > 2e-3f) {
    ASSERT_TRUE(Detect(server_->Channel(), Request({png_}, top - 1e-3f, 0), &mid).ok());
    EXPECT_EQ(mid.results(0).detections_size(), 1);
  }
}

TEST_F(ServerTest, DetectStreamInOrderWithPerFrameErrors) {
  auto stub = DetectionService::NewStub(server_->Channel());
  {
    grpc::ClientContext ctx;
    auto stream = stub->DetectStream(&ctx);
    const std::string empty;
    const int n = 7;
    std::thread writer([&] {
      for (int i = 0; i < n; ++i) {
        DetectRequest r = Request({i == 3 ? &empty : (i % 2 ? jpeg_ : png_)}, 0.0f, 3);
        r.set_request_id("frame-" + std::to_string(i));
        if (!stream->Write(r)) break;
      }
      stream->WritesDone();
    });
    DetectResponse resp;
    int i = 0;
    while (stream->Read(&resp)) {
      EXPECT_EQ(resp.request_id(), "frame-" + std::to_string(i));
      if (i == 3) {
        EXPECT_EQ(resp.error().code(), grpc::StatusCode::INVALID_ARGUMENT);
        EXPECT_NE(resp.error().message().find("empty"), std::string::npos);
        EXPECT_EQ(resp.results_size(), 0);
      } else {
        EXPECT_EQ(resp.error().code(), 0);
        ASSERT_EQ(resp.results_size(), 1);
        EXPECT_EQ(resp.results(0).width(), (i % 2 ? jpeg_size_ : sample_size_)->width);
      }
      ++i;
    }
    writer.join();
    EXPECT_EQ(i, n);
    EXPECT_TRUE(stream->Finish().ok());
  }
  {
    // stop_on_error: the stream ends with the failing frame's error.
    grpc::ClientContext ctx;
    auto stream = stub->DetectStream(&ctx);
    const std::string garbage = "definitely not an image";
    DetectRequest good = Request({png_});
    good.set_request_id("ok");
    DetectRequest bad = Request({&garbage});
    bad.set_stop_on_error(true);
    ASSERT_TRUE(stream->Write(good));
    ASSERT_TRUE(stream->Write(bad));
    stream->Write(good);
    stream->WritesDone();
    DetectResponse resp;
    int count = 0;
    while (stream->Read(&resp)) {
      EXPECT_EQ(resp.request_id(), "ok");
      ++count;
    }
    EXPECT_EQ(count, 1);
    grpc::Status s = stream->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("image 0"), std::string::npos) << s.error_message();
  }
  ExpectAlive(server_->Channel());
}

TEST_F(ServerTest, ModelService) {
  auto stub = lpdetr::v1::ModelService::NewStub(server_->Channel());
  grpc::ClientContext ctx;
  lpdetr::v1::ListModelsResponse list;
  ASSERT_TRUE(stub->ListModels(&ctx, {}, &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  const auto& m = list.models(0);
  EXPECT_EQ(m.name(), "lp-detr");
  EXPECT_EQ(m.variant(), "lp-detr");
  EXPECT_EQ(m.num_classes(), 91);
  EXPECT_EQ(m.classes_size(), 91);
  EXPECT_EQ(m.min_size(), 256);
  EXPECT_EQ(m.max_size(), 384);
  EXPECT_EQ(m.backbone(), "resnet18");
  EXPECT_EQ(m.decoder_layers(), 3);
  ASSERT_EQ(m.scale_alpha_size(), 3);
  for (const auto& a : m.scale_alpha()) EXPECT_NEAR(a.local() + a.medium() + a.global(), 1.f, 1e-4);
  EXPECT_TRUE(m.active());
  EXPECT_EQ(m.category_ids_size(), 0);  // the fixture model carries no category map
  grpc::ClientContext ctx2;
  lpdetr::v1::GetModelRequest get;
  get.set_name("no-such-model");
  lpdetr::v1::ModelInfo info;
  grpc::Status s = stub->GetModel(&ctx2, get, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("no-such-model"), std::string::npos);
}

TEST_F(ServerTest, ModelServiceReportsTheCategoryMap) {
  // The fixture model with a sparse dataset id for each of its labels.
  const fs::path model = *dir_ / "mapped_model";
  fs::remove_all(model);
  fs::copy(*dir_ / "model", model, fs::copy_options::recursive);
  json config = json::parse(ReadAll(model / "config.json"));
  const int num_classes = config["num_classes"].get<int>();
  std::vector<int64_t> ids;
  for (int i = 0; i < num_classes; ++i) ids.push_back(5 + 3 * int64_t{i} + (i > 40 ? 1000 : 0));
  config["category_ids"] = ids;
  std::ofstream(model / "config.json") << config.dump(2);

  ServerProcess s;
  ASSERT_TRUE(s.Start({"--model_dir=" + model.string()}, *dir_ / "mapped.log")) << s.Log();
  auto stub = lpdetr::v1::ModelService::NewStub(s.Channel());
  grpc::ClientContext ctx;
  lpdetr::v1::ListModelsResponse list;
  ASSERT_TRUE(stub->ListModels(&ctx, {}, &list).ok());
  ASSERT_EQ(list.models_size(), 1);
  const auto& listed = list.models(0);
  EXPECT_EQ(std::vector<int64_t>(listed.category_ids().begin(), listed.category_ids().end()),
            ids);
  EXPECT_EQ(listed.category_ids_size(), listed.classes_size());
  grpc::ClientContext ctx2;
  lpdetr::v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModel(&ctx2, {}, &info).ok());
  EXPECT_EQ(std::vector<int64_t>(info.category_ids().begin(), info.category_ids().end()), ids);
  // Detections keep the contiguous label index.
  DetectResponse resp;
  grpc::Status st = Detect(s.Channel(), Request({png_}, 0.0f, 20), &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.results_size(), 1);
  ASSERT_EQ(resp.results(0).detections_size(), 20);
  for (const auto& d : resp.results(0).detections()) {
    EXPECT_GE(d.label_id(), 0);
    EXPECT_LT(d.label_id(), num_classes);
  }

  // A map that repeats an id is refused at startup, naming the key.
  ids[7] = ids[3];
  config["category_ids"] = ids;
  std::ofstream(model / "config.json") << config.dump(2);
  ServerProcess bad;
  EXPECT_FALSE(bad.Start({"--model_dir=" + model.string()}, *dir_ / "mapped_bad.log"));
  EXPECT_NE(bad.Log().find("'category_ids' entries 3 and 7"), std::string::npos) << bad.Log();
}

TEST_F(ServerTest, HealthCheckAndWatch) {
  auto stub = grpc::health::v1::Health::NewStub(server_->Channel());
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(stub->Check(&ctx, {}, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  grpc::ClientContext ctx2;
  grpc::health::v1::HealthCheckRequest by_name;
  by_name.set_service("lpdetr.v1.DetectionService");
  ASSERT_TRUE(stub->Check(&ctx2, by_name, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  grpc::ClientContext ctx3;
  by_name.set_service("no.such.Service");
  EXPECT_EQ(stub->Check(&ctx3, by_name, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + 10s);
  auto watch = stub->Watch(&wctx, {});
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  wctx.TryCancel();
}

// Every service the server lists is describable: its file descriptor (and
// those it imports) can be fetched by symbol, as grpcurl does before a call.
TEST_F(ServerTest, ReflectionDescribesEveryListedService) {
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(server_->Channel());
  grpc::ClientContext ctx;
  auto stream = stub->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  std::set<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.insert(s.name());
  EXPECT_TRUE(names.count("lpdetr.v1.DetectionService"));
  EXPECT_TRUE(names.count("lpdetr.v1.ModelService"));
  EXPECT_TRUE(names.count("grpc.health.v1.Health"));
  EXPECT_TRUE(names.count("grpc.reflection.v1alpha.ServerReflection"));
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    req.set_file_containing_symbol(name);
    ASSERT_TRUE(stream->Write(req));
    ASSERT_TRUE(stream->Read(&resp));
    ASSERT_FALSE(resp.has_error_response()) << resp.error_response().error_message();
    ASSERT_GT(resp.file_descriptor_response().file_descriptor_proto_size(), 0);
    // One of the files sent (the symbol's own, then the files it imports)
    // defines the service.
    std::string defining_file, sent;
    for (const std::string& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(bytes));
      sent += file.name() + " ";
      for (const auto& service : file.service()) {
        if ((file.package().empty() ? "" : file.package() + ".") + service.name() == name) {
          defining_file = file.name();
        }
      }
    }
    ASSERT_FALSE(defining_file.empty()) << "service not in the files sent: " << sent;
    // The file can also be fetched by name.
    req.set_file_by_filename(defining_file);
    ASSERT_TRUE(stream->Write(req));
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_FALSE(resp.has_error_response()) << resp.error_response().error_message();
  }
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerTest, MetricsPassPromtool) {
  DetectResponse resp;
  ASSERT_TRUE(Detect(server_->Channel(), Request({png_}), &resp).ok());
  const std::string text = HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_FALSE(text.empty());
  for (const char* needle :
       {"lpdetr_requests_total{", "method=\"Detect\"", "code=\"OK\"",
        "lpdetr_request_duration_seconds_bucket{", "lpdetr_queue_duration_seconds_count",
        "lpdetr_inference_duration_seconds_sum", "lpdetr_batch_size_bucket", "lpdetr_queue_depth",
        "lpdetr_images_processed_total", "lpdetr_model_info{"}) {
    EXPECT_NE(text.find(needle), std::string::npos) << needle << "\n" << text;
  }
  EXPECT_NE(text.find("name=\"lp-detr\""), std::string::npos);
  if (Shell("command -v promtool > /dev/null") != 0) GTEST_SKIP() << "promtool not installed";
  const fs::path file = *dir_ / "metrics.txt";
  std::ofstream(file) << text;
  EXPECT_EQ(Shell("promtool check metrics < " + file.string()), 0) << text;
}

// The value of the sample `name{labels...}` in Prometheus text (labels in any
// order; every pair in `labels` must match), or -1 when there is none.
double SampleValue(const std::string& text, const std::string& name,
                   const std::vector<std::string>& labels) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + "{", 0) != 0) continue;
    const size_t close = line.find("} ");
    if (close == std::string::npos) continue;
    const std::string label_text = line.substr(name.size(), close - name.size() + 1);
    bool all = true;
    for (const std::string& l : labels) all = all && label_text.find(l) != std::string::npos;
    if (all) return std::stod(line.substr(close + 2));
  }
  return -1;
}

TEST_F(ServerTest, PrometheusScrapesTheServer) {
  const std::string prometheus =
      metrics::testing::ToolPath("LPDETR_PROMETHEUS", LPDETR_PROMETHEUS);
  if (prometheus.empty()) GTEST_SKIP() << "prometheus not found (Debian package prometheus)";
  // A fresh server: its counters hold exactly this test's calls.
  std::unique_ptr<ServerProcess> s(StartServer("prometheus", {}));
  ASSERT_GT(s->metrics_port(), 0);
  // Prometheus starts while the calls run.
  metrics::testing::PrometheusServer prom(prometheus, "lpdetr-server", {s->metrics_port()});

  auto ch = s->Channel();
  const int ok_calls = 5, bad_calls = 2;
  for (int i = 0; i < ok_calls; ++i) {
    DetectResponse resp;
    grpc::Status st = Detect(ch, Request({i % 2 ? jpeg_ : png_}), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  const std::string empty;
  for (int i = 0; i < bad_calls; ++i) {
    DetectResponse resp;
    EXPECT_EQ(Detect(ch, Request({&empty}), &resp).error_code(), grpc::INVALID_ARGUMENT);
  }

  // The server's own /metrics has counted every call (it may count just after
  // answering); from then on the counters stay put.
  const std::vector<std::string> ok_labels = {"method=\"Detect\"", "code=\"OK\""};
  const std::vector<std::string> bad_labels = {"method=\"Detect\"", "code=\"INVALID_ARGUMENT\""};
  std::string text;
  for (int tries = 0; tries < 100; ++tries) {
    text = HttpGet(s->metrics_port(), "/metrics");
    if (SampleValue(text, "lpdetr_requests_total", ok_labels) == ok_calls &&
        SampleValue(text, "lpdetr_requests_total", bad_labels) == bad_calls) {
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(SampleValue(text, "lpdetr_requests_total", ok_labels), ok_calls) << text;
  ASSERT_EQ(SampleValue(text, "lpdetr_requests_total", bad_labels), bad_calls) << text;
  const double counted_at =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

  // Wait for a scrape taken after that (timestamp() is the sample's scrape
  // time; 0.1 s covers Prometheus' timestamp alignment), then read the value.
  const std::string ok_series =
      "lpdetr_requests_total{job=\"lpdetr-server\",method=\"Detect\",code=\"OK\"}";
  json stamp = prom.WaitFor(
      "timestamp(" + ok_series + ")",
      [&](const json& r) {
        return r.size() == 1 && std::stod(r[0]["value"][1].get<std::string>()) > counted_at + 0.1;
      },
      25s);
  ASSERT_TRUE(prom.Running()) << "prometheus exited early:\n" << prom.Log();
  ASSERT_EQ(stamp.size(), 1u) << "no sample after the calls within 25 s: " << stamp.dump()
                              << "\nlog:\n" << prom.Log();
  ASSERT_GT(std::stod(stamp[0]["value"][1].get<std::string>()), counted_at + 0.1)
      << "no scrape after the calls within 25 s: " << stamp.dump();

  json ok = prom.Query(ok_series);
  ASSERT_EQ(ok.size(), 1u) << ok.dump();
  EXPECT_EQ(ok[0]["metric"]["instance"], "127.0.0.1:" + std::to_string(s->metrics_port()));
  EXPECT_EQ(std::stod(ok[0]["value"][1].get<std::string>()), ok_calls) << ok.dump();
  json bad = prom.Query(
      "lpdetr_requests_total{job=\"lpdetr-server\",method=\"Detect\",code=\"INVALID_ARGUMENT\"}");
  ASSERT_EQ(bad.size(), 1u) << bad.dump();
  EXPECT_EQ(std::stod(bad[0]["value"][1].get<std::string>()), bad_calls) << bad.dump();
  // No other Detect series: the total over all codes is exactly the calls made.
  json all = prom.Query("sum(lpdetr_requests_total{job=\"lpdetr-server\",method=\"Detect\"})");
  ASSERT_EQ(all.size(), 1u) << all.dump();
  EXPECT_EQ(std::stod(all[0]["value"][1].get<std::string>()), ok_calls + bad_calls);

  json up = prom.Query("up{job=\"lpdetr-server\"}");
  ASSERT_EQ(up.size(), 1u) << up.dump();
  EXPECT_EQ(up[0]["value"][1], "1");
  EXPECT_EQ(prom.Stop(), 0) << prom.Log();
}

TEST_F(ServerTest, BadInputIsRejectedAndTheServerKeepsServing) {
  auto ch = server_->Channel();
  std::mt19937 rng(3);
  std::string noise(2000, '\0');
  for (char& c : noise) c = static_cast<char>(rng());
  noise[0] = 'z';
  const std::string truncated = jpeg_->substr(0, jpeg_->size() / 2);
  std::string bomb = *png_;
  for (int i = 0; i < 4; ++i) {
    bomb[16 + i] = static_cast<char>(60000u >> (24 - 8 * i));
    bomb[20 + i] = static_cast<char>(60000u >> (24 - 8 * i));
  }
  const std::string empty;
  const std::string huge(1200000, 'x');  // over --max_message_bytes=1 MiB
  struct Case {
    std::string name;
    DetectRequest request;
    grpc::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({"empty bytes", Request({&empty}), grpc::INVALID_ARGUMENT, "empty image"});
  cases.push_back({"random bytes", Request({&noise}), grpc::INVALID_ARGUMENT, "not a JPEG"});
  cases.push_back({"truncated JPEG", Request({&truncated}), grpc::INVALID_ARGUMENT, "truncated"});
  cases.push_back({"PNG bomb", Request({&bomb}), grpc::INVALID_ARGUMENT, "60000x60000"});
  cases.push_back({"zero images", Request({}), grpc::INVALID_ARGUMENT, "no images"});
  cases.push_back({"too many images", Request({png_, png_, png_, png_, png_}),
                   grpc::INVALID_ARGUMENT, "more than the limit of 4"});
  cases.push_back({"huge message", Request({&huge}), grpc::RESOURCE_EXHAUSTED, ""});
  DetectRequest nan = Request({png_});
  nan.mutable_options()->set_score_threshold(std::numeric_limits<float>::quiet_NaN());
  cases.push_back({"NaN threshold", nan, grpc::INVALID_ARGUMENT, "score_threshold"});
  DetectRequest negative = Request({png_});
  negative.mutable_options()->set_score_threshold(-0.5f);
  cases.push_back({"negative threshold", negative, grpc::INVALID_ARGUMENT, "score_threshold"});
  DetectRequest neg_max = Request({png_});
  neg_max.mutable_options()->set_max_detections(-3);
  cases.push_back({"negative max_detections", neg_max, grpc::INVALID_ARGUMENT, "max_detections"});
  DetectRequest bad_class = Request({png_});
  bad_class.mutable_options()->add_class_ids(-1);
  cases.push_back({"negative class id", bad_class, grpc::INVALID_ARGUMENT, "class_ids"});
  DetectRequest raw_short = Request({});
  auto* raw = raw_short.add_images()->mutable_raw();
  raw->set_width(10);
  raw->set_height(10);
  raw->set_format(lpdetr::v1::PIXEL_FORMAT_RGB8);
  raw->set_pixels(std::string(10, '\0'));
  cases.push_back({"short raw pixels", raw_short, grpc::INVALID_ARGUMENT, "needs 300 bytes"});
  for (const Case& c : cases) {
    DetectResponse resp;
    grpc::Status s = Detect(ch, c.request, &resp);
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.message), std::string::npos)
        << c.name << ": " << s.error_message();
    EXPECT_FALSE(s.error_message().empty()) << c.name;
    ExpectAlive(ch);
  }
  // A request error is logged as one JSON line.
  bool logged = false;
  for (const json& e : server_->Events()) {
    if (e.value("event", "") == "request_error" && e.value("code", "") == "INVALID_ARGUMENT") {
      logged = true;
    }
  }
  EXPECT_TRUE(logged);
}

TEST_F(ServerTest, LogsAreOneJsonObjectPerLine) {
  std::istringstream log(server_->Log());
  std::string line;
  std::set<std::string> events;
  int lines = 0;
  while (std::getline(log, line)) {
    ++lines;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object()) << line;
    ASSERT_TRUE(j.contains("ts") && j.contains("level") && j.contains("event")) << line;
    EXPECT_EQ(line.rfind("{\"ts\":", 0), 0u) << line;
    events.insert(j["event"].get<std::string>());
  }
  EXPECT_GE(lines, 3);
  for (const char* e : {"config", "model_loaded", "startup"}) EXPECT_TRUE(events.count(e)) << e;
}

TEST_F(ServerTest, RawPixelsGiveTheSameDetectionsAsEncoded) {
  cv::Mat bgr = cv::imdecode(std::vector<unsigned char>(png_->begin(), png_->end()),
                             cv::IMREAD_COLOR);
  DetectRequest req = Request({});
  auto* raw = req.add_images()->mutable_raw();
  raw->set_width(bgr.cols);
  raw->set_height(bgr.rows);
  raw->set_format(lpdetr::v1::PIXEL_FORMAT_BGR8);
  raw->set_pixels(std::string(reinterpret_cast<const char*>(bgr.data), bgr.total() * 3));
  DetectResponse a, b;
  ASSERT_TRUE(Detect(server_->Channel(), req, &a).ok());
  ASSERT_TRUE(Detect(server_->Channel(), Request({png_}), &b).ok());
  ASSERT_EQ(a.results(0).detections_size(), b.results(0).detections_size());
  EXPECT_NEAR(a.results(0).detections(0).score(), b.results(0).detections(0).score(), 1e-5);
}

TEST_F(ServerTest, DeadlineAndCancellation) {
  auto ch = server_->Channel();
  DetectResponse resp;
  grpc::Status s = Detect(ch, Request({png_, png_, png_, png_}), &resp, 1ms);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();

  auto stub = DetectionService::NewStub(ch);
  grpc::ClientContext ctx;
  grpc::CompletionQueue cq;
  DetectRequest req = Request({png_, png_, png_, png_});
  auto call = stub->AsyncDetect(&ctx, req, &cq);
  grpc::Status status;
  call->Finish(&resp, &status, reinterpret_cast<void*>(1));
  ctx.TryCancel();
  void* tag;
  bool ok;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  ExpectAlive(ch);
}

// Sum of lpdetr_requests_total{method="Detect",code=CODE} in a scrape.
double DetectCount(const std::string& metrics, const std::string& code) {
  std::istringstream lines(metrics);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("lpdetr_requests_total{", 0) == 0 &&
        line.find("method=\"Detect\"") != std::string::npos &&
        line.find("code=\"" + code + "\"") != std::string::npos) {
      return std::atof(line.c_str() + line.rfind(' ') + 1);
    }
  }
  return 0.0;
}

// A request whose deadline passes while it waits in the queue is counted as
// DEADLINE_EXCEEDED (what its client sees), never as CANCELLED, although gRPC
// itself cancels the call at its deadline.
TEST_F(ServerTest, QueuedDeadlineIsCountedAsDeadlineExceeded) {
  std::unique_ptr<ServerProcess> s(StartServer(
      "deadline", {"--max_batch_size=1", "--max_queue_delay_us=0", "--max_queue_size=64"}));
  // Slow requests (on their own channel, so their uploads do not delay the
  // others) keep the single worker busy; the others expire behind them at
  // deadlines spread over the gRPC timer's and the server's polling ticks.
  auto slow_channel = s->Channel();
  grpc::ChannelArguments args;
  args.SetInt("lpdetr.test.channel", 1);
  auto ch = grpc::CreateCustomChannel(s->target(), grpc::InsecureChannelCredentials(), args);
  const int n = 24;
  std::vector<grpc::Status> results(n);
  std::vector<std::thread> clients;
  for (int i = 0; i < n; ++i) {
    clients.emplace_back([&, i] {
      DetectResponse resp;
      if (i < 3) {
        results[i] = Detect(slow_channel, Request({png_, png_, png_, png_}), &resp, 60s);
      } else {
        results[i] = Detect(ch, Request({jpeg_}), &resp, std::chrono::milliseconds(300 + 13 * i));
      }
    });
    if (i < 3) std::this_thread::sleep_for(20ms);
  }
  for (auto& t : clients) t.join();
  int client_deadline = 0;
  for (const grpc::Status& st : results) {
    EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
        << st.error_code() << " " << st.error_message();
    client_deadline += st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  }
  ASSERT_GT(client_deadline, 0) << "no request expired in the queue; the test proved nothing";
  // The server counts a call when its handler returns, just after the client
  // gave up: wait until every call is counted.
  std::string text;
  for (int tries = 0; tries < 200; ++tries) {
    text = HttpGet(s->metrics_port(), "/metrics");
    if (DetectCount(text, "OK") + DetectCount(text, "DEADLINE_EXCEEDED") +
            DetectCount(text, "CANCELLED") >= n) {
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(DetectCount(text, "CANCELLED"), 0) << s->Log();
  EXPECT_EQ(DetectCount(text, "DEADLINE_EXCEEDED"), client_deadline) << text;
}

TEST_F(ServerTest, OverloadGetsResourceExhaustedWithoutCrashing) {
  std::unique_ptr<ServerProcess> s(StartServer(
      "overload", {"--max_queue_size=2", "--max_batch_size=1", "--max_queue_delay_us=0"}));
  auto ch = s->Channel();
  std::atomic<int> ok{0}, exhausted{0}, other{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 24; ++i) {
    clients.emplace_back([&] {
      DetectResponse resp;
      grpc::Status st = Detect(ch, Request({png_}), &resp, 120s);
      if (st.ok()) {
        ++ok;
      } else if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        EXPECT_NE(st.error_message().find("queue is full"), std::string::npos);
        ++exhausted;
      } else {
        ADD_FAILURE() << st.error_code() << " " << st.error_message();
        ++other;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_GT(exhausted, 0);
  EXPECT_GT(ok, 0);
  EXPECT_EQ(other, 0);
  ExpectAlive(ch);
  const std::string text = HttpGet(s->metrics_port(), "/metrics");
  EXPECT_NE(text.find("code=\"RESOURCE_EXHAUSTED\""), std::string::npos);
}

TEST_F(ServerTest, SigtermDuringLoadLosesNoAcceptedRequest) {
  std::unique_ptr<ServerProcess> s(StartServer(
      "shutdown", {"--max_batch_size=1", "--max_queue_size=64", "--shutdown_timeout_s=60"}));
  auto ch = s->Channel();
  auto health = grpc::health::v1::Health::NewStub(ch);
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + 120s);
  auto watch = health->Watch(&wctx, {});
  grpc::health::v1::HealthCheckResponse hs;
  ASSERT_TRUE(watch->Read(&hs));
  ASSERT_EQ(hs.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  // An idle stream (one frame answered, then silence) must not hold the exit.
  auto stub = DetectionService::NewStub(ch);
  grpc::ClientContext sctx;
  auto idle = stub->DetectStream(&sctx);
  ASSERT_TRUE(idle->Write(Request({png_})));
  DetectResponse first;
  ASSERT_TRUE(idle->Read(&first));
  EXPECT_EQ(first.results_size(), 1);

  // A stream with frames in flight at the signal gets every answer, then
  // ends: three slow frames, all read by the server (two of them queued)
  // before the unary load starts.
  grpc::ClientContext bctx;
  auto busy = stub->DetectStream(&bctx);
  for (int f = 0; f < 3; ++f) ASSERT_TRUE(busy->Write(Request({png_, jpeg_, png_})));
  WaitForQueueDepth(s->metrics_port(), 2, 500, 5ms);

  // Enough work (24 requests of 3 images, one request per batch) that the
  // queue stays deep for seconds, however fast inference is.
  const int n = 24;
  std::vector<grpc::Status> results(n);
  std::vector<std::thread> clients;
  for (int i = 0; i < n; ++i) {
    clients.emplace_back([&, i] {
      DetectResponse resp;
      results[i] = Detect(ch, Request({png_, jpeg_, png_}), &resp, 120s);
      if (results[i].ok()) EXPECT_EQ(resp.results_size(), 3);
    });
  }
  // Wait until several requests are queued, then SIGTERM.
  WaitForQueueDepth(s->metrics_port(), 4);
  s->Signal(SIGTERM);
  std::vector<grpc::health::v1::HealthCheckResponse::ServingStatus> seen;
  while (watch->Read(&hs)) seen.push_back(hs.status());
  int busy_answers = 0;
  DetectResponse frame;
  while (busy->Read(&frame)) {
    EXPECT_FALSE(frame.has_error()) << frame.error().message();
    EXPECT_EQ(frame.results_size(), 3);
    ++busy_answers;
  }
  EXPECT_EQ(busy_answers, 3);
  EXPECT_FALSE(busy->Finish().ok());
  for (auto& t : clients) t.join();
  // Done well before the 60 s shutdown deadline: nothing (not even the open
  // health Watch) holds the exit once accepted work is finished.
  EXPECT_EQ(s->WaitExit(45s), 0) << s->Log();

  EXPECT_FALSE(idle->Read(&first));
  EXPECT_FALSE(idle->Finish().ok());

  int ok = 0;
  for (const grpc::Status& st : results) {
    // Accepted work finishes; anything refused is UNAVAILABLE.
    EXPECT_TRUE(st.ok() || st.error_code() == grpc::StatusCode::UNAVAILABLE)
        << st.error_code() << " " << st.error_message();
    ok += st.ok();
  }
  int queued = -1;
  bool complete = false;
  for (const json& e : s->Events()) {
    if (e.value("event", "") == "shutdown") queued = e["queued"].get<int>();
    if (e.value("event", "") == "shutdown_complete") complete = true;
  }
  EXPECT_TRUE(complete) << s->Log();
  EXPECT_GT(queued, 0) << "nothing was queued at SIGTERM; the test proved nothing";
  EXPECT_GE(ok, queued);
  EXPECT_FALSE(seen.empty());
  if (!seen.empty()) EXPECT_EQ(seen.back(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  // After exit nothing answers.
  DetectResponse resp;
  EXPECT_EQ(Detect(ch, Request({png_}), &resp, 2s).error_code(), grpc::StatusCode::UNAVAILABLE);
}

// Graceful drain, many times over: 20 concurrent Detect calls over 4
// channels, SIGTERM while most of them are queued. Every call the server
// accepted must get its answer before the process exits: a call may only
// fail as refused at admission (UNAVAILABLE "shutting down", never run), and
// the client's OK count must equal the server's own count of OK Detects
// (logged at shutdown_complete). Losing an answer is a race between the last
// responses going out and the server stopping, so it shows in some drains
// only: LPDETR_DRAIN_ROUNDS (default 12) sets how many (bench/drain.sh runs 50).
TEST_F(ServerTest, DrainAnswersEveryAcceptedCall) {
  int rounds = 12;
  if (const char* env = std::getenv("LPDETR_DRAIN_ROUNDS")) rounds = std::max(1, std::atoi(env));
  cv::Mat strip(8, 640, CV_8UC3, cv::Scalar(40, 160, 220));
  cv::rectangle(strip, cv::Rect(100, 1, 200, 6), cv::Scalar(250, 30, 30), cv::FILLED);
  std::vector<unsigned char> buf;
  cv::imencode(".jpg", strip, buf);
  const std::string jpeg(buf.begin(), buf.end());
  const int calls = 20, channels = 4;
  int lost_rounds = 0, deep_rounds = 0;
  for (int round = 0; round < rounds; ++round) {
    std::unique_ptr<ServerProcess> s(StartServer(
        "drain" + std::to_string(round),
        {"--max_queue_size=64", "--max_batch_size=4", "--shutdown_timeout_s=30"}));
    std::vector<std::shared_ptr<grpc::Channel>> chans;
    for (int c = 0; c < channels; ++c) {
      grpc::ChannelArguments args;
      args.SetInt("lpdetr.test.channel", c);  // distinct channels, not one shared subchannel
      chans.push_back(grpc::CreateCustomChannel(s->target(), grpc::InsecureChannelCredentials(),
                                                args));
      ASSERT_TRUE(chans.back()->WaitForConnected(std::chrono::system_clock::now() + 10s));
    }
    std::vector<grpc::Status> results(calls);
    std::vector<int> detections(calls, -1);
    std::vector<std::thread> clients;
    for (int i = 0; i < calls; ++i) {
      clients.emplace_back([&, i] {
        DetectResponse resp;
        results[i] = Detect(chans[i % channels], Request({&jpeg}), &resp, 60s);
        if (results[i].ok()) detections[i] = resp.results_size();
      });
    }
    deep_rounds += WaitForQueueDepth(s->metrics_port(), 12, 300, 5ms) >= 12;
    s->Signal(SIGTERM);
    for (auto& t : clients) t.join();
    ASSERT_EQ(s->WaitExit(60s), 0) << s->Log();

    int client_ok = 0, lost = 0;
    for (int i = 0; i < calls; ++i) {
      const grpc::Status& st = results[i];
      if (st.ok()) {
        ++client_ok;
        EXPECT_EQ(detections[i], 1);
      } else if (!(st.error_code() == grpc::StatusCode::UNAVAILABLE &&
                   st.error_message().find("shutting down") != std::string::npos)) {
        ++lost;
        ADD_FAILURE() << "round " << round << " call " << i << ": " << st.error_code() << " "
                      << st.error_message();
      }
    }
    int server_ok = -1;
    for (const json& e : s->Events()) {
      if (e.value("event", "") == "shutdown_complete" && e.contains("detect_ok")) {
        server_ok = e["detect_ok"].get<int>();
      }
    }
    EXPECT_EQ(client_ok, server_ok) << "round " << round << ": the server answered " << server_ok
                                    << " Detect calls OK, the clients received " << client_ok;
    lost_rounds += (lost > 0 || client_ok != server_ok);
  }
  EXPECT_EQ(lost_rounds, 0) << lost_rounds << " of " << rounds << " drains lost answers";
  // The scenario must really drain a deep queue most of the time.
  EXPECT_GE(deep_rounds * 2, rounds) << "queue deep at SIGTERM in only " << deep_rounds << " of "
                                     << rounds << " rounds";
}

// Past --shutdown_timeout_s the drain gives up: what is left is cancelled,
// the log counts it, and the process still exits 0 promptly.
TEST_F(ServerTest, DrainPastTheTimeoutCancelsWhatIsLeft) {
  std::unique_ptr<ServerProcess> s(StartServer(
      "drain_timeout", {"--max_batch_size=1", "--max_queue_size=64", "--shutdown_timeout_s=0.3"}));
  auto ch = s->Channel();
  const int n = 16;
  std::vector<grpc::Status> results(n);
  std::vector<std::thread> clients;
  for (int i = 0; i < n; ++i) {
    clients.emplace_back([&, i] {
      DetectResponse resp;
      results[i] = Detect(ch, Request({png_, png_, png_, png_}), &resp, 120s);
    });
  }
  WaitForQueueDepth(s->metrics_port(), 8);
  const auto signalled = std::chrono::steady_clock::now();
  s->Signal(SIGTERM);
  for (auto& t : clients) t.join();
  EXPECT_EQ(s->WaitExit(30s), 0) << s->Log();
  // Each batch takes well under a few seconds: the exit does not wait for the queue.
  EXPECT_LT(std::chrono::steady_clock::now() - signalled, 10s);
  int failed = 0;
  for (const grpc::Status& st : results) failed += !st.ok();
  int cancelled = -1;
  for (const json& e : s->Events()) {
    if (e.value("event", "") == "shutdown_timeout") cancelled = e["calls_cancelled"].get<int>();
  }
  EXPECT_GT(cancelled, 0) << s->Log();
  EXPECT_EQ(cancelled, failed);
}

// openssl: a CA, a server certificate for 127.0.0.1 / localhost, a client one.
bool MakeCertificates(const fs::path& d) {
  const std::string q = " > /dev/null 2>&1";
  const std::string p = d.string() + "/";
  std::ofstream(p + "san.cnf") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  return Shell("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=lpdetr-test-ca -keyout " +
             p + "ca.key -out " + p + "ca.pem" + q) == 0 &&
         Shell("openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout " + p +
             "server.key -out " + p + "server.csr" + q) == 0 &&
         Shell("openssl x509 -req -in " + p + "server.csr -CA " + p + "ca.pem -CAkey " + p +
             "ca.key -CAcreateserial -days 2 -extfile " + p + "san.cnf -out " + p + "server.pem" +
             q) == 0 &&
         Shell("openssl req -newkey rsa:2048 -nodes -subj /CN=lpdetr-client -keyout " + p +
             "client.key -out " + p + "client.csr" + q) == 0 &&
         Shell("openssl x509 -req -in " + p + "client.csr -CA " + p + "ca.pem -CAkey " + p +
             "ca.key -CAcreateserial -days 2 -out " + p + "client.pem" + q) == 0;
}

std::shared_ptr<grpc::Channel> TlsChannel(const std::string& target, const fs::path& d,
                                          bool client_cert) {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ReadAll(d / "ca.pem");
  if (client_cert) {
    o.pem_private_key = ReadAll(d / "client.key");
    o.pem_cert_chain = ReadAll(d / "client.pem");
  }
  return grpc::CreateChannel(target, grpc::SslCredentials(o));
}

TEST_F(ServerTest, TlsAndMutualTls) {
  const fs::path d = *dir_ / "certs";
  fs::create_directories(d);
  ASSERT_TRUE(MakeCertificates(d));
  const std::vector<std::string> tls = {"--tls_cert=" + (d / "server.pem").string(),
                                        "--tls_key=" + (d / "server.key").string()};
  {
    std::unique_ptr<ServerProcess> s(StartServer("tls", tls));
    ExpectAlive(TlsChannel(s->target(), d, false));
    DetectResponse resp;
    EXPECT_EQ(Detect(s->Channel(), Request({png_}), &resp, 5s).error_code(),
              grpc::StatusCode::UNAVAILABLE);  // plaintext client
  }
  {
    std::vector<std::string> mtls = tls;
    mtls.push_back("--tls_ca=" + (d / "ca.pem").string());
    std::unique_ptr<ServerProcess> s(StartServer("mtls", mtls));
    ExpectAlive(TlsChannel(s->target(), d, true));
    DetectResponse resp;
    EXPECT_EQ(Detect(TlsChannel(s->target(), d, false), Request({png_}), &resp, 5s).error_code(),
              grpc::StatusCode::UNAVAILABLE);  // no client certificate
  }
}

TEST_F(ServerTest, ConfigFileAndFlagsPrecedence) {
  const fs::path config = *dir_ / "server.json";
  std::ofstream(config) << R"({"max_images_per_request": 1, "max_batch_size": 3})";
  std::unique_ptr<ServerProcess> s(
      StartServer("config", {"--config=" + config.string(), "--max_batch_size=5"}));
  DetectResponse resp;
  grpc::Status st = Detect(s->Channel(), Request({png_, png_}), &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("limit of 1"), std::string::npos) << st.error_message();
  bool seen = false;
  for (const json& e : s->Events()) {
    if (e.value("event", "") == "config") {
      seen = true;
      EXPECT_EQ(e["max_batch_size"], 5);  // the flag wins
      EXPECT_EQ(e["max_images_per_request"], 1);
    }
  }
  EXPECT_TRUE(seen);
  // Unknown keys and a missing model directory fail with a clear message.
  std::ofstream(config) << R"({"max_batch_sise": 3})";
  ServerProcess bad;
  EXPECT_FALSE(bad.Start({"--config=" + config.string()}, *dir_ / "bad.log"));
  EXPECT_NE(bad.Log().find("unknown key 'max_batch_sise'"), std::string::npos) << bad.Log();
  ServerProcess missing;
  EXPECT_FALSE(missing.Start({"--model_dir=" + (*dir_ / "nope").string()}, *dir_ / "missing.log"));
  // It names the directory and the remedies (another directory, or none for
  // the embedded default model).
  EXPECT_NE(missing.Log().find((*dir_ / "nope").string() + "' has no config.json"),
            std::string::npos) << missing.Log();
  EXPECT_NE(missing.Log().find("--model_dir"), std::string::npos) << missing.Log();
  EXPECT_NE(missing.Log().find("embedded default model"), std::string::npos) << missing.Log();
}

}  // namespace
}  // namespace lpdetr::server
