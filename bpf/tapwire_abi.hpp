// C++ companion to tapwire_abi.h: names for the ABI's enums, used for status
// output, metric labels and logs. Keep in step with the enums (append only).
#pragma once

#include <array>
#include <string_view>

#include "tapwire_abi.h"

namespace tapwire::abi {

inline constexpr std::array<std::string_view, TW_DROP__MAX> kDropReasonNames = {
    "ringbuf_full", "no_ring", "load_failed", "ip_fragment", "bad_header", "no_scratch",
};

inline constexpr std::array<std::string_view, TW_STAT__MAX> kStatNames = {
    "packets_seen", "packets_captured", "bytes_captured", "records", "filtered", "not_tcp_udp", "truncated", "empty_ack", "not_targeted", "duplicate",
};

inline constexpr std::string_view direction_name(unsigned d) {
  return d == TW_DIR_INGRESS ? "ingress" : d == TW_DIR_EGRESS ? "egress" : "unknown";
}

inline constexpr std::string_view l4_name(unsigned proto) {
  return proto == 6 ? "tcp" : proto == 17 ? "udp" : "other";
}

}  // namespace tapwire::abi
