// The capture programs (bpf/capture.bpf.c) in isolation: crafted packets run
// through tw_ingress / tw_egress with BPF_PROG_TEST_RUN, then the per-CPU
// ring and the counters are read. Every case either yields the expected
// records or exactly one counted reason; every run must leave the packet
// unchanged and return TC_ACT_UNSPEC. Cases BPF_PROG_TEST_RUN cannot build
// (packets over 256 KiB, a device without L2 header) use real traffic
// through a veth pair and a tun device, attached with the sensor's own
// attach code.
//
// Needs root (BPF, network namespaces): each test runs in a thread of its
// own in a fresh network namespace, pinned to one CPU (the ring and the
// duplicate memory are per CPU). Without root the tests skip, and fail under
// CI=true.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/pkt_cls.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bpf_capture.hpp"
#include "clock.hpp"
#include "flow_harvester.hpp"
#include "segment.hpp"
#include "temp_dir.hpp"
#include "interfaces.hpp"
#include "ring_drain.hpp"
#include "tapwire_abi.hpp"
#include "tc_attach.hpp"

namespace {

using tapwire::sensor::BpfCapture;
using tapwire::sensor::BpfRingReader;
using tapwire::sensor::CaptureRingReader;
using tapwire::sensor::CaptureFilters;
using Bytes = std::vector<uint8_t>;

// ------------------------------------------------------------ privileges --

bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && (std::string(ci) == "true" || std::string(ci) == "1" || std::string(ci) == "yes");
}

#define REQUIRE_ROOT()                                                                                        \
  do {                                                                                                        \
    if (geteuid() != 0) {                                                                                     \
      if (in_ci()) FAIL() << "needs root (BPF_PROG_TEST_RUN, network namespaces); CI=true: failing, not skipping"; \
      GTEST_SKIP() << "needs root (BPF_PROG_TEST_RUN, network namespaces)";                                   \
    }                                                                                                         \
  } while (0)

void sh(const std::string& cmd) {
  int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  if (rc != 0) throw std::runtime_error("command failed (" + std::to_string(rc) + "): " + cmd);
}

// Runs fn in a new thread, in a new network namespace (CLONE_NEWNET is per
// thread), pinned to the CPU it starts on. The namespace and everything in
// it go away with the thread.
void in_netns(const std::function<void()>& fn) {
  std::exception_ptr ex;
  std::thread t([&] {
    try {
      if (unshare(CLONE_NEWNET) != 0) throw std::runtime_error(std::string("unshare(CLONE_NEWNET): ") + strerror(errno));
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(sched_getcpu(), &set);
      if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) throw std::runtime_error("cannot pin to a CPU");
      sh("ip link set lo up");
      fn();
    } catch (...) {
      ex = std::current_exception();
    }
  });
  t.join();
  if (ex) std::rethrow_exception(ex);
}

// ------------------------------------------------------- packet building --

void put16(Bytes& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}
void put32(Bytes& b, uint32_t v) {
  put16(b, static_cast<uint16_t>(v >> 16));
  put16(b, static_cast<uint16_t>(v));
}
Bytes operator+(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
Bytes text(const std::string& s) { return Bytes(s.begin(), s.end()); }
Bytes pattern(size_t n, uint8_t seed = 0) {
  Bytes b(n);
  for (size_t i = 0; i < n; i++) b[i] = static_cast<uint8_t>(i * 7 + seed);
  return b;
}

constexpr uint16_t kIPv4 = 0x0800, kIPv6 = 0x86dd, kQ = 0x8100, kAD = 0x88a8;
constexpr uint8_t kSrc4[4] = {10, 1, 0, 1}, kDst4[4] = {10, 1, 0, 2};
const uint8_t kSrc6[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
const uint8_t kDst6[16] = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};

// Ethernet, with 802.1ad/802.1Q tags (TPID, TCI) in order.
Bytes l2(uint16_t ethertype, const std::vector<std::pair<uint16_t, uint16_t>>& tags = {}) {
  Bytes b = {0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1};
  for (auto [tpid, tci] : tags) {
    put16(b, tpid);
    put16(b, tci);
  }
  put16(b, ethertype);
  return b;
}

struct V4 {
  uint16_t frag = 0;  // flags and offset as on the wire (0x2000 MF, 0x4000 DF)
  uint8_t ihl = 5;
  uint8_t version = 4;
  int tot_len = -1;  // -1: header + rest
};
Bytes ipv4(uint8_t proto, const Bytes& rest, V4 o = {}) {
  Bytes b;
  b.push_back(static_cast<uint8_t>(o.version << 4 | o.ihl));
  b.push_back(0);
  put16(b, static_cast<uint16_t>(o.tot_len >= 0 ? o.tot_len : o.ihl * 4 + static_cast<int>(rest.size())));
  put16(b, 0x1234);
  put16(b, o.frag);
  b.push_back(64);
  b.push_back(proto);
  put16(b, 0);
  b.insert(b.end(), kSrc4, kSrc4 + 4);
  b.insert(b.end(), kDst4, kDst4 + 4);
  b.resize(std::max<size_t>(20, o.ihl * 4u), 1);  // options: NOPs
  return b + rest;
}

Bytes ipv6(uint8_t next, const Bytes& rest, int plen = -1, uint8_t version = 6) {
  Bytes b = {static_cast<uint8_t>(version << 4), 0, 0, 0};
  put16(b, static_cast<uint16_t>(plen >= 0 ? plen : static_cast<int>(rest.size())));
  b.push_back(next);
  b.push_back(63);
  b.insert(b.end(), kSrc6, kSrc6 + 16);
  b.insert(b.end(), kDst6, kDst6 + 16);
  return b + rest;
}

// A generic IPv6 extension header (hop-by-hop, routing, destination
// options, ...): (units + 1) * 8 bytes.
Bytes ext6(uint8_t next, uint8_t units = 0) {
  Bytes b = {next, units};
  b.resize((units + 1u) * 8u, 0);
  return b;
}
Bytes frag6(uint8_t next, uint16_t offset8, bool more) {
  Bytes b = {next, 0};
  put16(b, static_cast<uint16_t>(offset8 << 3 | (more ? 1 : 0)));
  put32(b, 0xabcdef01);
  return b;
}
// IPsec AH: (len + 2) * 4 bytes.
Bytes ah(uint8_t next, uint8_t len = 4) {
  Bytes b = {next, len, 0, 0};
  put32(b, 0x100);  // SPI
  put32(b, 1);  // sequence
  b.resize((len + 2u) * 4u, 0xa5);  // ICV
  return b;
}

struct Tcp {
  uint16_t sport = 40000, dport = 80;
  uint32_t seq = 1000, ack = 2000;
  uint8_t flags = TW_TCP_ACK | TW_TCP_PSH;
  uint16_t window = 502;
  Bytes options;
  int doff = -1;  // -1: from the options
};
Bytes tcp(const Bytes& payload, Tcp t = {}) {
  Bytes b;
  put16(b, t.sport);
  put16(b, t.dport);
  put32(b, t.seq);
  put32(b, t.ack);
  const int doff = t.doff >= 0 ? t.doff : static_cast<int>(20 + t.options.size()) / 4;
  b.push_back(static_cast<uint8_t>(doff << 4));
  b.push_back(t.flags);
  put16(b, t.window);
  put32(b, 0);
  return b + t.options + payload;
}
Bytes udp(const Bytes& payload, uint16_t sport = 5353, uint16_t dport = 53) {
  Bytes b;
  put16(b, sport);
  put16(b, dport);
  put16(b, static_cast<uint16_t>(8 + payload.size()));
  put16(b, 0);
  return b + payload;
}

// --------------------------------------------------------------- harness --

struct Record {
  tw_pkt h;
  Bytes data;
};

struct Result {
  std::vector<Record> recs;
  tw_counters delta{};
  // The non-zero counters but packets_seen, in enum order: "records=1
  // bytes_captured=5 ..." for a capture, "bad_tcp_header=1" for a drop.
  std::string reasons() const {
    std::ostringstream o;
    for (uint32_t s = 0; s < TW_STAT__MAX; s++)
      if (s != TW_STAT_PACKETS_SEEN && s != TW_STAT_FLOWS_CREATED && delta.stat[s]) o << (o.tellp() ? " " : "") << tapwire::abi::kStatNames[s] << "=" << delta.stat[s];
    for (uint32_t d = 0; d < TW_DROP__MAX; d++)
      if (delta.drop[d]) o << (o.tellp() ? " " : "") << tapwire::abi::kDropReasonNames[d] << "=" << delta.drop[d];
    return o.str();
  }
};

// What a captured packet of n payload bytes adds to the counters.
std::string captured(size_t n, size_t records = 1, const std::string& more = "") {
  std::string s = "packets_captured=1" + (n ? " bytes_captured=" + std::to_string(n) : std::string()) +
                  " records=" + std::to_string(records);
  return more.empty() ? s : s + " " + more;
}

class Harness {
 public:
  explicit Harness(uint32_t ring_bytes = 1u << 20, tapwire::sensor::FlowAccounting flows = {})
      : cap_(ring_bytes, 1u << 30, flows) {
    for (uint32_t cpu = 0; cpu < cap_.ring_count(); cpu++) readers_.emplace_back(cap_.ring(cpu), cap_.ring_bytes());
    lo_ = if_nametoindex("lo");
    cap_.set_interface(lo_, true);
    last_ = totals();
  }
  BpfCapture& cap() { return cap_; }
  uint32_t lo() const { return lo_; }

  // Runs one program on a copy of frame. ifindex 0: loopback.
  Result run(bool egress, const Bytes& frame, uint32_t ifindex = 0, uint32_t ingress_ifindex = 0) {
    __sk_buff ctx{};
    ctx.ifindex = ifindex;
    ctx.ingress_ifindex = ingress_ifindex;
    Bytes out(frame.size() + 256);
    bpf_test_run_opts o{};
    o.sz = sizeof o;
    o.data_in = frame.data();
    o.data_size_in = static_cast<uint32_t>(frame.size());
    o.data_out = out.data();
    o.data_size_out = static_cast<uint32_t>(out.size());
    o.ctx_in = &ctx;
    o.ctx_size_in = sizeof ctx;
    int err = bpf_prog_test_run_opts(egress ? cap_.egress_prog_fd() : cap_.ingress_prog_fd(), &o);
    EXPECT_EQ(err, 0) << "BPF_PROG_TEST_RUN: " << strerror(-err);
    // Never drop or change traffic.
    EXPECT_EQ(static_cast<int32_t>(o.retval), TC_ACT_UNSPEC) << "the program must always let the packet go on";
    out.resize(o.data_size_out);
    EXPECT_EQ(out, frame) << "the program changed the packet";
    return collect();
  }
  Result in(const Bytes& frame, uint32_t ifindex = 0) { return run(false, frame, ifindex); }
  // Several runs back to back, then one collect(): for sightings that must
  // fall within the duplicate window (1 ms).
  struct Run {
    bool egress;
    const Bytes& frame;
    uint32_t ifindex, ingress_ifindex;
  };
  Result runs(const std::vector<Run>& list) {
    for (auto& r : list) {
      __sk_buff ctx{};
      ctx.ifindex = r.ifindex;
      ctx.ingress_ifindex = r.ingress_ifindex;
      bpf_test_run_opts o{};
      o.sz = sizeof o;
      o.data_in = r.frame.data();
      o.data_size_in = static_cast<uint32_t>(r.frame.size());
      o.ctx_in = &ctx;
      o.ctx_size_in = sizeof ctx;
      EXPECT_EQ(bpf_prog_test_run_opts(r.egress ? cap_.egress_prog_fd() : cap_.ingress_prog_fd(), &o), 0);
      EXPECT_EQ(static_cast<int32_t>(o.retval), TC_ACT_UNSPEC);
    }
    return collect();
  }
  std::vector<CaptureRingReader>& rings() { return readers_; }

  // Records in the rings and counter changes since the last call.
  Result collect() {
    Result r;
    for (auto& rd : readers_) {
      for (auto rec = rd.peek(); !rec.empty(); rec = rd.peek()) {
        Record x{};
        EXPECT_GE(rec.size(), sizeof(tw_pkt));
        std::memcpy(&x.h, rec.data(), std::min(rec.size(), sizeof(tw_pkt)));
        if (rec.size() > sizeof(tw_pkt)) x.data.assign(rec.begin() + sizeof(tw_pkt), rec.end());
        EXPECT_EQ(x.h.cap_len, x.data.size());
        r.recs.push_back(std::move(x));
        rd.advance();
      }
      rd.release();
    }
    tw_counters now = totals();
    for (uint32_t s = 0; s < TW_STAT__MAX; s++) r.delta.stat[s] = now.stat[s] - last_.stat[s];
    for (uint32_t d = 0; d < TW_DROP__MAX; d++) r.delta.drop[d] = now.drop[d] - last_.drop[d];
    last_ = now;
    return r;
  }

 private:
  tw_counters totals() const {
    tw_counters t{};
    for (auto& c : cap_.read_counters()) {
      for (uint32_t s = 0; s < TW_STAT__MAX; s++) t.stat[s] += c.stat[s];
      for (uint32_t d = 0; d < TW_DROP__MAX; d++) t.drop[d] += c.drop[d];
    }
    return t;
  }
  BpfCapture cap_;
  std::vector<CaptureRingReader> readers_;
  uint32_t lo_ = 1;
  tw_counters last_{};
};

// The flow table's entries (no program runs meanwhile: every copy is consistent).
std::map<std::vector<uint8_t>, tw_flow_value> flows(const BpfCapture& cap) {
  std::map<std::vector<uint8_t>, tw_flow_value> out;
  tw_flow_key k{}, next{};
  void* prev = nullptr;
  while (bpf_map_get_next_key(cap.flows_fd(), prev, &next) == 0) {
    tw_flow_value v{};
    if (bpf_map_lookup_elem(cap.flows_fd(), &next, &v) == 0) {
      EXPECT_EQ(v.seq, v.seq_end);
      EXPECT_EQ(v.seq % 2, 0u) << "the entry's lock was given back";
      auto* b = reinterpret_cast<const uint8_t*>(&next);
      out[std::vector<uint8_t>(b, b + sizeof next)] = v;
    }
    k = next;
    prev = &k;
  }
  return out;
}

// The one record of a packet captured whole.
const Record& only(const Result& r) {
  static const Record none{};
  EXPECT_EQ(r.recs.size(), 1u) << r.reasons();
  return r.recs.empty() ? none : r.recs[0];
}

bool same_addr(const uint8_t* a, const uint8_t* b, size_t n) { return std::memcmp(a, b, n) == 0; }

// ------------------------------------------------------------------ L2-L4 --

TEST(CaptureBpf, Ipv4TcpRecord) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes payload = text("GET / HTTP/1.1\r\n\r\n");
    auto r = h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(payload)));
    EXPECT_EQ(r.delta.stat[TW_STAT_PACKETS_SEEN], 1u);
    EXPECT_EQ(r.reasons(), captured(payload.size()));
    const auto& p = only(r).h;
    EXPECT_EQ(p.ifindex, h.lo());
    EXPECT_EQ(p.direction, TW_DIR_INGRESS);
    EXPECT_EQ(p.ip_version, 4);
    EXPECT_EQ(p.l4_proto, IPPROTO_TCP);
    EXPECT_TRUE(same_addr(p.saddr, kSrc4, 4) && same_addr(p.daddr, kDst4, 4));
    EXPECT_EQ(p.saddr[4] | p.daddr[15], 0) << "IPv4 addresses: the rest is zero";
    EXPECT_EQ(p.sport, 40000);
    EXPECT_EQ(p.dport, 80);
    EXPECT_EQ(p.seq, 1000u);
    EXPECT_EQ(p.ack, 2000u);
    EXPECT_EQ(p.window, 502);
    EXPECT_EQ(p.tcp_flags, TW_TCP_ACK | TW_TCP_PSH);
    EXPECT_EQ(p.ttl, 64);
    EXPECT_EQ(p.tcp_wscale, TW_WSCALE_NONE);
    EXPECT_EQ(p.payload_len, payload.size());
    EXPECT_EQ(p.chunk_off, 0u);
    EXPECT_EQ(p.flags, 0);
    EXPECT_EQ(only(r).data, payload);

    // Egress, a SYN with options (MSS, SACK-permitted, timestamps, NOP, window scale 7).
    Tcp syn;
    syn.flags = TW_TCP_SYN;
    syn.options = {2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7};
    r = h.run(true, l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, syn)));
    EXPECT_EQ(r.reasons(), captured(0));
    EXPECT_EQ(only(r).h.direction, TW_DIR_EGRESS);
    EXPECT_EQ(only(r).h.tcp_wscale, 7);
    EXPECT_EQ(only(r).h.cap_len, 0u);
  });
}

