// TCP reassembly (userspace/dissector/tcp_reassembly.*): in order, reordered,
// duplicated and overlapping segments, missing and truncated bytes, sequence
// wraparound, chunked packets, buffering caps, hole timeouts, flush, the
// window (stray segments, the peer's advertised window, resynchronising
// after real loss), memory accounting, and hostile input that must stay
// bounded in time and memory (time: ctest's per-test timeout catches a
// quadratic path; nothing here measures the clock).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tcp_reassembly.hpp"

namespace {

using namespace tapwire::dissect;

constexpr uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04, kAck = 0x10;

struct Gap {
  uint64_t offset, len;
  bool operator==(const Gap&) const = default;
};

// Collects what the reassembler delivers and checks the sink contract:
// every on_data/on_gap starts where the previous one ended.
class Recorder final : public StreamSink {
 public:
  void on_data(uint64_t offset, std::span<const uint8_t> data, uint64_t ts_ns) override {
    EXPECT_EQ(offset, pos) << "on_data out of place";
    EXPECT_FALSE(data.empty()) << "empty on_data";
    runs.push_back({offset, data.size()});
    stream.append(reinterpret_cast<const char*>(data.data()), data.size());
    pointers.push_back(data.data());
    stamps.push_back(ts_ns);
    pos = offset + data.size();
  }
  void on_gap(uint64_t offset, uint64_t len) override {
    EXPECT_EQ(offset, pos) << "on_gap out of place";
    EXPECT_GT(len, 0u) << "empty gap";
    gaps.push_back({offset, len});
    pos = offset + len;
  }
  struct Run {
    uint64_t offset, len;
  };
  std::string stream;  // delivered bytes, gaps left out
  std::vector<Run> runs;
  std::vector<Gap> gaps;
  std::vector<const uint8_t*> pointers;
  std::vector<uint64_t> stamps;
  uint64_t pos = 0;
};

// Every delivered byte is the stream's byte at that offset.
void expect_delivered_bytes_match(const Recorder& rec, const std::string& truth) {
  size_t at = 0;
  for (const auto& r : rec.runs) {
    ASSERT_LE(r.offset + r.len, truth.size());
    ASSERT_EQ(rec.stream.compare(at, r.len, truth, r.offset, r.len), 0) << "wrong bytes at offset " << r.offset;
    at += r.len;
  }
}

struct Seg {
  uint32_t seq = 0;  // TCP sequence number (of the SYN itself when kSyn)
  std::string bytes;  // captured payload of this record
  uint8_t flags = kAck;
  uint32_t chunk_off = 0;
  uint32_t wire_len = 0;  // 0: the captured length
  uint64_t ts = 0;
};

std::span<const uint8_t> as_span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

void feed(TcpReassembler& r, const Seg& s, Recorder& rec) {
  const uint32_t wire = s.wire_len ? s.wire_len : s.chunk_off + static_cast<uint32_t>(s.bytes.size());
  r.segment(s.seq, s.flags, as_span(s.bytes), s.chunk_off, wire, s.ts, rec);
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

// Cuts stream[from, to) into segments of [lo, hi] bytes; the stream's first
// byte has sequence number `seq0`.
std::vector<Seg> cut(const std::string& stream, uint32_t seq0, std::mt19937& rng, size_t lo, size_t hi,
                     size_t from = 0, size_t to = std::string::npos) {
  to = std::min(to, stream.size());
  std::vector<Seg> out;
  std::uniform_int_distribution<size_t> len(lo, hi);
  for (size_t off = from; off < to;) {
    size_t n = std::min(len(rng), to - off);
    Seg s;
    s.seq = seq0 + static_cast<uint32_t>(off);
    s.bytes = stream.substr(off, n);
    out.push_back(std::move(s));
    off += n;
  }
  return out;
}

// A first segment that starts the stream at `seq0` (SYN, ISN = seq0 - 1).
Seg syn_for(uint32_t seq0) {
  Seg s;
  s.seq = seq0 - 1;
  s.flags = kSyn;
  return s;
}

ReassemblyLimits roomy() {
  ReassemblyLimits l;
  l.max_buffered_bytes = 64u << 20;
  l.max_buffered_segments = 1u << 20;
  l.max_hole_wait_ns = UINT64_MAX;
  l.max_ahead_bytes = 1ull << 40;
  return l;
}

// ------------------------------------------------------------------ order ---

TEST(TcpReassembly, InOrderSegmentsAreDeliveredAtOnceWithoutCopying) {
  const std::string stream = random_bytes(10000, 1);
  std::mt19937 rng(1);
  TcpReassembler r;
  Recorder rec;
  feed(r, syn_for(1000), rec);
  EXPECT_TRUE(r.syn_seen());
  EXPECT_TRUE(r.started());
  auto segs = cut(stream, 1000, rng, 1, 1460);
  for (size_t i = 0; i < segs.size(); i++) {
    segs[i].ts = 100 + i;
    feed(r, segs[i], rec);
    // Delivered during the call, straight from the caller's buffer.
    ASSERT_EQ(rec.pointers.size(), i + 1);
    EXPECT_EQ(rec.pointers[i], reinterpret_cast<const uint8_t*>(segs[i].bytes.data()));
    EXPECT_EQ(rec.stamps[i], 100 + i);
  }
  EXPECT_EQ(rec.stream, stream);
  EXPECT_TRUE(rec.gaps.empty());
  EXPECT_EQ(r.next_offset(), stream.size());
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(r.stats().bytes_delivered, stream.size());
  EXPECT_EQ(r.stats().retransmitted_bytes, 0u);
  EXPECT_EQ(r.stats().out_of_order_segments, 0u);
}

TEST(TcpReassembly, ReorderedSegmentsGiveTheSameStream) {
  for (uint32_t seed = 1; seed <= 12; seed++) {
    SCOPED_TRACE(seed);
    const std::string stream = random_bytes(50000 + seed * 997, seed);
    std::mt19937 rng(seed);
    const uint32_t seq0 = rng();
    auto segs = cut(stream, seq0, rng, 1, seed % 3 == 0 ? 40 : 1460);
    std::shuffle(segs.begin(), segs.end(), rng);
    for (size_t i = 0; i < segs.size(); i++) segs[i].ts = 1000 + i;
    TcpReassembler r(roomy());
    Recorder rec;
    feed(r, syn_for(seq0), rec);
    for (const auto& s : segs) feed(r, s, rec);
    EXPECT_EQ(rec.stream, stream);
    EXPECT_TRUE(rec.gaps.empty());
    EXPECT_EQ(r.buffered_bytes(), 0u);
    EXPECT_EQ(r.stats().retransmitted_bytes, 0u);
    EXPECT_GT(r.stats().out_of_order_segments, 0u);
  }
}

TEST(TcpReassembly, ReorderingWithinAWindowUnderDefaultLimits) {
  // Local reordering (each segment displaced by a few places), as on a real
  // network, with the default caps: nothing is lost.
  for (uint32_t seed = 1; seed <= 5; seed++) {
    SCOPED_TRACE(seed);
    const std::string stream = random_bytes(300000, seed);
    std::mt19937 rng(seed);
    auto segs = cut(stream, 7, rng, 500, 1460);
    for (size_t i = 0; i + 8 < segs.size(); i += 8) std::shuffle(segs.begin() + i, segs.begin() + i + 8, rng);
    TcpReassembler r;
    Recorder rec;
    feed(r, syn_for(7), rec);
    for (size_t i = 0; i < segs.size(); i++) {
      segs[i].ts = i * 1000;
      feed(r, segs[i], rec);
    }
    EXPECT_EQ(rec.stream, stream);
    EXPECT_TRUE(rec.gaps.empty());
  }
}

// --------------------------------------------------- duplicates, overlaps ---

TEST(TcpReassembly, DuplicatedSegmentsAreDeliveredOnce) {
  for (uint32_t seed = 1; seed <= 8; seed++) {
    SCOPED_TRACE(seed);
    const std::string stream = random_bytes(30000, seed);
    std::mt19937 rng(seed);
    auto segs = cut(stream, 0xABCD0000u, rng, 1, 1000);
    std::vector<Seg> sent = segs;
    uint64_t dup = 0;
    for (const auto& s : segs)
      if (rng() % 3 == 0) {
        sent.push_back(s);
        dup += s.bytes.size();
      }
    if (seed % 2) std::shuffle(sent.begin(), sent.end(), rng);
    TcpReassembler r(roomy());
    Recorder rec;
    feed(r, syn_for(0xABCD0000u), rec);
    for (const auto& s : sent) feed(r, s, rec);
    EXPECT_EQ(rec.stream, stream);
    EXPECT_TRUE(rec.gaps.empty());
    EXPECT_EQ(r.stats().retransmitted_bytes, dup);
  }
}

TEST(TcpReassembly, RetransmissionsWithSameAndDifferentBoundaries) {
  for (uint32_t seed = 1; seed <= 10; seed++) {
    SCOPED_TRACE(seed);
    const std::string stream = random_bytes(40000, seed);
    std::mt19937 rng(seed);
    // The stream cut three ways; each cut sends a random part of it again.
    std::vector<Seg> sent = cut(stream, 555, rng, 1, 1460);
    uint64_t fed = stream.size();
    for (int k = 0; k < 3; k++) {
      auto other = cut(stream, 555, rng, k == 0 ? 1460 : 1, k == 0 ? 1460 : 3000);
      for (auto& s : other)
        if (rng() % 2) {
          fed += s.bytes.size();
          sent.push_back(std::move(s));
        }
    }
    std::shuffle(sent.begin(), sent.end(), rng);
    TcpReassembler r(roomy());
    Recorder rec;
    feed(r, syn_for(555), rec);
    for (const auto& s : sent) feed(r, s, rec);
    EXPECT_EQ(rec.stream, stream);
    EXPECT_TRUE(rec.gaps.empty());
    EXPECT_EQ(r.stats().retransmitted_bytes, fed - stream.size());
    EXPECT_EQ(r.stats().bytes_delivered, stream.size());
  }
}

TEST(TcpReassembly, PartialOverlapDeliversOnlyTheNewBytes) {
  const std::string stream = random_bytes(400, 3);
  TcpReassembler r(roomy());
  Recorder rec;
  auto seg = [&](size_t from, size_t to) {
    Seg s;
    s.seq = 100 + static_cast<uint32_t>(from);
    s.bytes = stream.substr(from, to - from);
    feed(r, s, rec);
  };
  feed(r, syn_for(100), rec);
  seg(0, 100);
  seg(50, 150);  // half old
  ASSERT_EQ(rec.runs.size(), 2u);
  EXPECT_EQ(rec.runs[1].offset, 100u);
  EXPECT_EQ(rec.runs[1].len, 50u);
  EXPECT_EQ(r.stats().retransmitted_bytes, 50u);
  seg(200, 300);  // held
  EXPECT_EQ(r.buffered_bytes(), 100u);
  seg(250, 320);  // overlaps the held range's end
  EXPECT_EQ(r.buffered_bytes(), 120u);
  EXPECT_EQ(r.stats().retransmitted_bytes, 100u);
  seg(140, 400);  // fills the hole, overlaps everything
  EXPECT_EQ(rec.stream, stream);
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(r.stats().retransmitted_bytes, 100u + 10 + 120);
  EXPECT_TRUE(rec.gaps.empty());
}

// ----------------------------------------------------------------- holes ---

TEST(TcpReassembly, MissingSegmentIsExactlyOneGap) {
  for (uint32_t seed = 1; seed <= 10; seed++) {
    SCOPED_TRACE(seed);
    const std::string stream = random_bytes(20000, seed);
    std::mt19937 rng(seed);
    auto segs = cut(stream, rng(), rng, 100, 1460);
    const uint32_t seq0 = segs[0].seq;
    const size_t lost = 1 + rng() % (segs.size() - 2);
    const uint64_t lost_off = segs[lost].seq - seq0, lost_len = segs[lost].bytes.size();
    segs.erase(segs.begin() + static_cast<std::ptrdiff_t>(lost));
    std::shuffle(segs.begin() + 1, segs.end(), rng);  // the first one starts the stream
    TcpReassembler r(roomy());
    Recorder rec;
    for (const auto& s : segs) feed(r, s, rec);
    EXPECT_TRUE(rec.gaps.empty());
    r.flush(rec);
    ASSERT_EQ(rec.gaps.size(), 1u);
    EXPECT_EQ(rec.gaps[0], (Gap{lost_off, lost_len}));
    EXPECT_EQ(rec.stream, stream.substr(0, lost_off) + stream.substr(lost_off + lost_len));
    EXPECT_EQ(r.stats().gaps, 1u);
    EXPECT_EQ(r.stats().gap_bytes, lost_len);
    EXPECT_EQ(r.next_offset(), stream.size());
  }
}

TEST(TcpReassembly, HoleIsGivenUpAfterMaxHoleWait) {
  ReassemblyLimits l;
  l.max_hole_wait_ns = 1000;
  const std::string stream = random_bytes(500, 9);
  TcpReassembler r(l);
  Recorder rec;
  auto seg = [&](size_t from, size_t to, uint64_t ts) {
    Seg s;
    s.seq = 5000 + static_cast<uint32_t>(from);
    s.bytes = stream.substr(from, to - from);
    s.ts = ts;
    feed(r, s, rec);
  };
  seg(0, 100, 10'000);
  seg(200, 300, 10'000);  // hole [100, 200)
  seg(300, 350, 10'500);
  seg(350, 400, 11'000);  // the oldest held is exactly max_hole_wait_ns old: still waiting
  EXPECT_TRUE(rec.gaps.empty());
  EXPECT_EQ(r.buffered_bytes(), 200u);
  seg(400, 450, 11'001);
  ASSERT_EQ(rec.gaps.size(), 1u);
  EXPECT_EQ(rec.gaps[0], (Gap{100, 100}));
  EXPECT_EQ(rec.stream, stream.substr(0, 100) + stream.substr(200, 250));
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(r.stats().overflow_gaps, 0u);
  seg(100, 200, 11'002);  // too late
  EXPECT_EQ(r.stats().retransmitted_bytes, 100u);
  EXPECT_EQ(rec.stream.size(), 350u);
}

TEST(TcpReassembly, HoleWaitGivesUpOnlyTheHolesBeforeOldData) {
  ReassemblyLimits l;
  l.max_hole_wait_ns = 1000;
  const std::string stream = random_bytes(1000, 10);
  TcpReassembler r(l);
  Recorder rec;
  auto seg = [&](size_t from, size_t to, uint64_t ts) {
    Seg s;
    s.seq = static_cast<uint32_t>(from);
    s.bytes = stream.substr(from, to - from);
    s.ts = ts;
    feed(r, s, rec);
  };
  seg(0, 100, 0);
  seg(200, 300, 0);  // old, behind hole [100, 200)
  seg(400, 500, 900);  // newer, behind hole [300, 400)
  seg(600, 700, 1500);  // the first range is now too old
  ASSERT_EQ(rec.gaps.size(), 1u);
  EXPECT_EQ(rec.gaps[0], (Gap{100, 100}));
  EXPECT_EQ(r.next_offset(), 300u);
  EXPECT_EQ(r.buffered_bytes(), 200u);
  seg(300, 400, 1600);  // fills the second hole in time
  EXPECT_EQ(rec.gaps.size(), 1u);
  EXPECT_EQ(r.next_offset(), 500u);
}

TEST(TcpReassembly, FlushDeliversEverythingAndDeclaresEveryHole) {
  const std::string stream = random_bytes(1000, 11);
  TcpReassembler r(roomy());
  Recorder rec;
  auto seg = [&](size_t from, size_t to) {
    Seg s;
    s.seq = 0xFFFFFF00u + static_cast<uint32_t>(from);
    s.bytes = stream.substr(from, to - from);
    feed(r, s, rec);
  };
  seg(0, 100);
  seg(800, 900);
  seg(150, 300);
  seg(500, 600);
  seg(300, 320);
  EXPECT_EQ(r.buffered_bytes(), 370u);
  r.flush(rec);
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{100, 50}, {320, 180}, {600, 200}}));
  EXPECT_EQ(rec.stream, stream.substr(0, 100) + stream.substr(150, 170) + stream.substr(500, 100) +
                            stream.substr(800, 100));
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(r.next_offset(), 900u);
  EXPECT_EQ(r.stats().gaps, 3u);
  EXPECT_EQ(r.stats().gap_bytes, 430u);
  // The stream goes on after a flush.
  seg(900, 1000);
  EXPECT_EQ(r.next_offset(), 1000u);
  r.flush(rec);
  EXPECT_EQ(rec.gaps.size(), 3u);
}

// ----------------------------------------------------- sequence numbers ---

TEST(TcpReassembly, SequenceNumbersWrapAcross2To32) {
  for (uint32_t seed = 1; seed <= 6; seed++) {
    SCOPED_TRACE(seed);
    const std::string stream = random_bytes(200000, seed);
    std::mt19937 rng(seed);
    const uint32_t seq0 = 0xFFFFFFFFu - 70000 + seed;  // wraps about a third of the way in
    auto segs = cut(stream, seq0, rng, 1, 1460);
    std::shuffle(segs.begin(), segs.end(), rng);
    TcpReassembler r(roomy());
    Recorder rec;
    feed(r, syn_for(seq0), rec);
    for (const auto& s : segs) feed(r, s, rec);
    EXPECT_EQ(rec.stream, stream);
    EXPECT_TRUE(rec.gaps.empty());
    EXPECT_EQ(r.next_offset(), stream.size());
  }
}

TEST(TcpReassembly, OffsetKeepsCountingAcrossTheWrap) {
  // The 64-bit offset keeps counting across the wrap, here over a 1 GiB gap
  // that spans it.
  TcpReassembler r(roomy());
  Recorder rec;
  const std::string a = random_bytes(100, 1), b = random_bytes(100, 2);
  Seg s1;
  s1.seq = 0xFFFFFF00u;
  s1.bytes = a;
  feed(r, s1, rec);
  Seg s2;  // 1 GiB later, across the wrap
  s2.seq = 0xFFFFFF00u + 100 + (1u << 30);
  s2.bytes = b;
  feed(r, s2, rec);
  r.flush(rec);
  ASSERT_EQ(rec.gaps.size(), 1u);
  EXPECT_EQ(rec.gaps[0], (Gap{100, 1ull << 30}));
  EXPECT_EQ(r.next_offset(), 200 + (1ull << 30));
  EXPECT_EQ(rec.stream, a + b);
}

TEST(TcpReassembly, SynWithInitialSequenceNumberNearTheWrap) {
  for (uint32_t isn : {0xFFFFFFFFu, 0xFFFFFFFEu, 0xFFFFF000u}) {
    SCOPED_TRACE(isn);
    const std::string stream = random_bytes(10000, isn);
    std::mt19937 rng(isn);
    auto segs = cut(stream, isn + 1, rng, 1, 1460);
    std::shuffle(segs.begin(), segs.end(), rng);
    TcpReassembler r(roomy());
    Recorder rec;
    for (size_t i = 0; i < segs.size(); i++) {
      if (i == 0) {
        Seg syn;
        syn.seq = isn;
        syn.flags = kSyn;
        feed(r, syn, rec);
      }
      feed(r, segs[i], rec);
    }
    EXPECT_EQ(rec.stream, stream);
    EXPECT_TRUE(rec.gaps.empty());
    EXPECT_TRUE(r.syn_seen());
  }
}

TEST(TcpReassembly, SynCarryingDataFastOpen) {
  const std::string stream = random_bytes(3000, 4);
  TcpReassembler r(roomy());
  Recorder rec;
  const uint32_t isn = 0xFFFFFFF0u;
  Seg syn;
  syn.seq = isn;
  syn.flags = kSyn;
  syn.bytes = stream.substr(0, 100);  // TFO: data in the SYN, at isn + 1
  Seg rest;
  rest.seq = isn + 101;
  rest.bytes = stream.substr(100);
  feed(r, rest, rec);  // arrives first: there is no SYN yet, so it starts the stream...
  EXPECT_EQ(rec.stream, stream.substr(100));
  feed(r, syn, rec);  // ...and the SYN's data is from before the start
  EXPECT_EQ(r.stats().retransmitted_bytes, 100u);

  TcpReassembler r2(roomy());
  Recorder rec2;
  feed(r2, syn, rec2);
  feed(r2, syn, rec2);  // retransmitted SYN
  feed(r2, rest, rec2);
  EXPECT_EQ(rec2.stream, stream);
  EXPECT_EQ(r2.stats().retransmitted_bytes, 100u);
}

TEST(TcpReassembly, WithoutSynTheFirstSegmentStartsTheStream) {
  const std::string stream = random_bytes(3000, 5);
  TcpReassembler r(roomy());
  Recorder rec;
  EXPECT_FALSE(r.started());
  Seg ack;  // a bare ACK (or keep-alive with seq - 1) does not fix the start
  ack.seq = 999;
  feed(r, ack, rec);
  EXPECT_FALSE(r.started());
  Seg mid;
  mid.seq = 2000;
  mid.bytes = stream.substr(1000, 1000);
  feed(r, mid, rec);
  EXPECT_TRUE(r.started());
  EXPECT_FALSE(r.syn_seen());
  Seg early;  // before the start: not delivered, counted
  early.seq = 1000;
  early.bytes = stream.substr(0, 1000);
  feed(r, early, rec);
  Seg straddles;  // partly before the start, partly new
  straddles.seq = 2500;
  straddles.bytes = stream.substr(1500, 1500);
  feed(r, straddles, rec);
  EXPECT_EQ(rec.stream, stream.substr(1000));
  EXPECT_EQ(rec.runs[0].offset, 0u);
  EXPECT_EQ(r.stats().retransmitted_bytes, 1000u + 500);
  EXPECT_TRUE(rec.gaps.empty());
}

TEST(TcpReassembly, FinAndRstAreNoted) {
  TcpReassembler a, b;
  Recorder rec;
  Seg s;
  s.seq = 1;
  s.bytes = "hello";
  feed(a, s, rec);
  EXPECT_FALSE(a.fin_seen());
  s.seq = 6;
  s.bytes = "bye";
  s.flags = kAck | kFin;
  feed(a, s, rec);
  EXPECT_TRUE(a.fin_seen());
  EXPECT_EQ(rec.stream, "hellobye");
  Seg rst;
  rst.seq = 77;
  rst.flags = kRst;
  feed(b, rst, rec);
  EXPECT_TRUE(b.fin_seen());
  EXPECT_FALSE(b.started());
}

// ------------------------------------------------------ truncation, chunks ---

TEST(TcpReassembly, TruncatedSegmentIsAGapOfTheUncapturedBytes) {
  const std::string stream = random_bytes(1200, 6);
  auto run = [&](std::vector<int> order) {
    // A [0,100) whole; B [100,1100) on the wire, 200 captured; C [1100,1200).
    Seg a, b, c;
    a.seq = 0xFFFFFFC0u;
    a.bytes = stream.substr(0, 100);
    b.seq = a.seq + 100;
    b.bytes = stream.substr(100, 200);
    b.wire_len = 1000;
    c.seq = a.seq + 1100;
    c.bytes = stream.substr(1100);
    const Seg* all[] = {&a, &b, &c};
    TcpReassembler r(roomy());
    Recorder rec;
    feed(r, syn_for(a.seq), rec);
    for (int i : order) feed(r, *all[i], rec);
    if (order.back() == 1) {
      // B came last: its tail could still come as the next chunk.
      EXPECT_TRUE(rec.gaps.empty());
      EXPECT_EQ(r.buffered_bytes(), 100u);
      r.flush(rec);
    }
    // Known missing: once the next record shows the tail will not come, the
    // gap is declared without a flush or a timeout.
    EXPECT_EQ(rec.gaps, (std::vector<Gap>{{300, 800}}));
    EXPECT_EQ(rec.stream, stream.substr(0, 300) + stream.substr(1100));
    EXPECT_EQ(r.buffered_bytes(), 0u);
    EXPECT_EQ(r.stats().gap_bytes, 800u);
    EXPECT_EQ(r.stats().overflow_gaps, 0u);
  };
  run({0, 1, 2});
  run({2, 1, 0});
  run({1, 2, 0});
  run({2, 0, 1});
  run({0, 2, 1});
}

TEST(TcpReassembly, TruncatedLastSegmentIsAGapOnFlush) {
  const std::string stream = random_bytes(300, 7);
  TcpReassembler r(roomy());
  Recorder rec;
  Seg s;
  s.seq = 10;
  s.bytes = stream.substr(0, 300);
  s.wire_len = 1448;
  feed(r, s, rec);
  EXPECT_EQ(rec.stream, stream);
  EXPECT_TRUE(rec.gaps.empty());  // the rest could still come as a chunk
  r.flush(rec);
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{300, 1148}}));
  EXPECT_EQ(r.next_offset(), 1448u);
}

TEST(TcpReassembly, TruncatedSegmentsInARow) {
  // Snap length 64 on a run of full-size packets: every packet's tail is a
  // gap, each declared as soon as the next packet shows it will not come.
  TcpReassembler r(roomy());
  Recorder rec;
  const std::string stream = random_bytes(1448 * 10, 8);
  for (int i = 0; i < 10; i++) {
    Seg s;
    s.seq = 1 + static_cast<uint32_t>(i) * 1448;
    s.bytes = stream.substr(static_cast<size_t>(i) * 1448, 64);
    s.wire_len = 1448;
    feed(r, s, rec);
    EXPECT_EQ(rec.gaps.size(), static_cast<size_t>(i));
  }
  r.flush(rec);
  ASSERT_EQ(rec.gaps.size(), 10u);
  for (int i = 0; i < 10; i++) EXPECT_EQ(rec.gaps[i], (Gap{i * 1448u + 64, 1448 - 64}));
  EXPECT_EQ(r.stats().bytes_delivered, 640u);
}

std::vector<Seg> chunks(const std::string& packet, uint32_t seq, uint32_t chunk, uint32_t wire_len = 0) {
  std::vector<Seg> out;
  for (uint32_t off = 0; off < packet.size(); off += chunk) {
    Seg s;
    s.seq = seq;
    s.chunk_off = off;
    s.bytes = packet.substr(off, chunk);
    s.wire_len = wire_len ? wire_len : static_cast<uint32_t>(packet.size());
    s.ts = 42;  // one packet: one time
    out.push_back(std::move(s));
  }
  return out;
}

TEST(TcpReassembly, ChunkedLargeSegment) {
  const std::string stream = random_bytes(40000 + 500, 12);
  TcpReassembler r(roomy());
  Recorder rec;
  const uint32_t seq0 = 0xFFFFC000u;  // the packet spans the wrap
  auto parts = chunks(stream.substr(0, 40000), seq0, 16384);
  ASSERT_EQ(parts.size(), 3u);
  for (const auto& p : parts) feed(r, p, rec);
  Seg after;
  after.seq = seq0 + 40000;
  after.bytes = stream.substr(40000);
  feed(r, after, rec);
  EXPECT_EQ(rec.stream, stream);
  EXPECT_TRUE(rec.gaps.empty());
  ASSERT_EQ(rec.pointers.size(), 4u);
  for (size_t i = 0; i < 3; i++)
    EXPECT_EQ(rec.pointers[i], reinterpret_cast<const uint8_t*>(parts[i].bytes.data())) << "chunk copied";
  r.flush(rec);
  EXPECT_TRUE(rec.gaps.empty());
}

TEST(TcpReassembly, ChunkedSegmentWithItsLastChunkTruncated) {
  const std::string stream = random_bytes(40000 + 500, 13);
  TcpReassembler r(roomy());
  Recorder rec;
  auto parts = chunks(stream.substr(0, 40000), 1, 16384);
  parts.back().bytes.resize(1000);  // captured 1000 of the last 7232 bytes
  for (const auto& p : parts) feed(r, p, rec);
  EXPECT_TRUE(rec.gaps.empty());
  Seg after;
  after.seq = 40001;
  after.bytes = stream.substr(40000);
  feed(r, after, rec);
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{32768 + 1000, 40000 - 32768 - 1000}}));
  EXPECT_EQ(rec.stream, stream.substr(0, 33768) + stream.substr(40000));
}

