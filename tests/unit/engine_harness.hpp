// The shared engine harness of the protocol unit tests: synthetic TCP
// connections (handshake, payload pieces with sequence numbers, lost bytes,
// FIN) fed through a Dissector whole, byte by byte or at random split points
// (a seeded mt19937), and the calls that come out with their JSON records
// and the engine's metrics.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "dissector.hpp"

namespace tapwire::test {

inline constexpr uint64_t kHarnessT0 = 1'795'000'000'000'000'000ull;
inline constexpr uint64_t kHarnessMs = 1'000'000;

enum class Split { Whole, Bytes, Random };

// One TCP connection: the client 10.7.0.2:cport, the server 10.7.0.1:sport.
struct Conn {
  uint16_t cport = 0, sport = 0;
  bool handshake = true;  // SYN / SYN-ACK first (false: joined mid-connection)
  bool fin = true;        // FIN both ways at the end
  struct Msg {
    bool client;
    std::string bytes;
    uint64_t skip = 0;  // bytes lost in capture before these (a gap)
  };
  std::vector<Msg> msgs;
  void c(std::string s) { msgs.push_back({true, std::move(s)}); }
  void s(std::string s) { msgs.push_back({false, std::move(s)}); }
};

// A Conn with other default ports: `using Conn = ConnOn<6379>;`.
template <uint16_t Sport, uint16_t Cport = 0>
struct ConnOn : Conn {
  ConnOn() {
    cport = Cport;
    sport = Sport;
  }
};

// What a run gives: the calls, their records (text and parsed) and metrics.
struct EngineRun {
  std::vector<dissect::Call> calls;
  std::vector<std::string> records;
  std::vector<nlohmann::json> j;
  dissect::DissectorMetrics m;
  // The calls of one connection (its client port as source or destination).
  std::vector<const dissect::Call*> of(uint16_t cport) const {
    std::vector<const dissect::Call*> v;
    for (const dissect::Call& c : calls)
      if (c.src.port == cport || c.dst.port == cport) v.push_back(&c);
    return v;
  }
  // Their parsed records.
  std::vector<const nlohmann::json*> j_of(uint16_t cport) const {
    std::vector<const nlohmann::json*> v;
    for (size_t i = 0; i < calls.size(); i++)
      if (calls[i].src.port == cport || calls[i].dst.port == cport) v.push_back(&j[i]);
    return v;
  }
  // The same, copied.
  std::vector<nlohmann::json> json_of(uint16_t cport) const {
    std::vector<nlohmann::json> v;
    for (const nlohmann::json* r : j_of(cport)) v.push_back(*r);
    return v;
  }
};

struct RunOptions {
  dissect::DissectorOptions dissector;
  Split split = Split::Whole;
  uint32_t seed = 0;
  bool handshake = true;  // false: no connection has its SYN / SYN-ACK
  bool parse_json = true;  // fill EngineRun::j
  size_t whole_piece_max = SIZE_MAX;  // Split::Whole: a message in pieces of at most this many bytes
};

inline RunOptions run_options(size_t memory_limit, Split split = Split::Whole, uint32_t seed = 0,
                              bool handshake = true, bool parse_json = true) {
  RunOptions o;
  o.dissector.memory_limit = memory_limit;
  o.split = split;
  o.seed = seed;
  o.handshake = handshake;
  o.parse_json = parse_json;
  return o;
}

// How many of the `left` bytes the next piece carries.
inline size_t next_piece(Split split, std::mt19937& rng, size_t left, size_t whole_max = SIZE_MAX) {
  if (split == Split::Whole) return std::min(left, whole_max);
  if (split == Split::Bytes) return 1;
  const int kind = std::uniform_int_distribution<int>(0, 9)(rng);
  const size_t max = kind < 5 ? 8 : kind < 8 ? 1500 : 65536;
  return std::min(left, std::uniform_int_distribution<size_t>(1, max)(rng));
}

// Runs the connections one after the other through one Dissector.
template <class ConnT>
EngineRun run_engine(const std::vector<ConnT>& conns, const RunOptions& o) {
  static_assert(std::is_base_of_v<Conn, ConnT>);
  EngineRun r;
  dissect::Dissector d(o.dissector, [&](dissect::Call&& c) { r.calls.push_back(std::move(c)); });
  std::mt19937 rng(o.seed);
  uint64_t ts = kHarnessT0;
  for (const Conn& c : conns) {
    const uint8_t caddr[4] = {10, 7, 0, 2}, saddr[4] = {10, 7, 0, 1};
    uint32_t next[2] = {1001, 50001};
    auto send = [&](bool client, uint8_t flags, std::string_view payload, uint32_t seq) {
      dissect::Packet p;
      p.meta.ts_ns = ts;
      p.meta.ip_version = 4;
      p.meta.l4_proto = 6;
      std::memcpy(p.meta.saddr, client ? caddr : saddr, 4);
      std::memcpy(p.meta.daddr, client ? saddr : caddr, 4);
      p.meta.sport = client ? c.cport : c.sport;
      p.meta.dport = client ? c.sport : c.cport;
      p.meta.seq = seq;
      p.meta.ack = (flags & TW_TCP_ACK) ? next[client ? 1 : 0] : 0;
      p.meta.window = 65535;
      p.meta.tcp_flags = flags;
      p.meta.tcp_wscale = TW_WSCALE_NONE;
      p.meta.payload_len = p.meta.cap_len = static_cast<uint32_t>(payload.size());
      p.payload = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
      d.packet(p);
    };
    if (o.handshake && c.handshake) {
      ts += kHarnessMs;
      send(true, TW_TCP_SYN, {}, next[0] - 1);
      ts += kHarnessMs;
      send(false, TW_TCP_SYN | TW_TCP_ACK, {}, next[1] - 1);
    }
    for (const Conn::Msg& m : c.msgs) {
      ts += kHarnessMs;
      uint32_t& seq = next[m.client ? 0 : 1];
      seq += static_cast<uint32_t>(m.skip);
      const std::string_view all = m.bytes;
      for (size_t off = 0; off < all.size();) {
        const size_t k = next_piece(o.split, rng, all.size() - off, o.whole_piece_max);
        send(m.client, TW_TCP_ACK | TW_TCP_PSH, all.substr(off, k), seq);
        seq += static_cast<uint32_t>(k);
        off += k;
      }
    }
    if (c.fin) {
      ts += kHarnessMs;
      send(true, TW_TCP_FIN | TW_TCP_ACK, {}, next[0]);
      ts += kHarnessMs;
      send(false, TW_TCP_FIN | TW_TCP_ACK, {}, next[1]);
    }
  }
  d.finish();
  r.m = d.metrics();
  for (const dissect::Call& c : r.calls) {
    dissect::write_record(c, r.records.emplace_back());
    if (o.parse_json) r.j.push_back(nlohmann::json::parse(r.records.back()));
  }
  return r;
}

// run_all_ways: what the runs split byte by byte and at random must show.
struct AllWays {
  size_t peak_limit = 0;        // memory_peak_bytes at most this (0: not checked)
  bool check_whole_peak = true;  // the peak of the whole run too
  bool check_shed = false;      // nothing shed in the split runs
  bool check_whole_shed = false;  // nor in the whole run
  bool check_parse_errors = false;  // the same parse_errors (by protocol) as the whole run
  bool check_parse_errors_total = false;  // the same parse_errors_total() as the whole run
};

// Whole, then byte by byte (seed 0) and at random (seeds 1, 2, 3): the same
// records every way; the checks of `w` on each run.
template <class ConnT>
EngineRun run_all_ways(const std::vector<ConnT>& conns, RunOptions o, const AllWays& w) {
  auto bounded = [&](const EngineRun& r, bool shed, bool peak) {
    if (w.peak_limit && peak) {
      EXPECT_LE(r.m.memory_peak_bytes, w.peak_limit);
    }
    if (shed) {
      for (size_t s = 0; s < dissect::kShedReasons; s++) EXPECT_EQ(r.m.shed[s], 0u);
    }
  };
  o.split = Split::Whole;
  o.seed = 0;
  EngineRun whole = run_engine(conns, o);
  bounded(whole, w.check_whole_shed, w.check_whole_peak);
  for (auto [split, seed] : {std::pair{Split::Bytes, 0u}, {Split::Random, 1u}, {Split::Random, 2u}, {Split::Random, 3u}}) {
    SCOPED_TRACE(split == Split::Bytes ? "bytes" : "random seed " + std::to_string(seed));
    o.split = split;
    o.seed = seed;
    EngineRun r = run_engine(conns, o);
    bounded(r, w.check_shed, true);
    if (w.check_parse_errors) {
      EXPECT_EQ(r.m.parse_errors, whole.m.parse_errors);
    }
    EXPECT_EQ(r.records.size(), whole.records.size());
    for (size_t i = 0; i < std::min(r.records.size(), whole.records.size()); i++) {
      const std::string &got = r.records[i], &want = whole.records[i];
      if (got == want) continue;
      size_t at = 0;  // where they part (records carry bodies: show the spot, not all of it)
      while (at < got.size() && at < want.size() && got[at] == want[at]) at++;
      const size_t from = at > 200 ? at - 200 : 0;
      ADD_FAILURE() << "call " << i << " differs at byte " << at << "\n  got:  " << got.substr(from, 400)
                    << "\n  want: " << want.substr(from, 400);
    }
    if (w.check_parse_errors_total) {
      EXPECT_EQ(r.m.parse_errors_total(), whole.m.parse_errors_total());
    }
  }
  return whole;
}

}  // namespace tapwire::test
