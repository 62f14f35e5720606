#include "server/call_tracker.h"

namespace lpdetr::server {

// Lives exactly as long as its call.
class CallTracker::Interceptor final : public grpc::experimental::Interceptor {
 public:
  explicit Interceptor(std::shared_ptr<State> state) : state_(std::move(state)) {
    std::lock_guard<std::mutex> lock(state_->mu);
    ++state_->alive;
  }
  ~Interceptor() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (--state_->alive == 0) state_->none.notify_all();
  }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    methods->Proceed();
  }

 private:
  std::shared_ptr<State> state_;
};

class CallTracker::Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(std::shared_ptr<State> state) : state_(std::move(state)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new Interceptor(state_);  // owned and deleted by gRPC with the call
  }

 private:
  std::shared_ptr<State> state_;
};

CallTracker::CallTracker() : state_(std::make_shared<State>()) {}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> CallTracker::MakeFactory()
    const {
  return std::make_unique<Factory>(state_);
}

int CallTracker::Alive() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->alive;
}

int CallTracker::WaitForNone(std::chrono::steady_clock::time_point deadline) const {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->none.wait_until(lock, deadline, [&] { return state_->alive == 0; });
  return state_->alive;
}

}  // namespace lpdetr::server
