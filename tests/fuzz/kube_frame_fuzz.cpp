// The frames tapwire-kube-watch writes on its stdout and the sensor reads
// (docs/IDENTITY.md: a 4-byte little-endian length, then one workload
// object): the sensor's splitting (userspace/sensor/kube_watcher.hpp,
// scan_frames, as KubeWatcher::on_readable drives it) against the frame
// reader of the identity library (kube_frame.hpp), fed in the same random
// reads, and each payload through parse_workload as the sensor does.
//
// Input: [seed u32][the child's output...]
//
// Checked: both readers find the same payloads in the same order and stop
// at the same bad length; the sensor's buffer never holds more than a frame
// and a read; a payload re-encodes to the bytes it came in; an accepted
// object survives to_json and parse_workload unchanged.
// libFuzzer: -max_len=65536
#include "fuzz_common.hpp"
#include "kube_frame.hpp"
#include "kube_watcher.hpp"
#include "workload_object.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
namespace k = tapwire::identity::kube;

void check_payload(std::string_view payload) {
  auto frame = k::encode_frame(payload);
  FUZZ_CHECK(frame.has_value() && frame->size() == 4 + payload.size() && frame->substr(4) == payload);
  auto w = tapwire::identity::parse_workload(payload);
  if (!w) return;
  auto back = tapwire::identity::parse_workload(tapwire::identity::to_json(*w));
  FUZZ_CHECK(back.has_value() && *back == *w, "an accepted object does not survive to_json");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  Rng rng(in.u32());
  const std::span<const uint8_t> out = in.rest();

  std::vector<uint8_t> buf;  // KubeWatcher::buf_
  k::FrameReader reader;
  bool sensor_bad = false;
  size_t off = 0;
  while (off < out.size() && !sensor_bad) {
    const size_t n = chunk_size(rng, out.size() - off, 4096);  // one read() of the pipe
    const auto chunk = out.subspan(off, n);
    off += n;

    std::vector<std::string> sensor_frames;
    buf.insert(buf.end(), chunk.begin(), chunk.end());
    const auto scan = tapwire::sensor::scan_frames(buf, [&](std::string_view p) { sensor_frames.emplace_back(p); });
    FUZZ_CHECK(scan.consumed <= buf.size());
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(scan.consumed));

    reader.feed(tapwire::fuzz::as_text(chunk));
    std::vector<std::string> lib_frames;
    while (auto p = reader.next()) lib_frames.push_back(std::move(*p));

    FUZZ_CHECK(sensor_frames == lib_frames, "the two frame readers disagree");
    FUZZ_CHECK(scan.bad == reader.failed(), "the two frame readers disagree on the framing");
    if (!scan.bad) FUZZ_CHECK(buf.size() == reader.buffered());
    for (const auto& p : sensor_frames) check_payload(p);
    sensor_bad = scan.bad;
    if (!scan.bad) FUZZ_CHECK(buf.size() < 4 + tapwire::identity::kMaxWorkloadJson, "held more than one frame");
  }
  return 0;
}
