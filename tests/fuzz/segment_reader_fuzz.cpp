// Segment files (shm/FORMAT.md) as the readers meet them: a file from
// anywhere (a snapshot, a truncated copy, a crafted file). The input is the
// whole file; it is written to tmpfs and read with SegmentReader, followed
// as a packet source (into the dissector) and as an identity stream (into an
// identity table, followed by a segment of ours), then a copy goes through
// recover_segment.
//
// The bytes at offset 92 (tw_seg_header.reserved0, which readers ignore) tell
// the harness to rewrite every record's CRC (version 1) or every block
// checksum (version 2) before writing the file (bit 0), so that mutations of
// record bodies get past the checksums to the code behind them.
//
// Checked (version 1): the records returned lie below `committed` and inside
// the file, back to back, 8-byte aligned, with a matching CRC and a non-zero
// type. Version 2 (per-CPU regions merged by time): each record lies inside
// its region's committed bytes and the file, with a non-zero type, and its
// offset is the running sum of record sizes; recovery keeps every record the
// reader returned (it may keep more: a region after a damaged one). Both:
// corrupt() implies exhausted(); a snapshot's packets and identity stream
// are read to their end, whatever state a segment was left in (never Wait,
// never stuck on an open segment); recovery keeps exactly the records the
// reader returned (the longest valid prefix), leaves a sealed segment that
// reads back the same and clean, and a second recovery changes nothing.
// libFuzzer: -max_len=65536
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

#include "dissector.hpp"
#include "fuzz_common.hpp"
#include "identity_feed.hpp"
#include "identity_records.hpp"
#include "identity_table.hpp"
#include "packet_source.hpp"
#include "segment.hpp"

