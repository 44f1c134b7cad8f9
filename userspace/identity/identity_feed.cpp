#include "identity_feed.hpp"

#include <sys/stat.h>

#include "segment.hpp"

namespace tapwire::identity {

std::string identity_dir_of(const std::string& dir) { return dir + "/identity"; }

struct IdentityFeed::Impl {
  std::string dir;
  bool follow;
  uint64_t lookahead;
  bool started = false;
  uint64_t next_seq = 0, current_seq = 0;
  bool have_current = false;
  std::optional<shm::SegmentReader> reader;
  std::optional<IdentityRecord> held;  // read, but later than the target time
  bool in_dump = false;  // between a dump's begin and end markers: applied whole
  uint64_t last_look_ts = 0;  // when the directory was last listed for want of a segment
  bool looked = false;
  FeedStats st;
  std::string error;

  bool dir_exists() const {
    struct stat s {};
    return stat(dir.c_str(), &s) == 0 && S_ISDIR(s.st_mode);
  }

  // The newest segment created at or before ts: its dump tells the state
  // then. With none that old, the oldest there is.
  void pick_start(uint64_t ts) {
    started = true;
    auto segs = shm::list_segments(dir);
    if (segs.empty()) return;
    next_seq = segs.front().seq;
    for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
      try {
        auto r = shm::SegmentReader::open(it->path);
        if (r.header().created_ns <= ts) {
          next_seq = it->seq;
          return;
        }
      } catch (const shm::SegmentError&) {
      }
    }
  }

  bool open_next() {
    for (auto& s : shm::list_segments(dir)) {
      if (s.seq < next_seq) continue;
      try {
        reader.emplace(shm::SegmentReader::open(s.path));
      } catch (const shm::SegmentError& e) {
        if (!follow) {
          error = e.what();
          st.corrupt++;
        }
        continue;
      }
      if (have_current && s.seq > next_seq) st.segments_missed += s.seq - next_seq;
      current_seq = s.seq;
      have_current = true;
      st.segments++;
      looked = false;  // found one: when it is done, the next may be opened at once
      return true;
    }
    return false;
  }

  void close_current() {
    reader.reset();
    next_seq = current_seq + 1;
    in_dump = false;  // a dump cut short by the end of its segment
  }

  // Applies one record; a dump, once begun, is applied to its end whatever
  // the times its records carry.
  void apply(IdentityTable& t, const IdentityRecord& r) {
    if (auto* d = std::get_if<DumpRecord>(&r)) in_dump = d->phase == TW_DUMP_BEGIN;
    t.apply(r);
    st.records++;
  }

  void advance(IdentityTable& t, uint64_t ts) {
    // Listing the directory is a few system calls: not per packet while
    // there is nothing new to open, only once per second of traffic time.
    auto may_look = [&] {
      if (looked && ts >= last_look_ts && ts - last_look_ts < 1000000000ull) return false;
      looked = true;
      last_look_ts = ts;
      return true;
    };
    if (!started) {
      if (!may_look() || !dir_exists()) return;
      pick_start(ts);
      looked = false;  // the chosen segment is opened at once
    }
    const uint64_t target = ts > UINT64_MAX - lookahead ? UINT64_MAX : ts + lookahead;
    if (held) {
      if (record_ts(*held) > target) return;
      apply(t, *held);
      held.reset();
    }
    for (int guard = 0; guard < 1 << 22; guard++) {
      if (!reader && (!may_look() || !open_next())) return;
      auto rec = reader->next();
      if (!rec) {
        if (reader->corrupt()) {
          error = reader->path() + ": damaged identity record; skipped the rest of that segment";
          st.corrupt++;
          close_current();
          continue;
        }
        // Not following (a snapshot), a segment left open (its writer died
        // before recovery, or a damaged copy) gets nothing more: go on to the
        // next one instead of ending the stream there
        // (tests/fuzz/regressions/segment_reader).
        if (reader->exhausted() || !follow) {
          close_current();
          continue;
        }
        return;  // the open segment: more may come
      }
      if (!is_identity_type(rec->type)) continue;
      auto r = decode_identity(rec->type, rec->body);
      if (!r) {
        st.invalid++;
        continue;
      }
      // A dump tells the state at its time: not before (the next segment's
      // dump would end what is alive now but gone by then), and then whole.
      if (!in_dump && record_ts(*r) > target) {
        held = std::move(r);
        return;
      }
      apply(t, *r);
    }
  }
};

IdentityFeed::IdentityFeed(std::string dir, bool follow, uint64_t lookahead_ns) : impl_(std::make_unique<Impl>()) {
  impl_->dir = std::move(dir);
  impl_->follow = follow;
  impl_->lookahead = lookahead_ns;
}
IdentityFeed::~IdentityFeed() = default;
void IdentityFeed::advance(IdentityTable& table, uint64_t ts_ns) { impl_->advance(table, ts_ns); }
const FeedStats& IdentityFeed::stats() const { return impl_->st; }
const std::string& IdentityFeed::error() const { return impl_->error; }

}  // namespace tapwire::identity
