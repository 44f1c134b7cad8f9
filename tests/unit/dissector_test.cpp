// The dissection engine end to end on synthetic packets: pairing, pipelining,
// orphans, gaps, timeouts, DNS, and the live-resume contract.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "dissector.hpp"

using namespace tapwire::dissect;

namespace {

constexpr uint64_t kT0 = 1'795'000'000'000'000'000ull;

struct Conn {
  uint32_t cseq = 1000, sseq = 50000;
  uint16_t cport = 40000, sport = 80;
  uint8_t caddr[4] = {10, 9, 0, 2}, saddr[4] = {10, 9, 0, 1};
};

Packet pkt(const Conn& c, bool from_client, uint8_t flags, const std::string& payload, uint64_t ts, uint32_t seq) {
  Packet p;
  p.meta.ts_ns = ts;
  p.meta.ip_version = 4;
  p.meta.l4_proto = 6;
  std::memcpy(p.meta.saddr, from_client ? c.caddr : c.saddr, 4);
  std::memcpy(p.meta.daddr, from_client ? c.saddr : c.caddr, 4);
  p.meta.sport = from_client ? c.cport : c.sport;
  p.meta.dport = from_client ? c.sport : c.cport;
  p.meta.seq = seq;
  p.meta.tcp_flags = flags;
  p.meta.payload_len = p.meta.cap_len = static_cast<uint32_t>(payload.size());
  p.payload = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  return p;
}

// Feeds a TCP conversation: each entry is (from_client, bytes); seq numbers
// advance on their own. Payload strings must outlive the call.
struct Conversation {
  Conn c;
  uint32_t cnext, snext;
  uint64_t ts = kT0;
  Dissector& d;
  std::vector<std::string> keep;
  Conversation(Dissector& dd, uint16_t cport = 40000) : d(dd) {
    c.cport = cport;
    cnext = c.cseq + 1;
    snext = c.sseq + 1;
  }
  void handshake() {
    d.packet(pkt(c, true, TW_TCP_SYN, "", ts += 1000, c.cseq));
    d.packet(pkt(c, false, TW_TCP_SYN | TW_TCP_ACK, "", ts += 1000, c.sseq));
  }
  void send(bool client, const std::string& s, uint64_t dt = 1000) {
    keep.push_back(s);
    uint32_t& next = client ? cnext : snext;
    d.packet(pkt(c, client, TW_TCP_ACK | TW_TCP_PSH, keep.back(), ts += dt, next));
    next += static_cast<uint32_t>(s.size());
  }
  void skip(bool client, size_t n) { (client ? cnext : snext) += static_cast<uint32_t>(n); }
  void fin() {
    d.packet(pkt(c, true, TW_TCP_FIN | TW_TCP_ACK, "", ts += 1000, cnext));
    d.packet(pkt(c, false, TW_TCP_FIN | TW_TCP_ACK, "", ts += 1000, snext));
  }
};

const std::string kGet = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
const std::string kOk = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const std::string kNotFound = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

}  // namespace

TEST(Dissector, PairsRequestWithResponseAndTimesIt) {
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Conversation cv(d);
  cv.handshake();
  cv.send(true, kGet);
  cv.send(false, kOk, 412000);
  cv.fin();
  d.finish();
  ASSERT_EQ(calls.size(), 1u);
  const Call& c = calls[0];
  EXPECT_STREQ(c.protocol, "http");
  EXPECT_EQ(c.http_request()->method, "GET");
  EXPECT_EQ(c.http_request()->target, "/a");
  EXPECT_EQ(c.http_response()->status, 200);
  EXPECT_EQ(c.duration_us(), 412);
  EXPECT_EQ(c.src.ip(), "10.9.0.2");
  EXPECT_EQ(c.src.port, 40000);
  EXPECT_EQ(c.dst.ip(), "10.9.0.1");
  EXPECT_EQ(c.flags, 0u);
  auto j = to_json(c);
  EXPECT_EQ(j["response"]["body_size"], 2);
  EXPECT_EQ(j["request"]["headers"]["host"], "x");
}

