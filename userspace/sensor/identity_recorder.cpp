#include "identity_recorder.hpp"

#include <cstdio>
#include <cstring>
#include <set>

namespace tapwire::sensor {

using identity::CgroupRecord;
using identity::DumpRecord;
using identity::IdentityRecord;
using identity::ProcessRecord;
using identity::SocketRecord;
using identity::WorkloadRecord;

IdentityRecorder::IdentityRecorder(IdentityRecorderOptions opts,
                                   std::function<std::optional<std::string>(uint64_t)> cgroup_path)
    : opts_(std::move(opts)), cgroup_path_(std::move(cgroup_path)) {
  open_store(opts_.segment_size);
}

void IdentityRecorder::open_store(uint64_t segment_size) {
  store_.reset();  // seals the open segment: the next one starts with a dump
  shm::StoreOptions so;
  so.dir = opts_.dir;
  so.storage_size = opts_.storage_size;
  so.segment_size = segment_size;
  so.max_segment_age_ns = opts_.max_segment_age_ns;
  store_ = std::make_unique<shm::SegmentStore>(so);
  segment_size_ = store_->options().segment_size;
  store_->on_open([this](shm::SegmentWriter& w) { dump(w); });
}

IdentityRecorder::~IdentityRecorder() = default;

void IdentityRecorder::append(const IdentityRecord& r) {
  auto [body, type] = identity::encode(r);
  if (store_->append(type, body, {}, identity::record_ts(r)))
    st_.records++;
  else
    st_.write_failures++;
}

void IdentityRecorder::set_self(const identity::SelfObject& self, uint64_t now_ns) {
  if (self == self_) return;
  self_ = self;
  self_ts_ = now_ns;
  append(WorkloadRecord{now_ns, 0, identity::Workload{identity::WorkloadOp::Upsert, self_}});
}

void IdentityRecorder::note_cgroup(uint64_t id, uint64_t ts) {
  if (!id || cgroups_.count(id)) return;
  auto path = cgroup_path_ ? cgroup_path_(id) : std::nullopt;
  if (!path) return;  // gone already, or not on cgroup2: the reader names the node
  if (cgroups_.size() >= opts_.max_cgroups) {
    // Forget cgroups no live socket or process uses.
    std::set<uint64_t> used;
    for (auto& [c, v] : sockets_)
      for (auto& e : v) used.insert(e.cgroup_id);
    for (auto& [t, p] : processes_) used.insert(p.cgroup_id);
    for (auto it = cgroups_.begin(); it != cgroups_.end();)
      if (!used.count(it->first)) {
        it = cgroups_.erase(it);
        st_.evicted++;
      } else {
        ++it;
      }
    if (cgroups_.size() >= opts_.max_cgroups) return;
  }
  CgroupRecord r{ts, id, 0, *path};
  cgroups_[id] = r;
  st_.cgroups = cgroups_.size();
  append(r);
}

void IdentityRecorder::socket(const tw_sock_event& ev) {
  if (ev.type == TW_IDENT_SOCK_OPEN) {
    note_cgroup(ev.cgroup_id, ev.ts_ns);
    auto& v = sockets_[ev.cookie];
    if (v.empty()) {
      if (sockets_.size() > opts_.max_sockets) {  // close events were lost: forget an arbitrary one
        auto victim = sockets_.begin();
        if (victim->first == ev.cookie) ++victim;
        if (victim != sockets_.end()) sockets_.erase(victim);
        st_.evicted++;
      }
    }
    if (v.size() < 16) v.push_back(ev);
  } else {
    sockets_.erase(ev.cookie);
  }
  st_.live_sockets = sockets_.size();
  append(SocketRecord{ev});
}

void IdentityRecorder::process(const ProcessRecord& p) {
  if (p.type == TW_IDENT_EXIT) {
    if (!processes_.erase(p.tgid)) return;  // never recorded (a thread, or before start): nothing to end
  } else {
    note_cgroup(p.cgroup_id, p.ts_ns);
    // At the cap the event is still recorded; only the dumps will not restate it.
    if (processes_.count(p.tgid) || processes_.size() < opts_.max_processes)
      processes_[p.tgid] = p;
    else
      st_.evicted++;
  }
  st_.live_processes = processes_.size();
  append(p);
}

void IdentityRecorder::workload(const identity::Workload& w, uint64_t now_ns) {
  const std::string key = w.state_key();
  if (!key.empty()) {
    if (auto b = object_bytes_.find(key); b != object_bytes_.end()) {
      objects_bytes_ -= b->second;
      object_bytes_.erase(b);
    }
    if (w.op == identity::WorkloadOp::Delete) {
      objects_.erase(key);
    } else {
      auto it = objects_.find(key);
      uint64_t first = it != objects_.end() ? it->second.ts_ns : now_ns;
      if (it == objects_.end() && objects_.size() >= opts_.max_objects) {
        st_.evicted++;  // at the cap the event is still recorded; only the dumps will not restate it
      } else {
        // Kept with the time it was first seen: a dump restates it from then.
        objects_[key] = WorkloadRecord{first, TW_IDENT_REC_F_DUMP, w};
        const uint64_t size = identity::to_json(w).size() + sizeof(tw_seg_workload) + 32;
        object_bytes_[key] = size;
        objects_bytes_ += size;
      }
    }
    st_.objects = objects_.size();
  }
  append(WorkloadRecord{now_ns, 0, w});
}

void IdentityRecorder::dump(shm::SegmentWriter& w) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  const uint64_t now = static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
  uint64_t n = 0, total = 0, bytes = 0;
  bool complete = true;
  // The dump takes at most 3/4 of the segment: the events that follow must
  // fit too, or every one of them would open a new segment with a new dump.
  const uint64_t budget = w.capacity() / 4 * 3;
  auto put = [&](const IdentityRecord& r) {
    auto [body, type] = identity::encode(r);
    bytes += shm::SegmentWriter::record_size(body.size());
    total++;
    if (!complete) return;
    if (w.used() + shm::SegmentWriter::record_size(body.size()) > budget ||
        !w.append(type, body, {}, identity::record_ts(r))) {
      complete = false;
      return;
    }
    n++;
  };
  put(DumpRecord{now, TW_DUMP_BEGIN, 0});
  if (!self_.node.empty())
    put(WorkloadRecord{self_ts_, TW_IDENT_REC_F_DUMP, identity::Workload{identity::WorkloadOp::Upsert, self_}});
  for (auto& [k, o] : objects_) put(o);
  for (auto [id, c] : cgroups_) {
    c.flags = TW_IDENT_REC_F_DUMP;
    put(c);
  }
  for (auto [tgid, p] : processes_) {
    p.flags = TW_IDENT_REC_F_DUMP;
    p.type = TW_PROC_SCAN;
    put(p);
  }
  for (auto& [cookie, v] : sockets_)
    for (auto e : v) {
      e.flags |= TW_SOCK_F_DUMP;
      put(SocketRecord{e});
    }
  if (!complete) {
    // What did fit stays a valid stream; the end marker is written anyway.
    // It counts the records the whole dump has (begin included): more than
    // a reader finds, which tells it the dump is incomplete, so that it ends
    // nothing the dump left out.
    complete = true;
    auto [body, type] = identity::encode(DumpRecord{now, TW_DUMP_END, total});
    w.append(type, body, {}, now);
    st_.dumps_incomplete++;
    if (!warned_incomplete_)
      std::fprintf(stderr,
                   "tapwire-sensor: the identity state (%llu bytes) does not fit an identity segment: "
                   "raise tap.identity.storageSize (a segment is at most a quarter of it)\n",
                   static_cast<unsigned long long>(bytes));
    warned_incomplete_ = true;
  } else {
    put(DumpRecord{now, TW_DUMP_END, n});
  }
  last_dump_bytes_ = bytes;
  st_.dumps++;
  st_.dump_records += n;
}

