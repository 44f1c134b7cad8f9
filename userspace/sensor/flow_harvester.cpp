#include "flow_harvester.hpp"

#include <bpf/bpf.h>
#include <netinet/in.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "clock.hpp"

namespace tapwire::sensor {
namespace {

constexpr uint32_t kBatch = 4096;  // entries per batch lookup

int proto_index(const tw_flow_key& k) { return k.l4_proto == IPPROTO_UDP ? 1 : 0; }
const char* proto_name(const tw_flow_key& k) { return k.l4_proto == IPPROTO_UDP ? "udp" : "tcp"; }

uint64_t packets(const tw_flow_state& st) { return st.dir[0].packets + st.dir[1].packets; }

std::string key_bytes(const tw_flow_key& k) { return std::string(reinterpret_cast<const char*>(&k), sizeof k); }

identity::IpKey addr(const tw_flow_key& k, int side) {
  return identity::IpKey::from_wire(k.ip_version, side ? k.addr_b : k.addr_a);
}

constexpr const char* kEndNames[8] = {"none", "fin", "rst", "timeout", "idle", "evicted", "reused", "stopped"};

}  // namespace

// ------------------------------------------------------------ names --

void WorkloadNames::set_node(const std::string& node, const std::vector<identity::IpKey>& addresses) {
  node_ips_.clear();
  for (auto& a : addresses) node_ips_[a] = node;
}

void WorkloadNames::workload(const identity::Workload& w) {
  const auto* pod = std::get_if<identity::PodObject>(&w.object);
  if (!pod) return;
  if (auto it = pods_.find(pod->uid); it != pods_.end()) {
    for (auto& ip : it->second.ips) by_ip_.erase(ip);
    pods_.erase(it);
  }
  // hostNetwork pods share the node's addresses: those stay the node's.
  if (w.op == identity::WorkloadOp::Delete || pod->host_network) return;
  if (pods_.size() >= 1'000'000) return;
  Pod p{pod->namespace_, pod->owner_name.empty() ? pod->name : pod->owner_name, pod->ips};
  for (auto& ip : p.ips) by_ip_[ip] = {p.ns, p.workload};
  pods_[pod->uid] = std::move(p);
}

std::pair<std::string, std::string> WorkloadNames::name(const identity::IpKey& ip) const {
  if (auto it = by_ip_.find(ip); it != by_ip_.end()) return it->second;
  if (auto it = node_ips_.find(ip); it != node_ips_.end()) return {"", it->second};
  return {"", ""};
}

// ---------------------------------------------------------- harvester --

FlowHarvester::FlowHarvester(FlowHarvesterOptions opts, int flows_fd, int ends_fd, uint32_t max_flows)
    : opts_(std::move(opts)), flows_fd_(flows_fd), ends_fd_(ends_fd), max_flows_(max_flows) {
  shm::StoreOptions so;
  so.dir = opts_.dir;
  so.storage_size = opts_.storage_size;
  so.segment_size = opts_.segment_size;
  so.max_segment_age_ns = opts_.max_segment_age_ns;
  store_ = std::make_unique<shm::SegmentStore>(so);
  if (ends_fd_ >= 0) ends_ = std::make_unique<BpfRingReader>(ends_fd_, TW_FLOW_ENDS_RING_BYTES);
  batch_keys_.resize(kBatch * sizeof(tw_flow_key));
  batch_values_.resize(kBatch * sizeof(tw_flow_value));
}

FlowHarvester::~FlowHarvester() = default;

void FlowHarvester::set_timeouts(const FlowHarvesterOptions& o) {
  opts_.interval_ns = o.interval_ns;
  opts_.udp_timeout_ns = o.udp_timeout_ns;
  opts_.syn_timeout_ns = o.syn_timeout_ns;
  opts_.tcp_idle_timeout_ns = o.tcp_idle_timeout_ns;
}

uint8_t FlowHarvester::end_reason(const tw_flow_key& k, const tw_flow_state& st, uint64_t now_mono,
                                  const FlowHarvesterOptions& o) {
  const uint64_t idle = now_mono > st.last_ns ? now_mono - st.last_ns : 0;
  if (k.l4_proto == IPPROTO_UDP) return idle >= o.udp_timeout_ns ? TW_FLOW_END_TIMEOUT : TW_FLOW_END_NONE;
  const bool fin_both = st.dir[0].fins && st.dir[1].fins;
  const bool fin_any = st.dir[0].fins || st.dir[1].fins;
  const bool rst = st.dir[0].resets || st.dir[1].resets;
  if ((fin_both || rst) && idle >= o.close_linger_ns)
    return fin_both || (rst && fin_any) ? TW_FLOW_END_FIN : TW_FLOW_END_RST;
  // An unanswered SYN: the client's SYNs only, nothing from the server.
  const int server = (st.bits & TW_FLOW_B_CLIENT_B) ? 0 : 1;
  if (!(st.bits & TW_FLOW_B_MID_STREAM) && st.dir[server].packets == 0 && idle >= o.syn_timeout_ns)
    return TW_FLOW_END_TIMEOUT;
  return idle >= o.tcp_idle_timeout_ns ? TW_FLOW_END_IDLE : TW_FLOW_END_NONE;
}

bool FlowHarvester::handshake_completed(const tw_flow_key& k, const tw_flow_state& st) {
  if (k.l4_proto == IPPROTO_TCP && (st.bits & TW_FLOW_B_ESTABLISHED)) return true;
  // UDP, and TCP joined without its handshake: both sides talked.
  if (k.l4_proto == IPPROTO_UDP || (st.bits & TW_FLOW_B_MID_STREAM))
    return st.dir[0].packets && st.dir[1].packets;
  return false;
}

FlowHarvester::Tracked& FlowHarvester::track(const tw_flow_key& k, const tw_flow_state& st, uint64_t mono_to_real,
                                             bool* is_new) {
  auto [it, inserted] = tracked_.try_emplace(key_bytes(k));
  Tracked& t = it->second;
  *is_new = inserted || t.first_mono != st.first_ns;
  if (*is_new) {
    // A new flow, or a new one in the same entry (its reuse record was lost).
    t = Tracked{};
    t.first_mono = st.first_ns;
    t.first_real = st.first_ns + mono_to_real;
    t.flow_id = tw_flow_id(&k, t.first_real);
    st_.created[proto_index(k)]++;
  }
  return t;
}

void FlowHarvester::account_metrics(const tw_flow_key& k, const tw_flow_state& st, Tracked& t, bool is_new) {
  const uint64_t p = packets(st), b = st.dir[0].bytes + st.dir[1].bytes;
  const uint64_t r = st.dir[0].resets + st.dir[1].resets;
  const uint64_t x = tw_flow_retransmissions(&st.dir[0]) + tw_flow_retransmissions(&st.dir[1]);
  PairCounters d;
  d.packets = p - std::min(p, t.m_packets);
  d.bytes = b - std::min(b, t.m_bytes);
  d.resets = r - std::min(r, t.m_resets);
  d.retransmissions = x - std::min(x, t.m_retrans);
  d.connections = is_new ? 1 : 0;
  t.m_packets = p, t.m_bytes = b, t.m_resets = r, t.m_retrans = x;
  if (!d.packets && !d.bytes && !d.connections && !d.resets && !d.retransmissions) return;
  const int client = (st.bits & TW_FLOW_B_CLIENT_B) ? 1 : 0;
  auto [sns, swl] = names_.name(addr(k, client));
  auto [dns, dwl] = names_.name(addr(k, client ^ 1));
  PairKey key{sns, swl, dns, dwl, proto_name(k)};
  auto it = pairs_.find(key);
  if (it == pairs_.end()) {
    if (pairs_.size() >= opts_.metrics_max_pairs) {
      st_.pairs_folded++;
      key = PairKey{"_other", "", "", "", proto_name(k)};
    }
    it = pairs_.try_emplace(key).first;
  }
  it->second.bytes += d.bytes;
  it->second.packets += d.packets;
  it->second.connections += d.connections;
  it->second.resets += d.resets;
  it->second.retransmissions += d.retransmissions;
}

void FlowHarvester::write(const tw_flow_key& k, const tw_flow_state& st, Tracked& t, uint8_t end, uint64_t now_real,
                          uint64_t mono_to_real) {
  tw_seg_flow rec{};
  rec.ts_ns = now_real;
  rec.flow_id = t.flow_id;
  rec.key = k;
  rec.end = end;
  rec.st = st;
  // The kernel's clock (CLOCK_MONOTONIC) to the stream's (CLOCK_REALTIME);
  // first_ns as at the flow's first record, so that it never moves.
  auto real = [&](uint64_t v) { return v ? v + mono_to_real : 0; };
  rec.st.first_ns = t.first_real;
  rec.st.last_ns = std::max(real(st.last_ns), t.first_real);
  rec.st.mru_syn_ns = real(st.mru_syn_ns);
  for (auto& d : rec.st.dir) {
    d.nextseq_ns = real(d.nextseq_ns);
    d.lastack_ns = real(d.lastack_ns);
  }
  rec.st.harvest = t.records;
  auto* b = reinterpret_cast<const uint8_t*>(&rec);
  if (store_->append(TW_REC_FLOW, {b, sizeof rec}, {}, now_real)) {
    st_.records++;
    if (t.records < 2) t.records++;
  } else {
    st_.write_failures++;
  }
  if (end < 8) st_.ended[end] += end ? 1 : 0;
}

namespace {

// A copy taken while no program held the entry, nor took it during the copy
// (tapwire_abi.h, struct tw_flow_value).
bool consistent(const tw_flow_value& v) { return v.seq == v.seq_end && !(v.seq & 1); }

}  // namespace

// Reads one entry again until the copy is consistent (a few tries: an
// update holds the entry for well under a microsecond); false if it is gone.
bool FlowHarvester::read_one(const tw_flow_key& k, tw_flow_value& v) {
  for (int i = 0; i < 16; i++) {
    if (bpf_map_lookup_elem(flows_fd_, &k, &v) != 0) return false;
    if (consistent(v)) return true;
  }
  st_.torn_reads++;  // busy all along: this copy now, the next harvest has the rest
  return true;
}

bool FlowHarvester::read_all(std::vector<std::pair<tw_flow_key, tw_flow_state>>& out) {
  out.clear();
  bpf_map_batch_opts o{};
  o.sz = sizeof o;
  uint32_t in = 0, next = 0;
  bool first = true;
  for (;;) {
    uint32_t count = kBatch;
    int rc = bpf_map_lookup_batch(flows_fd_, first ? nullptr : &in, &next, batch_keys_.data(), batch_values_.data(),
                                  &count, &o);
    const int err = rc < 0 ? errno : 0;
    if (rc < 0 && err != ENOENT) break;  // ENOSPC, EINVAL (no batch ops): the key walk below
    for (uint32_t i = 0; i < count; i++) {
      tw_flow_key k;
      tw_flow_value v;
      std::memcpy(&k, batch_keys_.data() + i * sizeof k, sizeof k);
      std::memcpy(&v, batch_values_.data() + i * sizeof v, sizeof v);
      if (!consistent(v) && !read_one(k, v)) continue;  // deleted since
      out.emplace_back(k, v.st);
    }
    if (err == ENOENT) return true;
    in = next;
    first = false;
    if (out.size() > static_cast<size_t>(max_flows_) * 2) return true;  // cannot happen: a table changing under us
  }
  // One key at a time.
  out.clear();
  tw_flow_key k{}, nk{};
  void* prev = nullptr;
  while (bpf_map_get_next_key(flows_fd_, prev, &nk) == 0 && out.size() <= max_flows_) {
    tw_flow_value v{};
    if (read_one(nk, v)) out.emplace_back(nk, v.st);
    k = nk;
    prev = &k;
  }
  return true;
}

// Deletes a flow unless a packet came since it was read (then it lives on).
bool FlowHarvester::remove(const tw_flow_key& k, const tw_flow_state& seen) {
  tw_flow_value v{};
  if (!read_one(k, v)) return true;  // gone already
  if (v.st.first_ns != seen.first_ns || packets(v.st) != packets(seen)) return false;
  if (bpf_map_delete_elem(flows_fd_, &k) != 0 && errno != ENOENT) {
    st_.delete_failures++;
    return false;
  }
  return true;
}

void FlowHarvester::drain_ends(uint64_t mono_to_real) {
  if (!ends_) return;
  const uint64_t now_real = clock_ns(CLOCK_REALTIME);
  for (auto rec = ends_->peek(); !rec.empty(); rec = ends_->peek()) {
    if (rec.size() >= sizeof(tw_flow_end_rec)) {
      tw_flow_end_rec e;
      std::memcpy(&e, rec.data(), sizeof e);
      bool is_new = false;
      Tracked& t = track(e.key, e.st, mono_to_real, &is_new);
      account_metrics(e.key, e.st, t, is_new);
      write(e.key, e.st, t, TW_FLOW_END_REUSED, now_real, mono_to_real);
      tracked_.erase(key_bytes(e.key));  // the entry holds the new flow now
    }
    ends_->advance();
  }
  ends_->release();
}

void FlowHarvester::harvest(uint64_t now_mono, uint64_t mono_to_real) {
  const uint64_t t0 = clock_ns(CLOCK_MONOTONIC);
  const uint64_t now_real = now_mono + mono_to_real;
  drain_ends(mono_to_real);
  std::vector<std::pair<tw_flow_key, tw_flow_state>> all;
  read_all(all);
  for (auto& [kb, t] : tracked_) t.seen = false;
  uint64_t active[2] = {0, 0};
  struct Candidate {
    size_t index;
    bool completed;
    uint64_t order;  // first_ns (never completed) or last_ns (idle longest)
  };
  std::vector<Candidate> live;
  live.reserve(all.size());
  for (size_t i = 0; i < all.size(); i++) {
    const auto& [k, st] = all[i];
    bool is_new = false;
    Tracked& t = track(k, st, mono_to_real, &is_new);
    t.seen = true;
    account_metrics(k, st, t, is_new);
    const uint8_t end = end_reason(k, st, now_mono, opts_);
    if (end != TW_FLOW_END_NONE) {
      if (remove(k, st)) {
        write(k, st, t, end, now_real, mono_to_real);
        tracked_.erase(key_bytes(k));
        continue;
      }
    }
    active[proto_index(k)]++;
    const bool completed = handshake_completed(k, st);
    live.push_back({i, completed, completed ? st.last_ns : st.first_ns});
    if (!t.last_record_mono || (packets(st) != t.packets_recorded && now_mono - t.last_record_mono >= opts_.interval_ns)) {
      write(k, st, t, TW_FLOW_END_NONE, now_real, mono_to_real);
      t.last_record_mono = now_mono;
      t.packets_recorded = packets(st);
    }
  }
  // Nearly full: evict, the flows that never completed a handshake oldest
  // first, then the flows idle longest, down to 75%.
  const uint64_t n = live.size();
  if (n * 10 > static_cast<uint64_t>(max_flows_) * 9) {
    const uint64_t target = static_cast<uint64_t>(max_flows_) * 3 / 4;
    std::sort(live.begin(), live.end(), [](const Candidate& a, const Candidate& b) {
      if (a.completed != b.completed) return !a.completed;
      return a.order < b.order;
    });
    uint64_t left = n;
    for (auto& c : live) {
      if (left <= target) break;
      const auto& [k, st] = all[c.index];
      if (bpf_map_delete_elem(flows_fd_, &k) != 0) continue;
      auto it = tracked_.find(key_bytes(k));
      if (it != tracked_.end()) {
        write(k, st, it->second, TW_FLOW_END_EVICTED, now_real, mono_to_real);
        tracked_.erase(it);
      }
      st_.evicted_table_full++;
      active[proto_index(k)]--;
      left--;
    }
  }
  // Entries gone without a final record from here (cannot happen but for a
  // table changed behind the sensor's back): forgotten.
  std::erase_if(tracked_, [](const auto& e) { return !e.second.seen; });
  st_.active[0] = active[0];
  st_.active[1] = active[1];
  store_->publish();
  st_.harvests++;
  st_.last_harvest_us = (clock_ns(CLOCK_MONOTONIC) - t0) / 1000;
}

void FlowHarvester::stop(uint64_t now_mono, uint64_t mono_to_real) {
  drain_ends(mono_to_real);
  std::vector<std::pair<tw_flow_key, tw_flow_state>> all;
  read_all(all);
  const uint64_t now_real = now_mono + mono_to_real;
  for (auto& [k, st] : all) {
    bool is_new = false;
    Tracked& t = track(k, st, mono_to_real, &is_new);
    account_metrics(k, st, t, is_new);
    write(k, st, t, TW_FLOW_END_STOPPED, now_real, mono_to_real);
  }
  tracked_.clear();
  st_.active[0] = st_.active[1] = 0;
  store_->publish();
}

nlohmann::json FlowHarvester::status(const tw_counters& kernel, bool with_pairs) const {
  nlohmann::json ended = nlohmann::json::object();
  for (int i = 1; i < 8; i++) ended[kEndNames[i]] = st_.ended[i];
  auto ss = store_->stats();
  nlohmann::json j = {
      {"enabled", true},
      {"max_flows", max_flows_},
      {"active", {{"tcp", st_.active[0]}, {"udp", st_.active[1]}}},
      {"created", {{"tcp", st_.created[0]}, {"udp", st_.created[1]}}},
      {"kernel_created", kernel.stat[TW_STAT_FLOWS_CREATED]},
      {"evicted", {{"table_full", st_.evicted_table_full}, {"reuse_ring_full", kernel.stat[TW_STAT_FLOW_ENDS_LOST]}}},
      {"untracked_packets", kernel.stat[TW_STAT_FLOW_UNTRACKED]},
      {"ended", ended},
      {"records", st_.records},
      {"write_failures", st_.write_failures},
      {"harvests", st_.harvests},
      {"last_harvest_us", st_.last_harvest_us},
      {"pairs", pairs_.size()},
      {"pairs_folded", st_.pairs_folded},
      {"stream",
       {{"dir", opts_.dir}, {"segments", ss.segments}, {"bytes_stored", ss.bytes_stored},
        {"records", ss.records_written}, {"append_failures", ss.append_failures}}},
  };
  if (with_pairs) {
    nlohmann::json series = nlohmann::json::array();
    for (auto& [k, c] : pairs_)
      series.push_back({{"src_namespace", std::get<0>(k)},
                        {"src_workload", std::get<1>(k)},
                        {"dst_namespace", std::get<2>(k)},
                        {"dst_workload", std::get<3>(k)},
                        {"protocol", std::get<4>(k)},
                        {"bytes", c.bytes},
                        {"packets", c.packets},
                        {"connections", c.connections},
                        {"resets", c.resets},
                        {"retransmissions", c.retransmissions}});
    j["pair_series"] = std::move(series);
  }
  return j;
}

}  // namespace tapwire::sensor