TEST(CaptureBpf, UdpAndIpv6) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes q = pattern(33);
    auto r = h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(q)));
    EXPECT_EQ(r.reasons(), captured(q.size()));
    EXPECT_EQ(only(r).h.l4_proto, IPPROTO_UDP);
    EXPECT_EQ(only(r).h.sport, 5353);
    EXPECT_EQ(only(r).data, q);

    r = h.in(l2(kIPv6) + ipv6(IPPROTO_UDP, udp(q, 1234, 53)));
    EXPECT_EQ(r.reasons(), captured(q.size()));
    EXPECT_EQ(only(r).h.ip_version, 6);
    EXPECT_EQ(only(r).h.ttl, 63);
    EXPECT_TRUE(same_addr(only(r).h.saddr, kSrc6, 16) && same_addr(only(r).h.daddr, kDst6, 16));
    EXPECT_EQ(only(r).data, q);

    const Bytes body = pattern(1400, 3);
    r = h.in(l2(kIPv6) + ipv6(IPPROTO_TCP, tcp(body)));
    EXPECT_EQ(r.reasons(), captured(body.size()));
    EXPECT_EQ(only(r).data, body);

    // An empty datagram: metadata only.
    r = h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp({})));
    EXPECT_EQ(r.reasons(), captured(0));

    // Ethernet padding after a short IPv4 packet is not payload.
    r = h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(text("ab"))) + Bytes(20, 0));
    EXPECT_EQ(r.reasons(), captured(2));
    EXPECT_EQ(only(r).data, text("ab"));
  });
}

TEST(CaptureBpf, IcmpMessagesWholeAndPortRulesDoNotApply) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    // An echo request: the record's payload is the whole ICMP message.
    Bytes echo = {8, 0, 0x12, 0x34, 0, 7, 0, 1};
    const Bytes data = pattern(48);
    echo.insert(echo.end(), data.begin(), data.end());
    auto r = h.in(l2(kIPv4) + ipv4(IPPROTO_ICMP, echo));
    EXPECT_EQ(r.reasons(), captured(echo.size()));
    EXPECT_EQ(only(r).h.l4_proto, IPPROTO_ICMP);
    EXPECT_EQ(only(r).h.sport, 0);
    EXPECT_EQ(only(r).h.dport, 0);
    EXPECT_EQ(only(r).data, echo);
    Bytes echo6 = echo;
    echo6[0] = 128;
    r = h.in(l2(kIPv6) + ipv6(58 /* ICMPv6 */, echo6));
    EXPECT_EQ(r.reasons(), captured(echo6.size()));
    EXPECT_EQ(only(r).h.l4_proto, 58);
    EXPECT_EQ(only(r).data, echo6);
    // Port rules are about TCP and UDP ports: an allowlist lets ICMP through
    // (it reports on the connections the rules keep); address rules apply.
    CaptureFilters f;
    f.allow_ports = {443};
    h.cap().set_filters(f);
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_ICMP, echo)).reasons(), captured(echo.size()));
    f = {};
    f.deny_cidrs = {"10.1.0.2/32"};
    h.cap().set_filters(f);
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_ICMP, echo)).reasons(), "filtered=1");
  });
}

