// A flow's key: its two endpoints in canonical order (the lower address/port
// first), so that both directions of a flow find the same key. The engine
// keys its flows with it; `tapwire dissect --jobs N` gives each worker the
// flows whose hash falls on it, so the split and the engine's flows are
// always the same flows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tapwire_abi.h"

namespace tapwire::dissect {

struct FlowKey {
  uint8_t l4 = 0;
  uint8_t ipv = 0;
  uint16_t port[2] = {0, 0};
  uint8_t addr[2][16] = {};
  bool operator==(const FlowKey& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
};
static_assert(sizeof(FlowKey) == 38, "FlowKey must have no padding: it is hashed and compared as bytes");

inline uint64_t fnv1a(const void* data, size_t len, uint64_t h = 1469598103934665603ull) {
  auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Mixes the final hash so that similar keys spread (splitmix64 finaliser).
inline uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Returns the canonical key and which side (0/1) the packet's source is.
inline FlowKey make_flow_key(const tw_pkt& m, int& src_side) {
  FlowKey k;
  k.l4 = m.l4_proto;
  k.ipv = m.ip_version;
  const size_t alen = m.ip_version == 6 ? 16 : 4;
  int c = std::memcmp(m.saddr, m.daddr, alen);
  bool src_first = c < 0 || (c == 0 && m.sport <= m.dport);
  src_side = src_first ? 0 : 1;
  std::memcpy(k.addr[src_side], m.saddr, alen);
  std::memcpy(k.addr[1 - src_side], m.daddr, alen);
  k.port[src_side] = m.sport;
  k.port[1 - src_side] = m.dport;
  return k;
}

inline uint64_t flow_hash(const FlowKey& k) { return mix(fnv1a(&k, sizeof k)); }

// The same for both directions of a flow.
inline uint64_t flow_hash(const tw_pkt& m) {
  int side;
  return flow_hash(make_flow_key(m, side));
}

struct FlowKeyHash {
  size_t operator()(const FlowKey& k) const { return flow_hash(k); }
};

}  // namespace tapwire::dissect
