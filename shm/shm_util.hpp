// Small helpers the segment writers, readers and stores share. Internal to
// tw_shm (the base library: userspace/common is not below it).
#pragma once

#include <time.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

namespace tapwire::shm::detail {

inline uint64_t clock_ns(clockid_t clk) {
  timespec ts{};
  clock_gettime(clk, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}
inline uint64_t realtime_ns() { return clock_ns(CLOCK_REALTIME); }
// The coarse clock is a vDSO read: cheap enough for every append.
inline uint64_t coarse_realtime_ns() { return clock_ns(CLOCK_REALTIME_COARSE); }

inline uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

inline std::string errstr(int err) { return std::strerror(err); }

template <class T>
std::atomic_ref<T> aref(T& v) {
  return std::atomic_ref<T>(v);
}

}  // namespace tapwire::shm::detail