TEST(CaptureBpf, NotRecordedByDesign) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}))).reasons(), "empty_ack=1");
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_GRE, Bytes(16, 0))).reasons(), "not_tcp_udp=1");
    EXPECT_EQ(h.in(l2(0x0806) + Bytes(28, 0)).reasons(), "not_tcp_udp=1");  // ARP
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_HOPOPTS, ext6(59 /* no next header */))).reasons(), "not_tcp_udp=1");
    // FIN and RST without payload are recorded.
    Tcp fin;
    fin.flags = TW_TCP_FIN | TW_TCP_ACK;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, fin))).reasons(), captured(0));
  });
}

TEST(CaptureBpf, VlanAndQinq) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes pl = text("vlan");
    auto r = h.in(l2(kIPv4, {{kQ, 0x2064}}) + ipv4(IPPROTO_UDP, udp(pl)));
    EXPECT_EQ(r.reasons(), captured(pl.size()));
    EXPECT_EQ(only(r).h.flags, TW_PKT_F_VLAN);
    EXPECT_EQ(only(r).h.vlan_tci, 0x2064);
    EXPECT_EQ(only(r).data, pl);

    // QinQ: 802.1ad outside, 802.1Q inside; the outer tag is recorded.
    r = h.in(l2(kIPv6, {{kAD, 0x0123}, {kQ, 0x0456}}) + ipv6(IPPROTO_TCP, tcp(pl)));
    EXPECT_EQ(r.reasons(), captured(pl.size()));
    EXPECT_EQ(only(r).h.vlan_tci, 0x0123);
    EXPECT_EQ(only(r).data, pl);
    r = h.in(l2(kIPv4, {{kQ, 7}, {kQ, 8}}) + ipv4(IPPROTO_UDP, udp(pl)));
    EXPECT_EQ(r.reasons(), captured(pl.size()));

    // Three stacked tags: more than TW_MAX_VLAN_TAGS walked.
    static_assert(TW_MAX_VLAN_TAGS == 2);
    EXPECT_EQ(h.in(l2(kIPv4, {{kAD, 1}, {kQ, 2}, {kQ, 3}}) + ipv4(IPPROTO_UDP, udp(pl))).reasons(), "vlan_limit=1");
    // A tag cut short: the frame ends inside the second tag.
    Bytes cut = l2(kIPv4, {{kAD, 1}, {kQ, 2}});
    cut.resize(12 + 4 + 2);
    cut.resize(std::max<size_t>(cut.size(), 14));
    EXPECT_EQ(h.in(cut).reasons(), "bad_vlan_header=1");
  });
}

TEST(CaptureBpf, Ipv6ExtensionHeaders) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes pl = pattern(100, 9);
    // RFC 8200 order: hop-by-hop, destination options, routing, fragment
    // (atomic: offset 0, M clear), AH, destination options.
    Bytes chain = ext6(IPPROTO_DSTOPTS, 1) + ext6(IPPROTO_ROUTING, 0) + ext6(IPPROTO_FRAGMENT, 2) +
                  frag6(IPPROTO_AH, 0, false) + ah(IPPROTO_DSTOPTS, 6) + ext6(IPPROTO_TCP, 0) + tcp(pl);
    auto r = h.in(l2(kIPv6) + ipv6(IPPROTO_HOPOPTS, chain));
    EXPECT_EQ(r.reasons(), captured(pl.size()));
    EXPECT_EQ(only(r).data, pl);
    EXPECT_EQ(only(r).h.flags, 0) << "an atomic fragment is a whole datagram";

    // Exactly TW_MAX_EXT_HEADERS headers are walked; one more is counted.
    auto chain_of = [&](unsigned n) {
      Bytes c = ext6(IPPROTO_UDP, 0) + udp(pl);
      for (unsigned i = 1; i < n; i++) c = ext6(IPPROTO_DSTOPTS, 0) + c;
      return l2(kIPv6) + ipv6(IPPROTO_DSTOPTS, c);
    };
    r = h.in(chain_of(TW_MAX_EXT_HEADERS));
    EXPECT_EQ(r.reasons(), captured(pl.size()));
    EXPECT_EQ(only(r).data, pl);
    EXPECT_EQ(h.in(chain_of(TW_MAX_EXT_HEADERS + 1)).reasons(), "ipv6_ext_limit=1");
    EXPECT_GT(TW_MAX_EXT_HEADERS, 4u) << "more than the four walked before";

    // An extension header cut short by the packet's end, and one whose
    // length runs past the IPv6 payload length.
    Bytes cut = l2(kIPv6) + ipv6(IPPROTO_HOPOPTS, {IPPROTO_TCP});
    EXPECT_EQ(h.in(cut).reasons(), "bad_ipv6_ext_header=1");
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_ROUTING, ext6(IPPROTO_TCP, 0) + tcp(pl), 8 + 10)).reasons(),
              "bad_tcp_header=1");
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_DSTOPTS, ext6(IPPROTO_TCP, 3) + Bytes(8, 0), 16)).reasons(),
              "bad_ipv6_ext_header=1");
    // Mobility, HIP, shim6 are extension headers too.
    r = h.in(l2(kIPv6) + ipv6(135, ext6(139, 0) + ext6(140, 1) + ext6(IPPROTO_UDP, 0) + udp(pl)));
    EXPECT_EQ(r.reasons(), captured(pl.size()));
  });
}

TEST(CaptureBpf, IpsecAhAndEsp) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes pl = pattern(64, 1);
    // AH is walked ((len + 2) * 4 bytes), over IPv4 and IPv6.
    auto r = h.in(l2(kIPv4) + ipv4(IPPROTO_AH, ah(IPPROTO_TCP, 4) + tcp(pl)));
    EXPECT_EQ(r.reasons(), captured(pl.size()));
    EXPECT_EQ(only(r).data, pl);
    r = h.in(l2(kIPv6) + ipv6(IPPROTO_AH, ah(IPPROTO_UDP, 7) + udp(pl)));
    EXPECT_EQ(r.reasons(), captured(pl.size()));
    EXPECT_EQ(only(r).data, pl);
    // AH cut short, too small (length 0), or longer than the packet.
    Bytes cut = l2(kIPv4) + ipv4(IPPROTO_AH, {IPPROTO_TCP});
    EXPECT_EQ(h.in(cut).reasons(), "bad_ah_header=1");
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_AH, Bytes{IPPROTO_TCP, 0, 0, 0} + tcp(pl))).reasons(), "bad_ah_header=1");
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_AH, Bytes{IPPROTO_TCP, 200, 0, 0} + Bytes(20, 0))).reasons(),
              "bad_ah_header=1");
    // ESP: encrypted, nothing to walk.
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_ESP, Bytes(64, 0x5a))).reasons(), "ipsec_esp=1");
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_HOPOPTS, ext6(IPPROTO_ESP) + Bytes(64, 0x5a))).reasons(), "ipsec_esp=1");
  });
}

TEST(CaptureBpf, IpFragments) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes part = pattern(200, 4);
    // IPv4: the first fragment (MF, offset 0) is captured and flagged.
    V4 first;
    first.frag = 0x2000;
    auto r = h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(part), first));
    EXPECT_EQ(r.reasons(), captured(part.size(), 1, "first_fragments=1"));
    EXPECT_EQ(only(r).h.flags, TW_PKT_F_FRAGMENT);
    EXPECT_EQ(only(r).data, part);
    // Later fragments have no L4 header: counted.
    V4 later;
    later.frag = 0x2000 | 26;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, part, later)).reasons(), "ip_fragment=1");
    later.frag = 52;  // the last one
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, part, later)).reasons(), "ip_fragment=1");
    // DF alone is a whole datagram.
    V4 df;
    df.frag = 0x4000;
    r = h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(part), df));
    EXPECT_EQ(r.reasons(), captured(part.size()));
    EXPECT_EQ(only(r).h.flags, 0);

    // IPv6: a fragment header with offset 0 and M set, after hop-by-hop.
    r = h.in(l2(kIPv6) + ipv6(IPPROTO_HOPOPTS, ext6(IPPROTO_FRAGMENT) + frag6(IPPROTO_TCP, 0, true) + tcp(part)));
    EXPECT_EQ(r.reasons(), captured(part.size(), 1, "first_fragments=1"));
    EXPECT_EQ(only(r).h.flags, TW_PKT_F_FRAGMENT);
    EXPECT_EQ(only(r).data, part);
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_FRAGMENT, frag6(IPPROTO_UDP, 100, true) + part)).reasons(),
              "ip_fragment=1");
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_FRAGMENT, frag6(IPPROTO_UDP, 100, false) + part)).reasons(),
              "ip_fragment=1");
    // A fragment header cut short.
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_FRAGMENT, Bytes{IPPROTO_UDP, 0, 0, 1})).reasons(),
              "bad_ipv6_ext_header=1");
  });
}

