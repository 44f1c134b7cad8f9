#include "dissector.hpp"

#include <algorithm>
#include <cstring>
#include <deque>
#include <list>
#include <unordered_map>

#include "flow_key.hpp"

namespace tapwire::dissect {
namespace {

constexpr uint8_t kTcp = 6, kUdp = 17;
constexpr uint16_t kDnsPort = 53;
constexpr uint64_t kSweepEveryNs = 1'000'000'000ull;

// ------------------------------------------------------------------ keys ---

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

// ---------------------------------------------------------------- memory ---
// Estimated heap bytes (proto::heap_bytes counts allocator overhead).

using proto::heap_bytes;
using proto::string_heap_bytes;

template <class T>
size_t vector_heap_bytes(const std::vector<T>& v) {
  return heap_bytes(v.capacity() * sizeof(T));
}

// A libstdc++ deque allocates its map and one 512-byte block even when empty.
constexpr size_t kDequeFixed = heap_bytes(8 * sizeof(void*)) + heap_bytes(512);

// A node of a hash table with cached hash codes (custom hashers), and its
// share of the bucket array at load factor 1.
template <class Value>
constexpr size_t hash_node_bytes() {
  return heap_bytes(sizeof(void*) + sizeof(Value) + sizeof(size_t)) + sizeof(void*);
}

size_t dns_message_heap_bytes(const proto::DnsMessage& m) {
  size_t n = vector_heap_bytes(m.questions) + vector_heap_bytes(m.answers);
  for (const auto& q : m.questions) n += string_heap_bytes(q.name);
  for (const auto& a : m.answers) n += string_heap_bytes(a.name) + string_heap_bytes(a.data);
  return n;
}

// A call held while it waits for its response (in a deque or a map node).
size_t call_heap_bytes(const Call& c) {
  size_t n = 0;
  if (c.dns_query) n += dns_message_heap_bytes(*c.dns_query);
  if (c.dns_response) n += dns_message_heap_bytes(*c.dns_response);
  if (c.http_request) n += c.http_request->heap;
  if (c.http_response) n += c.http_response->heap;
  return n;
}

size_t queued_message_bytes(const proto::HttpMessage& m) { return sizeof(m) + m.heap; }

// Gives a vector's allocation back.
template <class T>
void release(std::vector<T>& v) {
  std::vector<T>().swap(v);
}

// An empty parser buffer keeps its allocation for the next message, up to
// this; a larger one (left by one big header block) goes back.
constexpr size_t kKeepBufferCapacity = 16 << 10;

void clear_buffer(std::vector<uint8_t>& b) {
  b.clear();
  if (b.capacity() > kKeepBufferCapacity) release(b);
}

}  // namespace

std::string enable_dissectors(DissectorOptions& o, const std::string& list) {
  o.enable_http = o.enable_dns = false;
  for (size_t pos = 0; pos <= list.size();) {
    size_t comma = list.find(',', pos);
    std::string name = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (name == "http")
      o.enable_http = true;
    else if (name == "dns")
      o.enable_dns = true;
    else if (name != "none" && !name.empty())
      return name;
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return "";
}

const char* shed_reason_name(ShedReason r) {
  switch (r) {
    case ShedReason::OutOfOrder:
      return "out_of_order";
    case ShedReason::Body:
      return "body";
    case ShedReason::Buffer:
      return "buffer";
    case ShedReason::DnsQuery:
      return "dns_query";
    case ShedReason::Flow:
      return "flow";
  }
  return "unknown";
}

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
  nlohmann::json shed = nlohmann::json::object(), shed_bytes = nlohmann::json::object();
  for (size_t i = 0; i < kShedReasons; i++) {
    shed[shed_reason_name(static_cast<ShedReason>(i))] = m.shed[i];
    shed_bytes[shed_reason_name(static_cast<ShedReason>(i))] = m.shed_bytes[i];
  }
  return {{"packets", m.packets},
          {"bytes", m.bytes},
          {"tcp_flows", m.tcp_flows},
          {"udp_datagrams", m.udp_datagrams},
          {"flows_active", m.flows_active},
          {"flows_evicted", m.flows_evicted},
          {"flows_ignored", m.flows_ignored},
          {"reassembly_gaps", m.reassembly_gaps},
          {"reassembly_gap_bytes", m.reassembly_gap_bytes},
          {"reassembly_out_of_window", m.reassembly_out_of_window},
          {"reassembly_resyncs", m.reassembly_resyncs},
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
          {"dns_pending_overflow", m.dns_pending_overflow},
          {"memory", {{"bytes", m.memory_bytes}, {"peak_bytes", m.memory_peak_bytes}, {"limit", m.memory_limit}}},
          {"shed", shed},
          {"shed_bytes", shed_bytes}};
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
    void on_resync(uint64_t) override { impl->m.reassembly_resyncs++; }
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
    size_t queued = 0;  // queued_message_bytes of pending and early
    bool gap_pending[2] = {false, false};  // a gap hit this direction: flag its next message
    HttpState(const proto::HttpLimits& l)
        : requests(proto::Http1Parser::Side::Requests, l), responses(proto::Http1Parser::Side::Responses, l) {}
  };