TEST(TcpReassembly, ChunkedSegmentHeldBehindAHole) {
  const std::string stream = random_bytes(41000, 14);
  TcpReassembler r(roomy());
  Recorder rec;
  Seg first;
  first.seq = 100;
  first.bytes = stream.substr(0, 1000);
  auto parts = chunks(stream.substr(1000), 1100, 16384);
  auto lost = first;
  first.bytes.resize(500);  // [500, 1000) comes later
  feed(r, first, rec);
  for (const auto& p : parts) feed(r, p, rec);
  EXPECT_EQ(r.buffered_bytes(), 40000u);
  EXPECT_EQ(r.stats().out_of_order_segments, 3u);
  feed(r, lost, rec);
  EXPECT_EQ(rec.stream, stream);
  EXPECT_TRUE(rec.gaps.empty());
  EXPECT_EQ(r.buffered_bytes(), 0u);
  // The chunks of the one packet were held as one range, delivered at once.
  EXPECT_EQ(rec.runs.size(), 3u);
}

// ------------------------------------------------------------------- caps ---

TEST(TcpReassembly, SegmentCapOverflowDeclaresAGap) {
  ReassemblyLimits l;
  l.max_buffered_segments = 4;
  const std::string stream = random_bytes(2000, 15);
  TcpReassembler r(l);
  Recorder rec;
  auto seg = [&](size_t from, size_t to) {
    Seg s;
    s.seq = static_cast<uint32_t>(from);
    s.bytes = stream.substr(from, to - from);
    s.ts = from;  // distinct packets
    feed(r, s, rec);
  };
  seg(0, 100);
  for (size_t i = 0; i < 4; i++) seg(200 + i * 100, 300 + i * 100);  // hole [100, 200)
  EXPECT_TRUE(rec.gaps.empty());
  EXPECT_EQ(r.buffered_bytes(), 400u);
  seg(700, 800);  // fifth held range: over the cap
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{100, 100}}));
  EXPECT_EQ(r.stats().overflow_gaps, 1u);
  EXPECT_EQ(r.next_offset(), 600u);
  EXPECT_EQ(r.buffered_bytes(), 100u);
  EXPECT_EQ(rec.stream, stream.substr(0, 100) + stream.substr(200, 400));
}