TEST(CaptureBpf, MalformedHeadersAtEveryLayer) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes pl = text("payload");
    // IPv4: cut short, wrong version, IHL < 5, total length below the
    // header, options past the packet's end.
    // BPF_PROG_TEST_RUN refuses a frame whose EtherType says IP but which is
    // shorter than that header; behind a VLAN tag it does not look, and the
    // program's own bounds checks are what is tested.
    Bytes cut4 = l2(kIPv4, {{kQ, 5}}) + ipv4(IPPROTO_TCP, {});
    cut4.resize(18 + 12);
    EXPECT_EQ(h.in(cut4).reasons(), "bad_ipv4_header=1");
    V4 o;
    o.version = 5;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pl), o)).reasons(), "bad_ipv4_header=1");
    o = {};
    o.ihl = 4;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pl), o)).reasons(), "bad_ipv4_header=1");
    o = {};
    o.tot_len = 19;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pl), o)).reasons(), "bad_ipv4_header=1");
    o = {};
    o.ihl = 15;
    Bytes opts_cut = l2(kIPv4) + ipv4(IPPROTO_UDP, {}, o);
    opts_cut.resize(14 + 40);
    EXPECT_EQ(h.in(opts_cut).reasons(), "bad_ipv4_header=1");
    // IPv6: cut short, wrong version.
    Bytes cut6 = l2(kIPv6, {{kQ, 5}}) + ipv6(IPPROTO_TCP, {});
    cut6.resize(18 + 30);
    EXPECT_EQ(h.in(cut6).reasons(), "bad_ipv6_header=1");
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_UDP, udp(pl), -1, 4)).reasons(), "bad_ipv6_header=1");
    // TCP: cut short, data offset < 5, options past the IP packet's end.
    Bytes tcp_cut = l2(kIPv4) + ipv4(IPPROTO_TCP, Bytes(10, 0));
    EXPECT_EQ(h.in(tcp_cut).reasons(), "bad_tcp_header=1");
    Tcp t;
    t.doff = 4;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pl, t))).reasons(), "bad_tcp_header=1");
    t.doff = 15;
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_TCP, tcp(Bytes(8, 0), t))).reasons(), "bad_tcp_header=1");
    // UDP: cut short (inside the IP packet's end; padding after it does not count).
    o = {};
    o.tot_len = 20 + 6;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp({}), o) + Bytes(30, 0)).reasons(), "bad_udp_header=1");
    EXPECT_EQ(h.in(l2(kIPv6) + ipv6(IPPROTO_UDP, Bytes(4, 0))).reasons(), "bad_udp_header=1");
  });
}

// -------------------------------------------------------------- filters --

TEST(CaptureBpf, FiltersSnaplenAndInterfaceSet) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes pl = pattern(500);
    auto frame = [&](uint16_t dport, bool v6 = false) {
      Tcp t;
      t.dport = dport;
      return v6 ? l2(kIPv6) + ipv6(IPPROTO_TCP, tcp(pl, t)) : l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pl, t));
    };
    CaptureFilters f;
    f.deny_ports = {22};
    h.cap().set_filters(f);
    EXPECT_EQ(h.in(frame(22)).reasons(), "filtered=1");
    EXPECT_EQ(h.in(frame(80)).reasons(), captured(pl.size()));
    f.allow_ports = {443};
    h.cap().set_filters(f);
    EXPECT_EQ(h.in(frame(80)).reasons(), "filtered=1");
    EXPECT_EQ(h.in(frame(443)).reasons(), captured(pl.size()));
    f = {};
    f.deny_cidrs = {"10.1.0.2/32", "fd00::/64"};
    h.cap().set_filters(f);
    EXPECT_EQ(h.in(frame(80)).reasons(), "filtered=1");
    EXPECT_EQ(h.in(frame(80, true)).reasons(), "filtered=1");
    f = {};
    f.allow_cidrs = {"10.0.0.0/8"};
    h.cap().set_filters(f);
    EXPECT_EQ(h.in(frame(80)).reasons(), captured(pl.size()));
    EXPECT_EQ(h.in(frame(80, true)).reasons(), "filtered=1");
    f.deny_cidrs = {"10.1.0.1"};  // deny wins over allow
    h.cap().set_filters(f);
    EXPECT_EQ(h.in(frame(80)).reasons(), "filtered=1");

    // Snap length: cut and flagged.
    f = {};
    f.snaplen = 100;
    h.cap().set_filters(f);
    auto r = h.in(frame(80));
    EXPECT_EQ(r.reasons(), captured(100, 1, "truncated=1"));
    EXPECT_EQ(only(r).h.flags, TW_PKT_F_TRUNCATED);
    EXPECT_EQ(only(r).h.payload_len, pl.size());
    EXPECT_EQ(only(r).data, Bytes(pl.begin(), pl.begin() + 100));

    // A bad rule set is refused whole: the rules in force stay.
    CaptureFilters bad;
    bad.deny_ports = {80};
    bad.deny_cidrs = {"10.1.0.0/33"};
    const uint32_t gen = h.cap().active_generation();
    EXPECT_THROW(h.cap().set_filters(bad), std::runtime_error);
    EXPECT_EQ(h.cap().active_generation(), gen);
    EXPECT_EQ(h.in(frame(80)).reasons(), captured(100, 1, "truncated=1"));
    CaptureFilters many;
    for (uint32_t p = 1; p <= TW_MAX_RULES + 1; p++) many.deny_ports.push_back(static_cast<uint16_t>(p));
    EXPECT_THROW(h.cap().set_filters(many), std::runtime_error);
    EXPECT_EQ(h.in(frame(80)).reasons(), captured(100, 1, "truncated=1"));

    // The interface set: loopback leaves it in the same step as new filters.
    std::set<uint32_t> none;
    h.cap().set_filters({}, &none);
    EXPECT_EQ(h.in(frame(80)).reasons(), "filtered=1");
    h.cap().set_interface(h.lo(), true);
    EXPECT_EQ(h.in(frame(80)).reasons(), captured(pl.size()));
    h.cap().forget_interface(h.lo());
    EXPECT_EQ(h.in(frame(80)).reasons(), "filtered=1");
  });
}

TEST(CaptureBpf, RuleGenerationsSwitchWhole) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes pl = pattern(10);
    auto frame = [&](uint16_t dport) {
      Tcp t;
      t.dport = dport;
      return l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pl, t));
    };
    // Two rule sets that differ in every part; each switch makes the whole
    // other one apply, and leaves nothing of the previous one behind.
    CaptureFilters a, b;
    a.deny_ports = {1000};
    a.allow_ports = {1000, 2000, 3000};
    a.deny_cidrs = {"192.0.2.0/24"};
    a.snaplen = 4;
    b.deny_ports = {2000};
    b.allow_ports = {1000, 2000, 3000};
    b.snaplen = 0;
    uint32_t gen = h.cap().active_generation();
    const uint64_t switches = h.cap().generation_switches();
    for (int i = 0; i < 20; i++) {
      const bool is_a = i % 2 == 0;
      h.cap().set_filters(is_a ? a : b);
      EXPECT_NE(h.cap().active_generation(), gen);
      gen = h.cap().active_generation();
      EXPECT_EQ(h.in(frame(1000)).reasons(), is_a ? "filtered=1" : captured(pl.size()));
      EXPECT_EQ(h.in(frame(2000)).reasons(), is_a ? captured(4, 1, "truncated=1") : "filtered=1");
      EXPECT_EQ(h.in(frame(3000)).reasons(), is_a ? captured(4, 1, "truncated=1") : captured(pl.size()));
      EXPECT_EQ(h.in(frame(4000)).reasons(), "filtered=1");  // not in the allowlist of either
    }
    EXPECT_EQ(h.cap().generation_switches(), switches + 20);
  });
}

TEST(CaptureBpf, PodTargets) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    const Bytes pl = pattern(20);
    const Bytes v4 = l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pl));
    const Bytes v6 = l2(kIPv6) + ipv6(IPPROTO_UDP, udp(pl));
    h.cap().set_targeting(true);
    EXPECT_TRUE(h.cap().targeting());
    EXPECT_EQ(h.in(v4).reasons(), "not_targeted=1");
    EXPECT_EQ(h.in(v6).reasons(), "not_targeted=1");
    uint8_t a4[16] = {}, a6[16] = {};
    std::memcpy(a4, kDst4, 4);  // the destination is a targeted pod
    std::memcpy(a6, kSrc6, 16);  // the source is
    h.cap().add_target(4, a4);
    h.cap().add_target(6, a6);
    EXPECT_EQ(h.in(v4).reasons(), captured(pl.size()));
    EXPECT_EQ(h.in(v6).reasons(), captured(pl.size()));
    // An IPv4 address is not the IPv6 address with the same first bytes.
    uint8_t v4_as_v6[16] = {};
    std::memcpy(v4_as_v6, kSrc4, 4);
    h.cap().remove_target(4, a4);
    h.cap().add_target(6, v4_as_v6);
    EXPECT_EQ(h.in(v4).reasons(), "not_targeted=1");
    h.cap().set_targeting(false);
    EXPECT_EQ(h.in(v4).reasons(), captured(pl.size()));
  });
}

// --------------------------------------------------------- duplicates --

TEST(CaptureBpf, DuplicatesAcrossInterfaces) {
  REQUIRE_ROOT();
  in_netns([] {
    sh("ip link add twd1 type veth peer name twd2 && ip link add twd3 type veth peer name twd4");
    const uint32_t d1 = if_nametoindex("twd1"), d2 = if_nametoindex("twd2"), d3 = if_nametoindex("twd3");
    ASSERT_TRUE(d1 && d2 && d3);
    Harness h;
    h.cap().set_interface(d1, true);
    h.cap().set_interface(d2, true);
    const Bytes pl = pattern(300);
    const Bytes f = l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pl));

    // Seen on d1, then on d2 within 1 ms: captured once.
    auto r = h.runs({{false, f, d1, 0}, {false, f, d2, 0}});
    EXPECT_EQ(r.reasons(), captured(pl.size(), 1, "duplicate=1"));
    EXPECT_EQ(only(r).h.ifindex, d1);
    // The same segment again on d1 (a retransmission): captured again.
    EXPECT_EQ(h.run(false, f, d1).reasons(), captured(pl.size()));
    // Another segment (other sequence number) on d2: not a duplicate.
    Tcp next;
    next.seq = 1300;
    EXPECT_EQ(h.run(false, l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pl, next)), d2).reasons(), captured(pl.size()));
    // Past the 1 ms window it is a new sighting.
    EXPECT_EQ(h.run(false, f, d1).reasons(), captured(pl.size()));
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    EXPECT_EQ(h.run(false, f, d2).reasons(), captured(pl.size()));

    // UDP over IPv6: datagrams that differ only in payload are not duplicates.
    const Bytes u1 = l2(kIPv6) + ipv6(IPPROTO_UDP, udp(text("abcdef")));
    const Bytes u2 = l2(kIPv6) + ipv6(IPPROTO_UDP, udp(text("zbcdef")));
    r = h.runs({{false, u1, d1, 0}, {false, u2, d2, 0}, {false, u1, d2, 0}});
    EXPECT_EQ(r.reasons(), "packets_captured=2 bytes_captured=12 records=2 duplicate=1");

    // Forwarded: leaving d2 after entering through d1, which is captured.
    Tcp fwd;
    fwd.seq = 777777;
    const Bytes g = l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pl, fwd));
    EXPECT_EQ(h.run(true, g, d2, d1).reasons(), "duplicate=1");
    // Entering through d3, which is not: this is its first sighting.
    fwd.seq = 888888;
    EXPECT_EQ(h.run(true, l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pl, fwd)), d2, d3).reasons(), captured(pl.size()));
  });
}

