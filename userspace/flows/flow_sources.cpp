#include "flow_sources.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

#include "call_identity.hpp"
#include "packet_source.hpp"

namespace tapwire::flows {

std::string flows_dir_for_segments(const std::string& segments_dir) {
  std::string d = segments_dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  if (d.size() >= 9 && d.compare(d.size() - 9, 9, "/segments") == 0) return d.substr(0, d.size() - 9) + "/flows";
  if (d == "segments") return "flows";
  return d + "/flows";
}

FlowStream::FlowStream(std::string dir, bool follow) : dir_(std::move(dir)), follow_(follow) {}

bool FlowStream::open_next() {
  for (auto& s : shm::list_segments(dir_)) {
    if (started_ && s.seq < next_seq_) continue;
    try {
      reader_.emplace(shm::SegmentReader::open(s.path));
    } catch (const shm::SegmentError& e) {
      if (!follow_) {
        error_ = e.what();
        next_seq_ = s.seq + 1;
        started_ = true;
        continue;
      }
      continue;
    }
    if (started_ && s.seq > next_seq_) missed_ += s.seq - next_seq_;
    current_seq_ = s.seq;
    started_ = true;
    return true;
  }
  return false;
}

std::optional<tw_seg_flow> FlowStream::next() {
  for (int guard = 0; guard < 1 << 20; guard++) {
    if (!reader_ && !open_next()) return std::nullopt;
    auto rec = reader_->next();
    if (!rec) {
      if (reader_->corrupt()) error_ = reader_->path() + ": damaged record; skipped the rest of the segment";
      if (reader_->corrupt() || reader_->exhausted() || !follow_) {
        reader_.reset();
        next_seq_ = current_seq_ + 1;
        continue;
      }
      return std::nullopt;  // the open segment: more may come
    }
    if (rec->type != TW_REC_FLOW) continue;
    if (rec->body.size() < sizeof(tw_seg_flow)) {
      skipped_++;
      continue;
    }
    tw_seg_flow f;
    std::memcpy(&f, rec->body.data(), sizeof f);
    return f;
  }
  return std::nullopt;
}

bool in_window(const tw_seg_flow& r, uint64_t from_ns, uint64_t to_ns) {
  if (from_ns && r.st.last_ns < from_ns) return false;
  if (to_ns && r.st.first_ns > to_ns) return false;
  return true;
}

std::vector<tw_seg_flow> read_flow_dir(const std::string& dir, uint64_t from_ns, uint64_t to_ns,
                                       std::string* warning) {
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw std::runtime_error(dir + ": no flow directory");
  std::unordered_map<uint64_t, size_t> at;
  std::vector<tw_seg_flow> out;
  // Segments wholly outside the window hold no record of a flow in it only
  // if the flow's records were all written outside it; records are written
  // while the flow lives, so a segment is skipped by record time only when
  // it ends before `from` (a later record of the same flow would be in a
  // later segment).
  for (auto& s : shm::list_segments(dir)) {
    std::optional<shm::SegmentReader> r;
    try {
      r.emplace(shm::SegmentReader::open(s.path));
    } catch (const shm::SegmentError& e) {
      if (warning) *warning = e.what();
      continue;
    }
    const tw_seg_header& h = r->header();
    if (from_ns && h.record_count && h.sealed_ns && h.last_ts_ns < from_ns) continue;
    while (auto rec = r->next()) {
      if (rec->type != TW_REC_FLOW || rec->body.size() < sizeof(tw_seg_flow)) continue;
      tw_seg_flow f;
      std::memcpy(&f, rec->body.data(), sizeof f);
      auto [it, fresh] = at.emplace(f.flow_id, out.size());
      if (fresh)
        out.push_back(f);
      else if (f.ts_ns >= out[it->second].ts_ns || f.end)
        out[it->second] = f;  // the last record holds the totals
    }
    if (r->corrupt() && warning) *warning = s.path + ": damaged record; read the records before it";
  }
  std::vector<tw_seg_flow> kept;
  for (auto& f : out)
    if (in_window(f, from_ns, to_ns)) kept.push_back(f);
  return kept;
}

std::vector<tw_seg_flow> flows_from_pcap(const std::string& path, const TrackerOptions& opts, PassiveDns* dns,
                                         std::string* warning, TrackerStats* stats) {
  auto src = dissect::open_pcap_source(path);
  std::vector<tw_seg_flow> out;
  FlowTracker tracker(opts, [&](const tw_seg_flow& r) { out.push_back(r); });
  dissect::Packet p;
  while (src->next(p) == dissect::PacketSource::Next::Packet) {
    tracker.packet(p.meta, p.wire_len);
    if (dns && p.meta.l4_proto == 17 && p.meta.sport == 53 && p.meta.cap_len == p.meta.payload_len)
      dns->add_payload(p.payload, p.meta.ts_ns);
  }
  tracker.finish();
  if (warning) *warning = src->error();
  if (stats) *stats = tracker.stats();
  return out;
}

void scan_segments_dns(const std::string& seg_dir, uint64_t from_ns, uint64_t to_ns, PassiveDns& dns) {
  for (auto& s : shm::list_segments(seg_dir)) {
    std::optional<shm::SegmentReader> r;
    try {
      r.emplace(shm::SegmentReader::open(s.path));
    } catch (const shm::SegmentError&) {
      continue;
    }
    const tw_seg_header& h = r->header();
    if (h.record_count && ((from_ns && h.last_ts_ns < from_ns) || (to_ns && h.first_ts_ns > to_ns))) continue;
    while (auto rec = r->next()) {
      if (rec->type != TW_REC_PACKET || rec->body.size() < sizeof(tw_pkt)) continue;
      const uint8_t* b = rec->body.data();
      // Header-only check before anything is copied or parsed.
      uint8_t l4 = b[offsetof(tw_pkt, l4_proto)];
      uint16_t sport;
      std::memcpy(&sport, b + offsetof(tw_pkt, sport), 2);
      if (l4 != 17 || sport != 53) continue;
      tw_pkt m;
      std::memcpy(&m, b, sizeof m);
      if ((from_ns && m.ts_ns < from_ns) || (to_ns && m.ts_ns > to_ns)) continue;
      if (m.chunk_off != 0 || m.cap_len != m.payload_len || m.cap_len > rec->body.size() - sizeof(tw_pkt)) continue;
      dns.add_payload(rec->body.subspan(sizeof(tw_pkt), m.cap_len), m.ts_ns);
    }
  }
}

struct FlowNamer::Impl {
  std::optional<dissect::CallIdentity> ident;
  const PassiveDns* dns = nullptr;
};

FlowNamer::FlowNamer(const std::string& identity_dir, const PassiveDns* dns) : impl_(std::make_unique<Impl>()) {
  struct stat st {};
  if (!identity_dir.empty() && stat(identity_dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    impl_->ident.emplace(identity_dir, false);
  impl_->dns = dns;
}

FlowNamer::~FlowNamer() = default;

Flow FlowNamer::name(const tw_seg_flow& r) {
  Flow f = flow_from_record(r);
  if (impl_->ident) {
    dissect::Call c;
    c.l4_proto = r.key.l4_proto;
    c.ts_ns = r.st.first_ns;
    c.src = f.client;
    c.dst = f.server;
    impl_->ident->at(c.ts_ns);
    impl_->ident->annotate(c);
    f.client.identity = c.src.identity;
    f.server.identity = c.dst.identity;
    f.node = c.node;
  }
  if (impl_->dns) {
    f.client.names = impl_->dns->names_at(f.client.ip(), r.st.first_ns);
    f.server.names = impl_->dns->names_at(f.server.ip(), r.st.first_ns);
  }
  return f;
}

void sort_by_first_seen(std::vector<tw_seg_flow>& recs) {
  std::stable_sort(recs.begin(), recs.end(),
                   [](const tw_seg_flow& a, const tw_seg_flow& b) { return a.st.first_ns < b.st.first_ns; });
}

std::vector<Flow> annotate(const std::vector<tw_seg_flow>& recs, const std::string& identity_dir, const PassiveDns* dns) {
  std::vector<tw_seg_flow> sorted = recs;
  sort_by_first_seen(sorted);
  FlowNamer namer(identity_dir, dns);
  std::vector<Flow> out;
  out.reserve(sorted.size());
  for (auto& r : sorted) out.push_back(namer.name(r));
  return out;
}

}  // namespace tapwire::flows
