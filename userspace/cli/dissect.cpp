// tapwire dissect: batch dissection of a snapshot (or any finished segment
// directory) into a dissection DB, without privileges, on any machine.
// --jobs 1 runs the engine in this process; --jobs N forks N workers that
// each read every segment but keep only the flows whose canonical 5-tuple
// hash falls on them (both directions of a flow, TCP or UDP, go to the same
// worker, so each worker's calls are exactly those a single engine finds for
// its flows), each into its own temporary DB; the parent merges them in
// request-time order. The DB is written beside --db and renamed over it only
// when everything succeeded: a failure never leaves a partial --db.
#include <signal.h>
#include <sqlite3.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "call_db.hpp"
#include "call_identity.hpp"
#include "commands.hpp"
#include "flow_db.hpp"
#include "flow_sources.hpp"
#include "dissector.hpp"
#include "flow_key.hpp"
#include "grpc/proto_schema.hpp"
#include "http2/session.hpp"
#include "packet_source.hpp"
#include "segment.hpp"

namespace tapwire::cli {

namespace fs = std::filesystem;

namespace {

bool is_dir(const std::string& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

}  // namespace

// NAME (no '/') is DATA_DIR/snapshots/NAME when that exists; anything else
// is a directory used as is. Segments are in DIR/segments or DIR.
std::string snapshot_segments_dir(const std::string& arg, const std::string& data_dir) {
  if (arg.empty()) throw CliError("no snapshot given", "--snapshot", "give a snapshot NAME or a directory");
  std::string dir;
  const bool plain_name = arg.find('/') == std::string::npos && arg != "." && arg != "..";
  if (plain_name && is_dir(data_dir + "/snapshots/" + arg))
    dir = data_dir + "/snapshots/" + arg;
  else if (is_dir(arg))
    dir = arg;
  else if (plain_name)
    throw CliError("no such snapshot", arg,
                   "not in " + data_dir + "/snapshots/ (see 'tapwire snapshot list') and not a directory");
  else
    throw CliError("no such snapshot directory", arg, "give a snapshot NAME or an existing directory");
  return is_dir(dir + "/segments") ? dir + "/segments" : dir;
}

namespace {

using namespace tapwire::dissect;

std::atomic<bool> g_stop{false};
void on_stop(int) { g_stop = true; }

struct DissectOptions {
  std::string snapshot, data_dir, db;
  unsigned jobs = 1;
  size_t max_body = 64 * 1024, max_header = 64 * 1024;
  uint64_t memory_limit = DissectorOptions{}.memory_limit;
  std::string dissectors = dissector_list();
  std::vector<std::string> proto_paths;  // tap.grpc.protoPaths
  bool quiet = false;
  bool progress_json = false;  // progress as JSON lines on stderr (tapwire serve's jobs)
};

// What each worker (or the in-process engine) shares with the parent: in an
// anonymous shared mapping, so that the parent can draw progress and read
// results and errors without pipes.
struct Slot {
  std::atomic<uint64_t> bytes{0}, segments{0}, packets{0}, calls{0}, http{0}, dns{0}, without_response{0};
  std::atomic<int> finished{0};
  char error[512] = {};
};

DissectorOptions engine_options(const DissectOptions& o) {
  DissectorOptions opts;
  if (const std::string bad = enable_dissectors(opts, o.dissectors); !bad.empty())
    throw CliError("unknown dissector", bad, "--dissectors takes " + dissector_list() + " (comma-separated) or none");
  opts.http.max_body_kept = o.max_body;
  opts.http.max_header_bytes = o.max_header;
  opts.memory_limit = static_cast<size_t>(o.memory_limit);
  return opts;
}

void set_error(Slot& s, const std::string& e) {
  std::snprintf(s.error, sizeof s.error, "%s", e.c_str());
}

// The engine over every segment of seg_dir into db_path, keeping the flows
// with hash % jobs == index. Returns false (and the slot's error) on failure.
bool run_engine(const std::string& seg_dir, const std::string& db_path, const DissectorOptions& opts, unsigned jobs,
                unsigned index, Slot& slot) {
  try {
    auto source = open_segment_source(seg_dir, false);
    CallDb db(db_path, false, /*bulk=*/true);
    CallIdentity identity(identity_dir_for_segments(seg_dir), false);
    Dissector d(opts, [&](Call&& c) {
      identity.annotate(c);
      db.insert(c);
      tapwire::flows::store_dns_call(&db, nullptr, c);
      slot.calls.fetch_add(1, std::memory_order_relaxed);
      if (!c.has_response()) slot.without_response.fetch_add(1, std::memory_order_relaxed);
    });
    Packet p;
    uint64_t seg = UINT64_MAX, n = 0;
    for (;;) {
      auto r = source->next(p);
      if (r != PacketSource::Next::Packet) break;
      if (p.pos.segment != seg) {
        if (seg != UINT64_MAX) slot.segments.fetch_add(1, std::memory_order_relaxed);
        seg = p.pos.segment;
      }
      if (jobs <= 1 || flow_hash(p.meta) % jobs == index) {
        identity.at(p.meta.ts_ns);
        d.packet(p);
        slot.packets.fetch_add(1, std::memory_order_relaxed);
      }
      if ((++n & 1023) == 0) {
        slot.bytes.store(source->stats().input_bytes, std::memory_order_relaxed);
        if (g_stop) {
          set_error(slot, "interrupted");
          return false;
        }
      }
    }
    if (seg != UINT64_MAX) slot.segments.fetch_add(1, std::memory_order_relaxed);
    if (!source->error().empty()) {
      set_error(slot, source->error());
      return false;
    }
    d.finish();
    db.commit();
    slot.http = d.metrics().calls_of("http");
    slot.dns = d.metrics().calls_of("dns");
    slot.bytes.store(source->stats().input_bytes);
    return true;
  } catch (const std::exception& e) {
    set_error(slot, e.what());
    return false;
  }
}

void remove_db_files(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) ::unlink((path + suffix).c_str());
}

std::string human_time(double s) {
  char buf[32];
  if (s < 0 || s > 360000) return "?";
  unsigned t = static_cast<unsigned>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%u:%02u:%02u", t / 3600, t / 60 % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%u:%02u", t / 60, t % 60);
  return buf;
}

// Progress on stderr: a bar redrawn in place on a terminal, a plain line
// every few seconds otherwise; with --progress-json one JSON object per
// line twice a second, for a program to read.
class Progress {
 public:
  Progress(uint64_t total_bytes, uint64_t total_segments, bool quiet, bool json = false)
      : total_(total_bytes), segs_(total_segments), tty_(isatty(STDERR_FILENO) == 1), quiet_(quiet), json_(json),
        start_(std::chrono::steady_clock::now()), last_(start_) {}

