// ICMP and ICMPv6 through the whole engine: echo requests paired with their
// replies (and with the errors that answer them), errors recorded on the
// connection they are about, hostile and truncated messages.
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstring>
#include <random>
#include <vector>

#include "dissector.hpp"

using namespace tapwire::dissect;

namespace {

constexpr uint64_t kT0 = 1'700'000'000'000'000'000ull;

struct Host {
  uint8_t v = 4;
  uint8_t a[16] = {};
};
Host v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  Host h;
  h.a[0] = a, h.a[1] = b, h.a[2] = c, h.a[3] = d;
  return h;
}
Host v6(uint8_t last) {
  Host h;
  h.v = 6;
  h.a[0] = 0xfd;
  h.a[15] = last;
  return h;
}

const Host kClient = v4(10, 0, 0, 2), kServer = v4(10, 0, 0, 1), kRouter = v4(10, 0, 0, 254),
           kFar = v4(192, 0, 2, 7);

std::vector<uint8_t> echo(bool v6msg, bool request, uint16_t id, uint16_t seq, size_t data = 56) {
  std::vector<uint8_t> m(8 + data, 0xab);
  m[0] = v6msg ? (request ? 128 : 129) : (request ? 8 : 0);
  m[1] = 0;
  m[2] = m[3] = 0;  // checksum: not checked
  m[4] = id >> 8, m[5] = id & 0xff, m[6] = seq >> 8, m[7] = seq & 0xff;
  return m;
}

// An IPv4 header of a packet from src to dst of protocol l4, then `l4hdr`.
std::vector<uint8_t> ipv4(const Host& src, const Host& dst, uint8_t l4, const std::vector<uint8_t>& l4hdr) {
  std::vector<uint8_t> p(20, 0);
  p[0] = 0x45;
  p[8] = 64;
  p[9] = l4;
  std::memcpy(&p[12], src.a, 4);
  std::memcpy(&p[16], dst.a, 4);
  p.insert(p.end(), l4hdr.begin(), l4hdr.end());
  return p;
}

std::vector<uint8_t> error4(uint8_t type, uint8_t code, const std::vector<uint8_t>& original) {
  std::vector<uint8_t> m = {type, code, 0, 0, 0, 0, 0, 0};
  m.insert(m.end(), original.begin(), original.end());
  return m;
}

std::vector<uint8_t> udp_header(uint16_t sport, uint16_t dport) {
  return {static_cast<uint8_t>(sport >> 8), static_cast<uint8_t>(sport), static_cast<uint8_t>(dport >> 8),
          static_cast<uint8_t>(dport), 0, 20, 0, 0};
}

struct IcmpRun {
  std::vector<Call> calls;
  Dissector d;
  explicit IcmpRun(DissectorOptions o = {}) : d(std::move(o), [this](Call&& c) { calls.push_back(std::move(c)); }) {}
  void icmp(const Host& src, const Host& dst, const std::vector<uint8_t>& msg, uint64_t ts, uint16_t flags = 0) {
    Packet p;
    p.meta.ip_version = src.v;
    p.meta.l4_proto = static_cast<uint8_t>(src.v == 6 ? int{IPPROTO_ICMPV6} : int{IPPROTO_ICMP});
    std::memcpy(p.meta.saddr, src.a, 16);
    std::memcpy(p.meta.daddr, dst.a, 16);
    p.meta.ts_ns = ts;
    p.meta.flags = flags;
    p.meta.payload_len = p.meta.cap_len = static_cast<uint32_t>(msg.size());
    p.payload = std::span<const uint8_t>(msg.data(), msg.size());
    d.packet(p);
  }
};

}  // namespace