TEST(TcpReassembly, ByteCapKeepsMemoryBounded) {
  for (uint32_t seed = 1; seed <= 6; seed++) {
    SCOPED_TRACE(seed);
    ReassemblyLimits l;
    l.max_buffered_bytes = 8192;
    l.max_buffered_segments = 64;
    const std::string stream = random_bytes(500000, seed);
    std::mt19937 rng(seed);
    auto segs = cut(stream, 1, rng, 1, 1460);
    // Heavy reordering and loss.
    std::vector<Seg> sent;
    for (auto& s : segs)
      if (rng() % 10) sent.push_back(std::move(s));
    for (size_t i = 0; i + 32 < sent.size(); i += 32) std::shuffle(sent.begin() + i, sent.begin() + i + 32, rng);
    TcpReassembler r(l);
    Recorder rec;
    feed(r, syn_for(1), rec);
    size_t peak = 0;
    for (size_t i = 0; i < sent.size(); i++) {
      sent[i].ts = i;
      feed(r, sent[i], rec);
      peak = std::max(peak, r.buffered_bytes());
      ASSERT_LE(r.buffered_bytes(), l.max_buffered_bytes);
    }
    r.flush(rec);
    EXPECT_GT(peak, 0u);
    EXPECT_GT(r.stats().overflow_gaps, 0u);
    EXPECT_EQ(r.buffered_bytes(), 0u);
    EXPECT_EQ(r.stats().bytes_delivered + r.stats().gap_bytes, r.next_offset());
    expect_delivered_bytes_match(rec, stream);
  }
}