// --------------------------------------------------- real devices --

// A TCP receiver in a network namespace of its own (a second thread).
struct Peer {
  std::promise<pid_t> tid;
  std::promise<void> ready;
  std::promise<uint64_t> received;
  std::thread t;
};

// The capture ring (one producer per CPU, no lock): a record that would
// cross the data area's end goes to its start after a skip record; a ring
// exactly full still takes nothing more; a full ring drops the packet and
// counts it; records read back whole and in order however they wrap.
TEST(CaptureBpf, CaptureRingWrapsFillsAndDropsWithAReason) {
  REQUIRE_ROOT();
  in_netns([] {
    cpu_set_t one;  // every run on CPU 0: one ring
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
    Harness h(4096);
    ASSERT_EQ(h.cap().ring_bytes(), 4096u);
    auto frame = [](size_t n, uint8_t seed) { return l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pattern(n, seed))); };
    // Records of 8 + 80 + 1000 bytes: three take 3264 bytes; the fourth
    // would need an 832-byte skip and 1088 more: no room.
    std::vector<Bytes> f;
    for (uint8_t i = 0; i < 7; i++) f.push_back(frame(1000, i));
    auto r = h.runs({{false, f[0], 0, 0}, {false, f[1], 0, 0}, {false, f[2], 0, 0}, {false, f[3], 0, 0}});
    ASSERT_EQ(r.recs.size(), 3u);
    for (size_t i = 0; i < 3; i++) EXPECT_EQ(r.recs[i].data, pattern(1000, static_cast<uint8_t>(i)));
    EXPECT_EQ(r.delta.drop[TW_DROP_RINGBUF_FULL], 1u);
    // Consumed: the next three wrap (skip, then from the start) and fill the
    // ring exactly (3264 + 832 + 3 x 1088 = 4096 past the consumer).
    r = h.runs({{false, f[4], 0, 0}, {false, f[5], 0, 0}, {false, f[6], 0, 0}, {false, f[0], 0, 0}});
    ASSERT_EQ(r.recs.size(), 3u);
    for (size_t i = 0; i < 3; i++) EXPECT_EQ(r.recs[i].data, pattern(1000, static_cast<uint8_t>(4 + i)));
    EXPECT_EQ(r.delta.drop[TW_DROP_RINGBUF_FULL], 1u) << "exactly full takes nothing more";
    // Many laps with sizes from 0 to 1000 bytes, read back batch by batch.
    std::mt19937 rng(7);
    size_t laps_bytes = 0, drops = 0;
    for (int batch = 0; batch < 200; batch++) {
      std::vector<Bytes> frames;
      std::vector<Bytes> payloads;
      const int k = std::uniform_int_distribution<int>(1, 2)(rng);
      for (int i = 0; i < k; i++) {
        const size_t n = std::uniform_int_distribution<size_t>(0, 1000)(rng);
        payloads.push_back(pattern(n, static_cast<uint8_t>(batch + i)));
        Tcp t;
        if (n == 0) t.flags = TW_TCP_FIN | TW_TCP_ACK;  // a payload-less ACK is not stored
        frames.push_back(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(payloads.back(), t)));
        laps_bytes += 88 + n;
      }
      std::vector<Harness::Run> runs;
      for (auto& fr : frames) runs.push_back({false, fr, 0, 0});
      r = h.runs(runs);
      drops += r.delta.drop[TW_DROP_RINGBUF_FULL];
      ASSERT_EQ(r.recs.size() + r.delta.drop[TW_DROP_RINGBUF_FULL], payloads.size());
      for (size_t i = 0; i < r.recs.size(); i++) EXPECT_EQ(r.recs[i].data, payloads[i]) << "batch " << batch;
    }
    EXPECT_GT(laps_bytes, 20u * 4096) << "the ring went round many times";
    EXPECT_EQ(drops, 0u) << "two records of at most 1088 bytes and a skip always fit an empty 4 KiB ring";
    for (auto& rd : h.rings()) EXPECT_EQ(rd.corrupt_bytes(), 0u);
  });
}

// A broken ring (a record longer than the ring, or past what was published)
// is given up and counted, never read out of bounds.
TEST(CaptureRing, BrokenHeaderIsSkippedAndCounted) {
  std::vector<uint8_t> mem(TW_CRING_HDR + 4096 + TW_CRING_SLACK, 0);
  auto* h = reinterpret_cast<tw_cring_hdr*>(mem.data());
  uint8_t* data = mem.data() + TW_CRING_HDR;
  tw_cring_rec rec{};
  rec.len = 16;
  std::memcpy(data, &rec, sizeof rec);  // a good record of 16 bytes
  rec.len = 100000;
  std::memcpy(data + 24, &rec, sizeof rec);  // then one longer than the ring
  h->prod = 24 + 8 + 64;
  CaptureRingReader rd(mem.data(), 4096);
  auto first = rd.peek();
  EXPECT_EQ(first.size(), 16u);
  rd.advance();
  EXPECT_TRUE(rd.peek().empty());
  EXPECT_EQ(rd.corrupt_bytes(), 72u);
  rd.release();
  EXPECT_EQ(h->cons, h->prod) << "the broken rest is given back";
  // A skip record that claims more than the data area holds.
  rec.len = TW_CRING_SKIP | 8192;
  std::memcpy(data + 96, &rec, sizeof rec);
  h->prod = 96 + 4096;
  EXPECT_TRUE(rd.peek().empty());
  EXPECT_EQ(rd.corrupt_bytes(), 72u + 4096u);
}

