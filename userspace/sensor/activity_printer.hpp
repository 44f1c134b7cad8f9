// --print: human-readable activity on stdout, a line a packet (at most 20 a
// second, then how many more) and a summary a second.
#pragma once

#include <cstdint>
#include <map>

#include "interfaces.hpp"
#include "tapwire_abi.h"

namespace tapwire::shm {
class CaptureStore;
}

namespace tapwire::sensor {

class BpfCapture;
class CaptureDrain;

class ActivityPrinter {
 public:
  // `attached` (ifindex -> interface) names the interfaces; it must outlive
  // the printer.
  explicit ActivityPrinter(const std::map<uint32_t, Interface>& attached) : attached_(attached) {}

  void packet(const tw_pkt& p);
  // Rates since the last summary, totals since start.
  void summary(const BpfCapture& bpf, const CaptureDrain& drain, const shm::CaptureStore& store);

 private:
  const std::map<uint32_t, Interface>& attached_;
  uint64_t window_start_ = 0, printed_in_window_ = 0, suppressed_ = 0;
  uint64_t last_packets_ = 0, last_bytes_ = 0;
};

}  // namespace tapwire::sensor
