#include "flow_tracker.hpp"

#include <cstring>

namespace tapwire::flows {

bool flow_key_of(const tw_pkt& p, tw_flow_key& key, uint8_t& side) {
  if (p.l4_proto != 6 && p.l4_proto != 17) return false;
  key = tw_flow_key{};
  key.ip_version = p.ip_version;
  key.l4_proto = p.l4_proto;
  const size_t alen = p.ip_version == 6 ? 16 : 4;
  int c = std::memcmp(p.saddr, p.daddr, alen);
  if (c == 0) c = p.sport < p.dport ? -1 : (p.sport > p.dport ? 1 : 0);
  const bool src_is_a = c <= 0;
  side = src_is_a ? TW_SIDE_A : TW_SIDE_B;
  std::memcpy(key.addr_a, src_is_a ? p.saddr : p.daddr, alen);
  std::memcpy(key.addr_b, src_is_a ? p.daddr : p.saddr, alen);
  key.port_a = src_is_a ? p.sport : p.dport;
  key.port_b = src_is_a ? p.dport : p.sport;
  return true;
}

uint8_t end_at_stop(const tw_flow_key& key, const tw_flow_state& st) {
  if (key.l4_proto != 6) return TW_FLOW_END_STOPPED;
  const tw_flow_dir &a = st.dir[0], &b = st.dir[1];
  if (a.resets || b.resets) return TW_FLOW_END_RST;
  if (a.fins && b.fins) return TW_FLOW_END_FIN;
  const unsigned server = (st.bits & TW_FLOW_B_CLIENT_B) ? TW_SIDE_A : TW_SIDE_B;
  if (!(st.bits & (TW_FLOW_B_SYNACK | TW_FLOW_B_MID_STREAM)) && st.dir[server].packets == 0)
    return TW_FLOW_END_TIMEOUT;  // an unanswered SYN
  return TW_FLOW_END_STOPPED;
}

namespace {

struct KeyHash {
  size_t operator()(const tw_flow_key& k) const {
    const auto* b = reinterpret_cast<const unsigned char*>(&k);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < sizeof k; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return static_cast<size_t>(h);
  }
};
struct KeyEq {
  bool operator()(const tw_flow_key& x, const tw_flow_key& y) const { return std::memcmp(&x, &y, sizeof x) == 0; }
};

struct Entry {
  tw_flow_key key;
  tw_flow_state st;
};

}  // namespace

struct FlowTracker::Impl {
  TrackerOptions opts;
  Sink sink;
  std::list<Entry> lru;  // least recently active first
  std::unordered_map<tw_flow_key, std::list<Entry>::iterator, KeyHash, KeyEq> index;

  void emit(const Entry& e, uint8_t end) {
    tw_seg_flow r{};
    r.ts_ns = e.st.last_ns;
    r.flow_id = tw_flow_id(&e.key, e.st.first_ns);
    r.key = e.key;
    r.end = end;
    r.st = e.st;
    if (sink) sink(r);
  }
};

FlowTracker::FlowTracker(TrackerOptions opts, Sink sink) : impl_(std::make_unique<Impl>()) {
  impl_->opts = opts;
  if (impl_->opts.max_flows == 0) impl_->opts.max_flows = 1;
  impl_->sink = std::move(sink);
}

FlowTracker::~FlowTracker() = default;

void FlowTracker::packet(const tw_pkt& meta, uint32_t wire_len) {
  tw_flow_key key;
  uint8_t side;
  if (!flow_key_of(meta, key, side)) {
    stats_.other++;
    return;
  }
  stats_.packets++;
  tw_flow_pkt p{};
  p.ts_ns = meta.ts_ns;
  p.wire_len = wire_len;
  p.payload_len = meta.payload_len;
  p.seq = meta.seq;
  p.ack = meta.ack;
  p.window = meta.window;
  p.ifindex = meta.ifindex;
  p.sport = meta.sport;
  p.dport = meta.dport;
  p.tcp_flags = meta.tcp_flags;
  p.side = side;

  Impl& m = *impl_;
  auto start = [&]() -> Entry& {
    while (m.index.size() >= m.opts.max_flows && !m.lru.empty()) {
      Entry& old = m.lru.front();
      m.emit(old, TW_FLOW_END_EVICTED);
      stats_.evicted++;
      m.index.erase(old.key);
      m.lru.pop_front();
    }
    m.lru.push_back(Entry{key, tw_flow_state{}});
    m.index[key] = std::prev(m.lru.end());
    stats_.flows++;
    Entry& e = m.lru.back();
    tw_flow_init(&e.st, &p, key.l4_proto);
    return e;
  };

  auto it = m.index.find(key);
  bool is_new = it == m.index.end();
  Entry* e;
  if (is_new) {
    e = &start();
  } else {
    m.lru.splice(m.lru.end(), m.lru, it->second);  // now the most recently active
    e = &*it->second;
  }
  if (key.l4_proto == 17) {
    tw_flow_udp_update(&e->st, &p);
    return;
  }
  if (tw_flow_tcp_update(&e->st, &p, is_new) == TW_FLOW_REUSE) {
    m.emit(*e, TW_FLOW_END_REUSED);
    stats_.reused++;
    m.index.erase(key);
    m.lru.pop_back();
    e = &start();
    tw_flow_tcp_update(&e->st, &p, 1);
  }
}

void FlowTracker::finish() {
  Impl& m = *impl_;
  for (auto& e : m.lru) m.emit(e, end_at_stop(e.key, e.st));
  m.lru.clear();
  m.index.clear();
}

std::vector<tw_seg_flow> FlowTracker::live() const {
  std::vector<tw_seg_flow> out;
  for (auto& e : impl_->lru) {
    tw_seg_flow r{};
    r.ts_ns = e.st.last_ns;
    r.flow_id = tw_flow_id(&e.key, e.st.first_ns);
    r.key = e.key;
    r.st = e.st;
    out.push_back(r);
  }
  return out;
}

size_t FlowTracker::live_count() const { return impl_->index.size(); }

}  // namespace tapwire::flows