// Packets over 256 KiB: IPv6 BIG TCP super-packets leave a veth whose
// gso_max_size allows 512 KiB. The first 256 KiB are captured in 16
// records of 16 KiB, all flagged truncated, the rest is cut.
TEST(CaptureBpf, PayloadsOver256KiBAreCutAndFlagged) {
  REQUIRE_ROOT();
  in_netns([] {
    Peer peer;
    std::atomic<bool> stop{false};
    peer.t = std::thread([&] {
      try {
        if (unshare(CLONE_NEWNET) != 0) throw std::runtime_error("unshare");
        peer.tid.set_value(static_cast<pid_t>(syscall(SYS_gettid)));
        for (int i = 0; i < 200 && !if_nametoindex("twb"); i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        sh("ip link set lo up && ip link set twb mtu 9000 gso_max_size 524280 gro_max_size 524280 up && "
           "ip addr add fd99::2/64 dev twb nodad");
        int s = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        timeval tv{30, 0};  // bounded: accept and recv give up if the test side failed
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_port = htons(5001);
        inet_pton(AF_INET6, "fd99::2", &a.sin6_addr);
        if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(s, 1) != 0)
          throw std::runtime_error(std::string("peer listen: ") + strerror(errno));
        peer.ready.set_value();
        int c = accept(s, nullptr, nullptr);
        if (c >= 0) setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        std::vector<char> buf(1 << 20);
        uint64_t n = 0;
        for (ssize_t k; c >= 0 && (k = recv(c, buf.data(), buf.size(), 0)) > 0;) n += static_cast<uint64_t>(k);
        if (c >= 0) close(c);
        close(s);
        peer.received.set_value(n);
      } catch (...) {
        for (auto* p : {&peer.ready}) try {
            p->set_exception(std::current_exception());
          } catch (...) {
          }
        try {
          peer.tid.set_exception(std::current_exception());
        } catch (...) {
        }
      }
    });
    struct Join {
      Peer& p;
      ~Join() { p.t.join(); }
    } join{peer};
    const pid_t tid = peer.tid.get_future().get();
    sh("ip link add twa mtu 9000 type veth peer name twb netns " + std::to_string(tid));
    sh("ip link set twa gso_max_size 524280 gro_max_size 524280 up && ip addr add fd99::1/64 dev twa nodad");
    peer.ready.get_future().get();
    const uint32_t twa = if_nametoindex("twa");

    Harness h(32u << 20);
    h.cap().set_interface(twa, true);
    const auto dir = std::filesystem::temp_directory_path() / ("tw-bigtcp-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    struct Rm {
      std::filesystem::path p;
      ~Rm() { std::filesystem::remove_all(p); }
    } rm{dir};
    tapwire::sensor::TcAttacher tc(h.cap().ingress_prog_fd(), h.cap().egress_prog_fd(), (dir / "tc-state.json").string());
    tc.attach(twa, "twa");

    // The sender: the stream's byte at offset k is k % 251.
    std::thread sender([&] {
      int s = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in6 a{};
      a.sin6_family = AF_INET6;
      a.sin6_port = htons(5001);
      inet_pton(AF_INET6, "fd99::2", &a.sin6_addr);
      if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
        Bytes block(251 * 4096);
        for (size_t i = 0; i < block.size(); i++) block[i] = static_cast<uint8_t>(i % 251);
        for (uint64_t sent = 0; sent < (512ull << 20) && !stop;) {
          ssize_t n = send(s, block.data(), block.size(), 0);
          if (n <= 0) break;
          sent += static_cast<uint64_t>(n);
        }
      }
      close(s);
    });

    uint32_t isn = 0;
    bool have_isn = false;
    int big = 0, multi = 0, bad_bytes = 0;
    std::vector<std::string> problems;
    // Per ring, the records of the packet being read: a packet's records are
    // consecutive in one ring, and may still be arriving.
    std::vector<std::vector<tw_pkt>> cur(h.rings().size());
    auto finish = [&](std::vector<tw_pkt>& c) {
      if (c.empty()) return;
      const tw_pkt& p0 = c[0];
      uint64_t total = 0;
      bool shape = true;
      for (size_t i = 0; i < c.size(); i++) {
        const tw_pkt& p = c[i];
        shape &= p.chunk_off == i * TW_CHUNK_MAX && p.payload_len == p0.payload_len && p.seq == p0.seq;
        shape &= ((p.flags & TW_PKT_F_CONTINUATION) != 0) == (i > 0);
        shape &= ((p.flags & TW_PKT_F_MORE) != 0) == (i + 1 < c.size());
        total += p.cap_len;
      }
      const bool whole = !(c.back().flags & TW_PKT_F_MORE);  // else the ring was full mid-packet (counted)
      if (whole && p0.payload_len > TW_MAX_CHUNKS * TW_CHUNK_MAX) {
        big++;
        if (!shape || c.size() != TW_MAX_CHUNKS || total != TW_MAX_CHUNKS * TW_CHUNK_MAX)
          problems.push_back("packet of " + std::to_string(p0.payload_len) + " bytes: " + std::to_string(c.size()) +
                             " records, " + std::to_string(total) + " bytes, shape ok " + std::to_string(shape));
        for (auto& p : c)
          if (!(p.flags & TW_PKT_F_TRUNCATED)) problems.push_back("a record of a cut packet is not flagged truncated");
      } else if (whole && c.size() > 1) {
        multi++;
        if (!shape || total != p0.payload_len || (p0.flags & TW_PKT_F_TRUNCATED))
          problems.push_back("packet of " + std::to_string(p0.payload_len) + " bytes in " + std::to_string(c.size()) +
                             " records: " + std::to_string(total) + " bytes, shape ok " + std::to_string(shape));
      }
      c.clear();
    };
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline && big < 3) {
      for (size_t ri = 0; ri < h.rings().size(); ri++) {
        auto& rd = h.rings()[ri];
        for (auto rec = rd.peek(); !rec.empty(); rec = rd.peek()) {
          tw_pkt p;
          std::memcpy(&p, rec.data(), sizeof p);
          if (p.direction == TW_DIR_EGRESS && p.dport == 5001) {
            if (p.tcp_flags & TW_TCP_SYN) {
              isn = p.seq;
              have_isn = true;
            } else if (have_isn && p.cap_len) {
              // Every byte is the stream's byte at that offset.
              const uint64_t off = static_cast<uint32_t>(p.seq - isn - 1) + static_cast<uint64_t>(p.chunk_off);
              const uint8_t* d = rec.data() + sizeof(tw_pkt);
              for (uint32_t i = 0; i < p.cap_len; i += 997)
                if (d[i] != static_cast<uint8_t>((off + i) % 251)) bad_bytes++;
              if (!(p.flags & TW_PKT_F_CONTINUATION)) finish(cur[ri]);
              cur[ri].push_back(p);
              if (!(p.flags & TW_PKT_F_MORE)) finish(cur[ri]);
            }
          }
          rd.advance();
        }
        rd.release();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    stop = true;
    sender.join();
    tc.detach_all();
    auto r = h.collect();
    EXPECT_TRUE(have_isn) << "the SYN was not captured";
    EXPECT_GE(big, 1) << "no packet over 256 KiB left twa in 60 s (BIG TCP: gso_max_size 524280)";
    EXPECT_GT(multi, 0) << "no packet between 16 and 256 KiB";
    EXPECT_EQ(bad_bytes, 0) << "captured bytes differ from the stream's";
    EXPECT_TRUE(problems.empty()) << problems.size() << " problems, first: " << (problems.empty() ? "" : problems[0]);
    std::printf("over 256 KiB: %d packets cut into %u records; %d packets of 16-256 KiB in several records\n", big,
                TW_MAX_CHUNKS, multi);
  });
}

// A device without an L2 header (tun): packets start at the IP header and
// skb->protocol says which IP.
TEST(CaptureBpf, DeviceWithoutL2Header) {
  REQUIRE_ROOT();
  in_netns([] {
    int tun = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    ASSERT_GE(tun, 0) << "/dev/net/tun: " << strerror(errno);
    struct Close {
      int fd;
      ~Close() { close(fd); }
    } closer{tun};
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "twtun0", IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    ASSERT_EQ(ioctl(tun, TUNSETIFF, &ifr), 0) << strerror(errno);
    sh("ip link set twtun0 up && ip addr add 10.1.0.2/24 dev twtun0 && ip addr add fd00::2/64 dev twtun0 nodad");
    const uint32_t idx = if_nametoindex("twtun0");
    tapwire::sensor::Interface info;
    ASSERT_TRUE(tapwire::sensor::describe_interface(idx, info));
    EXPECT_FALSE(info.has_l2) << "a tun device has no L2 header";

    Harness h;
    h.cap().set_interface(idx, info.has_l2);
    const auto dir = std::filesystem::temp_directory_path() / ("tw-tun-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    struct Rm {
      std::filesystem::path p;
      ~Rm() { std::filesystem::remove_all(p); }
    } rm{dir};
    tapwire::sensor::TcAttacher tc(h.cap().ingress_prog_fd(), h.cap().egress_prog_fd(), (dir / "tc-state.json").string());
    tc.attach(idx, "twtun0");
    const Bytes q = pattern(77, 2), body = pattern(900, 5);
    const Bytes v4 = ipv4(IPPROTO_UDP, udp(q)), v6 = ipv6(IPPROTO_TCP, tcp(body));
    ASSERT_EQ(write(tun, v4.data(), v4.size()), static_cast<ssize_t>(v4.size()));
    ASSERT_EQ(write(tun, v6.data(), v6.size()), static_cast<ssize_t>(v6.size()));
    Result r;  // what arrives on the tun (its replies, an RST, leave through egress)
    for (int i = 0; i < 200 && r.recs.size() < 2; i++) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      auto more = h.collect();
      for (auto& x : more.recs)
        if (x.h.direction == TW_DIR_INGRESS) r.recs.push_back(x);
      for (uint32_t d = 0; d < TW_DROP__MAX; d++) r.delta.drop[d] += more.delta.drop[d];
    }
    tc.detach_all();
    ASSERT_EQ(r.recs.size(), 2u);
    for (uint32_t d = 0; d < TW_DROP__MAX; d++) EXPECT_EQ(r.delta.drop[d], 0u) << tapwire::abi::kDropReasonNames[d];
    const auto& u = r.recs[0].h.ip_version == 4 ? r.recs[0] : r.recs[1];
    const auto& t = r.recs[0].h.ip_version == 4 ? r.recs[1] : r.recs[0];
    EXPECT_EQ(u.h.ifindex, idx);
    EXPECT_EQ(u.h.direction, TW_DIR_INGRESS);
    EXPECT_EQ(u.h.l4_proto, IPPROTO_UDP);
    EXPECT_TRUE(same_addr(u.h.saddr, kSrc4, 4));
    EXPECT_EQ(u.data, q);
    EXPECT_EQ(t.h.ip_version, 6);
    EXPECT_EQ(t.h.l4_proto, IPPROTO_TCP);
    EXPECT_EQ(t.h.seq, 1000u);
    EXPECT_EQ(t.data, body);
  });
}

}  // namespace

// ------------------------------------------------------------------ flows --

// The same frame the other way: IPv4 addresses and TCP/UDP ports swapped.
Tcp seg(uint8_t flags, uint32_t seq = 1000, uint32_t ack = 2000, uint16_t sport = 40000) {
  Tcp t;
  t.flags = flags;
  t.seq = seq;
  t.ack = ack;
  t.sport = sport;
  return t;
}

Bytes reversed_v4(Bytes f) {
  for (int i = 0; i < 4; i++) std::swap(f[14 + 12 + i], f[14 + 16 + i]);
  for (int i = 0; i < 2; i++) std::swap(f[34 + i], f[34 + 2 + i]);
  return f;
}

