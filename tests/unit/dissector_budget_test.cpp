// The dissector's memory limit (DissectorOptions::memory_limit): the
// estimate it sheds by follows the real heap (glibc's own count, mallinfo2,
// within a factor of 1.5 either way, for each kind of state an attacker can
// pile up; RSS is printed too, but freed memory reused across cases makes
// its deltas too noisy to check),
// state is shed in the documented order with the affected calls flagged,
// and hostile traffic stays within the limit while real calls go on.
#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "config.hpp"
#include "dissector.hpp"

using namespace tapwire::dissect;


// AddressSanitizer (g++ says so with __SANITIZE_ADDRESS__, clang with __has_feature).
#if defined(__SANITIZE_ADDRESS__)
#define TW_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TW_TEST_ASAN 1
#endif
#endif
#ifndef TW_TEST_ASAN
#define TW_TEST_ASAN 0
#endif
namespace {

constexpr uint64_t kT0 = 1'795'000'000'000'000'000ull;
constexpr uint32_t kCseq = 1000, kSseq = 50000;

// Drives a dissector with many connections from 10.1.0.0/16 to 10.0.0.1:80
// (and DNS from 10.2.0.0/16 to 10.0.0.53), each numbered; the payload only
// needs to live for the call (the engine copies what it keeps).
struct Net {
  Dissector& d;
  uint64_t ts = kT0;
  explicit Net(Dissector& dd) : d(dd) {}

  static void client_addr(uint32_t n, uint8_t net, uint8_t* a) {
    a[0] = 10;
    a[1] = net;
    a[2] = static_cast<uint8_t>(n >> 8);
    a[3] = static_cast<uint8_t>(n);
  }
  static uint16_t client_port(uint32_t n) { return static_cast<uint16_t>(20000 + (n >> 16)); }

