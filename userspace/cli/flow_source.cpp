#include "flow_source.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "call_db.hpp"
#include "call_identity.hpp"
#include "commands.hpp"
#include "flow_sources.hpp"
#include "timefmt.hpp"

namespace tapwire::cli {
namespace {

bool is_dir(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Names from a DB's dns_names rows: each row's first and last answer.
void load_db_names(dissect::CallDb& db, uint64_t from, uint64_t to, flows::PassiveDns& dns) {
  for (auto& n : db.dns_names(from, to)) {
    dns.add(n.ip, n.name, n.first_seen, n.ttl);
    if (n.last_seen != n.first_seen) dns.add(n.ip, n.name, n.last_seen, n.ttl);
  }
}

}  // namespace

std::string json_str(const nlohmann::ordered_json& j, const char* k) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

std::string flow_end_label(const nlohmann::ordered_json& e, bool with_names) {
  std::string out;
  const std::string pod = json_str(e, "pod"), ns = json_str(e, "namespace");
  if (!pod.empty())
    out = (ns.empty() ? "" : ns + "/") + pod;
  else
    out = json_str(e, "ip");
  const std::string ip = json_str(e, "ip");
  out += (ip.find(':') != std::string::npos && pod.empty() ? "." : ":") + json_str(e, "port");
  if (with_names) {
    auto n = e.find("names");
    if (n != e.end() && n->is_array() && !n->empty()) {
      out += " (" + n->front().get<std::string>();
      if (n->size() > 1) out += " +" + std::to_string(n->size() - 1);
      out += ")";
    }
  }
  return out;
}

void add_flow_source_options(CLI::App& sub, FlowSourceOptions& o, bool with_db) {
  add_data_dir_option(sub, o.data_dir);
  sub.add_option("--snapshot", o.snapshot, "read a snapshot (NAME in DATA_DIR/snapshots/, or a directory)");
  if (with_db) sub.add_option("--db", o.db, "read the flows table of a dissection DB");
  sub.add_option("--pcap", o.pcap, "compute flows from a pcap/pcapng file (the sensor's accounting, in userspace)");
  sub.add_option("--from", o.from,
                 "flows active at or after: RFC 3339 (2026-11-23T01:52:00Z), Unix seconds, or relative (-5m)");
  sub.add_option("--to", o.to, "flows active at or before, same forms as --from");
}

void parse_window(const FlowSourceOptions& o, uint64_t& from_ns, uint64_t& to_ns) {
  const uint64_t now = realtime_now_ns();
  auto parse = [&](const char* name, const std::string& text) -> uint64_t {
    if (text.empty()) return 0;
    const TimeParseResult r = parse_time_arg(text, now);
    if (!r.ns) throw CliError(std::string("invalid ") + name + " time", "'" + text + "'", r.error);
    return *r.ns;
  };
  from_ns = parse("--from", o.from);
  to_ns = parse("--to", o.to);
  if (from_ns && to_ns && from_ns > to_ns)
    throw CliError("empty time window", "--from " + o.from + " is after --to " + o.to, "swap or correct the times");
}

LoadedFlows load_flows(const FlowSourceOptions& o, const FlowVisitor& visit) {
  LoadedFlows out;
  parse_window(o, out.from_ns, out.to_ns);
  const int sources = !o.snapshot.empty() + !o.db.empty() + !o.pcap.empty();
  if (sources > 1) throw CliError("more than one source", "--snapshot, --db, --pcap", "give one of them");
  flows::PassiveDns dns;
  std::vector<tw_seg_flow> recs;
  std::string identity_dir, warning;
  if (!o.pcap.empty()) {
    if (access(o.pcap.c_str(), R_OK) != 0)
      throw CliError("cannot read the capture", o.pcap, std::strerror(errno));
    try {
      recs = flows::flows_from_pcap(o.pcap, {}, &dns, &warning);
    } catch (const std::exception& e) {
      throw CliError("cannot read the capture", e.what(), "give a pcap or pcapng file");
    }
    out.source = o.pcap;
  } else if (!o.db.empty()) {
    auto db = open_call_db(o.db);
    for (auto& r : db->query_flows(out.from_ns, out.to_ns)) {
      FlowRow row;
      row.rec = nlohmann::ordered_json::parse(r.record, nullptr, false);
      if (row.rec.is_discarded()) continue;
      row.first_ns = r.first_ns;
      row.last_ns = r.last_ns;
      if (r.key.size() == sizeof(tw_flow_key)) {
        row.have_key = true;
        std::memcpy(&row.raw.key, r.key.data(), sizeof(tw_flow_key));
        row.raw.st.first_ns = r.first_ns;
        row.raw.st.last_ns = r.last_ns;
      }
      visit(row);
      out.flows++;
    }
    out.db_path = o.db;
    out.source = o.db;
    return out;
  } else {
    std::string seg_dir;
    if (!o.snapshot.empty()) {
      seg_dir = snapshot_segments_dir(o.snapshot, o.data_dir);
    } else {
      if (!is_dir(o.data_dir))
        throw CliError("data directory not found", o.data_dir, "pass the --data-dir that tapwire-sensor uses");
      seg_dir = o.data_dir + "/segments";
      if (access((o.data_dir + "/dissection.db").c_str(), R_OK) == 0) out.db_path = o.data_dir + "/dissection.db";
    }
    const std::string flow_dir = flows::flows_dir_for_segments(seg_dir);
    if (!is_dir(flow_dir) && o.snapshot.empty() && !out.db_path.empty()) {
      // No flow stream (an older sensor, or one whose flows were cleared) but the DB has them.
      FlowSourceOptions db_only = o;
      db_only.db = out.db_path;
      db_only.data_dir.clear();
      return load_flows(db_only, visit);
    }
    if (!is_dir(flow_dir))
      throw CliError("no flow records", flow_dir,
                     "this sensor has not written flows (tap.enabledDissectors without tcp and udp, or an older sensor); "
                     "try --pcap or --db");
    try {
      recs = flows::read_flow_dir(flow_dir, out.from_ns, out.to_ns, &warning);
    } catch (const std::exception& e) {
      throw CliError("cannot read flow records", e.what(), "check the permissions of " + flow_dir);
    }
    identity_dir = dissect::identity_dir_for_segments(seg_dir);
    out.segments_dir = seg_dir;
    out.source = flow_dir;
    // Passive DNS: the DB's names (answers over TCP too) and the segments'
    // answers over UDP: a live DB runs behind the wire, so an answer the
    // dissector has not reached yet still names the flows after it (the
    // same answer from both counts once).
    if (!out.db_path.empty()) {
      try {
        dissect::CallDb db(out.db_path, true);
        load_db_names(db, out.from_ns, out.to_ns, dns);
      } catch (const std::exception&) {
      }
    }
    if (is_dir(seg_dir)) {
      // Answers from a little before the window still name its flows.
      const uint64_t back = 600ull * 1000000000ull;
      flows::scan_segments_dns(seg_dir, out.from_ns > back ? out.from_ns - back : 0, out.to_ns, dns);
    }
  }
  if (!warning.empty()) std::fprintf(stderr, "tapwire: warning: %s\n", warning.c_str());
  flows::sort_by_first_seen(recs);
  flows::FlowNamer namer(identity_dir, &dns);
  FlowRow row;
  for (auto& r : recs) {
    if (!flows::in_window(r, out.from_ns, out.to_ns)) continue;
    flows::Flow f = namer.name(r);
    row.rec = flows::flow_json(f);
    row.flow = &f;
    row.first_ns = r.st.first_ns;
    row.last_ns = r.st.last_ns;
    row.have_key = true;
    row.raw = r;
    visit(row);
    out.flows++;
  }
  return out;
}

}  // namespace tapwire::cli