TEST(TcpReassembly, OversizedSegmentWithTinyByteCap) {
  ReassemblyLimits l;
  l.max_buffered_bytes = 10;
  const std::string stream = random_bytes(300, 16);
  TcpReassembler r(l);
  Recorder rec;
  Seg a, b;
  a.seq = 0;
  a.bytes = stream.substr(0, 100);
  b.seq = 200;
  b.bytes = stream.substr(200, 100);  // larger than the cap: the hole is given up at once
  feed(r, a, rec);
  feed(r, b, rec);
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{100, 100}}));
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(rec.stream, stream.substr(0, 100) + stream.substr(200));
}

// ---------------------------------------------------------------- hostile ---

TEST(TcpReassembly, RandomChaosKeepsTheContract) {
  // Random loss, duplication, overlap, truncation, chunking and reordering
  // under small caps: offsets stay consistent, every delivered byte is right,
  // memory stays under the caps.
  for (uint32_t seed = 1; seed <= 20; seed++) {
    SCOPED_TRACE(seed);
    ReassemblyLimits l;
    l.max_buffered_bytes = 1 + seed * 500;
    l.max_buffered_segments = 1 + seed % 7;
    l.max_hole_wait_ns = 50;
    const std::string stream = random_bytes(100000, seed);
    std::mt19937 rng(seed);
    std::vector<Seg> sent;
    for (int round = 0; round < 2; round++) {
      auto segs = cut(stream, 0xFFFF0000u, rng, 1, 2000);
      for (auto& s : segs) {
        const uint32_t roll = rng() % 20;
        if (roll == 0) continue;  // lost
        if (roll == 1) {  // truncated
          s.wire_len = static_cast<uint32_t>(s.bytes.size());
          s.bytes.resize(rng() % (s.bytes.size() + 1));
        } else if (roll == 2 && s.bytes.size() > 1) {  // chunked
          const uint32_t wire = static_cast<uint32_t>(s.bytes.size()), half = wire / 2;
          Seg c = s;
          c.chunk_off = half;
          c.bytes = s.bytes.substr(half);
          c.wire_len = wire;
          s.bytes.resize(half);
          s.wire_len = wire;
          sent.push_back(std::move(s));
          sent.push_back(std::move(c));
          continue;
        }
        sent.push_back(std::move(s));
      }
    }
    for (size_t i = 0; i + 16 < sent.size(); i += 16)
      if (rng() % 2) std::shuffle(sent.begin() + i, sent.begin() + i + 16, rng);
    TcpReassembler r(l);
    Recorder rec;
    feed(r, syn_for(0xFFFF0000u), rec);
    for (size_t i = 0; i < sent.size(); i++) {
      sent[i].ts = i;
      feed(r, sent[i], rec);
      ASSERT_LE(r.buffered_bytes(), l.max_buffered_bytes);
      ASSERT_EQ(r.stats().bytes_delivered + r.stats().gap_bytes, r.next_offset());
    }
    r.flush(rec);
    EXPECT_EQ(r.buffered_bytes(), 0u);
    EXPECT_EQ(rec.pos, r.next_offset());
    expect_delivered_bytes_match(rec, stream);
  }
}

