// Retry delays of tapwire-kube-watch: 1 s doubling to 60 s, each with ±25 %
// jitter so that many watchers that lost the API server together do not come
// back together. scale shrinks every delay (tests).
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

namespace tapwire::identity::kube {

class Backoff {
 public:
  static constexpr std::chrono::milliseconds kBase{1000};
  static constexpr std::chrono::milliseconds kMax{60000};

  explicit Backoff(double scale = 1.0, uint64_t seed = std::random_device{}());
  // The delay before the next attempt; each call doubles the nominal delay.
  std::chrono::milliseconds next();
  // After a success: the next failure waits kBase again.
  void reset() { step_ = 0; }
  int failures() const { return step_; }

 private:
  double scale_;
  int step_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace tapwire::identity::kube