TEST(CaptureBpf, FlowTcpHandshakeDataAcksFin) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    // Client 10.1.0.1:40000 (side a: the smaller address), server 10.1.0.2:80.
    auto c2s = [](uint8_t flags, uint32_t seq, uint32_t ack, const Bytes& pl = {}) {
      Tcp t;
      t.flags = flags, t.seq = seq, t.ack = ack;
      return l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pl, t));
    };
    auto s2c = [&](uint8_t flags, uint32_t seq, uint32_t ack, const Bytes& pl = {}) {
      return reversed_v4(c2s(flags, seq, ack, pl));
    };
    const Bytes req = text("GET / HTTP/1.1\r\n\r\n"), resp = pattern(100);
    const uint8_t A = TW_TCP_ACK, PA = TW_TCP_ACK | TW_TCP_PSH;
    std::vector<std::pair<Bytes, bool>> pkts = {  // frame, from the client
        {c2s(TW_TCP_SYN, 1000, 0), true},
        {s2c(TW_TCP_SYN | A, 5000, 1001), false},
        {c2s(A, 1001, 5001), true},  // pure ACK: counted, not stored
        {c2s(PA, 1001, 5001, req), true},
        {s2c(A, 5001, 1001 + req.size()), false},  // pure ACK
        {s2c(PA, 5001, 1001 + req.size(), resp), false},
        {c2s(A, 1001 + req.size(), 5101), true},  // pure ACK
        {c2s(TW_TCP_FIN | A, 1001 + req.size(), 5101), true},
        {s2c(TW_TCP_FIN | A, 5101, 1002 + req.size()), false},
        {c2s(A, 1002 + req.size(), 5102), true},  // pure ACK
    };
    uint64_t bytes[2] = {0, 0}, packets[2] = {0, 0}, acks = 0, stored = 0;
    for (auto& [f, client] : pkts) {
      auto r = h.in(f);
      const bool pure = f.size() == 14 + 20 + 20 && !(f[14 + 20 + 13] & (TW_TCP_SYN | TW_TCP_FIN | TW_TCP_RST));
      if (pure) {
        EXPECT_EQ(r.reasons(), "empty_ack=1");
        EXPECT_TRUE(r.recs.empty());
        acks++;
      } else {
        EXPECT_EQ(r.recs.size(), 1u) << r.reasons();
        stored++;
      }
      bytes[client ? 0 : 1] += f.size();
      packets[client ? 0 : 1]++;
    }
    EXPECT_EQ(acks, 4u);
    EXPECT_EQ(stored, 6u);
    auto t = flows(h.cap());
    ASSERT_EQ(t.size(), 1u);
    const tw_flow_key* k = reinterpret_cast<const tw_flow_key*>(t.begin()->first.data());
    const tw_flow_state& st = t.begin()->second.st;
    EXPECT_EQ(k->ip_version, 4);
    EXPECT_EQ(k->l4_proto, IPPROTO_TCP);
    EXPECT_TRUE(same_addr(k->addr_a, kSrc4, 4) && same_addr(k->addr_b, kDst4, 4));
    EXPECT_EQ(k->port_a, 40000);
    EXPECT_EQ(k->port_b, 80);
    EXPECT_EQ(st.bits & TW_FLOW_B_CLIENT_B, 0) << "the client (SYN sender) is side a";
    EXPECT_TRUE(st.bits & TW_FLOW_B_ESTABLISHED);
    EXPECT_EQ(st.completeness, TW_COMPLETE_SYN | TW_COMPLETE_SYNACK | TW_COMPLETE_ACK | TW_COMPLETE_DATA | TW_COMPLETE_FIN);
    EXPECT_EQ(st.dir[0].packets, packets[0]);
    EXPECT_EQ(st.dir[1].packets, packets[1]);
    EXPECT_EQ(st.dir[0].bytes, bytes[0]) << "frame bytes, as skb->len at the hook";
    EXPECT_EQ(st.dir[1].bytes, bytes[1]);
    EXPECT_EQ(st.dir[0].payload_bytes, req.size());
    EXPECT_EQ(st.dir[1].payload_bytes, resp.size());
    EXPECT_EQ(st.dir[0].fins, 1u);
    EXPECT_EQ(st.dir[1].fins, 1u);
    EXPECT_EQ(tw_flow_retransmissions(&st.dir[0]) + tw_flow_retransmissions(&st.dir[1]), 0u);
    EXPECT_EQ(st.ifindex, h.lo());
    EXPECT_GT(st.first_rtt_ns, 0u);
    EXPECT_GE(st.last_ns, st.first_ns);
    EXPECT_EQ(h.collect().delta.stat[TW_STAT_FLOWS_CREATED], 0u);

    // UDP: one flow, both directions; ICMP is not accounted.
    auto r = h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pattern(10), 40001, 53)));
    EXPECT_EQ(r.delta.stat[TW_STAT_FLOWS_CREATED], 1u);
    r = h.in(reversed_v4(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pattern(30), 40001, 53))));
    EXPECT_EQ(r.delta.stat[TW_STAT_FLOWS_CREATED], 0u);
    r = h.in(l2(kIPv4) + ipv4(IPPROTO_ICMP, Bytes{8, 0, 0, 0, 0, 1, 0, 1}));
    EXPECT_EQ(r.delta.stat[TW_STAT_FLOWS_CREATED], 0u);
    t = flows(h.cap());
    ASSERT_EQ(t.size(), 2u);
    for (auto& [kb, v] : t) {
      auto* uk = reinterpret_cast<const tw_flow_key*>(kb.data());
      if (uk->l4_proto != IPPROTO_UDP) continue;
      EXPECT_EQ(v.st.dir[0].packets, 1u);
      EXPECT_EQ(v.st.dir[1].packets, 1u);
      EXPECT_EQ(v.st.dir[0].payload_bytes, 10u);
      EXPECT_EQ(v.st.dir[1].payload_bytes, 30u);
      EXPECT_EQ(v.st.bits & TW_FLOW_B_CLIENT_B, 0) << "the sender of the first datagram, from a port >= 1024";
    }
  });
}

TEST(CaptureBpf, FlowsCountOnlyWhatPassesTheFilters) {
  REQUIRE_ROOT();
  in_netns([] {
    sh("ip link add twd1 type veth peer name twd2");
    const uint32_t d1 = if_nametoindex("twd1"), d2 = if_nametoindex("twd2");
    Harness h;
    h.cap().set_interface(d1, true);
    h.cap().set_interface(d2, true);
    CaptureFilters f;
    f.deny_ports = {22};
    h.cap().set_filters(f);
    Tcp ssh;
    ssh.dport = 22;
    ssh.flags = TW_TCP_ACK;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, ssh))).reasons(), "filtered=1")
        << "a pure ACK meets the filters now";
    ssh.flags = TW_TCP_ACK | TW_TCP_PSH;
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pattern(20), ssh))).reasons(), "filtered=1");
    EXPECT_TRUE(flows(h.cap()).empty());
    // Pod targeting: no targeted address, nothing accounted.
    h.cap().set_targeting(true);
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}))).reasons(), "not_targeted=1");
    EXPECT_TRUE(flows(h.cap()).empty());
    h.cap().set_targeting(false);
    // Seen on two interfaces (a pure ACK too): counted once.
    const Bytes ack = l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, seg(TW_TCP_ACK)));
    auto r = h.runs({{false, ack, d1, 0}, {false, ack, d2, 0}});
    EXPECT_EQ(r.reasons(), "empty_ack=1 duplicate=1");
    auto t = flows(h.cap());
    ASSERT_EQ(t.size(), 1u);
    EXPECT_EQ(t.begin()->second.st.dir[0].packets, 1u);
    EXPECT_EQ(t.begin()->second.st.bits & TW_FLOW_B_MID_STREAM, TW_FLOW_B_MID_STREAM);
  });
}

TEST(CaptureBpf, FlowAccountingOff) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h(1u << 20, {.max_flows = 1024, .tcp = false, .udp = false});
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}))).reasons(), "empty_ack=1");
    auto r = h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pattern(10))));
    EXPECT_EQ(r.reasons(), captured(10));
    EXPECT_EQ(h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pattern(10)))).reasons(), captured(10));
    EXPECT_TRUE(flows(h.cap()).empty());
    EXPECT_EQ(h.collect().delta.stat[TW_STAT_FLOWS_CREATED], 0u);
    // UDP on, TCP still off.
    h.cap().set_flow_protocols(false, true);
    h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pattern(10))));
    r = h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pattern(10))));
    EXPECT_EQ(r.delta.stat[TW_STAT_FLOWS_CREATED], 1u);
    auto t = flows(h.cap());
    ASSERT_EQ(t.size(), 1u);
    EXPECT_EQ(reinterpret_cast<const tw_flow_key*>(t.begin()->first.data())->l4_proto, IPPROTO_UDP);
  });
}

TEST(CaptureBpf, FlowTableFullLeavesPacketsUntrackedButCaptured) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h(1u << 20, {.max_flows = 2});
    auto frame = [](uint16_t sport) {
      return l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pattern(10), seg(TW_TCP_ACK | TW_TCP_PSH, 1000, 2000, sport)));
    };
    EXPECT_EQ(h.in(frame(1)).delta.stat[TW_STAT_FLOWS_CREATED], 1u);
    EXPECT_EQ(h.in(frame(2)).delta.stat[TW_STAT_FLOWS_CREATED], 1u);
    EXPECT_EQ(h.in(frame(3)).reasons(), captured(10, 1, "flow_untracked=1"));
    EXPECT_EQ(h.in(frame(1)).reasons(), captured(10)) << "known flows are still counted";
    EXPECT_EQ(flows(h.cap()).size(), 2u);
  });
}

TEST(CaptureBpf, FlowReusedByANewSyn) {
  REQUIRE_ROOT();
  in_netns([] {
    Harness h;
    BpfRingReader ends(h.cap().flow_ends_fd(), TW_FLOW_ENDS_RING_BYTES);
    auto syn = [](uint32_t isn) {
      return l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, seg(TW_TCP_SYN, isn, 0)));
    };
    h.in(syn(1000));
    h.in(reversed_v4(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, seg(TW_TCP_SYN | TW_TCP_ACK, 9000, 1001)))));
    h.in(syn(1000));  // a retransmitted SYN: the same flow
    EXPECT_TRUE(ends.peek().empty());
    auto r = h.in(syn(777777));  // a new ISN: the old flow ends
    EXPECT_EQ(r.delta.stat[TW_STAT_FLOWS_CREATED], 1u);
    EXPECT_EQ(r.recs.size(), 1u);
    auto rec = ends.peek();
    ASSERT_EQ(rec.size(), sizeof(tw_flow_end_rec));
    tw_flow_end_rec e{};
    std::memcpy(&e, rec.data(), sizeof e);
    ends.advance();
    ends.release();
    EXPECT_TRUE(ends.peek().empty());
    EXPECT_EQ(e.key.port_a, 40000);
    EXPECT_EQ(e.st.dir[0].packets, 2u);
    EXPECT_EQ(e.st.dir[1].packets, 1u);
    EXPECT_EQ(e.st.dir[0].base_seq, 1000u);
    auto t = flows(h.cap());
    ASSERT_EQ(t.size(), 1u);
    const tw_flow_state& st = t.begin()->second.st;
    EXPECT_EQ(st.dir[0].packets, 1u);
    EXPECT_EQ(st.dir[1].packets, 0u);
    EXPECT_EQ(st.dir[0].base_seq, 777777u);
    EXPECT_EQ(st.completeness, TW_COMPLETE_SYN);
    EXPECT_GE(st.first_ns, e.st.last_ns);
  });
}

// ------------------------------------------------------- flow harvester --