TEST(TcpReassembly, AdversarialTinySegmentsInReverseOrder) {
  ReassemblyLimits l;
  l.max_buffered_segments = 1024;
  const size_t n = 100000;
  const std::string stream = random_bytes(n + 1, 17);
  TcpReassembler r(l);
  Recorder rec;
  Seg first;
  first.seq = 0;
  first.bytes = stream.substr(0, 1);
  feed(r, first, rec);
  for (size_t i = n; i >= 1; i--) {
    Seg s;
    s.seq = static_cast<uint32_t>(i);
    s.bytes = stream.substr(i, 1);
    s.ts = n - i;
    feed(r, s, rec);
    ASSERT_LE(r.buffered_bytes(), 1024u);
  }
  r.flush(rec);
  // Held until the cap, then the hole before them is given up; what came
  // after that is from before next_offset and dropped.
  EXPECT_EQ(r.stats().overflow_gaps, 1u);
  EXPECT_EQ(rec.gaps.size(), 1u);
  EXPECT_EQ(r.next_offset(), n + 1);
  EXPECT_EQ(r.stats().bytes_delivered + r.stats().gap_bytes, n + 1);
  EXPECT_EQ(r.stats().retransmitted_bytes, n - 1025);
  expect_delivered_bytes_match(rec, stream);
}

