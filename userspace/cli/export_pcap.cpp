// tapwire export pcap: stored segments -> one pcapng file.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <memory>
#include <optional>
#include <string>

#include "commands.hpp"
#include "flow_source.hpp"
#include "flow_tracker.hpp"
#include "output_file.hpp"
#include "pcapng_writer.hpp"
#include "segment.hpp"
#include "timefmt.hpp"
#include "views.hpp"

namespace tapwire::cli {
namespace {

namespace fs = std::filesystem;

struct ExportPcapOptions {
  std::string data_dir;
  std::string snapshot;  // NAME or DIR: export a snapshot instead of the live ring
  std::string from;
  std::string to;
  std::string output;
  std::string flow;  // only this flow's packets
};

uint64_t parse_time_option(const std::string& name, const std::string& text, uint64_t now_ns) {
  const TimeParseResult r = parse_time_arg(text, now_ns);
  if (!r.ns)
    throw CliError("invalid " + name + " time", "'" + text + "'", r.error);
  return *r.ns;
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

int run_export_pcap(const ExportPcapOptions& o) {
  const auto started = std::chrono::steady_clock::now();
  PcapExportOptions po;
  po.data_dir = o.data_dir;
  po.snapshot = o.snapshot;
  po.from = o.from;
  po.to = o.to;
  po.flow = o.flow;
  const PcapPlan plan = plan_pcap_export(po);
  OutputFile out(o.output);
  const PcapExportResult r = write_pcap_export(plan, out.fp(), [](const std::string& warning) {
    std::fprintf(stderr, "tapwire: warning: %s\n", warning.c_str());
  });
  if (!r.ok)
    throw CliError("cannot write the output file", out.writing_path(),
                   std::string(std::strerror(errno)) + "; check free space");
  out.commit();

  const PcapngStats& s = r.stats;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::string extra;
  if (r.skipped) extra += ", " + std::to_string(r.skipped) + " outside the time window";
  if (r.vanished) extra += ", " + std::to_string(r.vanished) + " deleted by retention meanwhile";
  if (r.corrupt) extra += ", " + std::to_string(r.corrupt) + " with corrupt records";
  if (s.truncated) extra += "; " + std::to_string(s.truncated) + " packets cut at capture";
  if (s.malformed_records) extra += "; " + std::to_string(s.malformed_records) + " malformed records skipped";
  if (s.orphan_chunks) extra += "; " + std::to_string(s.orphan_chunks) + " UDP chunks without their first chunk skipped";
  std::fprintf(stderr,
               "tapwire: exported %" PRIu64 " packets (%" PRIu64 " payload bytes, %" PRIu64
               " file bytes) from %" PRIu64 " of %zu segments%s to %s in %.2f s\n",
               s.packets, s.payload_bytes, s.file_bytes, r.read, plan.segments.size(), extra.c_str(),
               o.output == "-" ? "standard output" : o.output.c_str(), secs);
  return 0;
}

}  // namespace

PcapPlan plan_pcap_export(const PcapExportOptions& o) {
  const uint64_t now = realtime_now_ns();
  PcapPlan p;
  const uint64_t from = o.from.empty() ? 0 : parse_time_option("--from", o.from, now);
  const uint64_t to = o.to.empty() ? UINT64_MAX : parse_time_option("--to", o.to, now);
  if (from > to)
    throw CliError("empty time window", "--from " + format_rfc3339_ns(from) + " is after --to " + format_rfc3339_ns(to),
                   "swap or correct the times");
  p.from_ns = from;
  p.to_ns = to;

  // --flow: the flow's key and time range from its record, then only the
  // packets of that key within it.
  if (!o.flow.empty()) {
    if (o.flow.size() != 16 || o.flow.find_first_not_of("0123456789abcdef") != std::string::npos)
      throw CliError("invalid flow id", o.flow, "a flow id is 16 lower-case hex digits (see 'tapwire flows')");
    FlowSourceOptions fo;
    fo.data_dir = o.data_dir;
    fo.snapshot = o.snapshot;
    fo.from = o.from;
    fo.to = o.to;
    LoadedFlows lf = load_flows(fo, [&](const FlowRow& r) {
      if (r.have_key && json_str(r.rec, "id") == o.flow) {
        p.flow_key = r.raw.key;
        p.from_ns = std::max(from, r.first_ns);
        p.to_ns = std::min(to, r.last_ns);
      }
    });
    if (!p.flow_key)
      throw CliError("no flow with this id", o.flow, "in " + lf.source + " (see 'tapwire flows', mind --from/--to)");
  }

  std::error_code ec;
  if (o.snapshot.empty() && !fs::is_directory(o.data_dir, ec))
    throw CliError("data directory not found", o.data_dir, "pass the --data-dir that tapwire-sensor uses");
  p.seg_dir = o.snapshot.empty() ? o.data_dir + "/segments" : snapshot_segments_dir(o.snapshot, o.data_dir);
  if (!fs::is_directory(p.seg_dir, ec))
    throw CliError("no segments directory", p.seg_dir,
                   "tapwire-sensor has not stored traffic in this data directory; check --data-dir and 'tapwire status'");
  try {
    p.segments = shm::list_segments(p.seg_dir);
  } catch (const shm::SegmentError& e) {
    throw CliError("cannot list segments", e.what(), "check the permissions of " + p.seg_dir);
  }
  if (p.segments.empty())
    throw CliError("no segments to export", p.seg_dir,
                   "tapwire-sensor has not stored any traffic yet; check 'tapwire status'");
  return p;
}

PcapExportResult write_pcap_export(const PcapPlan& p, FILE* fp, const std::function<void(const std::string&)>& warn) {
  PcapExportResult r;
  PcapngWriter writer(fp, std::string("tapwire ") + TAPWIRE_VERSION);
  for (const auto& seg : p.segments) {
    std::optional<shm::SegmentReader> reader;
    try {
      reader.emplace(shm::SegmentReader::open(seg.path));
    } catch (const shm::SegmentError& e) {
      // Retention may delete the oldest segments while we read: not an error.
      if (!file_exists(seg.path)) {
        ++r.vanished;
        continue;
      }
      throw CliError("cannot read segment", e.what(), "move that file out of " + p.seg_dir + " and retry");
    }
    const tw_seg_header& h = reader->header();
    if (h.record_count > 0 && (h.last_ts_ns < p.from_ns || h.first_ts_ns > p.to_ns)) {
      ++r.skipped;
      continue;
    }
    ++r.read;
    while (auto rec = reader->next()) {
      if (rec->type == TW_REC_IFACE) {
        writer.add_iface_record(rec->body);
      } else if (rec->type == TW_REC_PACKET) {
        if (rec->body.size() >= sizeof(tw_pkt)) {
          uint64_t ts;
          std::memcpy(&ts, rec->body.data() + offsetof(tw_pkt, ts_ns), sizeof ts);
          if (ts < p.from_ns || ts > p.to_ns) continue;
          if (p.flow_key) {
            tw_pkt m;
            std::memcpy(&m, rec->body.data(), sizeof m);
            tw_flow_key k;
            uint8_t side;
            if (!flows::flow_key_of(m, k, side) || std::memcmp(&k, &*p.flow_key, sizeof k) != 0) continue;
          }
        } else if (p.flow_key) {
          continue;
        }
        writer.add_packet_record(rec->body);
      }
    }
    if (reader->corrupt()) {
      ++r.corrupt;
      if (warn) warn(seg.path + ": a record failed validation; exported the records before it");
    }
    if (!writer.ok()) break;
  }
  r.ok = writer.finish();
  r.stats = writer.stats();
  return r;
}

void register_export_pcap(CLI::App& export_app, Action& action) {
  auto opts = std::make_shared<ExportPcapOptions>();
  CLI::App* sub = export_app.add_subcommand(
      "pcap", "Write stored packets as pcapng (headers are synthesized from the capture metadata)");
  add_data_dir_option(*sub, opts->data_dir);
  sub->add_option("--snapshot", opts->snapshot,
                  "export a snapshot (NAME in DATA_DIR/snapshots/, or a directory) instead of the live ring");
  sub->add_option("--from", opts->from,
                  "First packet time: RFC 3339 (2026-11-23T01:52:00Z), Unix seconds, or relative (-5m)");
  sub->add_option("--to", opts->to, "Last packet time, same forms as --from");
  sub->add_option("--flow", opts->flow,
                  "only the packets of this flow (its id from 'tapwire flows'; payload-less ACKs are not stored)");
  sub->add_option("-o,--output", opts->output, "pcapng file to write ('-' for standard output)")->required();
  sub->callback([opts, &action] { action = [opts] { return run_export_pcap(*opts); }; });
}

}  // namespace tapwire::cli