TEST(Dissector, PipelinedRequestsPairInOrder) {
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Conversation cv(d);
  cv.handshake();
  cv.send(true, kGet + "GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
  cv.send(false, kOk + kNotFound);
  cv.fin();
  d.finish();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].http_request()->target, "/a");
  EXPECT_EQ(calls[0].http_response()->status, 200);
  EXPECT_EQ(calls[1].http_request()->target, "/b");
  EXPECT_EQ(calls[1].http_response()->status, 404);
}

TEST(Dissector, DetectsHttpOnAnyPortWithoutHandshake) {
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Conversation cv(d);
  cv.c.sport = 31337;  // not a port anyone would guess
  cv.send(true, kGet);  // mid-stream start: no SYN seen
  cv.send(false, kOk);
  d.finish();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].dst.port, 31337);
  EXPECT_EQ(calls[0].http_response()->status, 200);
}

TEST(Dissector, RequestWithoutResponseIsReportedWithNullResponse) {
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Conversation cv(d);
  cv.handshake();
  cv.send(true, kGet);
  cv.fin();
  d.finish();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_FALSE(calls[0].has_response());
  EXPECT_TRUE(to_json(calls[0])["response"].is_null());
  EXPECT_EQ(to_json(calls[0])["duration_us"], nullptr);
}

TEST(Dissector, ResponseWithoutRequestIsFlaggedOrphan) {
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Conversation cv(d);
  cv.handshake();
  cv.send(false, kOk);
  cv.fin();
  d.finish();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_FALSE(calls[0].has_request());
  EXPECT_TRUE(calls[0].flags & kFlagOrphanResponse);
}