TEST(TcpReassembly, AdversarialTinySegmentsWithHolesEverywhere) {
  // Every other byte, ascending, then the missing ones in reverse, then one
  // segment over all of it; default caps.
  const size_t n = 100000;
  const std::string stream = random_bytes(2 * n + 2, 18);
  TcpReassembler r;
  Recorder rec;
  Seg first;
  first.seq = 0;
  first.bytes = stream.substr(0, 1);
  feed(r, first, rec);
  for (size_t i = 1; i <= n; i++) {
    Seg s;
    s.seq = static_cast<uint32_t>(2 * i);
    s.bytes = stream.substr(2 * i, 1);
    s.ts = i;
    feed(r, s, rec);
    ASSERT_LE(r.buffered_bytes(), ReassemblyLimits{}.max_buffered_bytes);
  }
  for (size_t i = n; i >= 1; i--) {
    Seg s;
    s.seq = static_cast<uint32_t>(2 * i - 1);
    s.bytes = stream.substr(2 * i - 1, 1);
    s.ts = 2 * n - i;
    feed(r, s, rec);
  }
  Seg all;
  all.seq = 0;
  all.bytes = stream;
  all.ts = 3 * n;
  feed(r, all, rec);
  r.flush(rec);
  EXPECT_EQ(r.next_offset(), stream.size());
  EXPECT_EQ(r.buffered_bytes(), 0u);
  expect_delivered_bytes_match(rec, stream);
}

TEST(TcpReassembly, HostileWireLengthIsNotBelieved) {
  TcpReassembler r;
  Recorder rec;
  Seg s;
  s.seq = 1;
  s.bytes = "abc";
  s.wire_len = 0xFFFFFFFFu;
  feed(r, s, rec);
  s.seq = 4;
  s.bytes = "def";
  s.wire_len = 0;
  feed(r, s, rec);
  r.flush(rec);
  EXPECT_EQ(rec.stream, "abcdef");
  EXPECT_TRUE(rec.gaps.empty());
}

// ----------------------------------------------------------------- window ---

// A stream of `n` in-order segments of `size` bytes starting at seq0,
// `dt` ns apart from `t0`.
std::vector<Seg> in_order(const std::string& stream, uint32_t seq0, size_t size, uint64_t t0, uint64_t dt) {
  std::vector<Seg> out;
  for (size_t off = 0; off < stream.size(); off += size) {
    Seg s;
    s.seq = seq0 + static_cast<uint32_t>(off);
    s.bytes = stream.substr(off, size);
    s.ts = t0 + out.size() * dt;
    out.push_back(std::move(s));
  }
  return out;
}

