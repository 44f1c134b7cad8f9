// Clock readings in nanoseconds: CLOCK_MONOTONIC for intervals and
// deadlines, CLOCK_REALTIME for timestamps that are stored.
#pragma once

#include <time.h>

#include <cstdint>

namespace tapwire {

inline uint64_t clock_ns(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

inline uint64_t mono_ns() { return clock_ns(CLOCK_MONOTONIC); }

}  // namespace tapwire