  struct DnsTcpState {
    std::vector<uint8_t> buf[2];  // by side
    std::deque<Call> pending;  // queries waiting, in order
    size_t queued = 0;  // sizeof + call_heap_bytes of pending
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
    size_t charged = 0;  // this flow's bytes in Impl::mem_flows (flow_bytes when last counted)
    bool shed_pending[2] = {false, false};  // state of this side was shed: flag its next message
    uint8_t wscale[2] = {TW_WSCALE_NONE, TW_WSCALE_NONE};  // window scale each side's SYN offered
    bool syn_sent[2] = {false, false};
    Flow(const ReassemblyLimits& l) : dir{TcpReassembler(l), TcpReassembler(l)} {}
  };

  struct DnsPending {
    Call call;
    uint64_t ts;
    SourcePosition pos;
    size_t bytes = 0;  // counted in mem_dns
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
  size_t mem_flows = 0;  // sum of Flow::charged
  size_t mem_dns = 0;  // sum of DnsPending::bytes

  // ----------------------------------------------------------- memory --

  static constexpr size_t kFlowFixed = heap_bytes(sizeof(Flow)) +
                                       hash_node_bytes<std::pair<const FlowKey, std::unique_ptr<Flow>>>() +
                                       heap_bytes(2 * sizeof(void*) + sizeof(Flow*));  // its LRU list node
  static constexpr size_t kHttpFixed = heap_bytes(sizeof(HttpState)) + 2 * kDequeFixed;
  static constexpr size_t kDnsFixed = heap_bytes(sizeof(DnsTcpState)) + kDequeFixed;
  static constexpr size_t kDnsEntry = hash_node_bytes<std::pair<const DnsKey, DnsPending>>();

  // Everything one flow holds; O(1).
  static size_t flow_bytes(const Flow& f) {
    size_t n = kFlowFixed + f.dir[0].memory_bytes() + f.dir[1].memory_bytes() + vector_heap_bytes(f.detect[0]) +
               vector_heap_bytes(f.detect[1]);
    if (f.http) {
      const HttpState& h = *f.http;
      n += kHttpFixed + vector_heap_bytes(h.buf[0]) + vector_heap_bytes(h.buf[1]) + h.requests.memory_bytes() +
           h.responses.memory_bytes() + vector_heap_bytes(h.out) + h.queued;
    }
    if (f.dns) n += kDnsFixed + vector_heap_bytes(f.dns->buf[0]) + vector_heap_bytes(f.dns->buf[1]) + f.dns->queued;
    return n;
  }

  void recharge(Flow& f) {
    const size_t n = flow_bytes(f);
    mem_flows -= f.charged;
    mem_flows += n;
    f.charged = n;
  }

  size_t mem_total() const {
    return mem_flows + mem_dns + dns_expiry.size() * sizeof(dns_expiry.front()) +
           (flows.bucket_count() + dns_pending.bucket_count()) * sizeof(void*);
  }

  void note_memory() {
    const size_t total = mem_total();
    m.memory_bytes = total;
    if (total > m.memory_peak_bytes) m.memory_peak_bytes = total;
  }

  void count_shed(ShedReason r, size_t before, size_t after) {
    m.shed[static_cast<size_t>(r)]++;
    m.shed_bytes[static_cast<size_t>(r)] += before > after ? before - after : 0;
  }

