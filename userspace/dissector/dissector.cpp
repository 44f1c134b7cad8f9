#include "dissector.hpp"

#include <cstring>
#include <deque>
#include <list>
#include <unordered_map>

namespace tapwire::dissect {
namespace {

constexpr uint8_t kTcp = 6, kUdp = 17;
constexpr uint16_t kDnsPort = 53;
constexpr uint64_t kSweepEveryNs = 1'000'000'000ull;

// ------------------------------------------------------------------ keys ---

// A flow's two endpoints in canonical order (the lower address/port first),
// so that both directions find the same flow.
struct FlowKey {
  uint8_t l4 = 0;
  uint8_t ipv = 0;
  uint16_t port[2] = {0, 0};
  uint8_t addr[2][16] = {};
  bool operator==(const FlowKey& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
};
static_assert(sizeof(FlowKey) == 38, "FlowKey must have no padding: it is hashed and compared as bytes");

uint64_t fnv1a(const void* data, size_t len, uint64_t h = 1469598103934665603ull) {
  auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Mixes the final hash so that similar keys spread (splitmix64 finaliser).
uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct FlowKeyHash {
  size_t operator()(const FlowKey& k) const { return mix(fnv1a(&k, sizeof k)); }
};

// Returns the canonical key and which side (0/1) the packet's source is.
FlowKey make_key(const tw_pkt& m, int& src_side) {
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

Endpoint endpoint_of(const FlowKey& k, int side) {
  Endpoint e;
  e.ip_version = k.ipv;
  std::memcpy(e.addr, k.addr[side], 16);
  e.port = k.port[side];
  return e;
}

uint64_t call_key(const FlowKey& k, int client, uint64_t ts_ns, uint32_t extra) {
  uint64_t h = fnv1a(&k, sizeof k);
  h = fnv1a(&client, sizeof client, h);
  h = fnv1a(&ts_ns, sizeof ts_ns, h);
  h = fnv1a(&extra, sizeof extra, h);
  return mix(h);
}

bool is_interim(const proto::HttpMessage& m) { return !m.is_request && m.status >= 100 && m.status < 200 && m.status != 101; }

}  // namespace

void DissectorMetrics::Histogram::observe(double seconds) {
  size_t i = 0;
  while (i + 1 < kDurationBucketCount && seconds > kDurationBuckets[i]) i++;
  buckets[i]++;
  sum_seconds += seconds;
  count++;
}

nlohmann::json metrics_json(const DissectorMetrics& m) {
  auto hist = [](const DissectorMetrics::Histogram& h) {
    nlohmann::json b = nlohmann::json::array();
    for (size_t i = 0; i < kDurationBucketCount; i++)
      b.push_back({{"le", i + 1 < kDurationBucketCount ? nlohmann::json(kDurationBuckets[i]) : nlohmann::json("+Inf")},
                   {"count", h.buckets[i]}});
    return nlohmann::json{{"buckets", b}, {"sum_seconds", h.sum_seconds}, {"count", h.count}};
  };
  nlohmann::json classes = nlohmann::json::object();
  for (int i = 0; i < 6; i++) classes[i == 0 ? "none" : std::to_string(i) + "xx"] = m.http_status_class[i];
  return {{"packets", m.packets},
          {"bytes", m.bytes},
          {"tcp_flows", m.tcp_flows},
          {"udp_datagrams", m.udp_datagrams},
          {"flows_active", m.flows_active},
          {"flows_evicted", m.flows_evicted},
          {"flows_ignored", m.flows_ignored},
          {"reassembly_gaps", m.reassembly_gaps},
          {"reassembly_gap_bytes", m.reassembly_gap_bytes},
          {"parse_errors", {{"http", m.parse_errors_http}, {"dns", m.parse_errors_dns}}},
          {"calls", {{"http", m.calls_http}, {"dns", m.calls_dns}}},
          {"calls_without_response", m.calls_without_response},
          {"orphan_responses", m.orphan_responses},
          {"http_methods", m.http_methods},
          {"http_status_class", classes},
          {"dns_rcodes", m.dns_rcodes},
          {"duration_seconds", {{"http", hist(m.http_duration)}, {"dns", hist(m.dns_duration)}}},
          {"buffered_bytes", m.buffered_bytes},
          {"dns_pending", m.dns_pending},
          {"dns_pending_overflow", m.dns_pending_overflow}};
}

// ------------------------------------------------------------ the engine ---

struct Dissector::Impl {
  struct Flow;

  // Receives one direction's reassembled stream.
  struct DirSink final : StreamSink {
    Flow* flow = nullptr;
    int side = 0;
    Impl* impl = nullptr;
    void on_data(uint64_t offset, std::span<const uint8_t> data, uint64_t ts_ns) override {
      impl->stream_data(*flow, side, offset, data, ts_ns);
    }
    void on_gap(uint64_t offset, uint64_t len) override { impl->stream_gap(*flow, side, offset, len); }
  };

  enum class FlowState : uint8_t { Detecting, Http, DnsTcp, Ignored };

  struct HttpState {
    proto::Http1Parser requests, responses;
    std::vector<uint8_t> buf[2];  // unconsumed bytes: [0] requests, [1] responses
    std::deque<proto::HttpMessage> pending;
    // Responses that completed while no request was waiting: a server may
    // answer (413, 401, or 200 after 100-continue) before the request body
    // has all arrived. Paired with the next request that started before
    // them; orphans otherwise.
    std::deque<proto::HttpMessage> early;
    std::vector<proto::HttpMessage> out;
    bool gap_pending[2] = {false, false};  // a gap hit this direction: flag its next message
    HttpState(const proto::HttpLimits& l)
        : requests(proto::Http1Parser::Side::Requests, l), responses(proto::Http1Parser::Side::Responses, l) {}
  };

  struct DnsTcpState {
    std::vector<uint8_t> buf[2];  // by side
    std::deque<Call> pending;  // queries waiting, in order
  };

  struct Flow {
    FlowKey key;
    TcpReassembler dir[2];
    DirSink sink[2];
    FlowState state = FlowState::Detecting;
    int client = -1;  // side of the client once known
    uint32_t calls = 0;  // calls reported on this flow: part of each call's id
    int syn_client = -1;  // side that sent a bare SYN
    bool fin[2] = {false, false};
    uint64_t first_ts = 0, last_ts = 0;
    SourcePosition first_pos;
    std::vector<uint8_t> detect[2];
    std::unique_ptr<HttpState> http;
    std::unique_ptr<DnsTcpState> dns;
    std::list<Flow*>::iterator lru;
    Flow(const ReassemblyLimits& l) : dir{TcpReassembler(l), TcpReassembler(l)} {}
  };

  struct DnsPending {
    Call call;
    uint64_t ts;
    SourcePosition pos;
  };
  struct DnsKey {
    FlowKey flow;
    uint16_t id;
    bool operator==(const DnsKey& o) const { return flow == o.flow && id == o.id; }
  };
  struct DnsKeyHash {
    size_t operator()(const DnsKey& k) const { return mix(fnv1a(&k.flow, sizeof k.flow) ^ k.id); }
  };

  DissectorOptions opts;
  CallSink sink;
  DissectorMetrics m;
  std::unordered_map<FlowKey, std::unique_ptr<Flow>, FlowKeyHash> flows;
  std::list<Flow*> lru;  // most recently active first
  std::unordered_map<DnsKey, DnsPending, DnsKeyHash> dns_pending;
  std::deque<std::pair<uint64_t, DnsKey>> dns_expiry;  // (query ts, key) in arrival order
  uint64_t now = 0, last_sweep = 0;
  SourcePosition cur_pos, suppress_pos;
  bool suppressing = false;
  uint64_t suppressed = 0;

  // ----------------------------------------------------------- emitting --

  void count(const Call& c) {
    const int64_t us = c.duration_us();
    if (c.protocol == Protocol::Http) {
      m.calls_http++;
      if (c.http_request) {
        static const char* kMethods[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE"};
        const char* name = "OTHER";
        for (const char* k : kMethods)
          if (c.http_request->method == k) name = k;
        m.http_methods[name]++;
      }
      int cls = c.http_response ? c.http_response->status / 100 : 0;
      m.http_status_class[cls >= 1 && cls <= 5 ? cls : 0]++;
      if (us >= 0) m.http_duration.observe(static_cast<double>(us) / 1e6);
    } else {
      m.calls_dns++;
      m.dns_rcodes[c.dns_response ? proto::dns_rcode_name(c.dns_response->rcode) : "none"]++;
      if (us >= 0) m.dns_duration.observe(static_cast<double>(us) / 1e6);
    }
  }

  void emit(Call&& c) {
    if (suppressing) {
      if (cur_pos <= suppress_pos) {
        suppressed++;
        return;
      }
      suppressing = false;
    }
    count(c);
    if (c.has_request() && !c.has_response()) m.calls_without_response++;
    if (c.flags & kFlagOrphanResponse) m.orphan_responses++;
    sink(std::move(c));
  }

  Call new_call(const Flow& f, Protocol p) {
    Call c;
    c.protocol = p;
    int client = f.client < 0 ? 0 : f.client;
    c.src = endpoint_of(f.key, client);
    c.dst = endpoint_of(f.key, 1 - client);
    return c;
  }

  // -------------------------------------------------------------- HTTP --

  void http_emit_pair(Flow& f, proto::HttpMessage* req, proto::HttpMessage* resp, uint32_t extra_flags) {
    Call c = new_call(f, Protocol::Http);
    c.flags |= extra_flags;
    if (req) {
      c.ts_ns = req->ts_first_ns;
      if (req->gap) c.flags |= kFlagGap;
      if (req->body_truncated) c.flags |= kFlagBodyTruncated;
      if (req->upgrade) c.flags |= kFlagUpgrade;
      c.http_request = std::move(*req);
    }
    if (resp) {
      if (!req) {
        c.ts_ns = resp->ts_first_ns;
        c.flags |= kFlagOrphanResponse;
      }
      c.end_ns = resp->ts_last_ns;
      if (resp->gap) c.flags |= kFlagGap;
      if (resp->body_truncated) c.flags |= kFlagBodyTruncated;
      if (resp->upgrade) c.flags |= kFlagUpgrade;
      c.http_response = std::move(*resp);
    }
    c.key = call_key(f.key, f.client, c.ts_ns, ++f.calls);
    emit(std::move(c));
  }

  void http_flush_early(Flow& f, HttpState& h, uint64_t older_than) {
    while (!h.early.empty() && h.early.front().ts_last_ns < older_than) {
      http_emit_pair(f, nullptr, &h.early.front(), 0);
      h.early.pop_front();
    }
  }

  void http_take(Flow& f, HttpState& h, int role) {
    for (auto& msg : h.out) {
      if (h.gap_pending[role]) {
        msg.gap = true;
        h.gap_pending[role] = false;
      }
      if (role == 0) {
        // Responses that came before this request was complete, oldest
        // first: those that began before it started answer nothing we saw.
        while (!h.early.empty() && h.early.front().ts_first_ns < msg.ts_first_ns) {
          http_emit_pair(f, nullptr, &h.early.front(), 0);
          h.early.pop_front();
        }
        if (!h.early.empty() && h.pending.empty()) {
          http_emit_pair(f, &msg, &h.early.front(), 0);
          h.early.pop_front();
          continue;
        }
        h.responses.expect_response_to(msg.method);
        if (h.pending.size() >= opts.http.max_pending) {  // the oldest will never be answered in order
          http_emit_pair(f, &h.pending.front(), nullptr, kFlagTimeout);
          h.pending.pop_front();
        }
        h.pending.push_back(std::move(msg));
      } else if (is_interim(msg)) {
        continue;  // 100 Continue, 103 Early Hints: the final response follows
      } else if (!h.pending.empty()) {
        http_emit_pair(f, &h.pending.front(), &msg, 0);
        h.pending.pop_front();
      } else {
        if (h.early.size() >= opts.http.max_pending) {
          http_emit_pair(f, nullptr, &h.early.front(), 0);
          h.early.pop_front();
        }
        h.early.push_back(std::move(msg));
      }
    }
    h.out.clear();
  }

  void http_data(Flow& f, int role, std::span<const uint8_t> data, uint64_t ts) {
    HttpState& h = *f.http;
    auto& parser = role == 0 ? h.requests : h.responses;
    auto& buf = h.buf[role];
    std::span<const uint8_t> in = data;
    if (!buf.empty()) {
      buf.insert(buf.end(), data.begin(), data.end());
      in = buf;
    }
    size_t used = 0;
    for (int guard = 0; guard < 100000 && used < in.size(); guard++) {
      proto::ParseResult r = parser.feed(in.subspan(used), ts, h.out);
      used += r.consumed;
      if (r.status == proto::ParseStatus::Invalid) m.parse_errors_http++;
      if (!h.out.empty()) http_take(f, h, role);
      if (r.status == proto::ParseStatus::NeedMoreData || r.consumed == 0) break;
    }
    if (parser.switched_protocols()) {  // WebSocket or a CONNECT tunnel: no more HTTP here
      h.buf[0].clear();
      h.buf[1].clear();
      return;
    }
    // Keep what the parser left for later; it never leaves more than an
    // incomplete header block, which its own cap bounds.
    if (used >= in.size()) {
      buf.clear();
    } else if (in.data() == buf.data()) {
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    } else {
      buf.assign(in.begin() + static_cast<std::ptrdiff_t>(used), in.end());
    }
    if (buf.size() > 2 * opts.http.max_header_bytes + 65536) {  // defence in depth
      buf.clear();
      m.parse_errors_http++;
    }
  }

  void http_close(Flow& f, uint32_t why) {
    HttpState& h = *f.http;
    h.requests.on_close(f.last_ts, h.out);
    if (!h.out.empty()) http_take(f, h, 0);
    h.responses.on_close(f.last_ts, h.out);
    if (!h.out.empty()) http_take(f, h, 1);
    http_flush_early(f, h, UINT64_MAX);
    while (!h.pending.empty()) {
      http_emit_pair(f, &h.pending.front(), nullptr, why);
      h.pending.pop_front();
    }
  }

  void http_expire(Flow& f) {
    HttpState& h = *f.http;
    if (now > opts.request_timeout_ns) http_flush_early(f, h, now - opts.request_timeout_ns);
    while (!h.pending.empty() && h.pending.front().ts_last_ns + opts.request_timeout_ns < now) {
      http_emit_pair(f, &h.pending.front(), nullptr, kFlagTimeout);
      h.pending.pop_front();
    }
  }

  // --------------------------------------------------------- DNS (TCP) --

  void dns_tcp_data(Flow& f, int side, std::span<const uint8_t> data) {
    DnsTcpState& d = *f.dns;
    auto& buf = d.buf[side];
    buf.insert(buf.end(), data.begin(), data.end());
    size_t used = 0;
    for (int guard = 0; guard < 100000 && used < buf.size(); guard++) {
      proto::DnsMessage msg;
      auto r = proto::parse_dns_tcp(std::span<const uint8_t>(buf).subspan(used), msg, opts.dns);
      if (r.status == proto::ParseStatus::NeedMoreData) break;
      used += r.consumed;
      if (r.status != proto::ParseStatus::Done) {
        m.parse_errors_dns++;
        if (r.consumed == 0) {  // cannot resynchronise a length-prefixed stream
          buf.clear();
          return;
        }
        continue;
      }
      dns_tcp_message(f, d, std::move(msg));
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    if (buf.size() > 70000) {  // a message is at most 65535 + 2 bytes
      buf.clear();
      m.parse_errors_dns++;
    }
  }

  void dns_tcp_message(Flow& f, DnsTcpState& d, proto::DnsMessage&& msg) {
    if (!msg.is_response) {
      Call c = new_call(f, Protocol::Dns);
      c.ts_ns = f.last_ts;
      c.key = call_key(f.key, f.client, c.ts_ns, (++f.calls << 16) | msg.id);
      c.dns_query = std::move(msg);
      if (d.pending.size() >= 256) {
        emit(std::move(d.pending.front()));
        d.pending.pop_front();
      }
      d.pending.push_back(std::move(c));
      return;
    }
    for (auto it = d.pending.begin(); it != d.pending.end(); ++it) {
      if (it->dns_query->id != msg.id) continue;
      Call c = std::move(*it);
      d.pending.erase(it);
      c.end_ns = f.last_ts;
      c.dns_response = std::move(msg);
      emit(std::move(c));
      return;
    }
    Call c = new_call(f, Protocol::Dns);
    c.ts_ns = c.end_ns = f.last_ts;
    c.flags |= kFlagOrphanResponse;
    c.key = call_key(f.key, f.client, c.ts_ns, (++f.calls << 16) | msg.id);
    c.dns_response = std::move(msg);
    emit(std::move(c));
  }

  // --------------------------------------------------------- DNS (UDP) --

  void udp(const Packet& p) {
    m.udp_datagrams++;
    if (!opts.enable_dns || (p.meta.flags & (TW_PKT_F_CONTINUATION | TW_PKT_F_TRUNCATED | TW_PKT_F_MORE))) return;
    if (!proto::looks_like_dns(p.payload)) return;
    proto::DnsMessage msg;
    if (proto::parse_dns(p.payload, msg, opts.dns).status != proto::ParseStatus::Done) {
      m.parse_errors_dns++;
      return;
    }
    int src_side;
    FlowKey k = make_key(p.meta, src_side);
    DnsKey dk{k, msg.id};
    if (!msg.is_response) {
      if (dns_pending.size() >= opts.max_dns_pending) {
        m.dns_pending_overflow++;
        dns_expire(UINT64_MAX, 1);
      }
      Call c;
      c.protocol = Protocol::Dns;
      c.l4_proto = kUdp;
      c.src = endpoint_of(k, src_side);
      c.dst = endpoint_of(k, 1 - src_side);
      c.ts_ns = p.meta.ts_ns;
      c.key = call_key(k, src_side, c.ts_ns, msg.id);
      c.dns_query = std::move(msg);
      auto [it, fresh] = dns_pending.try_emplace(dk, DnsPending{std::move(c), p.meta.ts_ns, p.pos});
      if (!fresh) {  // same id again before an answer: a retransmission, or a new query reusing the id
        Call old = std::move(it->second.call);
        it->second = DnsPending{std::move(c), p.meta.ts_ns, p.pos};
        old.flags |= kFlagTimeout;
        emit(std::move(old));
      }
      dns_expiry.emplace_back(p.meta.ts_ns, dk);
      if (dns_expiry.size() > 2 * opts.max_dns_pending) dns_expire(UINT64_MAX, 1);  // answered entries go too
      return;
    }
    auto it = dns_pending.find(dk);
    if (it == dns_pending.end()) {
      Call c;
      c.protocol = Protocol::Dns;
      c.l4_proto = kUdp;
      c.src = endpoint_of(k, 1 - src_side);  // the client is where the answer goes
      c.dst = endpoint_of(k, src_side);
      c.ts_ns = c.end_ns = p.meta.ts_ns;
      c.flags |= kFlagOrphanResponse;
      c.key = call_key(k, 1 - src_side, c.ts_ns, msg.id);
      c.dns_response = std::move(msg);
      emit(std::move(c));
      return;
    }
    Call c = std::move(it->second.call);
    dns_pending.erase(it);
    c.end_ns = p.meta.ts_ns;
    c.dns_response = std::move(msg);
    emit(std::move(c));
  }

  // Emits queries older than `before` unanswered; at most `max` of them when
  // making room.
  void dns_expire(uint64_t before, size_t max = SIZE_MAX) {
    size_t n = 0;
    while (!dns_expiry.empty() && n < max) {
      auto& [ts, key] = dns_expiry.front();
      if (before != UINT64_MAX && ts + opts.dns_timeout_ns >= before) break;
      auto it = dns_pending.find(key);
      if (it != dns_pending.end() && it->second.ts == ts) {
        Call c = std::move(it->second.call);
        dns_pending.erase(it);
        c.flags |= kFlagTimeout;
        emit(std::move(c));
        n++;
      }
      dns_expiry.pop_front();
    }
    m.dns_pending = dns_pending.size();
  }

  // -------------------------------------------------------------- TCP --

  void detect(Flow& f, int side) {
    auto& a = f.detect[side];
    std::span<const uint8_t> s(a);
    int client = -1;
    FlowState st = FlowState::Detecting;
    if (opts.enable_http && proto::looks_like_http1_request(s)) {
      st = FlowState::Http;
      client = side;
    } else if (opts.enable_http && proto::looks_like_http1_response(s)) {
      st = FlowState::Http;
      client = 1 - side;
    } else if (opts.enable_dns && s.size() >= 14 && (f.key.port[0] == kDnsPort || f.key.port[1] == kDnsPort) &&
               proto::looks_like_dns(s.subspan(2))) {
      st = FlowState::DnsTcp;
      client = f.key.port[side] == kDnsPort ? 1 - side : side;
    } else if (a.size() >= opts.max_detect_bytes || (a.size() >= 64 && f.detect[1 - side].size() >= 64)) {
      f.state = FlowState::Ignored;
      m.flows_ignored++;
      f.detect[0].clear();
      f.detect[0].shrink_to_fit();
      f.detect[1].clear();
      f.detect[1].shrink_to_fit();
      return;
    } else {
      return;  // need more bytes
    }
    if (f.syn_client >= 0) client = f.syn_client;  // the handshake is the better witness
    f.client = client;
    f.state = st;
    std::vector<uint8_t> bufs[2] = {std::move(f.detect[0]), std::move(f.detect[1])};
    if (st == FlowState::Http) {
      f.http = std::make_unique<HttpState>(opts.http);
      // Replay what was held, the client's side first (its requests tell the
      // response parser about HEAD and CONNECT).
      for (int s2 : {client, 1 - client})
        if (!bufs[s2].empty()) http_data(f, s2 == client ? 0 : 1, bufs[s2], f.last_ts);
    } else {
      f.dns = std::make_unique<DnsTcpState>();
      for (int s2 : {client, 1 - client})
        if (!bufs[s2].empty()) dns_tcp_data(f, s2, bufs[s2]);
    }
  }

  void stream_data(Flow& f, int side, uint64_t /*offset*/, std::span<const uint8_t> data, uint64_t ts) {
    switch (f.state) {
      case FlowState::Detecting: {
        auto& a = f.detect[side];
        size_t room = opts.max_detect_bytes > a.size() ? opts.max_detect_bytes - a.size() : 0;
        a.insert(a.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(std::min(room, data.size())));
        detect(f, side);
        // What did not fit in the detection buffer goes on to the parser.
        if (f.state != FlowState::Detecting && data.size() > room)
          stream_data(f, side, 0, data.subspan(room), ts);
        break;
      }
      case FlowState::Http:
        http_data(f, side == f.client ? 0 : 1, data, ts);
        break;
      case FlowState::DnsTcp:
        dns_tcp_data(f, side, data);
        break;
      case FlowState::Ignored:
        break;
    }
  }

  void stream_gap(Flow& f, int side, uint64_t /*offset*/, uint64_t len) {
    m.reassembly_gaps++;
    m.reassembly_gap_bytes += len;
    switch (f.state) {
      case FlowState::Detecting:
        f.detect[side].clear();  // start over after the hole
        break;
      case FlowState::Http: {
        int role = side == f.client ? 0 : 1;
        (role == 0 ? f.http->requests : f.http->responses).on_gap(len);
        f.http->buf[role].clear();
        f.http->gap_pending[role] = true;
        break;
      }
      case FlowState::DnsTcp:
        f.dns->buf[side].clear();
        break;
      case FlowState::Ignored:
        break;
    }
  }

  Flow* flow_for(const FlowKey& k) {
    auto it = flows.find(k);
    if (it != flows.end()) {
      Flow* f = it->second.get();
      lru.splice(lru.begin(), lru, f->lru);
      return f;
    }
    if (flows.size() >= opts.max_flows) {  // make room: the least recently active goes
      Flow* victim = lru.back();
      m.flows_evicted++;
      close_flow(*victim, kFlagClosed);
    }
    auto f = std::make_unique<Flow>(opts.reassembly);
    f->key = k;
    for (int s = 0; s < 2; s++) {
      f->sink[s].flow = f.get();
      f->sink[s].side = s;
      f->sink[s].impl = this;
    }
    lru.push_front(f.get());
    f->lru = lru.begin();
    Flow* raw = f.get();
    flows.emplace(k, std::move(f));
    m.tcp_flows++;
    return raw;
  }

  void close_flow(Flow& f, uint32_t why) {
    for (int s = 0; s < 2; s++)
      if (f.state != FlowState::Ignored) f.dir[s].flush(f.sink[s]);
    if (f.state == FlowState::Http) http_close(f, why);
    if (f.state == FlowState::DnsTcp)
      while (!f.dns->pending.empty()) {
        Call c = std::move(f.dns->pending.front());
        f.dns->pending.pop_front();
        c.flags |= why;
        emit(std::move(c));
      }
    lru.erase(f.lru);
    flows.erase(f.key);  // destroys f
  }

  void tcp(const Packet& p) {
    int side;
    FlowKey k = make_key(p.meta, side);
    Flow& f = *flow_for(k);
    if (!f.first_ts) {
      f.first_ts = p.meta.ts_ns;
      f.first_pos = p.pos;
    }
    if (p.meta.ts_ns > f.last_ts) f.last_ts = p.meta.ts_ns;
    const uint8_t fl = p.meta.tcp_flags;
    if ((fl & TW_TCP_SYN) && !(fl & TW_TCP_ACK) && f.syn_client < 0) f.syn_client = side;
    if ((fl & TW_TCP_SYN) && (fl & TW_TCP_ACK) && f.syn_client < 0) f.syn_client = 1 - side;
    if (f.state != FlowState::Ignored)
      f.dir[side].segment(p.meta.seq, fl, p.payload, p.meta.chunk_off, p.meta.payload_len, p.meta.ts_ns,
                          f.sink[side]);
    if (fl & TW_TCP_RST) {
      close_flow(f, kFlagClosed);
      return;
    }
    if ((fl & TW_TCP_FIN) && !(p.meta.flags & TW_PKT_F_MORE)) {
      f.fin[side] = true;
      if (f.state != FlowState::Ignored) f.dir[side].flush(f.sink[side]);
      if (f.state == FlowState::Http) {
        auto& parser = side == f.client ? f.http->requests : f.http->responses;
        parser.on_close(f.last_ts, f.http->out);
        if (!f.http->out.empty()) http_take(f, *f.http, side == f.client ? 0 : 1);
      }
      if (f.fin[0] && f.fin[1]) close_flow(f, kFlagClosed);
    }
  }

  // ------------------------------------------------------------- time --

  void sweep() {
    // Idle flows, oldest activity first.
    while (!lru.empty() && lru.back()->last_ts + opts.flow_idle_ns < now) close_flow(*lru.back(), kFlagTimeout);
    uint64_t buffered = 0;
    for (Flow* f : lru) {
      buffered += f->dir[0].buffered_bytes() + f->dir[1].buffered_bytes() + f->detect[0].size() + f->detect[1].size();
      if (f->http) {
        http_expire(*f);
        buffered += f->http->buf[0].size() + f->http->buf[1].size();
      }
      if (f->dns) buffered += f->dns->buf[0].size() + f->dns->buf[1].size();
    }
    m.buffered_bytes = buffered;
    m.flows_active = flows.size();
    dns_expire(now);
  }

  void advance(uint64_t ts) {
    if (ts <= now) return;
    now = ts;
    if (now - last_sweep >= kSweepEveryNs) {
      last_sweep = now;
      sweep();
    }
  }

  void packet(const Packet& p) {
    cur_pos = p.pos;
    m.packets++;
    m.bytes += p.meta.cap_len;
    if (p.meta.l4_proto == kTcp)
      tcp(p);
    else if (p.meta.l4_proto == kUdp)
      udp(p);
    advance(p.meta.ts_ns);
  }

  void finish() {
    while (!lru.empty()) close_flow(*lru.back(), kFlagClosed);
    dns_expire(UINT64_MAX);
    m.flows_active = 0;
    m.buffered_bytes = 0;
  }
};

Dissector::Dissector(DissectorOptions opts, CallSink sink) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->sink = std::move(sink);
}

Dissector::~Dissector() = default;

void Dissector::packet(const Packet& p) { impl_->packet(p); }
void Dissector::advance_time(uint64_t now_ns) { impl_->advance(now_ns); }
void Dissector::finish() { impl_->finish(); }
const DissectorMetrics& Dissector::metrics() const { return impl_->m; }

SourcePosition Dissector::resume_position(SourcePosition current) const {
  SourcePosition r = current;
  for (auto& [k, f] : impl_->flows)  // flows of no supported protocol hold no state worth rebuilding
    if (f->state != Impl::FlowState::Ignored && f->first_pos < r) r = f->first_pos;
  for (auto& [k, d] : impl_->dns_pending)
    if (d.pos < r) r = d.pos;
  return r;
}

void Dissector::suppress_through(SourcePosition pos) {
  impl_->suppress_pos = pos;
  impl_->suppressing = true;
}

uint64_t Dissector::suppressed() const { return impl_->suppressed; }

}  // namespace tapwire::dissect
