// The sensor's segments as a packet source: a finished directory (snapshot)
// read once, or a live data dir followed as the sensor appends, rotates and
// deletes segments.
#include <sys/stat.h>

#include <cstring>
#include <optional>
#include <stdexcept>

#include "packet_source.hpp"
#include "segment.hpp"

namespace tapwire::dissect {
namespace {

class SegmentSource final : public PacketSource {
 public:
  SegmentSource(std::string dir, bool follow, SourcePosition from)
      : dir_(std::move(dir)), follow_(follow), next_seq_(from.segment), skip_until_(from.offset) {
    struct stat st {};
    if (stat(dir_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      throw std::runtime_error(dir_ + ": no such segment directory");
    if (!follow_) {
      for (auto& s : shm::list_segments(dir_)) {
        struct stat fs {};
        if (stat(s.path.c_str(), &fs) == 0) size_ += static_cast<uint64_t>(fs.st_size);
      }
    }
  }

  Next next(Packet& out) override {
    for (int guard = 0; guard < 1 << 20; guard++) {
      if (!reader_ && !open_next()) return follow_ ? Next::Wait : Next::End;
      auto rec = reader_->next();
      if (!rec) {
        if (reader_->corrupt()) {
          error_ = reader_->path() + ": damaged record at offset " + std::to_string(offset_) + "; skipped the rest";
          close_current();
          continue;
        }
        // Not following (a snapshot, a copied directory), a segment left open
        // (its writer died before recovery, or the file was made that way) gets
        // nothing more: what it holds is all there is. Waiting for more would
        // hang `tapwire-dissector --snapshot` forever (tests/fuzz/regressions/segment_reader).
        if (reader_->exhausted() || !follow_) {
          close_current();
          continue;
        }
        return Next::Wait;  // open segment: more may come
      }
      offset_ = rec->offset + shm::SegmentWriter::record_size(rec->body.size());
      stats_.input_bytes += offset_ - last_offset_;
      last_offset_ = offset_;
      if (rec->offset < skip_until_) continue;  // resuming from a checkpoint
      switch (rec->type) {
        case TW_REC_PACKET:
          if (rec->body.size() < sizeof(tw_pkt)) {
            stats_.skipped++;
            continue;
          }
          std::memcpy(&out.meta, rec->body.data(), sizeof(tw_pkt));
          if (out.meta.cap_len > rec->body.size() - sizeof(tw_pkt)) {
            stats_.skipped++;
            continue;
          }
          out.payload = rec->body.subspan(sizeof(tw_pkt), out.meta.cap_len);
          out.pos = {current_seq_, rec->offset};
          stats_.packets++;
          stats_.bytes += out.meta.cap_len;
          return Next::Packet;
        case TW_REC_LOSS:
          stats_.loss_records++;
          continue;
        default:
          continue;  // interface names and future record types
      }
    }
    return Next::Wait;
  }

  SourcePosition position() const override { return {current_seq_, offset_}; }
  const SourceStats& stats() const override { return stats_; }
  std::string error() const override { return error_; }
  uint64_t input_size() const override { return size_; }

 private:
  std::string dir_;
  bool follow_;
  uint64_t next_seq_;  // the segment to open next
  uint64_t skip_until_;  // in the first segment opened: records before this offset were done
  uint64_t current_seq_ = 0, offset_ = 0, last_offset_ = 0, size_ = 0;
  std::optional<shm::SegmentReader> reader_;
  SourceStats stats_;
  std::string error_;

  void close_current() {
    reader_.reset();
    next_seq_ = current_seq_ + 1;
    skip_until_ = 0;
  }

  // Opens segment next_seq_ or, if retention deleted it, the oldest one
  // after it (counting what was missed).
  bool open_next() {
    auto segs = shm::list_segments(dir_);
    for (auto& s : segs) {
      if (s.seq < next_seq_) continue;
      try {
        reader_.emplace(shm::SegmentReader::open(s.path));
      } catch (const shm::SegmentError& e) {
        if (!follow_) throw std::runtime_error(e.what());
        continue;  // deleted between listing and opening: try the next one
      }
      if (s.seq > next_seq_ && (next_seq_ > 0 || current_seq_ > 0)) stats_.segments_missed += s.seq - next_seq_;
      if (s.seq != next_seq_) skip_until_ = 0;
      current_seq_ = s.seq;
      offset_ = last_offset_ = 0;
      return true;
    }
    return false;
  }
};

}  // namespace

std::unique_ptr<PacketSource> open_segment_source(const std::string& dir, bool follow, SourcePosition from) {
  return std::make_unique<SegmentSource>(dir, follow, from);
}

}  // namespace tapwire::dissect