  // Over the limit: sheds the least useful state first, until an eighth
  // below the limit (so that it runs in batches, not on every packet). Each
  // level walks the flows from the one idle longest; see dissector.hpp.
  void shed() {
    const size_t target = opts.memory_limit - opts.memory_limit / 8;
    auto over = [&] { return mem_total() > target; };
    // 1. Out-of-order data: given up as a hole timeout would (what is held
    //    is delivered, the holes become gaps).
    for (auto it = lru.rbegin(); it != lru.rend() && over(); ++it) {
      Flow& f = **it;
      if (!f.dir[0].memory_bytes() && !f.dir[1].memory_bytes()) continue;
      const size_t before = f.charged;
      for (int s = 0; s < 2; s++) {
        if (!f.dir[s].memory_bytes()) continue;
        f.shed_pending[s] = true;
        if (f.state == FlowState::Ignored)
          f.dir[s].discard();
        else
          f.dir[s].flush(f.sink[s]);
      }
      recharge(f);
      count_shed(ShedReason::OutOfOrder, before, f.charged);
    }
    // 2. Bodies kept for messages waiting for their pair, and for messages in progress.
    for (auto it = lru.rbegin(); it != lru.rend() && over(); ++it) {
      Flow& f = **it;
      if (!f.http) continue;
      HttpState& h = *f.http;
      size_t freed = 0;
      for (auto* q : {&h.pending, &h.early})
        for (proto::HttpMessage& msg : *q) {
          const size_t b = string_heap_bytes(msg.body);
          if (!b) continue;
          std::string().swap(msg.body);
          msg.memory_shed = true;
          msg.body_truncated = msg.body_size > 0;
          msg.heap -= b;
          h.queued -= b;
          freed += b;
        }
      freed += h.requests.shed_body() + h.responses.shed_body();
      if (!freed) continue;
      const size_t before = f.charged;
      recharge(f);
      count_shed(ShedReason::Body, before, f.charged);
    }
    // 3. Bytes not parsed yet: an incomplete header block (reported as an
    //    incomplete call when there is enough of it), detection buffers, a
    //    DNS-over-TCP message in progress.
    for (auto it = lru.rbegin(); it != lru.rend() && over(); ++it) {
      Flow& f = **it;
      bool any = false;
      for (int s = 0; s < 2; s++)
        if (f.detect[s].capacity()) {
          if (!f.detect[s].empty()) f.shed_pending[s] = true;
          release(f.detect[s]);
          any = true;
        }
      if (f.http)
        for (int role = 0; role < 2; role++) {
          auto& buf = f.http->buf[role];
          if (!buf.capacity()) continue;
          if (!buf.empty()) {
            auto& parser = role == 0 ? f.http->requests : f.http->responses;
            if (!parser.shed_partial(buf, f.last_ts, f.http->out))
              f.shed_pending[role == 0 ? f.client : 1 - f.client] = true;
          }
          release(buf);
          if (!f.http->out.empty()) http_take(f, *f.http, role);
          any = true;
        }
      if (f.dns)
        for (int s = 0; s < 2; s++)
          if (f.dns->buf[s].capacity()) {
            if (!f.dns->buf[s].empty()) f.shed_pending[s] = true;
            release(f.dns->buf[s]);
            any = true;
          }
      if (!any) continue;
      const size_t before = f.charged;
      recharge(f);
      count_shed(ShedReason::Buffer, before, f.charged);
    }
    // 4. DNS queries waiting for an answer, oldest first.
    while (over() && !dns_pending.empty() && !dns_expiry.empty()) {
      const size_t before = mem_dns;
      dns_expire(UINT64_MAX, 1, kFlagMemoryShed);
      count_shed(ShedReason::DnsQuery, before, mem_dns);
    }
    // 5. Whole flows, idle longest first.
    while (over() && !lru.empty()) {
      Flow& f = *lru.back();
      const size_t before = f.charged;
      close_flow(f, kFlagMemoryShed);
      count_shed(ShedReason::Flow, before, 0);
    }
  }

  // ----------------------------------------------------------- emitting --

  // Each method's counter in m.http_methods, found once: map nodes never
  // move, and a string-keyed lookup per call is a measurable part of the
  // per-call cost. Index 9: "OTHER".
  uint64_t* method_count[10] = {};

