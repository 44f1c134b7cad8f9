// Reads an identity stream (DATA_DIR/identity/ followed live, or a snapshot's
// identity/ read once) into an IdentityTable, keeping it at the time of the
// traffic being dissected: it starts at the identity segment whose state dump
// covers the first packet, and reads on as the packets' time moves.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "identity_records.hpp"
#include "identity_table.hpp"

namespace tapwire::identity {

struct FeedStats {
  uint64_t records = 0;  // identity records applied
  uint64_t invalid = 0;  // records that failed to decode (skipped)
  uint64_t segments = 0;  // identity segments opened
  uint64_t segments_missed = 0;  // deleted by retention before they were read
  uint64_t corrupt = 0;  // segments that ended in a damaged record
};

class IdentityFeed {
 public:
  // `dir` may not exist (a capture without identity): the feed then stays empty.
  IdentityFeed(std::string dir, bool follow, uint64_t lookahead_ns = 30ull * 1000000000ull);
  ~IdentityFeed();
  IdentityFeed(const IdentityFeed&) = delete;
  IdentityFeed& operator=(const IdentityFeed&) = delete;

  // Applies to `table` every record up to ts_ns + lookahead (state dumps
  // whole). The first call picks the starting segment by ts_ns.
  void advance(IdentityTable& table, uint64_t ts_ns);
  // Everything there is (a snapshot, or `tapwire workloads` at the end).
  void advance_all(IdentityTable& table) { advance(table, UINT64_MAX / 2); }

  const FeedStats& stats() const;
  // A damaged segment, as one line; empty if none.
  const std::string& error() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Where the identity stream of a data dir or snapshot lives: DIR/identity.
std::string identity_dir_of(const std::string& dir);

}  // namespace tapwire::identity
