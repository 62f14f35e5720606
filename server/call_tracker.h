// Counts the gRPC calls alive in a server, so a drain can tell when every
// answer the server computed has gone out. A call counts from the moment
// gRPC hands it to a method until it is completely finished, its final
// status written to the transport: the count is kept by a server interceptor,
// which gRPC destroys only with the call. (A handler returning is not enough:
// the response and its status are sent afterwards, on gRPC's threads.)
//
// Threading: thread-safe; one mutex guards the count. Install the factory
// with ServerBuilder::experimental().SetInterceptorCreators before
// BuildAndStart; the tracker's state outlives the factory and the calls.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

#include <grpcpp/support/server_interceptor.h>

#include "absl/base/thread_annotations.h"

namespace lpdetr::server {

class CallTracker {
 public:
  CallTracker();

  // The interceptor factory that feeds this tracker (one per server).
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeFactory() const;

  // Calls alive now.
  int Alive() const;
  // Waits until no call is alive or `deadline` passes; returns the calls
  // still alive.
  int WaitForNone(std::chrono::steady_clock::time_point deadline) const;

 private:
  struct State {
    mutable std::mutex mu;
    mutable std::condition_variable none;
    int alive ABSL_GUARDED_BY(mu) = 0;
  };
  class Interceptor;
  class Factory;
  std::shared_ptr<State> state_;
};

}  // namespace lpdetr::server
