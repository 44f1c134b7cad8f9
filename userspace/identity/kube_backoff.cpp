#include "kube_backoff.hpp"

#include <algorithm>

namespace tapwire::identity::kube {

Backoff::Backoff(double scale, uint64_t seed) : scale_(scale > 0 ? scale : 1.0), rng_(seed) {}

std::chrono::milliseconds Backoff::next() {
  double nominal = static_cast<double>(kBase.count());
  for (int i = 0; i < step_ && nominal < static_cast<double>(kMax.count()); ++i) nominal *= 2;
  nominal = std::min(nominal, static_cast<double>(kMax.count()));
  if (step_ < 64) ++step_;
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  double ms = std::min(nominal * jitter(rng_), static_cast<double>(kMax.count())) * scale_;
  return std::chrono::milliseconds(std::max<int64_t>(1, static_cast<int64_t>(ms)));
}

}  // namespace tapwire::identity::kube