TEST(TcpReassembly, StraySegmentNeverMovesTheStream) {
  // One stray segment, then the stream goes on for 10 s of packet time (five
  // hole waits): every byte is delivered, no gap, and the stray is counted
  // where it is ahead of the window; from behind it is a retransmission.
  const ReassemblyLimits def;
  struct Case {
    const char* name;
    int64_t ahead;  // from the next expected byte
    bool out_of_window;
  };
  const Case cases[] = {
      {"2^31-1 ahead", (1ll << 31) - 1, true},
      {"1 MiB ahead", 1 << 20, true},
      {"just beyond the window", static_cast<int64_t>(def.max_ahead_bytes), true},
      {"2^31 ahead reads as behind", 1ll << 31, false},
      {"1 MiB behind", -(1 << 20), false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string stream = random_bytes(40000, 21);
    const uint32_t seq0 = 0xFFFF0000u;  // across the wrap too
    auto segs = in_order(stream, seq0, 400, 1'000'000'000, 100'000'000);
    TcpReassembler r;
    Recorder rec;
    feed(r, syn_for(seq0), rec);
    for (size_t i = 0; i < segs.size(); i++) {
      feed(r, segs[i], rec);
      if (i == 5) {
        Seg stray;
        stray.seq = static_cast<uint32_t>(seq0 + 2400 + c.ahead);
        stray.bytes = std::string(100, 'S');
        stray.ts = segs[i].ts + 1;
        const uint32_t wire = 100;
        EXPECT_EQ(r.segment(stray.seq, kAck, as_span(stray.bytes), 0, wire, stray.ts, rec), !c.out_of_window);
      }
    }
    r.flush(rec);
    EXPECT_TRUE(rec.stream == stream);
    EXPECT_TRUE(rec.gaps.empty());
    EXPECT_EQ(r.next_offset(), stream.size());
    EXPECT_EQ(r.buffered_bytes(), 0u);
    EXPECT_EQ(r.stats().out_of_window_segments, c.out_of_window ? 1u : 0u);
    EXPECT_EQ(r.stats().out_of_window_bytes, c.out_of_window ? 100u : 0u);
    EXPECT_EQ(r.stats().retransmitted_bytes, c.out_of_window ? 0u : 100u);
    EXPECT_EQ(r.stats().resyncs, 0u);
  }
}

TEST(TcpReassembly, StrayInsideTheWindowLosesToTheStream) {
  // A stray inside the window is held; the stream keeps moving in order, so
  // the hole before it is not given up however long it waits, and the
  // in-order segment that covers it is delivered, not the stray's bytes.
  // (Held bytes that the stream reaches exactly at their first byte are
  // delivered like any reordered segment: that is what reordering is.)
  const std::string stream = random_bytes(60000, 22);
  auto segs = in_order(stream, 1, 500, 0, 200'000'000);  // 24 s of packet time
  TcpReassembler r;
  Recorder rec;
  feed(r, syn_for(1), rec);
  feed(r, segs[0], rec);
  Seg stray;
  stray.seq = 1 + 30100;  // inside the segment [30000, 30500)
  stray.bytes = std::string(200, 'S');
  stray.ts = 1;
  feed(r, stray, rec);
  EXPECT_EQ(r.buffered_bytes(), 200u);
  EXPECT_EQ(r.stats().out_of_window_segments, 0u);
  for (size_t i = 1; i < segs.size(); i++) feed(r, segs[i], rec);
  EXPECT_TRUE(rec.stream == stream) << "the stray's bytes were delivered";
  EXPECT_TRUE(rec.gaps.empty());
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(r.memory_bytes(), 0u);
  EXPECT_EQ(r.stats().retransmitted_bytes, 200u);
}

TEST(TcpReassembly, HoleIsStillGivenUpWhenTheStreamStops) {
  // The other side of the rule above: with nothing in order, a real hole is
  // given up after the hole wait as before.
  ReassemblyLimits l;
  l.max_hole_wait_ns = 1000;
  const std::string stream = random_bytes(3000, 23);
  TcpReassembler r(l);
  Recorder rec;
  auto seg = [&](size_t from, size_t to, uint64_t ts) {
    Seg s;
    s.seq = static_cast<uint32_t>(from);
    s.bytes = stream.substr(from, to - from);
    s.ts = ts;
    feed(r, s, rec);
  };
  seg(0, 100, 0);
  seg(2000, 2100, 10);  // far ahead, inside the window
  seg(100, 200, 500);  // in order: progress
  seg(200, 300, 1400);  // in order: progress, though the held range is 1390 old
  EXPECT_TRUE(rec.gaps.empty());
  seg(2100, 2200, 2000);  // not in order: the stream has not moved for 600
  EXPECT_TRUE(rec.gaps.empty());
  seg(2200, 2300, 2401);  // 1001 since the last progress
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{300, 1700}}));
  EXPECT_EQ(r.next_offset(), 2300u);
}

TEST(TcpReassembly, PeerWindowWidensWhatIsHeld) {
  const ReassemblyLimits def;
  const std::string stream = random_bytes(100, 24);
  Seg first;
  first.seq = 1000;
  first.bytes = stream;
  Seg ahead;  // 1 MiB ahead: beyond max_ahead_bytes
  ahead.seq = 1000 + 100 + (1u << 20);
  ahead.bytes = "x";
  {
    TcpReassembler r;
    Recorder rec;
    feed(r, first, rec);
    r.peer_ack(1100, 65535, rec);  // a 64 KiB window: no wider than the bound
    EXPECT_FALSE(r.segment(ahead.seq, kAck, as_span(ahead.bytes), 0, 1, 0, rec));
    EXPECT_EQ(r.buffered_bytes(), 0u);
  }
  {
    TcpReassembler r;
    Recorder rec;
    feed(r, first, rec);
    r.peer_ack(1100, 4u << 20, rec);  // 4 MiB
    EXPECT_TRUE(r.segment(ahead.seq, kAck, as_span(ahead.bytes), 0, 1, 0, rec));
    EXPECT_EQ(r.buffered_bytes(), 1u);
    EXPECT_EQ(r.stats().out_of_window_segments, 0u);
    // The edge never moves back (windows do not shrink), and a later ack
    // with a smaller window leaves it.
    r.peer_ack(1100, 1000, rec);
    Seg ahead2 = ahead;
    ahead2.seq += 1000;
    EXPECT_TRUE(r.segment(ahead2.seq, kAck, as_span(ahead2.bytes), 0, 1, 0, rec));
    // Just past the 4 MiB edge: dropped.
    Seg past = ahead;
    past.seq = 1100 + (4u << 20);
    EXPECT_FALSE(r.segment(past.seq, kAck, as_span(past.bytes), 0, 1, 0, rec));
    EXPECT_EQ(r.stats().out_of_window_segments, 1u);
  }
  {
    // An ack of bytes never seen sent is not believed: it does not move the edge.
    TcpReassembler r;
    Recorder rec;
    feed(r, first, rec);
    r.peer_ack(1100 + (2u << 20), 4u << 20, rec);
    EXPECT_FALSE(r.segment(ahead.seq, kAck, as_span(ahead.bytes), 0, 1, 0, rec));
    EXPECT_EQ(rec.stream, stream);
    EXPECT_TRUE(rec.gaps.empty());
  }
  (void)def;
}

TEST(TcpReassembly, LossLargerThanTheWindowResynchronises) {
  // The capture lost 2 MiB of a bulk transfer: what follows is beyond the
  // window, and no acknowledgement says so. Once a contiguous run of it is
  // 4 packets and max_ahead_bytes long (with nothing in order meanwhile),
  // the stream is there: one gap, and the rest is delivered.
  const ReassemblyLimits def;
  const size_t lost = 2u << 20, after = 600000, seg = 1448;
  const std::string stream = random_bytes(10000 + lost + after, 25);
  TcpReassembler r;
  Recorder rec;
  feed(r, syn_for(1), rec);
  for (auto& s : in_order(stream.substr(0, 10000), 1, seg, 0, 1000)) feed(r, s, rec);
  auto rest = in_order(stream.substr(10000 + lost), 1 + 10000 + static_cast<uint32_t>(lost), seg, 100000, 1000);
  size_t dropped = 0;
  for (auto& s : rest) {
    if (r.stats().resyncs == 0) dropped += s.bytes.size();
    feed(r, s, rec);
  }
  r.flush(rec);
  EXPECT_EQ(r.stats().resyncs, 1u);
  const size_t run = (def.max_ahead_bytes + seg - 1) / seg * seg;  // whole packets up to the bound
  EXPECT_EQ(dropped, run);
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{10000, lost + run}}));
  EXPECT_EQ(r.next_offset(), stream.size());
  EXPECT_EQ(r.stats().bytes_delivered, stream.size() - lost - run);
  expect_delivered_bytes_match(rec, stream);
}

