// tapwire-dissector: turns captured packets into API calls. Reads the
// sensor's segments live (--data-dir), a snapshot (--snapshot) or a pcap
// (--pcap); writes the dissection DB (--db) and/or JSON lines (--jsonl).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#ifdef TW_WITH_MIMALLOC
#include <mimalloc.h>
#endif

#include "call_db.hpp"
#include "call_identity.hpp"
#include "confine.hpp"
#include "dissector.hpp"
#include "grpc/proto_schema.hpp"
#include "http2/session.hpp"
#include "packet_source.hpp"
#include "flow_db.hpp"
#include "flow_sources.hpp"

using namespace tapwire::dissect;

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

// Call records go to the DB and/or as JSON lines. Lines are written whole
// (one write() of complete lines at a time), so a dissector killed at any
// moment never leaves half a record in the file.
struct Outputs {
  std::unique_ptr<CallDb> db;
  int jsonl_fd = -1;
  bool jsonl_owned = false;
  std::string pending;  // complete lines not yet written
  uint64_t calls = 0;

  tapwire::flows::PassiveDns dns;  // names from the DNS calls, for the flows

  void add(Call&& c) {
    calls++;
    if (db) db->insert(c);
    if (db && c.l4_proto != 0 && c.dns_response()) tapwire::flows::store_dns_call(db.get(), &dns, c);
    if (jsonl_fd >= 0) {
      // Names from the wire or /proc may be any bytes: never let one stop the output.
      write_record(c, pending);  // not-UTF-8 bytes become U+FFFD
      pending += '\n';
      if (pending.size() >= (1u << 16)) write_pending();
    }
  }
  void write_pending() {
    size_t off = 0;
    while (off < pending.size()) {
      ssize_t n = ::write(jsonl_fd, pending.data() + off, pending.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // EPIPE (stdout closed) and the like: the DB, if any, still gets everything
      off += static_cast<size_t>(n);
    }
    pending.clear();
  }
  void flush() {
    if (db) db->commit();
    if (jsonl_fd >= 0) write_pending();
  }
  ~Outputs() {
    flush();
    if (jsonl_owned) close(jsonl_fd);
  }
};

std::string checkpoint_text(SourcePosition resume, SourcePosition done) {
  nlohmann::json j = {{"resume", {resume.segment, resume.offset}}, {"done", {done.segment, done.offset}}};
  return j.dump();
}

bool parse_checkpoint(const std::string& text, SourcePosition& resume, SourcePosition& done) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  try {
    resume = {j.at("resume").at(0).get<uint64_t>(), j.at("resume").at(1).get<uint64_t>()};
    done = {j.at("done").at(0).get<uint64_t>(), j.at("done").at(1).get<uint64_t>()};
    return true;
  } catch (...) {
    return false;
  }
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_dir, snapshot, pcap, db_path, jsonl_path, checkpoint_path, stats_path, identity_dir;
  bool no_identity = false;
  bool keep_priority = false, quiet = false;
  size_t body_kept = 64 * 1024, header_bytes = 64 * 1024;
  uint64_t memory_limit = DissectorOptions{}.memory_limit;
  uint64_t db_max_size = 500ull << 20;  // tap.capture.dbMaxSize's default
  CLI::App app{"tapwire-dissector: dissects captured traffic into API calls (HTTP, DNS)"};
  std::string version = std::string("tapwire-dissector ") + TAPWIRE_VERSION;
#ifdef TW_WITH_MIMALLOC
  version += " (mimalloc " + std::to_string(mi_version()) + ")";  // also keeps the library linked in
#else
  version += " (glibc malloc)";
#endif
  app.set_version_flag("--version", version);
  auto* src = app.add_option_group("source", "where the packets come from (one of)");
  src->add_option("--data-dir", data_dir, "a sensor's data dir, followed live");
  src->add_option("--snapshot", snapshot, "a snapshot or segment directory, read once");
  src->add_option("--pcap", pcap, "a pcap or pcapng file");
  src->require_option(1);
  app.add_option("--db", db_path, "the dissection DB (SQLite) to write (live default: DATA_DIR/dissection.db)");
  app.add_option("--jsonl", jsonl_path, "write call records as JSON lines to FILE, or - for stdout");
  app.add_option("--checkpoint", checkpoint_path,
                 "live mode: where to keep the resume point (default: in the DB, else DATA_DIR/dissector.checkpoint)");
  app.add_option("--stats", stats_path, "write the dissector's metrics as JSON here (live default: DATA_DIR/dissector.json)");
  app.add_option("--max-body", body_kept, "body bytes kept per message")->capture_default_str();
  app.add_option("--max-header", header_bytes, "header bytes allowed per message")->capture_default_str();
  app.add_option("--db-max-size", db_max_size,
                 "live: delete the oldest calls to keep the DB's calls within this many bytes (0: no bound)")
      ->capture_default_str();
  app.add_option("--memory-limit", memory_limit,
                 "heap for dissection state (flows, reassembly, buffers, waiting requests), like 256Mi; beyond it "
                 "the least useful state is shed; 0: no limit (default 256Mi)")
      ->transform(CLI::AsSizeValue(false));
  std::string dissectors = dissector_list();
  app.add_option("--dissectors", dissectors,
                 "protocols to dissect, comma-separated (" + dissector_list() + "), or none")
      ->capture_default_str();
  std::vector<std::string> proto_paths;
  app.add_option("--grpc-proto-paths", proto_paths,
                 ".proto files or directories of them (tap.grpc.protoPaths): gRPC messages decoded with field names")
      ->delimiter(',');
  app.add_option("--identity", identity_dir,
                 "the identity stream to name both ends of each call (default: the data dir's or snapshot's identity/)");
  app.add_flag("--no-identity", no_identity, "calls carry addresses only");
  ConfineOptions confine_opts;
  auto* keep = app.add_flag("--keep-priority", keep_priority,
                            "run unconfined: no lower priority, user switch, capability drop or seccomp (tests, benchmarks)");
  app.add_option("--user", confine_opts.user, "when started as root, run as this unprivileged user")->excludes(keep);
  app.add_option("--group", confine_opts.group, "... and group (default: the user's primary group)")->excludes(keep);
  app.add_flag("-q,--quiet", quiet, "no summary line at the end");
  try {
    app.parse(argc, argv);
    if (db_path.empty() && jsonl_path.empty()) {
      // Live, the DB in the data dir is what `tapwire tail` and `tapwire calls` find.
      if (data_dir.empty()) throw CLI::ValidationError("output", "give --db FILE, --jsonl FILE|- or both");
      db_path = data_dir + "/dissection.db";
    }
    if (stats_path.empty() && !data_dir.empty()) stats_path = data_dir + "/dissector.json";
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "tapwire-dissector: %s (see --help)\n", e.what());
    return 2;
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // .proto files are read while the files the operator named can be (before
  // the user switch); a schema that does not load stops the start.
  if (!proto_paths.empty()) {
    std::string err;
    auto schema = tapwire::proto::ProtoSchemaDecoder::load(proto_paths, err);
    if (!schema) {
      std::fprintf(stderr, "tapwire-dissector: --grpc-proto-paths: %s\n", err.c_str());
      return 2;
    }
    if (!quiet)
      std::fprintf(stderr, "tapwire-dissector: gRPC schema: %zu .proto files, %zu methods\n", schema->file_count(),
                   schema->method_count());
    tapwire::proto::set_grpc_decoder(std::move(schema));
  }
  // Before any input or output is opened: files are opened as the
  // unprivileged user, and the parsing runs under the seccomp allow-list.
  if (!keep_priority) {
    try {
      std::string warn = confine(confine_opts).warnings;
      if (!warn.empty() && !quiet) std::fprintf(stderr, "tapwire-dissector: could not lower:%s\n", warn.c_str());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tapwire-dissector: %s\n", e.what());
      return 1;
    }
  }