  void count(const Call& c) {
    const int64_t us = c.duration_us();
    if (c.protocol == Protocol::Http) {
      m.calls_http++;
      if (c.http_request) {
        static const char* kMethods[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE"};
        size_t i = 0;
        while (i < 9 && c.http_request->method != kMethods[i]) i++;
        if (!method_count[i]) method_count[i] = &m.http_methods[i < 9 ? kMethods[i] : "OTHER"];
        ++*method_count[i];
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
      if (req->body_decode_error) c.flags |= kFlagBodyDecodeError;
      if (req->upgrade) c.flags |= kFlagUpgrade;
      if (req->incomplete) c.flags |= kFlagIncomplete;
      if (req->memory_shed) c.flags |= kFlagMemoryShed;
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
      if (resp->body_decode_error) c.flags |= kFlagBodyDecodeError;
      if (resp->upgrade) c.flags |= kFlagUpgrade;
      if (resp->incomplete) c.flags |= kFlagIncomplete;
      if (resp->memory_shed) c.flags |= kFlagMemoryShed;
      c.http_response = std::move(*resp);
    }
    c.key = call_key(f.key, f.client, c.ts_ns, ++f.calls);
    emit(std::move(c));
  }

  // The queues of messages waiting for their pair, with their bytes counted.
  static void enqueue(HttpState& h, std::deque<proto::HttpMessage>& q, proto::HttpMessage&& msg) {
    h.queued += queued_message_bytes(msg);
    q.push_back(std::move(msg));
  }
  // The front message, its bytes off the count: the caller uses it, then pops it.
  static proto::HttpMessage* front_out(HttpState& h, std::deque<proto::HttpMessage>& q) {
    h.queued -= queued_message_bytes(q.front());
    return &q.front();
  }

  void http_flush_early(Flow& f, HttpState& h, uint64_t older_than) {
    while (!h.early.empty() && h.early.front().ts_last_ns < older_than) {
      http_emit_pair(f, nullptr, front_out(h, h.early), 0);
      h.early.pop_front();
    }
  }

  void http_take(Flow& f, HttpState& h, int role) {
    const int side = role == 0 ? f.client : 1 - f.client;
    for (auto& msg : h.out) {
      // Complete: its body decoded (at most max_body_kept bytes of it, as
      // kept before) before it waits for its pair, counted as it is now.
      proto::finish_body(msg, opts.http.max_body_kept);
      if (h.gap_pending[role]) {
        msg.gap = true;
        h.gap_pending[role] = false;
      }
      if (side >= 0 && f.shed_pending[side]) {
        msg.memory_shed = true;
        f.shed_pending[side] = false;
      }
      if (role == 0) {
        // Responses that came before this request was complete, oldest
        // first: those that began before it started answer nothing we saw.
        while (!h.early.empty() && h.early.front().ts_first_ns < msg.ts_first_ns) {
          http_emit_pair(f, nullptr, front_out(h, h.early), 0);
          h.early.pop_front();
        }
        if (!h.early.empty() && h.pending.empty()) {
          http_emit_pair(f, &msg, front_out(h, h.early), 0);
          h.early.pop_front();
          continue;
        }
        h.responses.expect_response_to(msg.method);
        if (h.pending.size() >= opts.http.max_pending) {  // the oldest will never be answered in order
          http_emit_pair(f, front_out(h, h.pending), nullptr, kFlagTimeout);
          h.pending.pop_front();
        }
        enqueue(h, h.pending, std::move(msg));
      } else if (is_interim(msg)) {
        continue;  // 100 Continue, 103 Early Hints: the final response follows
      } else if (!h.pending.empty()) {
        http_emit_pair(f, front_out(h, h.pending), &msg, 0);
        h.pending.pop_front();
      } else {
        if (h.early.size() >= opts.http.max_pending) {
          http_emit_pair(f, nullptr, front_out(h, h.early), 0);
          h.early.pop_front();
        }
        enqueue(h, h.early, std::move(msg));
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
      release(h.buf[0]);
      release(h.buf[1]);
      return;
    }
    // Keep what the parser left for later; it never leaves more than an
    // incomplete header block, which its own cap bounds.
    if (used >= in.size()) {
      clear_buffer(buf);
    } else if (in.data() == buf.data()) {
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    } else {
      buf.assign(in.begin() + static_cast<std::ptrdiff_t>(used), in.end());
    }
    if (buf.size() > 2 * opts.http.max_header_bytes + 65536) {  // defence in depth
      clear_buffer(buf);
      m.parse_errors_http++;
    }
  }

  // One direction ended: its message in progress, and a header block cut
  // short in the bytes not parsed yet, come out as incomplete messages.
  void http_end(Flow& f, int role) {
    HttpState& h = *f.http;
    (role == 0 ? h.requests : h.responses).on_close(f.last_ts, h.out, h.buf[role]);
    release(h.buf[role]);
    if (!h.out.empty()) http_take(f, h, role);
  }

  void http_close(Flow& f, uint32_t why) {
    HttpState& h = *f.http;
    if (why & kFlagMemoryShed) f.shed_pending[0] = f.shed_pending[1] = true;
    http_end(f, 0);
    http_end(f, 1);
    http_flush_early(f, h, UINT64_MAX);
    while (!h.pending.empty()) {
      http_emit_pair(f, front_out(h, h.pending), nullptr, why);
      h.pending.pop_front();
    }
  }

  void http_expire(Flow& f) {
    HttpState& h = *f.http;
    if (now > opts.request_timeout_ns) http_flush_early(f, h, now - opts.request_timeout_ns);
    while (!h.pending.empty() && h.pending.front().ts_last_ns + opts.request_timeout_ns < now) {
      http_emit_pair(f, front_out(h, h.pending), nullptr, kFlagTimeout);
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
          clear_buffer(buf);
          return;
        }
        continue;
      }
      dns_tcp_message(f, side, d, std::move(msg));
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    if (buf.size() > 70000) {  // a message is at most 65535 + 2 bytes
      buf.clear();
      m.parse_errors_dns++;
    }
    if (buf.empty()) clear_buffer(buf);
  }

  static size_t queued_call_bytes(const Call& c) { return sizeof(Call) + call_heap_bytes(c); }

  void dns_tcp_message(Flow& f, int side, DnsTcpState& d, proto::DnsMessage&& msg) {
    uint32_t shed = 0;
    if (f.shed_pending[side]) {
      shed = kFlagMemoryShed;
      f.shed_pending[side] = false;
    }
    if (!msg.is_response) {
      Call c = new_call(f, Protocol::Dns);
      c.ts_ns = f.last_ts;
      c.key = call_key(f.key, f.client, c.ts_ns, (++f.calls << 16) | msg.id);
      c.dns_query = std::move(msg);
      c.flags |= shed;
      if (d.pending.size() >= 256) {
        d.queued -= queued_call_bytes(d.pending.front());
        emit(std::move(d.pending.front()));
        d.pending.pop_front();
      }
      d.queued += queued_call_bytes(c);
      d.pending.push_back(std::move(c));
      return;
    }
    for (auto it = d.pending.begin(); it != d.pending.end(); ++it) {
      if (it->dns_query->id != msg.id) continue;
      d.queued -= queued_call_bytes(*it);
      Call c = std::move(*it);
      d.pending.erase(it);
      c.flags |= shed;
      c.end_ns = f.last_ts;
      c.dns_response = std::move(msg);
      emit(std::move(c));
      return;
    }
    Call c = new_call(f, Protocol::Dns);
    c.ts_ns = c.end_ns = f.last_ts;
    c.flags |= kFlagOrphanResponse | shed;
    c.key = call_key(f.key, f.client, c.ts_ns, (++f.calls << 16) | msg.id);
    c.dns_response = std::move(msg);
    emit(std::move(c));
  }

  // --------------------------------------------------------- DNS (UDP) --

  void udp(const Packet& p) {
    m.udp_datagrams++;
    // A first IP fragment holds only part of its datagram: not a whole DNS message.
    if (!opts.enable_dns ||
        (p.meta.flags & (TW_PKT_F_CONTINUATION | TW_PKT_F_TRUNCATED | TW_PKT_F_MORE | TW_PKT_F_FRAGMENT)))
      return;
    if (!proto::looks_like_dns(p.payload)) return;
    proto::DnsMessage msg;
    if (proto::parse_dns(p.payload, msg, opts.dns).status != proto::ParseStatus::Done) {
      m.parse_errors_dns++;
      return;
    }
    int src_side;
    FlowKey k = make_flow_key(p.meta, src_side);
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
      const size_t bytes = kDnsEntry + call_heap_bytes(c);
      mem_dns += bytes;
      auto [it, fresh] = dns_pending.try_emplace(dk, DnsPending{std::move(c), p.meta.ts_ns, p.pos, bytes});
      if (!fresh) {  // same id again before an answer: a retransmission, or a new query reusing the id
        mem_dns -= it->second.bytes;
        Call old = std::move(it->second.call);
        it->second = DnsPending{std::move(c), p.meta.ts_ns, p.pos, bytes};
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
    mem_dns -= it->second.bytes;
    dns_pending.erase(it);
    c.end_ns = p.meta.ts_ns;
    c.dns_response = std::move(msg);
    emit(std::move(c));
  }

  // Emits queries older than `before` unanswered (flagged `why`); at most
  // `max` of them when making room.
  void dns_expire(uint64_t before, size_t max = SIZE_MAX, uint32_t why = kFlagTimeout) {
    size_t n = 0;
    while (!dns_expiry.empty() && n < max) {
      auto& [ts, key] = dns_expiry.front();
      if (before != UINT64_MAX && ts + opts.dns_timeout_ns >= before) break;
      auto it = dns_pending.find(key);
      if (it != dns_pending.end() && it->second.ts == ts) {
        Call c = std::move(it->second.call);
        mem_dns -= it->second.bytes;
        dns_pending.erase(it);
        c.flags |= why;
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
        clear_buffer(f.http->buf[role]);
        f.http->gap_pending[role] = true;
        break;
      }
      case FlowState::DnsTcp:
        clear_buffer(f.dns->buf[side]);
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
    mem_flows -= f.charged;
    lru.erase(f.lru);
    flows.erase(f.key);  // destroys f
  }

  // The window scale that applies to what `side` advertises: its SYN's, once
  // both SYNs were seen offering one (RFC 7323); else none (a window known
  // too small is still a lower bound).
  static unsigned window_shift(const Flow& f, int side) {
    if (!f.syn_sent[0] || !f.syn_sent[1] || f.wscale[0] == TW_WSCALE_NONE || f.wscale[1] == TW_WSCALE_NONE) return 0;
    return std::min<unsigned>(f.wscale[side], 14);
  }

  void tcp(const Packet& p) {
    int side;
    FlowKey k = make_flow_key(p.meta, side);
    Flow& f = *flow_for(k);
    if (!f.first_ts) {
      f.first_ts = p.meta.ts_ns;
      f.first_pos = p.pos;
    }
    if (p.meta.ts_ns > f.last_ts) f.last_ts = p.meta.ts_ns;
    const uint8_t fl = p.meta.tcp_flags;
    if (fl & TW_TCP_SYN) {
      if (!(fl & TW_TCP_ACK) && f.syn_client < 0) f.syn_client = side;
      if ((fl & TW_TCP_ACK) && f.syn_client < 0) f.syn_client = 1 - side;
      f.syn_sent[side] = true;
      f.wscale[side] = p.meta.tcp_wscale;
    }
    bool believed = true;
    if (f.state != FlowState::Ignored) {
      believed = f.dir[side].segment(p.meta.seq, fl, p.payload, p.meta.chunk_off, p.meta.payload_len, p.meta.ts_ns,
                                     f.sink[side]);
      if (!believed) m.reassembly_out_of_window++;
      // The other direction's window and what it acknowledges (a SYN's own window is never scaled).
      if (believed && (fl & TW_TCP_ACK) && f.state != FlowState::Ignored)
        f.dir[1 - side].peer_ack(p.meta.ack, uint64_t{p.meta.window} << ((fl & TW_TCP_SYN) ? 0 : window_shift(f, side)),
                                 f.sink[1 - side]);
      // A flow no parser wants keeps nothing (detection gave up on it just now).
      if (f.state == FlowState::Ignored) {
        f.dir[0].discard();
        f.dir[1].discard();
      }
    }
    // A segment outside the window is not this connection's stream: its
    // FIN or RST is not believed either.
    if (believed && (fl & TW_TCP_RST)) {
      close_flow(f, kFlagClosed);
      return;
    }
    if (believed && (fl & TW_TCP_FIN) && !(p.meta.flags & TW_PKT_F_MORE)) {
      f.fin[side] = true;
      if (f.state != FlowState::Ignored) f.dir[side].flush(f.sink[side]);
      if (f.state == FlowState::Http) http_end(f, side == f.client ? 0 : 1);
      if (f.fin[0] && f.fin[1]) {
        close_flow(f, kFlagClosed);
        return;
      }
    }
    recharge(f);
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
        recharge(*f);
      }
      if (f->dns) buffered += f->dns->buf[0].size() + f->dns->buf[1].size();
    }
    m.buffered_bytes = buffered;
    m.flows_active = flows.size();
    dns_expire(now);
    note_memory();
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
    note_memory();  // the peak before shedding: how far one packet took it
    if (opts.memory_limit && m.memory_bytes > opts.memory_limit) {
      shed();
      note_memory();
    }
    advance(p.meta.ts_ns);
  }

  void finish() {
    while (!lru.empty()) close_flow(*lru.back(), kFlagClosed);
    dns_expire(UINT64_MAX);
    m.flows_active = 0;
    m.buffered_bytes = 0;
    note_memory();
  }
};

Dissector::Dissector(DissectorOptions opts, CallSink sink) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->sink = std::move(sink);
  impl_->m.memory_limit = impl_->opts.memory_limit;
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