TEST(TcpReassembly, SlowStreamBeyondTheWindowResynchronisesAfterTheHoleWait) {
  // After a loss larger than the window, a slow stream (a few bytes a second)
  // never makes a big run: two contiguous packets more than the hole wait
  // apart, with nothing in order meanwhile, are enough.
  const std::string stream = random_bytes(300, 26);
  TcpReassembler r;
  Recorder rec;
  Seg a;
  a.seq = 1;
  a.bytes = stream.substr(0, 100);
  feed(r, a, rec);
  const uint32_t far = 1 + 100 + (8u << 20);
  Seg b;
  b.seq = far;
  b.bytes = stream.substr(100, 100);
  b.ts = 1'000'000'000;
  EXPECT_FALSE(r.segment(b.seq, kAck, as_span(b.bytes), 0, 100, b.ts, rec));
  Seg c;
  c.seq = far + 100;
  c.bytes = stream.substr(200, 100);
  c.ts = b.ts + ReassemblyLimits{}.max_hole_wait_ns + 1;
  feed(r, c, rec);
  EXPECT_EQ(r.stats().resyncs, 1u);
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{100, (8u << 20) + 200}}));
  Seg d;
  d.seq = far + 200;
  d.bytes = "next";
  feed(r, d, rec);
  EXPECT_EQ(rec.stream, stream.substr(0, 100) + "next");
}

TEST(TcpReassembly, NoResyncWhileTheStreamMovesOrFromOnePacket) {
  const ReassemblyLimits def;
  {
    // A contiguous run of strays while the stream goes on in order: the
    // stream is where the in-order data is.
    const std::string stream = random_bytes(20000, 27);
    auto segs = in_order(stream, 1, 1000, 0, 1'000'000'000);
    TcpReassembler r;
    Recorder rec;
    const uint32_t far = 1u << 30;
    for (size_t i = 0; i < segs.size(); i++) {
      feed(r, segs[i], rec);
      Seg stray;
      stray.seq = far + static_cast<uint32_t>(i) * 65536;
      stray.bytes = std::string(65536, 'S');
      stray.ts = segs[i].ts + 1;
      feed(r, stray, rec);
    }
    EXPECT_EQ(r.stats().resyncs, 0u);
    EXPECT_EQ(r.stats().out_of_window_segments, segs.size());
    EXPECT_TRUE(rec.stream == stream);
  }
  {
    // One packet in 16 chunks of 16 KiB (256 KiB, BIG TCP), far ahead: one
    // packet is never a run, however long.
    TcpReassembler r;
    Recorder rec;
    Seg a;
    a.seq = 1;
    a.bytes = "ab";
    feed(r, a, rec);
    const std::string big(16 * 16384, 'B');
    for (const Seg& s : chunks(big, 1u << 30, 16384)) feed(r, s, rec);
    EXPECT_EQ(r.stats().resyncs, 0u);
    EXPECT_EQ(r.stats().out_of_window_segments, 16u);
    EXPECT_EQ(r.next_offset(), 2u);
    EXPECT_GE(big.size(), def.max_ahead_bytes);
  }
}

TEST(TcpReassembly, PeerAckInsideARunResynchronises) {
  // Lost beyond the window, then two packets of the rest, then the peer
  // acknowledges into them: the capture lost what lies before.
  TcpReassembler r;
  Recorder rec;
  Seg a;
  a.seq = 1;
  a.bytes = "0123456789";
  feed(r, a, rec);
  const uint32_t far = 11 + (4u << 20);
  for (int i = 0; i < 2; i++) {
    Seg s;
    s.seq = far + static_cast<uint32_t>(i) * 1000;
    s.bytes = std::string(1000, 'r');
    feed(r, s, rec);
  }
  EXPECT_EQ(r.stats().resyncs, 0u);
  r.peer_ack(far + 500, 65535, rec);  // inside the run: believed
  EXPECT_EQ(r.stats().resyncs, 1u);
  EXPECT_EQ(rec.gaps, (std::vector<Gap>{{10, (4u << 20) + 2000}}));
  EXPECT_EQ(r.next_offset(), 10u + (4u << 20) + 2000);
}

TEST(TcpReassembly, BareFinOrRstFarFromTheStreamIsNotBelieved) {
  TcpReassembler r;
  Recorder rec;
  Seg a;
  a.seq = 1;
  a.bytes = "hello";
  feed(r, a, rec);
  EXPECT_FALSE(r.segment(1 + 5 + (1u << 30), kRst, {}, 0, 0, 0, rec));
  EXPECT_FALSE(r.segment(1 + 5 - (1u << 20), kFin | kAck, {}, 0, 0, 0, rec));
  EXPECT_EQ(r.stats().out_of_window_segments, 2u);
  EXPECT_TRUE(r.segment(1 + 5, kFin | kAck, {}, 0, 0, 0, rec));
  EXPECT_TRUE(r.segment(1 + 5 + 1000, kRst, {}, 0, 0, 0, rec));  // in the window (bytes lost before it)
}

// ----------------------------------------------------------------- memory ---

TEST(TcpReassembly, MemoryBytesCountsRangesAndTheirOverhead) {
  ReassemblyLimits l = roomy();
  TcpReassembler r(l);
  Recorder rec;
  Seg a;
  a.seq = 0;
  a.bytes = "a";
  feed(r, a, rec);
  EXPECT_EQ(r.memory_bytes(), 0u);
  // 100 one-byte ranges: each costs far more than its byte (two tree nodes
  // and an allocation).
  for (uint32_t i = 0; i < 100; i++) {
    Seg s;
    s.seq = 10 + 2 * i;
    s.bytes = "x";
    s.ts = i;
    feed(r, s, rec);
  }
  EXPECT_EQ(r.buffered_bytes(), 100u);
  EXPECT_GE(r.memory_bytes(), 100u * 150);
  EXPECT_LE(r.memory_bytes(), 100u * 300);
  const size_t small = r.memory_bytes();
  // One 60 KB range: about its bytes.
  Seg big;
  big.seq = 100000;
  big.bytes = std::string(60000, 'y');
  feed(r, big, rec);
  EXPECT_GE(r.memory_bytes() - small, 60000u);
  EXPECT_LE(r.memory_bytes() - small, 61000u);
  // In-order data that covers the small ranges and the first bytes of the
  // big one: the small ones are dropped, the rest of the big one follows.
  Seg cover;
  cover.seq = 1;
  cover.bytes = std::string(100000 + 100 - 1, 'c');
  feed(r, cover, rec);
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(r.memory_bytes(), 0u);
  EXPECT_EQ(r.next_offset(), 160000u);
  EXPECT_EQ(r.stats().retransmitted_bytes, 100u + 100);
  // discard() drops without delivering.
  Seg again;
  again.seq = 300000;
  again.bytes = "z";
  feed(r, again, rec);
  EXPECT_GT(r.memory_bytes(), 0u);
  const uint64_t next = r.next_offset();
  r.discard();
  EXPECT_EQ(r.memory_bytes(), 0u);
  EXPECT_EQ(r.buffered_bytes(), 0u);
  EXPECT_EQ(r.next_offset(), next);
}

}  // namespace
