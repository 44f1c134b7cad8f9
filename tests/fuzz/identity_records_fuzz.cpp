// The identity stream's records (userspace/identity/identity_records.hpp) and
// the time-aware table built from them (identity_table.hpp), as the
// dissector and `tapwire workloads` use them on a stream from anywhere.
//
// Input: [limits u8] then entries:
//   [type u8][len u16][body]: a record of that type (4 socket, 5 process,
//       6 cgroup, 7 workload, 8 dump; others are refused) applied to the table
//   [0xF0][l4 u8][v6 u8][a u32][b u32][port u16][peer_port u16][ts u64]:
//       resolve address a:port talking to b:peer_port at ts (a, b: an IPv4
//       address as on the wire, or the last 4 bytes of fd00::/16)
//   [0xF1][ts u64]: prune
//   limits: small table caps (bit 0) and slacks (bit 1)
//
// Checked: a record that decodes re-encodes to a body that decodes to the
// same encoding (the stream's canonical form), with the same timestamp and
// dump flag; the table keeps its caps and counts every record; a resolved
// pod comes with its namespace and workload.
// libFuzzer: -max_len=16384
#include <netinet/in.h>

#include "fuzz_common.hpp"
#include "identity_records.hpp"
#include "identity_table.hpp"

namespace {

using tapwire::fuzz::Reader;
using namespace tapwire::identity;

IpKey address(bool v6, uint32_t wire) {
  IpKey k;
  k.version = v6 ? 6 : 4;
  if (v6) k.addr[0] = 0xfd;
  std::memcpy(k.addr + (v6 ? 12 : 0), &wire, 4);
  return k;
}

void check_record(uint16_t type, std::span<const uint8_t> body, const IdentityRecord& r) {
  auto [bytes, t] = encode(r);
  FUZZ_CHECK(t == type, "encoded as type " + std::to_string(t) + ", read as " + std::to_string(type));
  std::string why;
  auto again = decode_identity(t, bytes, &why);
  FUZZ_CHECK(again.has_value(), "its own encoding does not decode: " + why);
  FUZZ_CHECK(encode(*again).first == bytes, "encoding is not stable");
  FUZZ_CHECK(record_ts(*again) == record_ts(r));
  FUZZ_CHECK(record_in_dump(*again) == record_in_dump(r));
  if (type == TW_REC_SOCKET) FUZZ_CHECK(std::equal(bytes.begin(), bytes.end(), body.begin()), "a socket body is kept as is");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t l = in.u8();
  TableLimits lim;
  if (l & 1) {
    lim.max_sockets = 4;
    lim.max_processes = 3;
    lim.max_cgroups = 2;
    lim.max_objects = 3;
  }
  if (l & 2) {
    lim.keep_ended_ns = 10;
    lim.socket_slack_ns = 0;
    lim.ip_future_slack_ns = 0;
    lim.ip_past_slack_ns = 0;
  }
  IdentityTable table(lim);
  uint64_t applied = 0, refused = 0;
  while (!in.empty()) {
    const uint8_t type = in.u8();
    if (type == 0xF0) {
      const uint8_t l4 = (in.u8() & 1) ? IPPROTO_UDP : IPPROTO_TCP;
      const bool v6 = in.flag();
      const IpKey a = address(v6, in.u32());
      const IpKey b = address(v6, in.u32());
      const uint16_t port = in.u16(), peer_port = in.u16();
      const uint64_t ts = in.u64();
      if (auto id = table.resolve(l4, a, port, b, peer_port, ts)) {
        // A pod is named with its namespace and workload; a container by its id.
        if (!id->pod.empty()) FUZZ_CHECK(!id->namespace_.empty() && !id->workload_kind.empty());
        if (!id->container.empty()) FUZZ_CHECK(!id->container_id.empty());
      }
      continue;
    }
    if (type == 0xF1) {
      table.prune(in.u64());
      continue;
    }
    const std::span<const uint8_t> body = in.bytes(in.u16());
    std::string why;
    auto r = decode_identity(type, body, &why);
    if (r) {
      FUZZ_CHECK(is_identity_type(type));
      check_record(type, body, *r);
    } else {
      FUZZ_CHECK(!why.empty(), "a refusal says why");
    }
    const bool ok = table.apply(type, body);
    FUZZ_CHECK(ok == r.has_value());
    ok ? applied++ : refused++;
    const TableStats& st = table.stats();
    FUZZ_CHECK(st.records == applied && st.invalid == refused);
    FUZZ_CHECK(st.sockets <= lim.max_sockets && st.processes <= lim.max_processes && st.cgroups <= lim.max_cgroups);
    FUZZ_CHECK(st.pods + st.services + st.slices + st.nodes <= lim.max_objects);
  }
  for (const PodRow& p : table.pods()) FUZZ_CHECK(!p.uid.empty() && !p.workload_kind.empty());
  (void)table.kube_state();
  return 0;
}