TEST(Dissector, MissingBytesFlagTheCallAndParsingResumes) {
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Conversation cv(d);
  cv.handshake();
  cv.send(true, kGet);
  // The first response's body is lost in capture.
  const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
  cv.send(false, head);
  cv.skip(false, 1000);
  cv.send(true, "GET /c HTTP/1.1\r\nHost: x\r\n\r\n", 3'000'000'000ull);  // past the hole wait
  cv.send(false, kNotFound, 3'000'000'000ull);
  cv.fin();
  d.finish();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_TRUE(calls[0].flags & kFlagGap) << "the call whose body went missing";
  EXPECT_EQ(calls[1].http_request()->target, "/c");
  EXPECT_EQ(calls[1].http_response()->status, 404);
  EXPECT_EQ(d.metrics().reassembly_gaps, 1u);
}

TEST(Dissector, DnsOverUdpPairsByTransactionId) {
  // A query for a.test A (id 0x1234) and its NXDOMAIN answer.
  const uint8_t q[] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
  uint8_t r[sizeof q];
  std::memcpy(r, q, sizeof q);
  r[2] = 0x81;
  r[3] = 0x83;  // QR, RD, RA, rcode 3
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Packet p;
  p.meta.ip_version = 4;
  p.meta.l4_proto = 17;
  uint8_t a[4] = {10, 9, 0, 2}, b[4] = {10, 9, 0, 1};
  std::memcpy(p.meta.saddr, a, 4);
  std::memcpy(p.meta.daddr, b, 4);
  p.meta.sport = 5353;
  p.meta.dport = 53;
  p.meta.ts_ns = kT0;
  p.meta.payload_len = p.meta.cap_len = sizeof q;
  p.payload = std::span<const uint8_t>(q, sizeof q);
  d.packet(p);
  std::swap(p.meta.sport, p.meta.dport);
  std::memcpy(p.meta.saddr, b, 4);
  std::memcpy(p.meta.daddr, a, 4);
  p.meta.ts_ns = kT0 + 250'000;
  p.payload = std::span<const uint8_t>(r, sizeof r);
  d.packet(p);
  d.finish();
  ASSERT_EQ(calls.size(), 1u);
  auto j = to_json(calls[0]);
  EXPECT_EQ(j["protocol"], "dns");
  EXPECT_EQ(j["request"]["qname"], "a.test");
  EXPECT_EQ(j["request"]["qtype"], "A");
  EXPECT_EQ(j["response"]["rcode"], "NXDOMAIN");
  EXPECT_EQ(j["duration_us"], 250);
  EXPECT_EQ(j["src"]["port"], 5353);
}

TEST(Dissector, DnsQuerySentTwiceOverUdpKeepsBothQueries) {
  // A resolver retries a query (same id, same flow) before the answer: the
  // first try comes out unanswered (timeout) with its query, the retry is
  // paired with the answer.
  const uint8_t q[] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
  uint8_t r[sizeof q];
  std::memcpy(r, q, sizeof q);
  r[2] = 0x81;
  r[3] = 0x80;
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Packet p;
  p.meta.ip_version = 4;
  p.meta.l4_proto = 17;
  uint8_t a[4] = {10, 9, 0, 2}, b[4] = {10, 9, 0, 1};
  auto send = [&](bool query, uint64_t ts) {
    std::memcpy(p.meta.saddr, query ? a : b, 4);
    std::memcpy(p.meta.daddr, query ? b : a, 4);
    p.meta.sport = query ? 5353 : 53;
    p.meta.dport = query ? 53 : 5353;
    p.meta.ts_ns = ts;
    p.meta.payload_len = p.meta.cap_len = sizeof q;
    p.payload = std::span<const uint8_t>(query ? q : r, sizeof q);
    d.packet(p);
  };
  send(true, kT0);
  send(true, kT0 + 1'000'000'000);
  send(false, kT0 + 1'000'100'000);
  d.finish();
  ASSERT_EQ(calls.size(), 2u);
  ASSERT_TRUE(calls[0].has_request());
  EXPECT_FALSE(calls[0].has_response());
  EXPECT_TRUE(calls[0].flags & kFlagTimeout);
  ASSERT_TRUE(calls[1].has_request());
  ASSERT_TRUE(calls[1].has_response());
  EXPECT_EQ(calls[1].ts_ns, kT0 + 1'000'000'000);
  EXPECT_EQ(to_json(calls[1])["duration_us"], 100);
}

TEST(Dissector, IgnoresFlowsOfOtherProtocolsCheaply) {
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Conversation cv(d);
  cv.handshake();
  std::string tls("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  tls += std::string(200, 'x');
  cv.send(true, tls);
  cv.send(false, std::string(200, 'y'));
  cv.fin();
  d.finish();
  EXPECT_TRUE(calls.empty());
  EXPECT_EQ(d.metrics().flows_ignored, 1u);
}

TEST(Dissector, ResumeReplaysWithoutRepeatingCalls) {
  // Run 1 dissects everything; a "restart" at its resume position with
  // suppression up to the last packet of run 1 must report nothing twice,
  // and the call that was still open at the checkpoint exactly once.
  std::vector<Packet> pkts;
  std::vector<std::string> keep;
  keep.reserve(16);
  Conn c;
  uint64_t ts = kT0;
  uint32_t cn = c.cseq + 1, sn = c.sseq + 1;
  auto add = [&](bool client, uint8_t fl, const std::string& s, uint32_t seq) {
    keep.push_back(s);
    Packet p = pkt(c, client, fl, keep.back(), ts += 1000, seq);
    p.pos = {1, pkts.size() * 100};
    pkts.push_back(p);
  };
  add(true, TW_TCP_SYN, "", c.cseq);
  add(false, TW_TCP_SYN | TW_TCP_ACK, "", c.sseq);
  add(true, TW_TCP_PSH | TW_TCP_ACK, kGet, cn);
  cn += kGet.size();
  add(false, TW_TCP_PSH | TW_TCP_ACK, kOk, sn);
  sn += kOk.size();
  const std::string g2 = "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n";
  add(true, TW_TCP_PSH | TW_TCP_ACK, g2, cn);  // checkpoint after this packet
  const size_t checkpoint_at = pkts.size() - 1;
  add(false, TW_TCP_PSH | TW_TCP_ACK, kNotFound, sn);

  std::vector<std::string> run1, run2;
  SourcePosition resume, done;
  {
    Dissector d({}, [&](Call&& x) { run1.push_back(x.http_request()->target); });
    for (size_t i = 0; i <= checkpoint_at; i++) d.packet(pkts[i]);
    done = pkts[checkpoint_at].pos;
    resume = d.resume_position(done);
    // ...killed here: the second request is still waiting for its response.
  }
  {
    Dissector d({}, [&](Call&& x) { run2.push_back(x.http_request()->target); });
    d.suppress_through(done);
    for (auto& p : pkts)
      if (!(p.pos < resume)) d.packet(p);
    d.finish();
  }
  ASSERT_EQ(run1, std::vector<std::string>{"/a"});
  EXPECT_EQ(run2, std::vector<std::string>{"/2"});
}

#include <unistd.h>

#include "call_db.hpp"

TEST(CallDb, RowsReadBackAsTheSameCallRecords) {
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  Conversation cv(d);
  cv.handshake();
  cv.send(true, "POST /p?q=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 3\r\n\r\nabc");
  cv.send(false, kOk);
  cv.send(true, kGet);
  cv.fin();
  d.finish();
  ASSERT_EQ(calls.size(), 2u);
  char path[] = "/tmp/tw-calldb-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  unlink(path);
  {
    CallDb db(path);
    for (auto& c : calls) db.insert(c);
  }
  {
    CallDb db(path, true);
    auto rows = db.query({});
    ASSERT_EQ(rows.size(), 2u);
    for (size_t i = 0; i < rows.size(); i++) EXPECT_EQ(rows[i], to_json(calls[i])) << rows[i].dump();
    CallDb::Query q;
    q.status = 200;
    EXPECT_EQ(db.query(q).size(), 1u);
    q = {};
    q.status_class = 2;
    EXPECT_EQ(db.query(q).size(), 1u);
    q = {};
    q.protocol = "dns";
    EXPECT_EQ(db.query(q).size(), 0u);
  }
  for (const char* suffix : {"", "-wal", "-shm"}) unlink((std::string(path) + suffix).c_str());
}

// ----------------------------------------------------- the window, strays ---

namespace {

// A conversation whose packets carry what captures have: the
// acknowledgement, the window, and the window scale on the SYNs.
struct WindowedConversation {
  Conn c;
  uint32_t cnext, snext;
  uint64_t ts = kT0;
  Dissector& d;
  std::vector<std::string> keep;
  uint16_t window = 502;  // unscaled, as on the wire
  uint8_t cscale = 7, sscale = 7;  // TW_WSCALE_NONE: no option
  explicit WindowedConversation(Dissector& dd, uint16_t cport = 40000) : d(dd) {
    c.cport = cport;
    cnext = c.cseq + 1;
    snext = c.sseq + 1;
    keep.reserve(4096);
  }
  Packet make(bool client, uint8_t flags, const std::string& s, uint32_t seq) {
    keep.push_back(s);
    Packet p = pkt(c, client, flags, keep.back(), ts, seq);
    p.meta.ack = client ? snext : cnext;
    p.meta.window = window;
    if (flags & TW_TCP_SYN) p.meta.tcp_wscale = client ? cscale : sscale;
    return p;
  }
  void handshake() {
    ts += 1000;
    d.packet(make(true, TW_TCP_SYN, "", c.cseq));
    ts += 1000;
    d.packet(make(false, TW_TCP_SYN | TW_TCP_ACK, "", c.sseq));
  }
  void send(bool client, const std::string& s, uint64_t dt = 1000) {
    ts += dt;
    uint32_t& next = client ? cnext : snext;
    d.packet(make(client, TW_TCP_ACK | TW_TCP_PSH, s, next));
    next += static_cast<uint32_t>(s.size());
  }
  // A segment at `offset` bytes from where this side is (negative: behind).
  void stray(bool client, int64_t offset, uint8_t flags = TW_TCP_ACK | TW_TCP_PSH,
             const std::string& s = "GET /stray HTTP/1.1\r\nHost: evil\r\n\r\n") {
    ts += 1000;
    const uint32_t next = client ? cnext : snext;
    d.packet(make(client, flags, s, next + static_cast<uint32_t>(offset)));
  }
  void fin() {
    ts += 1000;
    d.packet(make(true, TW_TCP_FIN | TW_TCP_ACK, "", cnext));
    ts += 1000;
    d.packet(make(false, TW_TCP_FIN | TW_TCP_ACK, "", snext));
  }
};

std::string get(const std::string& path) { return "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"; }

std::vector<std::string> names(uint32_t flags) { return flag_names(flags); }

}  // namespace

TEST(Dissector, StraySegmentsDoNotBlindTheConnection) {
  // One stray segment on a keep-alive connection, then 5 s of requests (past
  // the 2 s hole wait): every request is paired, nothing flagged. Before the
  // window existed, the stray 2^31 - 1 ahead was held, the hole before it
  // given up after 2 s, and every later request dropped as "already seen".
  struct Case {
    const char* name;
    bool client;
    int64_t offset;
    uint64_t out_of_window;
  };
  const Case cases[] = {
      {"2^31-1 ahead", true, (1ll << 31) - 1, 1},
      {"1 MiB ahead", true, 1 << 20, 1},
      {"just beyond the window", true, static_cast<int64_t>(ReassemblyLimits{}.max_ahead_bytes), 1},
      {"1 MiB behind", true, -(1 << 20), 0},
      {"2^31-1 ahead of the responses", false, (1ll << 31) - 1, 1},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    std::vector<Call> calls;
    Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
    WindowedConversation cv(d);
    cv.handshake();
    for (int i = 0; i < 5; i++) {
      cv.send(true, get("/before/" + std::to_string(i)));
      cv.send(false, kOk);
    }
    cv.stray(k.client, k.offset);
    for (int i = 0; i < 100; i++) {
      cv.send(true, get("/after/" + std::to_string(i)), 50'000'000);
      cv.send(false, kOk);
    }
    cv.fin();
    d.finish();
    ASSERT_EQ(calls.size(), 105u);
    for (size_t i = 0; i < calls.size(); i++) {
      const std::string want = i < 5 ? "/before/" + std::to_string(i) : "/after/" + std::to_string(i - 5);
      ASSERT_TRUE(calls[i].http_request()) << i;
      EXPECT_EQ(calls[i].http_request()->target, want);
      ASSERT_TRUE(calls[i].http_response()) << want;
      EXPECT_EQ(names(calls[i].flags), std::vector<std::string>{}) << want;
    }
    EXPECT_EQ(d.metrics().reassembly_out_of_window, k.out_of_window);
    EXPECT_EQ(d.metrics().reassembly_gaps, 0u);
  }
}

TEST(Dissector, FinOrRstOutsideTheWindowDoesNotCloseTheConnection) {
  for (uint8_t flags : {uint8_t(TW_TCP_RST), uint8_t(TW_TCP_RST | TW_TCP_ACK), uint8_t(TW_TCP_FIN | TW_TCP_ACK)}) {
    SCOPED_TRACE(static_cast<int>(flags));
    std::vector<Call> calls;
    Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
    WindowedConversation cv(d);
    cv.handshake();
    cv.send(true, get("/a"));
    cv.stray(true, 1 << 30, flags, "");  // a blind reset, far from the stream
    cv.send(false, kOk);
    cv.send(true, get("/b"));
    cv.send(false, kOk);
    cv.fin();
    d.finish();
    ASSERT_EQ(calls.size(), 2u);
    for (const Call& c : calls) {
      EXPECT_TRUE(c.has_response());
      EXPECT_EQ(names(c.flags), std::vector<std::string>{});
    }
    EXPECT_EQ(d.metrics().reassembly_out_of_window, 1u);
  }
  // A reset where the stream is closes it, as before.
  std::vector<Call> calls;
  Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
  WindowedConversation cv(d);
  cv.handshake();
  cv.send(true, get("/a"));
  cv.stray(true, 0, TW_TCP_RST | TW_TCP_ACK, "");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(names(calls[0].flags), std::vector<std::string>{"closed"});
}

TEST(Dissector, ScaledWindowCountsOnlyWhenBothSynsOfferIt) {
  // The server advertises 32768 << 7 = 4 MiB: a client segment 1 MiB ahead
  // is inside it and held. When one SYN has no window scale option, scaling
  // is off (RFC 7323) and the same segment is beyond the window.
  for (uint8_t server_scale : {uint8_t(7), uint8_t(TW_WSCALE_NONE)}) {
    SCOPED_TRACE(static_cast<int>(server_scale));
    std::vector<Call> calls;
    Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
    WindowedConversation cv(d);
    cv.window = 32768;
    cv.sscale = server_scale;
    cv.handshake();
    cv.send(true, get("/a"));
    cv.send(false, kOk);  // carries the server's ack and window
    cv.stray(true, 1 << 20, TW_TCP_ACK | TW_TCP_PSH, "x");
    EXPECT_EQ(d.metrics().reassembly_out_of_window, server_scale == 7 ? 0u : 1u);
  }
}

// ---------------------------------------------------- incomplete messages ---

TEST(Dissector, MessagesCutShortAtTheEndAreReportedIncomplete) {
  auto run = [](const std::vector<std::pair<bool, std::string>>& msgs, bool fin) {
    std::vector<Call> calls;
    Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
    Conversation cv(d);
    cv.handshake();
    for (auto& [client, s] : msgs) cv.send(client, s);
    if (fin) cv.fin();
    d.finish();
    return calls;
  };
  using Flags = std::vector<std::string>;
  {
    SCOPED_TRACE("a request whose header block never ends");
    auto calls = run({{true, "GET /cut HTTP/1.1\r\nHost: x\r\nX-Pad: aaaa"}}, false);
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0].http_request()->method, "GET");
    EXPECT_EQ(calls[0].http_request()->target, "/cut");
    EXPECT_EQ(*calls[0].http_request()->header("host"), "x");
    EXPECT_FALSE(calls[0].has_response());
    EXPECT_EQ(names(calls[0].flags), (Flags{"closed", "incomplete"}));
  }
  {
    SCOPED_TRACE("a request line cut in its target");
    auto calls = run({{true, "POST /partial-tar"}}, true);
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0].http_request()->method, "POST");
    EXPECT_EQ(calls[0].http_request()->target, "/partial-tar");
    EXPECT_EQ(names(calls[0].flags), (Flags{"closed", "incomplete"}));
  }
  {
    SCOPED_TRACE("too little to say what it is");
    EXPECT_TRUE(run({{true, "GE"}}, true).empty());
    EXPECT_TRUE(run({{true, "GET "}}, true).empty());
  }
  {
    SCOPED_TRACE("a response body that never ends");
    auto calls = run({{true, kGet}, {false, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"}}, true);
    ASSERT_EQ(calls.size(), 1u);
    ASSERT_TRUE(calls[0].http_response());
    EXPECT_EQ(calls[0].http_response()->status, 200);
    EXPECT_EQ(calls[0].http_response()->body_size, 10u);
    EXPECT_EQ(names(calls[0].flags), (Flags{"body_truncated", "incomplete"}));
  }
  {
    SCOPED_TRACE("a response header block cut short");
    auto calls = run({{true, kGet}, {false, "HTTP/1.1 503 Busy\r\nContent-Ty"}}, true);
    ASSERT_EQ(calls.size(), 1u);
    ASSERT_TRUE(calls[0].http_response());
    EXPECT_EQ(calls[0].http_response()->status, 503);
    EXPECT_EQ(calls[0].http_response()->reason, "Busy");
    EXPECT_EQ(names(calls[0].flags), (Flags{"incomplete"}));
  }
  {
    SCOPED_TRACE("the client closes its side inside a request; the server still answers");
    std::vector<Call> calls;
    Dissector d({}, [&](Call&& c) { calls.push_back(std::move(c)); });
    Conversation cv(d);
    cv.handshake();
    cv.send(true, "PUT /half HTTP/1.1\r\nHost: x\r\n");
    cv.d.packet(pkt(cv.c, true, TW_TCP_FIN | TW_TCP_ACK, "", cv.ts += 1000, cv.cnext));
    cv.send(false, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    d.finish();
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0].http_request()->target, "/half");
    ASSERT_TRUE(calls[0].http_response());
    EXPECT_EQ(calls[0].http_response()->status, 400);
    EXPECT_EQ(names(calls[0].flags), (Flags{"incomplete"}));
  }
}