TEST(Icmp, EchoRequestPairedWithItsReply) {
  IcmpRun r;
  r.icmp(kClient, kServer, echo(false, true, 77, 1), kT0);
  r.icmp(kClient, kServer, echo(false, true, 77, 2), kT0 + 1'000'000'000);
  r.icmp(kServer, kClient, echo(false, false, 77, 2), kT0 + 1'000'250'000);
  r.icmp(kServer, kClient, echo(false, false, 77, 1), kT0 + 1'000'400'000);  // out of order
  r.d.finish();
  ASSERT_EQ(r.calls.size(), 2u);
  auto j = to_json(r.calls[0]);
  EXPECT_EQ(j["protocol"], "icmp");
  EXPECT_EQ(r.calls[0].method, "echo");
  EXPECT_EQ(r.calls[0].path, "10.0.0.1");
  EXPECT_EQ(r.calls[0].status, 0);
  EXPECT_EQ(j["src"]["ip"], "10.0.0.2");
  EXPECT_EQ(j["dst"]["ip"], "10.0.0.1");
  EXPECT_EQ(j["request"]["type"], 8);
  EXPECT_EQ(j["request"]["type_name"], "echo-request");
  EXPECT_EQ(j["request"]["seq"], 2);
  EXPECT_EQ(j["request"]["id"], 77);
  EXPECT_EQ(j["request"]["size"], 56);
  EXPECT_EQ(j["response"]["type_name"], "echo-reply");
  EXPECT_EQ(j["duration_us"], 250);
  auto k = to_json(r.calls[1]);
  EXPECT_EQ(k["request"]["seq"], 1);
  EXPECT_EQ(k["duration_us"], 1'000'400);
  EXPECT_EQ(r.d.metrics().calls.at("icmp"), 2u);
  EXPECT_EQ(r.d.metrics().icmp_messages, 4u);
}

TEST(Icmp, Icmpv6EchoUnansweredTimesOutAndNeighbourDiscoveryIsOnlyCounted) {
  IcmpRun r;
  r.icmp(v6(2), v6(1), echo(true, true, 5, 9), kT0);
  std::vector<uint8_t> ns = {135, 0, 0, 0, 0, 0, 0, 0};
  ns.resize(24, 0);
  r.icmp(v6(2), v6(1), ns, kT0 + 1000);
  r.icmp(v6(2), v6(1), echo(true, true, 5, 10), kT0 + 20'000'000'000ull);
  r.icmp(v6(1), v6(2), echo(true, false, 5, 10), kT0 + 20'000'100'000ull);
  r.d.advance_time(kT0 + 40'000'000'000ull);
  r.d.finish();
  ASSERT_EQ(r.calls.size(), 2u);
  auto j = to_json(r.calls[0]);
  EXPECT_EQ(j["request"]["version"], "ICMPv6");
  EXPECT_EQ(j["request"]["seq"], 9);
  EXPECT_FALSE(j.contains("response") && !j["response"].is_null());
  EXPECT_EQ(r.calls[0].status, -1);
  EXPECT_NE(std::find(j["flags"].begin(), j["flags"].end(), "timeout"), j["flags"].end()) << j.dump();
  EXPECT_EQ(to_json(r.calls[1])["response"]["type_name"], "echo-reply");
  const auto& types = r.d.metrics().breakdowns.at("icmp_types");
  EXPECT_EQ(types.at("neighbor-solicitation"), 1u);
  EXPECT_EQ(types.at("echo-request"), 2u);
}

TEST(Icmp, PortUnreachableIsRecordedOnTheDatagramItIsAbout) {
  IcmpRun r;
  r.icmp(kServer, kClient, error4(3, 3, ipv4(kClient, kServer, IPPROTO_UDP, udp_header(40001, 9999))), kT0);
  r.d.finish();
  ASSERT_EQ(r.calls.size(), 1u);
  const Call& c = r.calls[0];
  EXPECT_EQ(c.l4_proto, IPPROTO_UDP);
  auto j = to_json(c);
  EXPECT_EQ(c.method, "destination-unreachable");
  EXPECT_EQ(c.path, "port-unreachable");
  EXPECT_EQ(c.status, 303);
  EXPECT_EQ(j["src"]["ip"], "10.0.0.2");
  EXPECT_EQ(j["src"]["port"], 40001);
  EXPECT_EQ(j["dst"]["ip"], "10.0.0.1");
  EXPECT_EQ(j["dst"]["port"], 9999);
  EXPECT_EQ(j["response"]["reporter"], "10.0.0.1");
  EXPECT_EQ(j["response"]["original"]["protocol"], "udp");
  EXPECT_EQ(j["response"]["original"]["dst_port"], 9999);
  EXPECT_TRUE(j["flags"].empty()) << j.dump();
}

TEST(Icmp, AnErrorAboutAPingAnswersIt) {
  IcmpRun r;
  const auto req = echo(false, true, 3, 1, 16);
  r.icmp(kClient, kFar, req, kT0);
  // A router says the TTL ran out; it quotes the IP header and the first 8
  // bytes of the echo request.
  std::vector<uint8_t> quoted(req.begin(), req.begin() + 8);
  r.icmp(kRouter, kClient, error4(11, 0, ipv4(kClient, kFar, IPPROTO_ICMP, quoted)), kT0 + 3'000'000);
  r.d.finish();
  ASSERT_EQ(r.calls.size(), 1u);
  auto j = to_json(r.calls[0]);
  EXPECT_EQ(r.calls[0].method, "echo");
  EXPECT_EQ(r.calls[0].path, "ttl-exceeded");
  EXPECT_EQ(r.calls[0].status, 1100);
  EXPECT_EQ(j["dst"]["ip"], "192.0.2.7");
  EXPECT_EQ(j["response"]["type_name"], "time-exceeded");
  EXPECT_EQ(j["response"]["reporter"], "10.0.0.254");
  EXPECT_EQ(j["response"]["original"]["id"], 3);
  EXPECT_EQ(j["duration_us"], 3000);
}

TEST(Icmp, FragmentationNeededGivesTheMtu) {
  IcmpRun r;
  auto m = error4(3, 4, ipv4(kClient, kServer, IPPROTO_TCP, udp_header(40002, 443)));
  m[6] = 0x05, m[7] = 0xdc;  // next-hop MTU 1500
  r.icmp(kRouter, kClient, m, kT0);
  r.d.finish();
  ASSERT_EQ(r.calls.size(), 1u);
  auto j = to_json(r.calls[0]);
  EXPECT_EQ(r.calls[0].l4_proto, IPPROTO_TCP);
  EXPECT_EQ(r.calls[0].path, "fragmentation-needed");
  EXPECT_EQ(j["response"]["mtu"], 1500);
  EXPECT_EQ(j["dst"]["port"], 443);
}

TEST(Icmp, OffWhenItsDissectorIsOffAndNeverSeenByDns) {
  DissectorOptions o;
  o.dissectors = {"dns"};
  IcmpRun r(o);
  // An ICMP message whose bytes would pass for a DNS query.
  const uint8_t q[] = {0x08, 0x00, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 1, 0, 1};
  r.icmp(kClient, kServer, std::vector<uint8_t>(std::begin(q), std::end(q)), kT0);
  r.d.finish();
  EXPECT_TRUE(r.calls.empty());
  EXPECT_EQ(r.d.metrics().calls.at("dns"), 0u);
}

TEST(Icmp, HostileAndTruncatedMessagesAreBoundedAndLaterOnesStillDissected) {
  IcmpRun r;
  std::mt19937 rng(11);
  uint64_t ts = kT0;
  // Truncated: shorter than any header; errors quoting nothing or garbage.
  for (size_t n = 0; n < 8; n++) r.icmp(kClient, kServer, std::vector<uint8_t>(n, 8), ts++);
  r.icmp(kServer, kClient, error4(3, 3, {0x45, 0}), ts++);
  r.icmp(kServer, kClient, error4(3, 3, std::vector<uint8_t>(20, 0xff)), ts++);
  r.icmp(kServer, kClient, error4(12, 0, std::vector<uint8_t>(3, 0x45)), ts++);
  // Random messages of every type, both versions.
  for (int i = 0; i < 3000; i++) {
    std::vector<uint8_t> m(rng() % 80);
    for (auto& b : m) b = static_cast<uint8_t>(rng());
    if (!m.empty() && i % 3 == 0) m[0] = static_cast<uint8_t>(i % 2 ? 3 : 11);
    r.icmp(i % 2 ? kClient : kServer, i % 2 ? kServer : kClient, m, ts++);
    r.icmp(i % 2 ? v6(2) : v6(1), i % 2 ? v6(1) : v6(2), m, ts++);
  }
  // A flood of unanswered pings: the pending ones stay within their cap.
  for (uint32_t i = 0; i < 30000; i++)
    r.icmp(kClient, kServer, echo(false, true, static_cast<uint16_t>(i >> 16), static_cast<uint16_t>(i), 8), ts++);
  EXPECT_LE(r.d.metrics().dns_pending, 0u);  // echo requests are not DNS queries
  EXPECT_LT(r.d.metrics().memory_bytes, 16u << 20);
  // A chunk of a large message that is not its start is not a message.
  r.icmp(kClient, kServer, echo(false, true, 9, 9), ts++, TW_PKT_F_CONTINUATION);
  // Still dissected after all of that.
  r.icmp(kClient, kServer, echo(false, true, 4242, 1), ts);
  r.icmp(kServer, kClient, echo(false, false, 4242, 1), ts + 500'000);
  r.d.finish();
  bool found = false;
  for (const Call& c : r.calls) {
    ASSERT_TRUE(c.has_request() || c.has_response());
    auto j = to_json(c);
    if (j.contains("request") && j["request"].is_object() && j["request"].value("id", -1) == 4242) {
      found = true;
      EXPECT_EQ(j["duration_us"], 500);
    }
  }
  EXPECT_TRUE(found);
  EXPECT_GT(r.d.metrics().parse_errors.at("icmp"), 0u);
}