  void tcp(uint32_t n, bool from_client, uint8_t flags, std::string_view payload, uint32_t seq) {
    Packet p;
    p.meta.ts_ns = ts += 1000;
    p.meta.ip_version = 4;
    p.meta.l4_proto = 6;
    uint8_t c[4], s[4] = {10, 0, 0, 1};
    client_addr(n, 1, c);
    std::memcpy(p.meta.saddr, from_client ? c : s, 4);
    std::memcpy(p.meta.daddr, from_client ? s : c, 4);
    p.meta.sport = from_client ? client_port(n) : 80;
    p.meta.dport = from_client ? 80 : client_port(n);
    p.meta.seq = seq;
    p.meta.ack = 0;
    p.meta.window = 65535;
    p.meta.tcp_flags = flags;
    p.meta.tcp_wscale = TW_WSCALE_NONE;
    p.meta.payload_len = p.meta.cap_len = static_cast<uint32_t>(payload.size());
    p.payload = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
    d.packet(p);
  }
  void handshake(uint32_t n) {
    tcp(n, true, TW_TCP_SYN, "", kCseq - 1);
    tcp(n, false, TW_TCP_SYN | TW_TCP_ACK, "", kSseq - 1);
  }
  // Sends `data` from offset `at` of that side's stream, in segments of 1448.
  void stream(uint32_t n, bool from_client, std::string_view data, uint32_t at) {
    for (size_t off = 0; off < data.size(); off += 1448)
      tcp(n, from_client, TW_TCP_ACK | TW_TCP_PSH, data.substr(off, 1448),
          (from_client ? kCseq : kSseq) + at + static_cast<uint32_t>(off));
  }
  void dns_query(uint32_t n) {
    // A query for q.test A, id n.
    uint8_t q[] = {0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'q', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
    q[0] = static_cast<uint8_t>(n >> 8);
    q[1] = static_cast<uint8_t>(n);
    Packet p;
    p.meta.ts_ns = ts += 1000;
    p.meta.ip_version = 4;
    p.meta.l4_proto = 17;
    uint8_t c[4], s[4] = {10, 0, 0, 53};
    client_addr(n, 2, c);
    std::memcpy(p.meta.saddr, c, 4);
    std::memcpy(p.meta.daddr, s, 4);
    p.meta.sport = client_port(n);
    p.meta.dport = 53;
    p.meta.payload_len = p.meta.cap_len = sizeof q;
    p.payload = std::span<const uint8_t>(q, sizeof q);
    d.packet(p);
  }
};

const std::string kOk = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

// What an attacker piles up, one kind per function (flows numbered from `first`).
void out_of_order(Net& net, uint32_t first, uint32_t flows, uint32_t segments, size_t size = 1) {
  const std::string piece(size, 'o');
  for (uint32_t n = first; n < first + flows; n++) {
    net.handshake(n);
    net.stream(n, true, "GET /ooo HTTP/1.1\r\n", 0);
    for (uint32_t k = 0; k < segments; k++)  // every other piece: none adjacent, none ever filled
      net.tcp(n, true, TW_TCP_ACK, piece, kCseq + 19 + static_cast<uint32_t>(size) * (2 * k + 1));
  }
}

void endless_headers(Net& net, uint32_t first, uint32_t flows, size_t bytes) {
  for (uint32_t n = first; n < first + flows; n++) {
    net.handshake(n);
    std::string head = "GET /hdr/" + std::to_string(n) + " HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    head.resize(bytes, 'a');
    net.stream(n, true, head, 0);
  }
}

// Pipelined POSTs with bodies, never answered: kept bodies waiting for their response.
void waiting_bodies(Net& net, uint32_t first, uint32_t flows, uint32_t requests, size_t body) {
  for (uint32_t n = first; n < first + flows; n++) {
    net.handshake(n);
    std::string all;
    for (uint32_t r = 0; r < requests; r++)
      all += "POST /body/" + std::to_string(n) + " HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body) +
             "\r\n\r\n" + std::string(body, 'b');
    net.stream(n, true, all, 0);
  }
}

void answered(Net& net, uint32_t first, uint32_t flows) {
  const std::string get = "GET /fine HTTP/1.1\r\nHost: x\r\n\r\n";
  for (uint32_t n = first; n < first + flows; n++) {
    net.handshake(n);
    net.stream(n, true, get, 0);
    net.stream(n, false, kOk, 0);
  }
}

void dns_queries(Net& net, uint32_t first, uint32_t count) {
  for (uint32_t n = first; n < first + count; n++) net.dns_query(n);
}

size_t heap_in_use() {
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;  // small chunks in use, and mmap'd large ones
}

size_t rss_bytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(f);
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace

TEST(DissectorMemory, EstimateFollowsTheHeap) {
  // Each kind of state in bulk, no limit: the engine's count against what
  // malloc says is in use (the unit tests run on glibc malloc).
#if TW_TEST_ASAN
  GTEST_SKIP() << "AddressSanitizer's allocator replaces malloc: mallinfo2 does not see the heap";
#endif
  struct Case {
    const char* name;
    std::function<void(Net&)> make;
  };
  const Case cases[] = {
      {"one-byte out-of-order segments", [](Net& n) { out_of_order(n, 0, 4000, 64); }},
      {"1 KB out-of-order segments", [](Net& n) { out_of_order(n, 0, 200, 200, 1000); }},
      {"endless header blocks", [](Net& n) { endless_headers(n, 0, 400, 40000); }},
      {"requests waiting with kept bodies", [](Net& n) { waiting_bodies(n, 0, 200, 16, 4096); }},
      {"DNS queries waiting", [](Net& n) { dns_queries(n, 0, 30000); }},
      {"idle connections", [](Net& n) { answered(n, 0, 20000); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    DissectorOptions opts;
    opts.memory_limit = 0;
    uint64_t calls = 0;
    const size_t heap0 = heap_in_use(), rss0 = rss_bytes();
    {
      Dissector d(opts, [&](Call&&) { calls++; });
      Net net(d);
      c.make(net);
      const size_t heap = heap_in_use() - heap0;
      const long long rss = static_cast<long long>(rss_bytes()) - static_cast<long long>(rss0);
      const size_t est = d.metrics().memory_bytes;
      std::printf("%-36s estimate %9zu  heap %9zu (x%.2f)  rss %+10lld\n", c.name, est, heap,
                  static_cast<double>(est) / static_cast<double>(heap), rss);
      EXPECT_GT(heap, 1u << 20) << "the case should allocate a lot";
      EXPECT_GE(est * 3, heap * 2) << "under two thirds of the heap";
      EXPECT_LE(est * 2, heap * 3) << "over one and a half times the heap";
      EXPECT_GE(d.metrics().memory_peak_bytes, est);
      d.finish();
      EXPECT_LT(d.metrics().memory_bytes, 1u << 20) << "what is left after finish() is the tables' bucket arrays";
    }
    EXPECT_EQ(calls > 0, std::string(c.name) != "one-byte out-of-order segments" &&
                             std::string(c.name) != "1 KB out-of-order segments");
  }
}

TEST(DissectorMemory, ShedsInOrderAndFlagsWhatItShed) {
  // The same state as in the shedding order, oldest first: out-of-order
  // data, kept bodies, header blocks, DNS queries; then connections that keep
  // coming (each small, answered) push the total over the limit again and
  // again. Each kind of state must start going only once the kinds before it
  // are gone, and whole connections last.
  auto setup = [](Net& net) {
    out_of_order(net, 0, 2, 128, 1000);
    waiting_bodies(net, 10, 3, 1, 65536);
    endless_headers(net, 20, 3, 60000);
    dns_queries(net, 0, 600);
  };
  size_t base = 0;
  {
    DissectorOptions opts;
    opts.memory_limit = 0;
    Dissector d(opts, [](Call&&) {});
    Net net(d);
    setup(net);
    base = d.metrics().memory_bytes;
  }
  DissectorOptions opts;
  opts.memory_limit = base + base / 16;
  std::vector<Call> calls;
  Dissector d(opts, [&](Call&& c) { calls.push_back(std::move(c)); });
  Net net(d);
  setup(net);
  const DissectorMetrics& m = d.metrics();
  for (size_t i = 0; i < kShedReasons; i++) EXPECT_EQ(m.shed[i], 0u) << "nothing shed before the limit";
  std::array<long, kShedReasons> first;
  first.fill(-1);
  long step = 0;
  for (uint32_t n = 1000; n < 60000 && m.shed[static_cast<size_t>(ShedReason::Flow)] == 0; n++, step++) {
    answered(net, n, 1);
    ASSERT_LE(m.memory_bytes, opts.memory_limit);
    for (size_t i = 0; i < kShedReasons; i++)
      if (first[i] < 0 && m.shed[i] > 0) first[i] = step;
  }
  for (size_t i = 0; i < kShedReasons; i++) {
    std::printf("%-12s first shed after %5ld connections, %4llu times, %8llu bytes\n",
                shed_reason_name(static_cast<ShedReason>(i)), first[i], (unsigned long long)m.shed[i],
                (unsigned long long)m.shed_bytes[i]);
    ASSERT_GE(first[i], 0) << shed_reason_name(static_cast<ShedReason>(i)) << " was never shed";
    if (i > 0) {
      EXPECT_LT(first[i - 1], first[i]) << shed_reason_name(static_cast<ShedReason>(i)) << " came too early";
    }
  }
  EXPECT_LE(m.memory_peak_bytes, opts.memory_limit + (64u << 10)) << "over by more than one packet's worth";
  // The connections closed to make room are those idle longest: the first ones.
  d.finish();
  auto flagged = [](const Call& c) { return (c.flags & kFlagMemoryShed) != 0; };
  size_t bodies = 0, headers = 0, dns = 0;
  for (const Call& c : calls) {
    if (c.http_request() && c.http_request()->target.rfind("/body/", 0) == 0) {
      bodies++;
      EXPECT_TRUE(flagged(c));
      EXPECT_TRUE(c.flags & kFlagBodyTruncated);
      EXPECT_TRUE(c.http_request()->body.empty());
      EXPECT_EQ(c.http_request()->body_size, 65536u);
    }
    if (c.http_request() && c.http_request()->target.rfind("/hdr/", 0) == 0) {
      headers++;
      EXPECT_TRUE(flagged(c));
      EXPECT_TRUE(c.flags & kFlagIncomplete);
    }
    if (c.dns_query()) {
      dns++;
      EXPECT_TRUE(flagged(c)) << "every waiting query was shed before the first connection";
      EXPECT_FALSE(c.dns_response());
    }
    if (c.http_request() && c.http_request()->target == "/fine") {
      EXPECT_TRUE(c.has_response());
      EXPECT_FALSE(flagged(c)) << "answered calls lose nothing";
    }
  }
  EXPECT_EQ(bodies, 3u);
  EXPECT_EQ(headers, 3u);
  EXPECT_EQ(dns, 600u);
}

TEST(DissectorMemory, HostileTrafficStaysWithinTheLimitAndCallsGoOn) {
  // Out-of-order segments and endless headers on thousands of connections,
  // then ordinary calls. With a 4 MiB limit the engine never holds more (a
  // packet's worth aside) and the calls after the attack are all paired and
  // unflagged; without a limit the same attack holds many times that.
  auto attack = [](Net& net) {
    for (uint32_t round = 0; round < 6; round++) {
      out_of_order(net, round * 1000, 500, 64);
      endless_headers(net, 10000 + round * 100, 50, 40000);
    }
  };
  {
    DissectorOptions opts;
    opts.memory_limit = 0;
    Dissector d(opts, [](Call&&) {});
    Net net(d);
    attack(net);
    EXPECT_GT(d.metrics().memory_peak_bytes, 16u << 20) << "the attack must need more than the limit below";
    for (size_t i = 0; i < kShedReasons; i++) EXPECT_EQ(d.metrics().shed[i], 0u) << "no limit, no shedding";
  }
  DissectorOptions opts;
  opts.memory_limit = 4u << 20;
  std::vector<Call> calls;
  Dissector d(opts, [&](Call&& c) { calls.push_back(std::move(c)); });
  Net net(d);
  attack(net);
  EXPECT_LE(d.metrics().memory_peak_bytes, opts.memory_limit + (64u << 10));
  EXPECT_GT(d.metrics().shed[static_cast<size_t>(ShedReason::OutOfOrder)], 0u);
  EXPECT_GT(d.metrics().shed[static_cast<size_t>(ShedReason::Buffer)], 0u);
  const size_t before = calls.size();
  answered(net, 50000, 200);
  EXPECT_LE(d.metrics().memory_peak_bytes, opts.memory_limit + (64u << 10));
  d.finish();
  size_t fine = 0;
  for (size_t i = before; i < calls.size(); i++) {
    const Call& c = calls[i];
    if (!c.http_request() || c.http_request()->target != "/fine") continue;
    fine++;
    EXPECT_TRUE(c.has_response());
    EXPECT_EQ(c.flags, 0u) << flag_names(c.flags).front();
  }
  EXPECT_EQ(fine, 200u);
}

// ---------------------------------------------------------- configuration ---

TEST(DissectorMemory, ConfigKeyTakesSizesAndZero) {
  using tapwire::config::ConfigError;
  using tapwire::config::load_config_text;
  auto limit = [](const std::string& v) {
    return load_config_text("tap:\n  dissection:\n    memoryLimit: " + v + "\n", "t").dissection.memory_limit;
  };
  EXPECT_EQ(tapwire::config::TapwireConfig{}.dissection.memory_limit, DissectorOptions{}.memory_limit)
      << "the key's default is the dissector's";
  EXPECT_EQ(limit("1Gi"), 1ull << 30);
  EXPECT_EQ(limit("64Mi"), 64ull << 20);
  EXPECT_EQ(limit("0"), 0u);
  EXPECT_THROW(limit("4096"), ConfigError);  // a missing unit, surely
  EXPECT_THROW(limit("-1Gi"), ConfigError);
  EXPECT_THROW(limit("lots"), ConfigError);
}

TEST(DissectorMemory, ParserCountsWhatEachMessageOwns) {
  // HttpMessage::heap is kept up to date while the parser builds a message
  // (a field at a time, folded lines, body bytes kept, trailers): it must
  // equal a recount, however the bytes arrive.
  using namespace tapwire::proto;
  std::string many;
  for (int i = 0; i < 40; i++) many += "X-Field-Name-Longer-Than-Sso-" + std::to_string(i) + ": value " + std::string(i * 7, 'v') + "\r\n";
  const std::string req = "POST /a/rather/long/request/target/that/does/not/fit HTTP/1.1\r\nHost: example\r\n" + many +
                          "X-Folded: one\r\n two three four five six seven\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "1000\r\n" + std::string(4096, 'b') + "\r\n0\r\nX-Trailer-Long-Name: trailer value here\r\n\r\n";
  const std::string resp = "HTTP/1.1 404 A Reason Phrase Longer Than Fifteen\r\nContent-Length: 70000\r\n\r\n" +
                           std::string(70000, 'r');
  for (const auto& [side, text] : {std::pair{Http1Parser::Side::Requests, req}, std::pair{Http1Parser::Side::Responses, resp}}) {
    for (size_t step : {size_t(1), size_t(7), size_t(1448), text.size()}) {
      SCOPED_TRACE(step);
      Http1Parser p(side);
      std::vector<HttpMessage> out;
      std::string pending;
      for (size_t off = 0; off < text.size(); off += step) {
        pending += text.substr(off, step);
        const ParseResult r = p.feed(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(pending.data()),
                                                              pending.size()),
                                     off, out);
        pending.erase(0, r.consumed);
      }
      ASSERT_EQ(out.size(), 1u);
      EXPECT_GT(out[0].heap, 4096u);
      EXPECT_EQ(out[0].heap, message_heap_bytes(out[0]));
      EXPECT_EQ(p.memory_bytes(), 0u) << "the message left with what it owns: nothing in progress";
    }
  }
  // A message cut short carries its count too.
  Http1Parser p(Http1Parser::Side::Requests);
  std::vector<HttpMessage> out;
  const std::string cut = "GET /cut HTTP/1.1\r\nHost: x\r\n" + many.substr(0, 2000);
  const auto span = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(cut.data()), cut.size());
  p.feed(span, 1, out);
  EXPECT_GT(p.memory_bytes(), 0u);
  p.on_close(2, out, span);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].incomplete);
  EXPECT_EQ(out[0].heap, message_heap_bytes(out[0]));
}