void IdentityRecorder::publish() { store_->publish(); }

// Rotation by age seals the segment; the next record opens the next one,
// dump first. A quiet stream needs no new dump: the last one and the few
// events after it still tell the state.
// About what a dump of the live state takes (record headers included).
uint64_t IdentityRecorder::state_bytes() const {
  uint64_t n = objects_bytes_ + 4096;
  n += sockets_.size() * (sizeof(tw_sock_event) + 16);  // most sockets have one address
  n += processes_.size() * (sizeof(tw_seg_process) + 16 + 64);
  n += cgroups_.size() * (sizeof(tw_seg_cgroup) + 16 + 160);
  return n;
}

void IdentityRecorder::tick(uint64_t now_real_ns) {
  store_->tick(now_real_ns);
  // Segments grow with the state they restate: a dump fills at most half of
  // one, up to a quarter of the storage.
  // The store's own bound (a quarter of the storage, whole pages, 64 KiB at
  // least): asking for more would reopen the store at every tick, each time
  // with a new segment and dump, without it ever growing.
  const uint64_t cap = std::max<uint64_t>(opts_.storage_size / 4 / 4096 * 4096, 64u << 10);
  const uint64_t need = std::max(last_dump_bytes_, state_bytes());
  const uint64_t want = std::min(cap, std::max(opts_.segment_size, (need * 2 + 4096) / 4096 * 4096 + 4096));
  if (want > segment_size_ && segment_size_ < cap) open_store(want);
}

void IdentityRecorder::rotate() { store_->rotate(); }

}  // namespace tapwire::sensor