  void update(uint64_t bytes, uint64_t segments, bool force = false, uint64_t calls = 0) {
    if (quiet_ && !json_) return;
    auto now = std::chrono::steady_clock::now();
    double since = std::chrono::duration<double>(now - last_).count();
    if (!force && since < (json_ ? 0.5 : tty_ ? 0.2 : 5.0)) return;
    last_ = now;
    if (json_) {
      std::fprintf(stderr,
                   "{\"progress\":{\"bytes\":%" PRIu64 ",\"total_bytes\":%" PRIu64 ",\"segments\":%" PRIu64
                   ",\"total_segments\":%" PRIu64 ",\"calls\":%" PRIu64 "}}\n",
                   std::min(bytes, total_), total_, std::min(segments, segs_), segs_, calls);
      std::fflush(stderr);
      return;
    }
    double el = std::chrono::duration<double>(now - start_).count();
    double mb = bytes / 1e6, total_mb = total_ / 1e6;
    double rate = el > 0 ? mb / el : 0;
    double frac = total_ ? std::min(1.0, static_cast<double>(bytes) / total_) : 1.0;
    std::string left = rate > 0 ? human_time((total_mb - mb) / rate) : "?";
    char line[256];
    if (tty_) {
      char bar[31];
      int fill = static_cast<int>(frac * 30);
      for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
      bar[30] = 0;
      std::snprintf(line, sizeof line, "\r[%s] %3.0f%%  %.1f/%.1f MB  %" PRIu64 "/%" PRIu64 " segments  %.1f MB/s  %s left ",
                    bar, frac * 100, mb, total_mb, segments, segs_, rate, left.c_str());
      drawn_ = true;
    } else {
      std::snprintf(line, sizeof line,
                    "tapwire: dissect: %.0f%% (%.1f of %.1f MB, %" PRIu64 " of %" PRIu64 " segments), %.1f MB/s, %s left\n",
                    frac * 100, mb, total_mb, segments, segs_, rate, left.c_str());
    }
    std::fputs(line, stderr);
    std::fflush(stderr);
  }
  // The bar at 100% (a terminal only: elsewhere the summary line follows).
  void complete(uint64_t bytes, uint64_t segments, uint64_t calls = 0) {
    if (tty_ || json_) update(bytes, segments, true, calls);
  }
  void done() {
    if (drawn_) std::fputs("\n", stderr);
    drawn_ = false;
  }
  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  uint64_t total_, segs_;
  bool tty_, quiet_, json_, drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

void sql(sqlite3* db, const std::string& q) {
  char* err = nullptr;
  if (sqlite3_exec(db, q.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string e = err ? err : "unknown error";
    sqlite3_free(err);
    throw std::runtime_error(e);
  }
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

// Rows of every part DB into `target` (created by CallDb, so it has the
// schema), in request-time order.
void merge(const std::string& target, const std::vector<std::string>& parts) {
  { CallDb create(target, false, true); }
  sqlite3* db = nullptr;
  if (sqlite3_open(target.c_str(), &db) != SQLITE_OK) {
    std::string e = db ? sqlite3_errmsg(db) : "cannot open";
    sqlite3_close(db);
    throw std::runtime_error(target + ": " + e);
  }
  try {
    sql(db, "PRAGMA temp_store=FILE; PRAGMA synchronous=OFF");
    sql(db, "CREATE TEMP TABLE merged AS SELECT * FROM main.calls WHERE 0");
    for (const auto& p : parts) {
      sql(db, "ATTACH DATABASE " + quote(p) + " AS part");
      sql(db, "INSERT INTO temp.merged SELECT * FROM part.calls");
      sql(db, "INSERT INTO main.dns_names SELECT * FROM part.dns_names WHERE true ON CONFLICT(ip, name) DO UPDATE SET "
              "first_seen=min(first_seen, excluded.first_seen), last_seen=max(last_seen, excluded.last_seen), "
              "ttl=CASE WHEN excluded.last_seen >= last_seen THEN excluded.ttl ELSE ttl END");
      sql(db, "DETACH DATABASE part");
    }
    sql(db, "BEGIN; INSERT INTO main.calls SELECT * FROM temp.merged ORDER BY ts_ns, id; COMMIT; DROP TABLE temp.merged");
  } catch (...) {
    sqlite3_close(db);
    throw;
  }
  sqlite3_close(db);
}

int run_dissect(const DissectOptions& o) {
  const std::string seg_dir = snapshot_segments_dir(o.snapshot, o.data_dir);
  if (o.jobs < 1 || o.jobs > 256) throw CliError("bad --jobs", std::to_string(o.jobs), "give 1 to 256 workers");
  const DissectorOptions opts = engine_options(o);
  if (!o.proto_paths.empty()) {  // before the workers fork: they share the compiled schema
    std::string err;
    auto schema = proto::ProtoSchemaDecoder::load(o.proto_paths, err);
    if (!schema) throw CliError("bad --grpc-proto-paths", err, "give .proto files or directories that compile");
    proto::set_grpc_decoder(std::move(schema));
  }

  // Check the snapshot before anything is written: every file named like a
  // segment must be one.
  std::vector<shm::SegmentInfo> segments;
  uint64_t total = 0;
  try {
    segments = shm::list_segments(seg_dir);
    for (const auto& s : segments) {
      shm::SegmentReader::open(s.path);
      struct stat st {};
      if (::stat(s.path.c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_size);
    }
  } catch (const shm::SegmentError& e) {
    throw CliError("corrupt snapshot", e.what(), "the snapshot is damaged; check it with 'tapwire snapshot verify'");
  }
  if (segments.empty())
    throw CliError("no segments in the snapshot", seg_dir, "expected *" TW_SEG_FILE_SUFFIX " files there or in segments/");

  std::string db_path = o.db;
  if (db_path.empty()) {
    std::string base = fs::path(seg_dir).filename() == "segments" ? fs::path(seg_dir).parent_path().filename().string()
                                                                   : fs::path(seg_dir).filename().string();
    if (base.empty() || base == "." || base == "..") base = "snapshot";
    db_path = base + ".db";
  }
  if (is_dir(db_path)) throw CliError("cannot write the DB", db_path, "it is a directory; name a file");
  const std::string tmp = db_path + ".tmp-" + std::to_string(getpid());

  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  const unsigned jobs = o.jobs;
  void* mem = mmap(nullptr, sizeof(Slot) * jobs, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw CliError("cannot run", "mmap", std::strerror(errno));
  Slot* slots = static_cast<Slot*>(mem);
  for (unsigned i = 0; i < jobs; i++) new (&slots[i]) Slot();
  struct Unmap {
    void* m;
    size_t n;
    ~Unmap() { munmap(m, n); }
  } unmap{mem, sizeof(Slot) * jobs};

  Progress progress(total, segments.size(), o.quiet, o.progress_json);
  std::vector<std::string> parts;
  for (unsigned i = 0; i < jobs; i++) parts.push_back(db_path + ".part" + std::to_string(i) + "-" + std::to_string(getpid()));
  auto cleanup = [&] {
    remove_db_files(tmp);
    for (auto& p : parts) remove_db_files(p);
  };
  uint64_t calls_so_far = 0;
  auto totals = [&](uint64_t& bytes, uint64_t& segs) {
    bytes = segs = calls_so_far = 0;
    for (unsigned i = 0; i < jobs; i++) {
      bytes += slots[i].bytes.load(std::memory_order_relaxed);
      segs += slots[i].segments.load(std::memory_order_relaxed);
      calls_so_far += slots[i].calls.load(std::memory_order_relaxed);
    }
    bytes /= jobs;  // every worker reads everything
    segs /= jobs;
  };

  std::string failure;
  if (jobs == 1) {
    remove_db_files(tmp);
    std::atomic<bool> running{true};
    std::thread drawer([&] {
      while (running) {
        uint64_t b, s;
        totals(b, s);
        progress.update(b, s, false, calls_so_far);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
    bool ok = run_engine(seg_dir, tmp, opts, 1, 0, slots[0]);
    running = false;
    drawer.join();
    if (!ok) failure = slots[0].error;
  } else {
    std::vector<pid_t> pids;
    for (unsigned i = 0; i < jobs; i++) {
      remove_db_files(parts[i]);
      std::fflush(nullptr);
      pid_t pid = fork();
      if (pid < 0) {
        failure = std::string("cannot start a worker: ") + std::strerror(errno);
        break;
      }
      if (pid == 0) {
        bool ok = run_engine(seg_dir, parts[i], opts, jobs, i, slots[i]);
        slots[i].finished = 1;
        _exit(ok ? 0 : 1);
      }
      pids.push_back(pid);
    }
    size_t alive = pids.size();
    while (alive > 0) {
      int status = 0;
      pid_t got = waitpid(-1, &status, WNOHANG);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        uint64_t b, s;
        totals(b, s);
        progress.update(b, s, false, calls_so_far);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        continue;
      }
      unsigned idx = 0;
      for (; idx < pids.size() && pids[idx] != got; idx++) {
      }
      if (idx == pids.size()) continue;
      pids[idx] = -1;
      alive--;
      if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
      if (failure.empty()) {
        std::string why = slots[idx].error[0] ? std::string(slots[idx].error)
                          : WIFSIGNALED(status)  ? std::string("killed by signal ") + std::to_string(WTERMSIG(status))
                                                 : "exit " + std::to_string(WEXITSTATUS(status));
        failure = "worker " + std::to_string(idx + 1) + " of " + std::to_string(jobs) + " failed: " + why;
        for (pid_t p : pids)
          if (p > 0) kill(p, SIGTERM);
      }
    }
    if (failure.empty()) {
      try {
        remove_db_files(tmp);
        merge(tmp, parts);
      } catch (const std::exception& e) {
        failure = std::string("cannot merge the workers' results: ") + e.what();
      }
    }
  }
  // The snapshot's flow records, named by its identity stream and the DNS
  // answers just dissected.
  size_t flows_stored = 0;
  if (failure.empty() && !g_stop) {
    const std::string flow_dir = tapwire::flows::flows_dir_for_segments(seg_dir);
    if (is_dir(flow_dir)) {
      try {
        CallDb db(tmp, false, /*bulk=*/true);
        tapwire::flows::PassiveDns dns;
        tapwire::flows::load_dns_names(db, dns);
        flows_stored = tapwire::flows::store_flow_dir(db, flow_dir, identity_dir_for_segments(seg_dir), &dns);
      } catch (const std::exception& e) {
        failure = std::string("cannot store the flows: ") + e.what();
      }
    }
  }
  if (failure.empty() && g_stop) failure = "interrupted";
  if (failure.empty()) {
    uint64_t b, s;
    totals(b, s);
    progress.complete(total, segments.size(), calls_so_far);
  }
  progress.done();
  if (!failure.empty()) {
    cleanup();
    throw CliError("dissection failed", o.snapshot, failure + "; no DB written");
  }
  if (std::rename(tmp.c_str(), db_path.c_str()) != 0) {
    std::string e = std::strerror(errno);
    cleanup();
    throw CliError("cannot write the DB", db_path, e);
  }
  for (const char* suffix : {"-wal", "-shm"}) ::unlink((db_path + suffix).c_str());  // a replaced DB's leftovers
  cleanup();

  uint64_t packets = 0, calls = 0, http = 0, dns = 0, nores = 0;
  for (unsigned i = 0; i < jobs; i++) {
    packets += slots[i].packets;
    calls += slots[i].calls;
    http += slots[i].http;
    dns += slots[i].dns;
    nores += slots[i].without_response;
  }
  const double secs = progress.elapsed();
  if (!o.quiet)
    std::fprintf(stderr,
                 "tapwire: dissected %s: %" PRIu64 " packets, %" PRIu64 " calls (%" PRIu64 " http, %" PRIu64
                 " dns, %" PRIu64 " without response) from %zu segments (%.1f MB) in %.2f s (%.1f MB/s, %u job%s) into %s\n",
                 seg_dir.c_str(), packets, calls, http, dns, nores, segments.size(), total / 1e6, secs,
                 secs > 0 ? total / 1e6 / secs : 0.0, jobs, jobs == 1 ? "" : "s", db_path.c_str());
  if (!o.quiet && flows_stored) std::fprintf(stderr, "tapwire: %zu flows into %s\n", flows_stored, db_path.c_str());
  return 0;
}

}  // namespace

void register_dissect(CLI::App& app, Action& action) {
  auto o = std::make_shared<DissectOptions>();
  CLI::App* sub = app.add_subcommand("dissect", "Dissect a snapshot into a dissection DB (batch, no privileges needed)");
  sub->add_option("--snapshot", o->snapshot, "snapshot NAME (in DATA_DIR/snapshots/) or a directory of segments")
      ->required();
  add_data_dir_option(*sub, o->data_dir);
  sub->add_option("--db", o->db, "the DB to write (replaced when done; default: ./NAME.db)");
  sub->add_option("-j,--jobs", o->jobs, "worker processes; the work is split by flow")->capture_default_str();
  sub->add_option("--max-body", o->max_body, "body bytes kept per message")->capture_default_str();
  sub->add_option("--max-header", o->max_header, "header bytes allowed per message")->capture_default_str();
  sub->add_option("--memory-limit", o->memory_limit,
                  "heap for dissection state per worker, like 256Mi; beyond it the least useful state is shed; "
                  "0: no limit (default 256Mi)")
      ->transform(CLI::AsSizeValue(false));
  sub->add_option("--dissectors", o->dissectors,
                  "protocols to dissect, comma-separated (" + dissector_list() + "), or none")
      ->capture_default_str();
  sub->add_option("--grpc-proto-paths", o->proto_paths,
                  ".proto files or directories of them: gRPC messages decoded with field names (as live)")
      ->delimiter(',');
  sub->add_flag("-q,--quiet", o->quiet, "no progress and no summary");
  sub->add_flag("--progress-json", o->progress_json,
                "progress as JSON lines on stderr ({\"progress\":{\"bytes\":..,\"total_bytes\":..,\"segments\":..,"
                "\"total_segments\":..,\"calls\":..}}), for programs (tapwire serve)");
  sub->callback([o, &action] { action = [o] { return run_dissect(*o); }; });
}

}  // namespace tapwire::cli