std::vector<tw_seg_flow> flow_records(const std::string& dir) {
  std::vector<tw_seg_flow> out;
  for (auto& si : tapwire::shm::list_segments(dir)) {
    auto r = tapwire::shm::SegmentReader::open(si.path);
    while (auto rec = r.next()) {
      if (rec->type != TW_REC_FLOW) continue;
      tw_seg_flow f{};
      EXPECT_GE(rec->body.size(), sizeof f);
      std::memcpy(&f, rec->body.data(), std::min(sizeof f, rec->body.size()));
      out.push_back(f);
    }
  }
  return out;
}

TEST(CaptureBpf, FlowHarvesterRecordsEndsAndEvicts) {
  REQUIRE_ROOT();
  in_netns([] {
    tapwire::test_util::TempDir tmp("flows");
    Harness h(1u << 20, {.max_flows = 1024});
    tapwire::sensor::FlowHarvesterOptions o;
    o.dir = tmp.path() + "/flows";
    o.storage_size = 4u << 20;
    o.segment_size = 1u << 20;
    tapwire::sensor::FlowHarvester fh(o, h.cap().flows_fd(), h.cap().flow_ends_fd(), h.cap().max_flows());
    const uint64_t s = 1000000000ull;
    auto c2s = [](uint8_t flags, uint32_t seq, uint32_t ack) { return l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, seg(flags, seq, ack))); };
    h.in(c2s(TW_TCP_SYN, 100, 0));
    h.in(reversed_v4(c2s(TW_TCP_SYN | TW_TCP_ACK, 900, 101)));
    h.in(c2s(TW_TCP_ACK, 101, 901));
    h.in(c2s(TW_TCP_FIN | TW_TCP_ACK, 101, 901));
    h.in(reversed_v4(c2s(TW_TCP_FIN | TW_TCP_ACK, 901, 102)));
    h.in(c2s(TW_TCP_ACK, 102, 902));
    h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pattern(10), 40001, 53)));
    const uint64_t now = tapwire::mono_ns(), m2r = tapwire::clock_ns(CLOCK_REALTIME) - now;
    fh.harvest(now, m2r);  // both new: a record each; the closed one lingers 2 s
    auto recs = flow_records(o.dir);
    ASSERT_EQ(recs.size(), 2u);
    for (auto& r : recs) EXPECT_EQ(r.end, TW_FLOW_END_NONE);
    EXPECT_EQ(fh.stats().active[0], 1u);
    EXPECT_EQ(fh.stats().active[1], 1u);
    fh.harvest(now + 3 * s, m2r);  // the TCP flow ends (fin); the UDP one did not change: no record
    recs = flow_records(o.dir);
    ASSERT_EQ(recs.size(), 3u);
    EXPECT_EQ(recs[2].end, TW_FLOW_END_FIN);
    EXPECT_EQ(recs[2].key.l4_proto, IPPROTO_TCP);
    const auto& first_tcp = recs[0].key.l4_proto == IPPROTO_TCP ? recs[0] : recs[1];
    EXPECT_EQ(recs[2].flow_id, first_tcp.flow_id);
    EXPECT_EQ(recs[2].st.first_ns, first_tcp.st.first_ns);
    EXPECT_EQ(recs[2].flow_id, tw_flow_id(&recs[2].key, recs[2].st.first_ns));
    EXPECT_EQ(recs[2].st.dir[0].packets + recs[2].st.dir[1].packets, 6u) << "pure ACKs counted";
    EXPECT_EQ(recs[2].st.harvest, 1);
    EXPECT_NEAR(static_cast<double>(recs[2].st.first_ns), static_cast<double>(tapwire::clock_ns(CLOCK_REALTIME)),
                60e9) << "CLOCK_REALTIME in the stream";
    EXPECT_EQ(flows(h.cap()).size(), 1u) << "deleted from the kernel's table";
    fh.harvest(now + 61 * s, m2r);  // UDP idle for udpTimeout
    recs = flow_records(o.dir);
    ASSERT_EQ(recs.size(), 4u);
    EXPECT_EQ(recs[3].end, TW_FLOW_END_TIMEOUT);
    EXPECT_TRUE(flows(h.cap()).empty());
    EXPECT_EQ(fh.stats().created[0], 1u);
    EXPECT_EQ(fh.stats().created[1], 1u);

    // A reused 4-tuple: the old flow's final record from tw_flow_ends.
    h.in(c2s(TW_TCP_SYN, 5000, 0));
    h.in(c2s(TW_TCP_SYN, 7000, 0));
    fh.harvest(tapwire::mono_ns(), m2r);
    recs = flow_records(o.dir);
    ASSERT_EQ(recs.size(), 6u);
    EXPECT_EQ(recs[4].end, TW_FLOW_END_REUSED);
    EXPECT_EQ(recs[4].st.dir[0].base_seq, 5000u);
    EXPECT_EQ(recs[5].end, TW_FLOW_END_NONE);
    EXPECT_EQ(recs[5].st.dir[0].base_seq, 7000u);
    EXPECT_NE(recs[4].flow_id, recs[5].flow_id);
    // An unanswered SYN ends after synTimeout.
    fh.harvest(tapwire::mono_ns() + 31 * s, m2r);
    recs = flow_records(o.dir);
    ASSERT_EQ(recs.size(), 7u);
    EXPECT_EQ(recs[6].end, TW_FLOW_END_TIMEOUT);

    // Metrics: by workload pair, the client as src; unknown names are "".
    tw_counters k{};
    auto j = fh.status(k, true);
    ASSERT_TRUE(j.contains("pair_series"));
    uint64_t conns = 0;
    for (auto& p : j["pair_series"]) conns += p["connections"].get<uint64_t>();
    EXPECT_EQ(conns, 4u);

    // The sensor stops: live flows get end = stopped.
    h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pattern(10), 40002, 53)));
    fh.stop(tapwire::mono_ns(), m2r);
    recs = flow_records(o.dir);
    ASSERT_EQ(recs.size(), 8u);
    EXPECT_EQ(recs[7].end, TW_FLOW_END_STOPPED);
  });
}

TEST(CaptureBpf, FlowHarvesterEvictsWhenNearlyFull) {
  REQUIRE_ROOT();
  in_netns([] {
    tapwire::test_util::TempDir tmp("flows");
    Harness h(1u << 20, {.max_flows = 20});
    tapwire::sensor::FlowHarvesterOptions o;
    o.dir = tmp.path() + "/flows";
    o.storage_size = 4u << 20;
    o.segment_size = 1u << 20;
    tapwire::sensor::FlowHarvester fh(o, h.cap().flows_fd(), h.cap().flow_ends_fd(), h.cap().max_flows());
    // 10 established flows (both ways), then 9 one-sided SYNs: 19 > 90% of 20.
    for (uint16_t p = 1; p <= 10; p++) {
      h.in(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pattern(4), static_cast<uint16_t>(2000 + p), 53)));
      h.in(reversed_v4(l2(kIPv4) + ipv4(IPPROTO_UDP, udp(pattern(4), static_cast<uint16_t>(2000 + p), 53))));
    }
    for (uint16_t p = 1; p <= 9; p++)
      h.in(l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, seg(TW_TCP_SYN, 1, 0, static_cast<uint16_t>(3000 + p)))));
    EXPECT_EQ(flows(h.cap()).size(), 19u);
    const uint64_t now = tapwire::mono_ns();
    fh.harvest(now, tapwire::clock_ns(CLOCK_REALTIME) - now);
    auto t = flows(h.cap());
    EXPECT_EQ(t.size(), 15u) << "down to 75%";
    size_t udp_left = 0;
    for (auto& [kb, v] : t) udp_left += reinterpret_cast<const tw_flow_key*>(kb.data())->l4_proto == IPPROTO_UDP;
    EXPECT_EQ(udp_left, 10u) << "the flows that never completed a handshake go first";
    EXPECT_EQ(fh.stats().evicted_table_full, 4u);
    size_t evicted = 0;
    for (auto& r : flow_records(o.dir)) evicted += r.end == TW_FLOW_END_EVICTED;
    EXPECT_EQ(evicted, 4u);
  });
}

// What accounting costs per packet (BPF_PROG_TEST_RUN's average over many
// runs): printed, with a loose bound only (machines differ).
TEST(CaptureBpf, FlowAccountingCostPerPacket) {
  REQUIRE_ROOT();
  in_netns([] {
    auto avg_ns = [](BpfCapture& cap, const Bytes& frame, uint32_t repeat) {
      __sk_buff ctx{};
      bpf_test_run_opts o{};
      o.sz = sizeof o;
      o.data_in = frame.data();
      o.data_size_in = static_cast<uint32_t>(frame.size());
      o.ctx_in = &ctx;
      o.ctx_size_in = sizeof ctx;
      o.repeat = repeat;
      EXPECT_EQ(bpf_prog_test_run_opts(cap.ingress_prog_fd(), &o), 0);
      return o.duration;
    };
    const Bytes ack = l2(kIPv4) + ipv4(IPPROTO_TCP, tcp({}, seg(TW_TCP_ACK)));
    const Bytes data = l2(kIPv4) + ipv4(IPPROTO_TCP, tcp(pattern(100), seg(TW_TCP_ACK | TW_TCP_PSH)));
    Harness on(1u << 20), off(1u << 20, {.max_flows = 1024, .tcp = false, .udp = false});
    const uint32_t n = 2000;
    avg_ns(on.cap(), data, 100);  // warm up: the flow exists
    const uint32_t ack_on = avg_ns(on.cap(), ack, n), ack_off = avg_ns(off.cap(), ack, n);
    const uint32_t data_on = avg_ns(on.cap(), data, n), data_off = avg_ns(off.cap(), data, n);
    std::printf("per packet: pure ACK %u ns with flows, %u ns without; 100-byte segment %u ns with, %u ns without\n",
                ack_on, ack_off, data_on, data_off);
    EXPECT_LT(ack_on, 20000u);
    EXPECT_LT(data_on, 20000u);
  });
}