namespace {

namespace fs = std::filesystem;
using namespace tapwire;

constexpr size_t kHeader = TW_SEG_HEADER_SIZE;

struct Copy {
  uint16_t type;
  std::vector<uint8_t> body;
  uint64_t offset;
  bool operator==(const Copy&) const = default;
};

// The identity segment that follows the input in the identity stream: one
// Sync record for a resource named kLastResource. Its created_ns is the
// largest there is, so that the feed starts at the input (it starts at the
// newest segment created before the time it is asked for) and must read
// through it to get here.
constexpr const char* kLastResource = "fuzz-last-segment";

void write_last_identity_segment(const fs::path& dir) {
  {
    shm::SegmentWriter w = shm::SegmentWriter::create(dir.string(), 1, 4096);
    identity::WorkloadRecord rec;
    rec.workload.object = identity::SyncObject{kLastResource, "synced", ""};
    auto [body, type] = identity::encode(rec);
    w.append(type, body, {}, 1);
    w.seal();
  }
  const uint64_t never = UINT64_MAX;
  std::fstream f(shm::segment_path(dir.string(), 1), std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(offsetof(tw_seg_header, created_ns));
  f.write(reinterpret_cast<const char*>(&never), sizeof never);
}

// A scratch directory (tmpfs if there is one), one per fuzzing process (jobs run side by
// side), removed at exit. Its input files are rewritten for every input.
const fs::path& scratch() {
  static const fs::path dir = [] {
    fs::path d = fs::path(fuzz::scratch_root()) / ("tapwire-fuzz-segment-" + std::to_string(getpid()));
    fs::remove_all(d);
    fs::create_directories(d / "capture" / "segments");
    fs::create_directories(d / "capture" / "identity");
    fs::create_directories(d / "recover");
    write_last_identity_segment(d / "capture" / "identity");
    std::atexit([] {
      fs::remove_all(fs::path(fuzz::scratch_root()) / ("tapwire-fuzz-segment-" + std::to_string(getpid())));
    });
    return d;
  }();
  return dir;
}

void write_file(const fs::path& p, const std::vector<uint8_t>& b) {
  fs::remove(p);  // a fresh inode: a mapping of the previous input must not see these bytes
  std::ofstream o(p, std::ios::binary);
  o.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> read_file(const fs::path& p) {
  std::vector<uint8_t> b(fs::file_size(p));
  std::ifstream i(p, std::ios::binary);
  i.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(b.size()));
  return b;
}

// Version 2: rewrites the block checksums of each region's committed bytes.
void fix_block_crcs(std::vector<uint8_t>& f) {
  tw_seg_header h;
  tw_seg_streams ext;
  std::memcpy(&h, f.data(), sizeof h);
  std::memcpy(&ext, f.data() + sizeof h, sizeof ext);
  const uint64_t table = sizeof h + sizeof ext;
  if (ext.block_size != TW_SEG_BLOCK || ext.regions > 64 || h.header_size > f.size() ||
      table + uint64_t{ext.regions} * sizeof(tw_seg_region) > h.header_size)
    return;
  for (uint32_t i = 0; i < ext.regions; i++) {
    tw_seg_region e;
    std::memcpy(&e, f.data() + table + i * sizeof e, sizeof e);
    if (e.file_off > f.size() || e.committed > e.capacity || e.crc_off > h.header_size) continue;
    const uint64_t have = std::min<uint64_t>(e.committed, f.size() - e.file_off);
    for (uint64_t b = 0; b < have; b += TW_SEG_BLOCK) {
      const uint64_t at = e.crc_off + b / TW_SEG_BLOCK * sizeof(tw_seg_block);
      if (at + sizeof(tw_seg_block) > h.header_size) break;
      const auto len = static_cast<uint32_t>(std::min<uint64_t>(TW_SEG_BLOCK, have - b));
      tw_seg_block blk{shm::crc32c({f.data() + e.file_off + b, len}), len};
      std::memcpy(f.data() + at, &blk, sizeof blk);
    }
  }
}

// Rewrites the CRC of every record the framing reaches.
void fix_crcs(std::vector<uint8_t>& f) {
  if (f.size() < kHeader) return;
  uint32_t version;
  std::memcpy(&version, f.data() + offsetof(tw_seg_header, version), sizeof version);
  if (version == TW_SEG_VERSION_STREAMS) return fix_block_crcs(f);
  uint8_t* area = f.data() + kHeader;
  const uint64_t n = f.size() - kHeader;
  for (uint64_t off = 0; off + sizeof(tw_seg_rec_hdr) <= n;) {
    tw_seg_rec_hdr h;
    std::memcpy(&h, area + off, sizeof h);
    const uint64_t rs = shm::SegmentWriter::record_size(h.len);
    if (rs > n - off) break;
    h.crc32c = shm::crc32c({area + off + sizeof h, h.len});
    std::memcpy(area + off, &h, sizeof h);
    off += rs;
  }
}

// Every record the reader returns, checked against the file's bytes.
// Version 2: the regions' bytes a record may come from, as checked at open.
bool inside_a_region(const shm::SegmentReader& r, const std::vector<uint8_t>& file, std::span<const uint8_t> body) {
  const auto* base = reinterpret_cast<const uint8_t*>(&r.header());
  tw_seg_streams ext;
  std::memcpy(&ext, file.data() + sizeof(tw_seg_header), sizeof ext);
  for (uint32_t i = 0; i < ext.regions; i++) {
    tw_seg_region e;
    std::memcpy(&e, file.data() + sizeof(tw_seg_header) + sizeof ext + i * sizeof e, sizeof e);
    const uint64_t lo = e.file_off + e.start, hi = std::min<uint64_t>(e.file_off + e.committed, file.size());
    const auto at = static_cast<uint64_t>(body.data() - base);
    if (at >= lo + sizeof(tw_seg_rec8) && at + body.size() <= hi) return true;
  }
  return false;
}

std::vector<Copy> read_all_streams(shm::SegmentReader& r, const std::vector<uint8_t>& file, bool* corrupt,
                                   bool* sealed) {
  std::vector<Copy> out;
  uint64_t end = 0;
  for (uint64_t guard = 0; guard <= file.size() / 8 + 1; guard++) {
    auto rec = r.next();
    if (!rec) break;
    FUZZ_CHECK(rec->offset == end, "offsets are the running sum of record sizes");
    FUZZ_CHECK(rec->type != 0);
    FUZZ_CHECK(inside_a_region(r, file, rec->body), "a record outside its region's committed bytes");
    out.push_back({rec->type, {rec->body.begin(), rec->body.end()}, 0});
    end += shm::SegmentWriter::record_size(rec->body.size());
  }
  FUZZ_CHECK(!r.next(), "the reader did not stop");
  if (r.corrupt()) FUZZ_CHECK(r.exhausted());
  if (r.sealed() && !r.corrupt()) FUZZ_CHECK(r.exhausted());
  *corrupt = r.corrupt();
  *sealed = r.sealed();
  return out;
}

std::vector<Copy> read_all(const std::string& path, const std::vector<uint8_t>& file, bool* corrupt, bool* sealed) {
  shm::SegmentReader r = shm::SegmentReader::open(path);
  if (r.version() == TW_SEG_VERSION_STREAMS) return read_all_streams(r, file, corrupt, sealed);
  const tw_seg_header h = r.header();
  const uint64_t area = file.size() - kHeader;
  std::vector<Copy> out;
  uint64_t end = 0;
  // A record takes at least 16 bytes: more than this many is a loop.
  for (uint64_t guard = 0; guard <= area / 16 + 1; guard++) {
    auto rec = r.next();
    if (!rec) break;
    const uint64_t rs = shm::SegmentWriter::record_size(rec->body.size());
    FUZZ_CHECK(rec->offset == end, "records back to back");
    FUZZ_CHECK(rec->offset % TW_SEG_ALIGN == 0);
    FUZZ_CHECK(rec->type != 0);
    FUZZ_CHECK(rec->offset + rs <= h.committed && rec->offset + rs <= area, "a record beyond committed or the file");
    FUZZ_CHECK(rec->body.data() ==
               reinterpret_cast<const uint8_t*>(&r.header()) + kHeader + rec->offset + sizeof(tw_seg_rec_hdr));
    tw_seg_rec_hdr rh;
    std::memcpy(&rh, file.data() + kHeader + rec->offset, sizeof rh);
    FUZZ_CHECK(rh.len == rec->body.size() && rh.type == rec->type && rh.crc32c == shm::crc32c(rec->body));
    out.push_back({rec->type, {rec->body.begin(), rec->body.end()}, rec->offset});
    end = rec->offset + rs;
  }
  FUZZ_CHECK(!r.next(), "the reader did not stop");
  if (r.corrupt()) FUZZ_CHECK(r.exhausted());
  if (r.sealed() && !r.corrupt()) FUZZ_CHECK(r.exhausted() && end == h.committed);
  *corrupt = r.corrupt();
  *sealed = r.sealed();
  return out;
}

// The packets, as tapwire-dissector --snapshot reads them, into the engine.
void as_packet_source(const fs::path& dir) {
  std::unique_ptr<dissect::PacketSource> src;
  try {
    src = dissect::open_segment_source(dir.string(), false);
  } catch (const std::runtime_error&) {
    return;
  }
  dissect::Dissector d({}, [](dissect::Call&& c) {
    (void)to_json(c).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  });
  dissect::Packet p;
  try {
    for (int guard = 0; guard < 100000; guard++) {
      auto n = src->next(p);
      if (n != dissect::PacketSource::Next::Packet) {
        FUZZ_CHECK(n == dissect::PacketSource::Next::End, "a finished directory never says Wait");
        break;
      }
      FUZZ_CHECK(p.payload.size() == p.meta.cap_len);
      d.packet(p);
    }
  } catch (const std::runtime_error&) {
    // A file named like a segment that is not one: the dissector stops with this error.
  }
  d.finish();
}

// The identity stream of a snapshot (the input, then a segment of ours),
// into the table the dissector names calls from. Read whole, the stream
// gets to its last segment, unless a record dated beyond the time asked for
// waits in the input (`held`).
void as_identity_stream(const fs::path& dir, bool held) {
  identity::TableLimits lim;
  lim.max_sockets = lim.max_processes = lim.max_cgroups = lim.max_objects = 8;
  identity::IdentityTable table(lim);
  identity::IdentityFeed feed(dir.string(), false);
  feed.advance_all(table);
  const auto& st = table.stats();
  FUZZ_CHECK(st.sockets <= lim.max_sockets && st.processes <= lim.max_processes && st.cgroups <= lim.max_cgroups);
  (void)table.pods();
  if (!held)
    FUZZ_CHECK(table.kube_state().count(kLastResource), "a snapshot's identity stream was not read to its end");
}

// Would the feed hold a record of these back, as later than everything?
// As the feed decides it: a record between a dump's begin and end markers is
// applied whatever its time (whatever the dump flag the record itself
// carries; tests/fuzz/regressions/segment_reader/dump-flag-after-dump-end).
bool has_future_record(const std::vector<Copy>& records) {
  const uint64_t all = UINT64_MAX / 2 + 30ull * 1000000000ull;  // advance_all's time + the default lookahead
  bool in_dump = false;
  for (const Copy& c : records) {
    if (!identity::is_identity_type(c.type)) continue;
    auto r = identity::decode_identity(c.type, c.body);
    if (!r) continue;
    if (!in_dump && identity::record_ts(*r) > all) return true;
    if (auto* d = std::get_if<identity::DumpRecord>(&*r)) in_dump = d->phase == TW_DUMP_BEGIN;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> file(data, data + size);
  if (file.size() >= 96 && (file[92] & 1)) fix_crcs(file);

  const fs::path& dir = scratch();
  const fs::path seg = dir / "capture" / "segments" / "0000000000000000.twseg";
  const fs::path ident = dir / "capture" / "identity" / "0000000000000000.twseg";
  const fs::path copy = dir / "recover" / "0000000000000000.twseg";
  write_file(seg, file);

  std::vector<Copy> records;
  bool corrupt = false, sealed = false, opened = true;
  try {
    records = read_all(seg.string(), file, &corrupt, &sealed);
  } catch (const shm::SegmentError&) {
    opened = false;
  }

  as_packet_source(seg.parent_path());
  fs::remove(ident);
  fs::create_hard_link(seg, ident);
  as_identity_stream(ident.parent_path(), has_future_record(records));

  // Recovery of a copy: the valid prefix is what the reader returned.
  write_file(copy, file);
  uint64_t kept = 0;
  try {
    kept = shm::recover_segment(copy.string());
  } catch (const shm::SegmentError&) {
    FUZZ_CHECK(!opened, "recover_segment refused a segment the reader opened");
    return 0;
  }
  FUZZ_CHECK(opened, "recover_segment took a file the reader refused");
  const bool streams = shm::SegmentReader::open(copy.string()).version() == TW_SEG_VERSION_STREAMS;
  if (!streams)
    FUZZ_CHECK(kept == records.size(), "recovery kept " + std::to_string(kept) + " records, the reader read " +
                                           std::to_string(records.size()));
  const std::vector<uint8_t> recovered = read_file(copy);
  bool corrupt2 = false, sealed2 = false;
  std::vector<Copy> again = read_all(copy.string(), recovered, &corrupt2, &sealed2);
  FUZZ_CHECK(sealed2 && !corrupt2, "a recovered segment is sealed and clean");
  if (streams) {
    FUZZ_CHECK(again.size() == kept, "a recovered segment reads back what recovery counted");
    // Every record read before is still there (recovery keeps each region's
    // valid prefix; the reader stopped at the first damaged block of any).
    std::multiset<std::pair<uint16_t, std::vector<uint8_t>>> after;
    for (auto& c : again) after.insert({c.type, c.body});
    for (auto& c : records) {
      auto it = after.find({c.type, c.body});
      FUZZ_CHECK(it != after.end(), "recovery lost a record the reader had returned");
      after.erase(it);
    }
  } else {
    FUZZ_CHECK(again == records, "a recovered segment holds the records read before");
  }
  FUZZ_CHECK(shm::recover_segment(copy.string()) == kept);
  FUZZ_CHECK(read_file(copy) == recovered, "a second recovery changed the file");
  return 0;
}