  try {
    Outputs out;
    if (!db_path.empty()) {
      out.db = std::make_unique<CallDb>(db_path, false, /*bulk=*/data_dir.empty());
      // Live, calls are committed only with the checkpoint that covers them:
      // a dissector killed at any moment neither loses nor repeats a call.
      if (!data_dir.empty()) {
        out.db->set_auto_commit(false);
        out.db->set_max_size(db_max_size);  // live only: a pcap or snapshot DB holds all it dissects
      }
    }
    if (jsonl_path == "-") {
      out.jsonl_fd = STDOUT_FILENO;
    } else if (!jsonl_path.empty()) {
      // Live, a restarted dissector appends to what the previous run wrote.
      int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (data_dir.empty() ? O_TRUNC : O_APPEND);
      out.jsonl_fd = ::open(jsonl_path.c_str(), flags, 0640);
      if (out.jsonl_fd < 0) throw std::runtime_error(jsonl_path + ": cannot open for writing: " + std::strerror(errno));
      out.jsonl_owned = true;
    }

    const bool live = !data_dir.empty();
    std::unique_ptr<PacketSource> source;
    SourcePosition resume, done;
    bool have_checkpoint = false;
    if (live && checkpoint_path.empty() && !out.db) checkpoint_path = data_dir + "/dissector.checkpoint";
    auto load_checkpoint = [&]() -> std::optional<std::string> {
      if (!checkpoint_path.empty()) {
        std::ifstream in(checkpoint_path);
        if (!in) return std::nullopt;
        return std::string(std::istreambuf_iterator<char>(in), {});
      }
      return out.db->meta("checkpoint");
    };
    auto save_checkpoint = [&](const std::string& text) {
      if (!checkpoint_path.empty()) {
        std::string tmp = checkpoint_path + ".tmp";
        {
          std::ofstream o(tmp, std::ios::trunc);
          o << text << "\n";
        }
        std::rename(tmp.c_str(), checkpoint_path.c_str());
      } else {
        out.db->set_meta("checkpoint", text);  // in the same transaction as the calls it covers
      }
    };

    if (live) {
      if (auto text = load_checkpoint(); text && parse_checkpoint(*text, resume, done)) have_checkpoint = true;
      source = open_segment_source(data_dir + "/segments", true, resume);
      if (identity_dir.empty()) identity_dir = data_dir + "/identity";
    } else if (!snapshot.empty()) {
      std::string dir = is_dir(snapshot + "/segments") ? snapshot + "/segments" : snapshot;
      source = open_segment_source(dir, false);
      if (identity_dir.empty()) identity_dir = identity_dir_for_segments(dir);
    } else {
      source = open_pcap_source(pcap);
    }
    if (no_identity) identity_dir.clear();
    CallIdentity identity(identity_dir, live);

    DissectorOptions opts;
    if (auto bad = enable_dissectors(opts, dissectors); !bad.empty())
      throw std::runtime_error("--dissectors: unknown dissector '" + bad + "' (known: " + dissector_list() + ")");
    opts.http.max_body_kept = body_kept;
    opts.http.max_header_bytes = header_bytes;
    opts.memory_limit = static_cast<size_t>(memory_limit);
    Dissector d(opts, [&](Call&& c) {
      identity.annotate(c);
      out.add(std::move(c));
    });
    if (have_checkpoint) d.suppress_through(done);

    // Flows (docs/FLOWS.md) into the DB: live, the sensor's flow stream,
    // followed like the segments; from a snapshot, its flows/; from a pcap,
    // the userspace tracker over the same packets. Upserted by id, so a
    // restarted dissector that reads the stream again changes nothing.
    std::string flow_dir;
    if (out.db && live) flow_dir = data_dir + "/flows";
    if (out.db && !live && !snapshot.empty())
      flow_dir = tapwire::flows::flows_dir_for_segments(is_dir(snapshot + "/segments") ? snapshot + "/segments" : snapshot);
    std::optional<tapwire::flows::FlowStream> flow_stream;
    std::optional<tapwire::flows::FlowTracker> tracker;
    std::vector<tw_seg_flow> batch_flows;
    if (out.db && live) flow_stream.emplace(flow_dir, true);
    std::function<void(const tw_seg_flow&)> on_flow_end;  // a pcap's flows go to the DB as they end
    if (out.db && !pcap.empty())
      tracker.emplace(tapwire::flows::TrackerOptions{}, [&](const tw_seg_flow& r) { on_flow_end(r); });
    uint64_t flows_stored = 0;
    auto store_flow = [&](const tw_seg_flow& r) {
      tapwire::flows::Flow f = tapwire::flows::flow_from_record(r);
      Call c;
      c.l4_proto = r.key.l4_proto;
      c.ts_ns = r.st.first_ns;
      c.src = f.client;
      c.dst = f.server;
      identity.annotate(c);
      f.client.identity = c.src.identity;
      f.server.identity = c.dst.identity;
      f.node = c.node;
      f.client.names = out.dns.names_at(f.client.ip(), r.st.first_ns);
      f.server.names = out.dns.names_at(f.server.ip(), r.st.first_ns);
      tapwire::flows::store_flow(*out.db, f);
      flows_stored++;
    };
    on_flow_end = store_flow;
    auto follow_flows = [&]() {
      if (!flow_stream) return;
      for (int i = 0; i < 100000; i++) {
        auto r = flow_stream->next();
        if (!r) break;
        store_flow(*r);
      }
    };

    Packet p;
    SourcePosition last = done;
    auto last_flush = std::chrono::steady_clock::now();
    // The checkpoint and the calls it covers go out together: in the DB, in
    // one transaction; with a checkpoint file, the calls first (a crash in
    // between then repeats nothing: the old checkpoint suppresses them).
    // While replaying up to an earlier run's `done`, the old one stays.
    auto write_metrics = [&]() {
      if (stats_path.empty()) return;
      nlohmann::json j = metrics_json(d.metrics());
      j["source"] = {{"packets", source->stats().packets}, {"skipped", source->stats().skipped},
                     {"loss_records", source->stats().loss_records}, {"segments_missed", source->stats().segments_missed}};
      j["pid"] = getpid();
      if (out.db) {
        const auto ds = out.db->size_stats();
        j["db"] = {{"bytes", ds.bytes}, {"file_bytes", ds.file_bytes}, {"max_bytes", ds.max_bytes},
                   {"calls_deleted", ds.calls_deleted}, {"flows_deleted", ds.flows_deleted},
                   {"flows_stored", flows_stored}};
      }
      const auto& is = identity.table().stats();
      j["identity"] = {{"records", identity.feed().stats().records},
                       {"resolved_by_socket", is.resolved_by_socket},
                       {"resolved_by_address", is.resolved_by_ip},
                       {"unresolved", is.unresolved}};
      std::string tmp = stats_path + ".tmp";
      {
        std::ofstream o(tmp, std::ios::trunc);
        o << j.dump(2) << "\n";
      }
      std::rename(tmp.c_str(), stats_path.c_str());
    };
    auto checkpoint = [&]() {
      follow_flows();
      write_metrics();
      bool save = live && !(have_checkpoint && last < done);
      std::string text = save ? checkpoint_text(d.resume_position(last), last) : std::string();
      if (save && checkpoint_path.empty()) save_checkpoint(text);
      out.flush();
      if (save && !checkpoint_path.empty()) save_checkpoint(text);
      last_flush = std::chrono::steady_clock::now();
    };
    // Live, a packet is dissected once it is kIdentityHoldNs old: the
    // sensor records a socket's owner when the socket is first seen, which
    // for the accepting end is after its first packet was captured, and
    // publishes its identity stream and its segments separately. Held that
    // long, a call names both ends live as it does from a snapshot.
    constexpr uint64_t kIdentityHoldNs = 1'000'000'000ull;
    uint64_t wall_seen = 0;  // the latest wall clock read: packets older than it by the hold need no read
    auto hold_for_identity = [&](uint64_t ts_ns) {
      if (ts_ns + kIdentityHoldNs <= wall_seen) return;
      for (int i = 0; i < 40 && !g_stop; i++) {
        timespec now{};
        clock_gettime(CLOCK_REALTIME, &now);
        const uint64_t wall = wall_seen =
            static_cast<uint64_t>(now.tv_sec) * 1000000000ull + static_cast<uint64_t>(now.tv_nsec);
        if (wall >= ts_ns + kIdentityHoldNs || ts_ns > wall + kIdentityHoldNs) return;  // old enough, or a clock step
        const uint64_t wait = std::min<uint64_t>(ts_ns + kIdentityHoldNs - wall, 50'000'000ull);
        std::this_thread::sleep_for(std::chrono::nanoseconds(wait));
      }
    };
    while (!g_stop) {
      auto r = source->next(p);
      if (r == PacketSource::Next::Packet) {
        if (live && identity_dir.size()) hold_for_identity(p.meta.ts_ns);
        identity.at(p.meta.ts_ns);
        d.packet(p);
        if (tracker) tracker->packet(p.meta, p.wire_len);
        last = p.pos;
        if ((d.packets() & 4095) == 0 && std::chrono::steady_clock::now() - last_flush > std::chrono::milliseconds(500))
          checkpoint();
        continue;
      }
      if (r == PacketSource::Next::End) break;
      // Nothing new: let time move on for expiries, save, and wait a little.
      timespec now{};
      clock_gettime(CLOCK_REALTIME, &now);
      const uint64_t wall = static_cast<uint64_t>(now.tv_sec) * 1000000000ull + static_cast<uint64_t>(now.tv_nsec);
      identity.at(wall - 2'000'000'000ull);
      d.advance_time(wall - 2'000'000'000ull);
      checkpoint();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (live) {
      checkpoint();  // a restart continues from here; pending calls are not closed
    } else {
      d.finish();
      if (tracker) tracker->finish();
      if (out.db && !flow_dir.empty() && is_dir(flow_dir)) {
        try {
          batch_flows = tapwire::flows::read_flow_dir(flow_dir, 0, 0);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "tapwire-dissector: %s\n", e.what());
        }
      }
      if (out.db && !batch_flows.empty()) {
        // In time order, so that identity resolves each at its first packet.
        std::stable_sort(batch_flows.begin(), batch_flows.end(),
                         [](const tw_seg_flow& a, const tw_seg_flow& b) { return a.st.first_ns < b.st.first_ns; });
        for (auto& r : batch_flows) {
          identity.at(r.st.first_ns);
          store_flow(r);
        }
      }
      out.flush();
      write_metrics();
    }
    const auto& m = d.metrics();
    const auto& ss = source->stats();
    if (!quiet) {
      // The other protocols' calls, those that had any: "; 12 http2, 3 grpc".
      std::string others;
      for (auto& [name, n] : m.calls)
        if (n && name != "http" && name != "dns") others += (others.empty() ? "; " : ", ") + std::to_string(n) + " " + name;
      std::fprintf(stderr,
                   "tapwire-dissector: %llu packets, %llu calls (%llu http, %llu dns), %llu without response, "
                   "%llu gaps, %llu parse errors, %llu skipped%s%s%s\n",
                   (unsigned long long)m.packets, (unsigned long long)out.calls,
                   (unsigned long long)m.calls_of("http"), (unsigned long long)m.calls_of("dns"),
                   (unsigned long long)m.calls_without_response, (unsigned long long)m.reassembly_gaps,
                   (unsigned long long)m.parse_errors_total(), (unsigned long long)ss.skipped, others.c_str(),
                   d.suppressed() ? " (resumed)" : "",
                   flows_stored ? ("; " + std::to_string(flows_stored) + " flow records").c_str() : "");
    }
    if (!source->error().empty()) {
      std::fprintf(stderr, "tapwire-dissector: %s; the calls before it are kept\n", source->error().c_str());
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tapwire-dissector: %s\n", e.what());
    return 1;
  }
}
