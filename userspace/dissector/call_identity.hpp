// Names both ends of every call from the identity stream recorded next to
// the segments (docs/IDENTITY.md): the same names live, from a snapshot on
// another machine, or not at all for a pcap.
#pragma once

#include <cstdint>
#include <string>

#include "call.hpp"
#include "identity_feed.hpp"
#include "identity_table.hpp"

namespace tapwire::dissect {

class CallIdentity {
 public:
  // identity_dir: DATA_DIR/identity (follow: live) or a snapshot's identity/;
  // "" or a missing directory: calls keep their addresses only.
  CallIdentity(const std::string& identity_dir, bool follow);

  // The traffic's time moved to ts_ns (called per packet: cheap).
  void at(uint64_t ts_ns);
  // Sets src/dst identity and the capturing node of a call about to be written.
  void annotate(Call& c);

  const identity::IdentityTable& table() const { return table_; }
  const identity::IdentityFeed& feed() const { return feed_; }

 private:
  identity::IdentityTable table_;
  identity::IdentityFeed feed_;
  bool enabled_;
  uint64_t last_prune_ = 0;
};

// The identity directory that goes with a segment directory: the sibling
// "identity" of DIR/segments, or DIR/identity.
std::string identity_dir_for_segments(const std::string& segments_dir);

}  // namespace tapwire::dissect
