#include "dissector.hpp"

#include <algorithm>
#include <cstring>
#include <list>
#include <unordered_map>

#include "flow_key.hpp"

namespace tapwire::dissect {
namespace {

constexpr uint8_t kTcp = 6, kUdp = 17, kIcmp = 1, kIcmp6 = 58;
constexpr uint64_t kSweepEveryNs = 1'000'000'000ull;

Endpoint endpoint_of(const FlowKey& k, int side) {
  Endpoint e;
  e.ip_version = k.ipv;
  std::memcpy(e.addr, k.addr[side], 16);
  e.port = k.port[side];
  return e;
}

// The id's key. `extra` is the protocol's sequence or transaction id: the
// low 32 bits alone when that is all it has (the ids of HTTP/1 and DNS
// calls stay what they were), all 64 otherwise.
uint64_t call_key(const FlowKey& k, int client, uint64_t ts_ns, uint64_t extra) {
  uint64_t h = fnv1a(&k, sizeof k);
  h = fnv1a(&client, sizeof client, h);
  h = fnv1a(&ts_ns, sizeof ts_ns, h);
  if (extra >> 32) {
    h = fnv1a(&extra, sizeof extra, h);
  } else {
    const uint32_t low = static_cast<uint32_t>(extra);
    h = fnv1a(&low, sizeof low, h);
  }
  return mix(h);
}

using proto::heap_bytes;
using proto::release;
using proto::vector_heap_bytes;

// A node of a hash table with cached hash codes (custom hashers), and its
// share of the bucket array at load factor 1.
template <class Value>
constexpr size_t hash_node_bytes() {
  return heap_bytes(sizeof(void*) + sizeof(Value) + sizeof(size_t)) + sizeof(void*);
}

proto::Dir dir_of(int side, int client) {
  return side == client ? proto::Dir::ClientToServer : proto::Dir::ServerToClient;
}

}  // namespace

bool DissectorOptions::enabled(std::string_view dissector) const {
  return std::find(dissectors.begin(), dissectors.end(), dissector) != dissectors.end();
}

std::string enable_dissectors(DissectorOptions& o, const std::string& list) {
  const std::vector<std::string> known = proto::dissector_names();
  o.dissectors.clear();
  for (size_t pos = 0; pos <= list.size();) {
    size_t comma = list.find(',', pos);
    std::string name = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    while (!name.empty() && name.front() == ' ') name.erase(name.begin());
    while (!name.empty() && name.back() == ' ') name.pop_back();
    if (std::find(known.begin(), known.end(), name) != known.end()) {
      if (!o.enabled(name)) o.dissectors.push_back(name);
    } else if (name != "none" && name != "tcp" && name != "udp" && !name.empty()) {
      // tcp and udp name flow accounting, which the kernel does (docs/FLOWS.md):
      // no L7 protocol, accepted and ignored here.
      return name;
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return "";
}

std::string dissector_list() {
  std::string out;
  for (auto& n : proto::dissector_names()) out += (out.empty() ? "" : ",") + n;
  return out;
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

uint64_t DissectorMetrics::calls_of(const std::string& protocol) const {
  auto it = calls.find(protocol);
  return it == calls.end() ? 0 : it->second;
}

uint64_t DissectorMetrics::calls_total() const {
  uint64_t n = 0;
  for (auto& [p, c] : calls) n += c;
  return n;
}

uint64_t DissectorMetrics::parse_errors_total() const {
  uint64_t n = 0;
  for (auto& [p, c] : parse_errors) n += c;
  return n;
}

nlohmann::json metrics_json(const DissectorMetrics& m) {
  auto hist = [](const DissectorMetrics::Histogram& h) {
    nlohmann::json b = nlohmann::json::array();
    for (size_t i = 0; i < kDurationBucketCount; i++)
      b.push_back({{"le", i + 1 < kDurationBucketCount ? nlohmann::json(kDurationBuckets[i]) : nlohmann::json("+Inf")},
                   {"count", h.buckets[i]}});
    return nlohmann::json{{"buckets", b}, {"sum_seconds", h.sum_seconds}, {"count", h.count}};
  };
  nlohmann::json shed = nlohmann::json::object(), shed_bytes = nlohmann::json::object();
  for (size_t i = 0; i < kShedReasons; i++) {
    shed[shed_reason_name(static_cast<ShedReason>(i))] = m.shed[i];
    shed_bytes[shed_reason_name(static_cast<ShedReason>(i))] = m.shed_bytes[i];
  }
  nlohmann::json durations = nlohmann::json::object();
  for (auto& [p, h] : m.durations) durations[p] = hist(h);
  nlohmann::json j = {{"packets", m.packets},
                      {"bytes", m.bytes},
                      {"tcp_flows", m.tcp_flows},
                      {"udp_datagrams", m.udp_datagrams},
                      {"icmp_messages", m.icmp_messages},
                      {"flows_active", m.flows_active},
                      {"flows_evicted", m.flows_evicted},
                      {"flows_ignored", m.flows_ignored},
                      {"reassembly_gaps", m.reassembly_gaps},
                      {"reassembly_gap_bytes", m.reassembly_gap_bytes},
                      {"reassembly_out_of_window", m.reassembly_out_of_window},
                      {"reassembly_resyncs", m.reassembly_resyncs},
                      {"parse_errors", m.parse_errors},
                      {"calls", m.calls},
                      {"calls_without_response", m.calls_without_response},
                      {"orphan_responses", m.orphan_responses},
                      {"duration_seconds", durations},
                      {"buffered_bytes", m.buffered_bytes},
                      {"dns_pending", m.dns_pending},
                      {"dns_pending_overflow", m.dns_pending_overflow},
                      {"memory", {{"bytes", m.memory_bytes}, {"peak_bytes", m.memory_peak_bytes}, {"limit", m.memory_limit}}},
                      {"shed", shed},
                      {"shed_bytes", shed_bytes}};
  for (auto& [name, family] : m.breakdowns) j[name] = family;
  return j;
}

// ------------------------------------------------------------ the engine ---

struct Dissector::Impl final : proto::DatagramContext {
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

  enum class FlowState : uint8_t { Detecting, Active, Ignored };

  struct Flow final : proto::SessionContext {
    Impl* impl = nullptr;
    FlowKey key;
    TcpReassembler dir[2];
    DirSink sink[2];
    FlowState state = FlowState::Detecting;
    int client = -1;  // side of the client once known
    uint64_t calls = 0;  // the protocol's sequence: part of each call's id
    int syn_client = -1;  // side that sent a bare SYN
    bool fin[2] = {false, false};
    uint64_t first_ts = 0, last_ts = 0;
    SourcePosition first_pos;
    std::vector<uint8_t> detect[2];
    std::unique_ptr<proto::StreamSession> session;
    std::list<Flow*>::iterator lru;
    size_t charged = 0;  // this flow's bytes in Impl::mem_flows (flow_bytes when last counted)
    bool shed_pending[2] = {false, false};  // detection bytes of this side were shed: flag its next message
    uint8_t wscale[2] = {TW_WSCALE_NONE, TW_WSCALE_NONE};  // window scale each side's SYN offered
    bool syn_sent[2] = {false, false};
    Flow(const ReassemblyLimits& l) : dir{TcpReassembler(l), TcpReassembler(l)} {}

    void emit(proto::CallContent&& c) override { impl->emit_stream(*this, std::move(c)); }
    uint64_t next_seq() override { return ++calls; }
    uint64_t key_of(uint64_t ts, uint64_t extra) const override {
      return call_key(key, client < 0 ? 0 : client, ts, extra);
    }
    proto::ProtocolCounters& counters(std::string_view p) override { return impl->counters_for(p); }
    bool enabled(std::string_view p) const override { return impl->protocol_enabled(p); }
    const proto::DissectLimits& limits() const override { return impl->lim; }
  };

  DissectorOptions opts;
  proto::DissectLimits lim;
  CallSink sink;
  DissectorMetrics m;
  std::unordered_map<FlowKey, std::unique_ptr<Flow>, FlowKeyHash> flows;
  std::list<Flow*> lru;  // most recently active first
  uint64_t now = 0, last_sweep = 0;
  SourcePosition cur_pos, suppress_pos;
  bool suppressing = false;
  uint64_t suppressed = 0;
  size_t mem_flows = 0;  // sum of Flow::charged

  // Protocols: the stream protocols that run (in detection order), one
  // session per datagram protocol, and each protocol's counters.
  std::vector<const proto::ProtocolInfo*> stream_protocols;
  // Every datagram session; of them, those that take UDP payloads and
  // those that take ICMP and ICMPv6 messages.
  std::vector<std::unique_ptr<proto::DatagramSession>> datagram_sessions;
  std::vector<proto::DatagramSession*> udp_sessions, icmp_sessions;
  std::map<std::string, proto::ProtocolCounters, std::less<>> counter_map;
  // Per protocol name (the registry's pointers, compared as pointers):
  // its call counter and histogram, found once.
  struct Slot {
    const char* name;
    uint64_t* calls;
    DissectorMetrics::Histogram* duration;
  };
  std::vector<Slot> slots;

  void init() {
    m.memory_limit = opts.memory_limit;
    lim.max_body_kept = opts.http.max_body_kept;
    lim.max_header_bytes = opts.http.max_header_bytes;
    lim.max_headers = opts.http.max_headers;
    lim.max_pending = opts.http.max_pending;
    lim.request_timeout_ns = opts.request_timeout_ns;
    lim.dns_max_records = opts.dns.max_records;
    lim.dns_max_name_hops = opts.dns.max_name_hops;
    lim.dns_timeout_ns = opts.dns_timeout_ns;
    lim.max_dns_pending = opts.max_dns_pending;
    for (const auto& p : proto::protocols()) {
      m.calls[p.name] = 0;
      m.parse_errors[p.name] = 0;
      m.durations[p.name];
      counter_map[p.name];
      if (!opts.enabled(p.dissector)) continue;
      if (p.stream) stream_protocols.push_back(&p);
      if (p.datagram) {
        datagram_sessions.push_back(p.datagram->open(*this));
        (p.icmp ? icmp_sessions : udp_sessions).push_back(datagram_sessions.back().get());
      }
    }
    // Families that always have all their labels, as before there were protocols.
    auto& classes = counter_map["http"].breakdowns["http_status_class"];
    for (const char* c : {"none", "1xx", "2xx", "3xx", "4xx", "5xx"}) classes[c];
    counter_map["http"].breakdowns["http_methods"];
    counter_map["dns"].breakdowns["dns_rcodes"];
  }

  bool protocol_enabled(std::string_view name) const {
    const proto::ProtocolInfo* p = proto::find_protocol(name);
    return p && opts.enabled(p->dissector);
  }

  proto::ProtocolCounters& counters(std::string_view name) override { return counters_for(name); }
  proto::ProtocolCounters& counters_for(std::string_view name) {
    auto it = counter_map.find(name);
    if (it == counter_map.end()) it = counter_map.emplace(std::string(name), proto::ProtocolCounters{}).first;
    return it->second;
  }

  const proto::DissectLimits& limits() const override { return lim; }

  // The metrics as of now: the protocols' counters folded in.
  void sync_metrics() {
    for (auto& [name, c] : counter_map) {
      m.parse_errors[name] = c.parse_errors;
      for (auto& [family, values] : c.breakdowns) m.breakdowns[family] = values;
    }
    uint64_t pending = 0, overflow = 0;
    for (auto* d : udp_sessions) {
      pending += d->pending();
      overflow += d->overflows();
    }
    m.dns_pending = pending;
    m.dns_pending_overflow = overflow;
  }

  // ----------------------------------------------------------- memory --

  static constexpr size_t kFlowFixed = heap_bytes(sizeof(Flow)) +
                                       hash_node_bytes<std::pair<const FlowKey, std::unique_ptr<Flow>>>() +
                                       heap_bytes(2 * sizeof(void*) + sizeof(Flow*));  // its LRU list node

  // Everything one flow holds; O(1).
  static size_t flow_bytes(const Flow& f) {
    size_t n = kFlowFixed + f.dir[0].memory_bytes() + f.dir[1].memory_bytes() + vector_heap_bytes(f.detect[0]) +
               vector_heap_bytes(f.detect[1]);
    if (f.session) n += f.session->memory_bytes();
    return n;
  }

  void recharge(Flow& f) {
    const size_t n = flow_bytes(f);
    mem_flows -= f.charged;
    mem_flows += n;
    f.charged = n;
  }

  size_t mem_datagrams() const {
    size_t n = 0;
    for (auto& d : datagram_sessions) n += d->memory_bytes();
    return n;
  }

  size_t mem_total() const { return mem_flows + mem_datagrams() + flows.bucket_count() * sizeof(void*); }

  void note_memory() {
    const size_t total = mem_total();
    m.memory_bytes = total;
    if (total > m.memory_peak_bytes) m.memory_peak_bytes = total;
  }

  void count_shed(ShedReason r, size_t before, size_t after) {
    m.shed[static_cast<size_t>(r)]++;
    m.shed_bytes[static_cast<size_t>(r)] += before > after ? before - after : 0;
  }

  void mark_shed(Flow& f, int side) {
    if (f.session && f.client >= 0)
      f.session->mark_shed(dir_of(side, f.client));
    else
      f.shed_pending[side] = true;
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
        mark_shed(f, s);
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
      if (!f.session || !f.session->shed_bodies()) continue;
      const size_t before = f.charged;
      recharge(f);
      count_shed(ShedReason::Body, before, f.charged);
    }
    // 3. Bytes not parsed yet: detection buffers, an incomplete header
    //    block (reported as an incomplete call when there is enough of it),
    //    a DNS-over-TCP message in progress.
    for (auto it = lru.rbegin(); it != lru.rend() && over(); ++it) {
      Flow& f = **it;
      bool any = false;
      for (int s = 0; s < 2; s++)
        if (f.detect[s].capacity()) {
          if (!f.detect[s].empty()) f.shed_pending[s] = true;
          release(f.detect[s]);
          any = true;
        }
      if (f.session && f.session->shed_buffers(f.last_ts)) any = true;
      if (!any) continue;
      const size_t before = f.charged;
      recharge(f);
      count_shed(ShedReason::Buffer, before, f.charged);
    }
    // 4. DNS queries waiting for an answer (then ICMP echo requests), oldest first.
    for (auto& d : datagram_sessions)
      while (over()) {
        const size_t before = d->memory_bytes();
        if (!d->shed_one()) break;
        count_shed(ShedReason::DnsQuery, before, d->memory_bytes());
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

  Slot& slot(const char* name) {
    for (Slot& s : slots)
      if (s.name == name) return s;
    slots.push_back({name, &m.calls[name], &m.durations[name]});
    return slots.back();
  }

  void emit(Call&& c) {
    if (suppressing) {
      if (cur_pos <= suppress_pos) {
        suppressed++;
        return;
      }
      suppressing = false;
    }
    Slot& s = slot(c.protocol);
    ++*s.calls;
    if (const int64_t us = c.duration_us(); us >= 0) s.duration->observe(static_cast<double>(us) / 1e6);
    if (c.has_request() && !c.has_response()) m.calls_without_response++;
    if (c.flags & kFlagOrphanResponse) m.orphan_responses++;
    sink(std::move(c));
  }

  void emit_stream(Flow& f, proto::CallContent&& content) {
    Call c;
    static_cast<proto::CallContent&>(c) = std::move(content);
    const int client = f.client < 0 ? 0 : f.client;
    c.src = endpoint_of(f.key, client);
    c.dst = endpoint_of(f.key, 1 - client);
    c.l4_proto = kTcp;
    c.key = call_key(f.key, f.client, c.ts_ns, c.key_extra);
    emit(std::move(c));
  }

  void emit(proto::CallContent&& content, const FlowKey& key, int client_side) override {
    Call c;
    static_cast<proto::CallContent&>(c) = std::move(content);
    c.src = endpoint_of(key, client_side);
    c.dst = endpoint_of(key, 1 - client_side);
    c.l4_proto = key.l4;
    c.key = call_key(key, client_side, c.ts_ns, c.key_extra);
    emit(std::move(c));
  }

  // -------------------------------------------------------------- UDP --

  void udp(const Packet& p) {
    m.udp_datagrams++;
    // A first IP fragment holds only part of its datagram: not a whole message.
    if (udp_sessions.empty() ||
        (p.meta.flags & (TW_PKT_F_CONTINUATION | TW_PKT_F_TRUNCATED | TW_PKT_F_MORE | TW_PKT_F_FRAGMENT)))
      return;
    int src_side;
    const FlowKey k = make_flow_key(p.meta, src_side);
    proto::Datagram d;
    d.payload = p.payload;
    d.wire_len = std::max<size_t>(p.meta.payload_len, p.payload.size());
    d.ts_ns = p.meta.ts_ns;
    d.key = &k;
    d.src_side = src_side;
    d.pos = {p.pos.segment, p.pos.offset};
    for (auto* s : udp_sessions)
      if (s->datagram(d)) break;
  }

  // ------------------------------------------------------------- ICMP --

  // An ICMP or ICMPv6 message, whole (its header is the payload's start);
  // only the first chunk of a large one (its header and what follows).
  void icmp(const Packet& p) {
    m.icmp_messages++;
    if (icmp_sessions.empty() || (p.meta.flags & (TW_PKT_F_CONTINUATION | TW_PKT_F_FRAGMENT)) || p.meta.chunk_off)
      return;
    int src_side;
    const FlowKey k = make_flow_key(p.meta, src_side);
    proto::Datagram d;
    d.payload = p.payload;
    d.wire_len = std::max<size_t>(p.meta.payload_len, p.payload.size());
    d.ts_ns = p.meta.ts_ns;
    d.key = &k;
    d.src_side = src_side;
    d.pos = {p.pos.segment, p.pos.offset};
    for (auto* s : icmp_sessions)
      if (s->datagram(d)) break;
  }

  // -------------------------------------------------------------- TCP --

  void start(Flow& f, const proto::ProtocolInfo& p, int client) {
    if (f.syn_client >= 0) client = f.syn_client;  // the handshake is the better witness
    if (client < 0) client = f.key.port[0] < f.key.port[1] ? 1 : 0;  // the lower port serves
    f.client = client;
    f.state = FlowState::Active;
    f.session = p.stream->open(f);
    for (int s = 0; s < 2; s++)
      if (f.shed_pending[s]) {
        f.session->mark_shed(dir_of(s, client));
        f.shed_pending[s] = false;
      }
    // Replay what was held, the client's side first (its requests tell the
    // response parser about HEAD and CONNECT).
    std::vector<uint8_t> bufs[2] = {std::move(f.detect[0]), std::move(f.detect[1])};
    release(f.detect[0]);
    release(f.detect[1]);
    for (int s : {client, 1 - client})
      if (!bufs[s].empty()) f.session->data(dir_of(s, client), bufs[s], f.last_ts);
  }

  void detect(Flow& f, int side) {
    auto& a = f.detect[side];
    std::span<const uint8_t> s(a);
    proto::FlowView view;
    view.port[0] = f.key.port[0];
    view.port[1] = f.key.port[1];
    bool waiting = false;
    for (const proto::ProtocolInfo* p : stream_protocols) {
      proto::Detection d = p->stream->detect(s, side, view);
      if (d.need_more) {
        waiting = true;
        break;
      }
      if (d.matched) return start(f, *p, d.client_side);
    }
    if (a.size() >= opts.max_detect_bytes || (!waiting && a.size() >= 64 && f.detect[1 - side].size() >= 64)) {
      f.state = FlowState::Ignored;
      m.flows_ignored++;
      release(f.detect[0]);
      release(f.detect[1]);
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
        if (f.state != FlowState::Detecting && data.size() > room) stream_data(f, side, 0, data.subspan(room), ts);
        break;
      }
      case FlowState::Active:
        f.session->data(dir_of(side, f.client), data, ts);
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
      case FlowState::Active:
        f.session->gap(dir_of(side, f.client), len);
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
    f->impl = this;
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
    if (f.session) f.session->close(why, f.last_ts);
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
      if (f.session) f.session->end(dir_of(side, f.client), f.last_ts);
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
      if (f->session) {
        f->session->expire(now);
        buffered += f->session->buffered_bytes();
        recharge(*f);
      }
    }
    m.buffered_bytes = buffered;
    m.flows_active = flows.size();
    for (auto& d : datagram_sessions) d->expire(now);
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
    else if (p.meta.l4_proto == kIcmp || p.meta.l4_proto == kIcmp6)
      icmp(p);
    note_memory();  // the peak before shedding: how far one packet took it
    if (opts.memory_limit && m.memory_bytes > opts.memory_limit) {
      shed();
      note_memory();
    }
    advance(p.meta.ts_ns);
  }

  void finish() {
    while (!lru.empty()) close_flow(*lru.back(), kFlagClosed);
    for (auto& d : datagram_sessions) d->close_all();
    m.flows_active = 0;
    m.buffered_bytes = 0;
    note_memory();
  }
};

Dissector::Dissector(DissectorOptions opts, CallSink sink) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  impl_->sink = std::move(sink);
  impl_->init();
}

Dissector::~Dissector() = default;

void Dissector::packet(const Packet& p) { impl_->packet(p); }
void Dissector::advance_time(uint64_t now_ns) { impl_->advance(now_ns); }
void Dissector::finish() { impl_->finish(); }
uint64_t Dissector::packets() const { return impl_->m.packets; }

const DissectorMetrics& Dissector::metrics() const {
  impl_->sync_metrics();
  return impl_->m;
}

SourcePosition Dissector::resume_position(SourcePosition current) const {
  SourcePosition r = current;
  for (auto& [k, f] : impl_->flows)  // flows of no supported protocol hold no state worth rebuilding
    if (f->state != Impl::FlowState::Ignored && f->first_pos < r) r = f->first_pos;
  for (auto& d : impl_->datagram_sessions) {
    proto::Position p;
    if (d->oldest(p) && SourcePosition{p.segment, p.offset} < r) r = SourcePosition{p.segment, p.offset};
  }
  return r;
}

void Dissector::suppress_through(SourcePosition pos) {
  impl_->suppress_pos = pos;
  impl_->suppressing = true;
}

uint64_t Dissector::suppressed() const { return impl_->suppressed; }

}  // namespace tapwire::dissect
