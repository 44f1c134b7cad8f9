// C++ companion to tapwire_abi.h: names for the ABI's enums, used for status
// output, metric labels and logs. Keep in step with the enums (append only).
#pragma once

#include <array>
#include <string_view>

#include "tapwire_abi.h"

namespace tapwire::abi {

inline constexpr std::array<std::string_view, TW_DROP__MAX> kDropReasonNames = {
    "ringbuf_full", "no_ring", "load_failed", "ip_fragment", "bad_header", "no_scratch",
    "ipv6_ext_limit", "bad_l2_header", "bad_vlan_header", "vlan_limit", "bad_ipv4_header", "bad_ipv6_header",
    "bad_ipv6_ext_header", "bad_ah_header", "bad_tcp_header", "bad_udp_header",
};

inline constexpr std::array<std::string_view, TW_STAT__MAX> kStatNames = {
    "packets_seen", "packets_captured", "bytes_captured", "records", "filtered", "not_tcp_udp", "truncated", "empty_ack", "not_targeted", "duplicate",
    "ipsec_esp", "first_fragments", "flows_created", "flow_untracked", "flow_ends_lost",
};

// Every enum value has a name: a missing one would be an empty string.
template <size_t N>
constexpr bool all_named(const std::array<std::string_view, N>& names) {
  for (auto n : names)
    if (n.empty()) return false;
  return true;
}
static_assert(all_named(kDropReasonNames), "a tw_drop_reason has no name in kDropReasonNames");
static_assert(all_named(kStatNames), "a tw_stat has no name in kStatNames");

inline constexpr std::string_view direction_name(unsigned d) {
  return d == TW_DIR_INGRESS ? "ingress" : d == TW_DIR_EGRESS ? "egress" : "unknown";
}

inline constexpr std::string_view l4_name(unsigned proto) {
  return proto == 6 ? "tcp" : proto == 17 ? "udp" : "other";
}

}  // namespace tapwire::abi
