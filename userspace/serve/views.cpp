// GET flows, map, workloads, ips and boundaries: the code behind `tapwire
// flows`, `map` and `workloads` (userspace/cli/views.hpp, flow_source.hpp),
// and what each stream and DB holds.
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "api.hpp"
#include "call_db.hpp"
#include "commands.hpp"
#include "flow_db.hpp"
#include "flow_source.hpp"
#include "segment.hpp"
#include "snapshot.hpp"
#include "timefmt.hpp"
#include "views.hpp"

namespace tapwire::serve {
namespace {

using nlohmann::json;
using dissect::CallDb;
namespace fs = std::filesystem;

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Where flows come from: `db` (a dissection DB's flows table), `snapshot`
// (its flow stream) or, by default, the sensor's flow stream as `tapwire
// flows` reads it. Sets src.db to the DB's path for a DB.
cli::FlowSourceOptions flow_source(const Ctx& ctx, const Params& p) {
  cli::FlowSourceOptions src;
  src.data_dir = ctx.o.data_dir;
  const std::string db = p.get("db"), snapshot = p.get("snapshot");
  if (!db.empty() && !snapshot.empty()) throw ApiError(400, "give db or snapshot, not both");
  if (!snapshot.empty()) {
    ctx.snapshot_dir(snapshot);
    src.snapshot = snapshot;
  }
  if (!db.empty()) src.db = ctx.db_path(db);
  // Times as the CLI takes them; checked here for a 400 that names them.
  p.time("start");
  p.time("end");
  src.from = p.get("start");
  src.to = p.get("end");
  return src;
}

// The flows of a table `flows` (a DB's, or one filled from the stream)
// that match the filter, sorted, at most `limit`.
json select_flows(sqlite3* db, const std::string& filter, const std::string& sort, size_t limit, uint64_t from,
                  uint64_t to, size_t* total) {
  sqlite3_stmt* st = nullptr;
  bool have_table = false;
  if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'flows'", -1, &st, nullptr) ==
      SQLITE_OK)
    have_table = sqlite3_step(st) == SQLITE_ROW;
  sqlite3_finalize(st);
  if (!have_table) return json::array();  // a DB written before flows existed
  CompiledQuery fq;
  if (!filter.empty()) fq = compile_filter(db, filter, Target::Flows, 3);
  std::string where = " WHERE 1=1";
  if (from) where += " AND last_ns >= ?1";
  if (to) where += " AND first_ns <= ?2";
  if (!filter.empty()) where += " AND (" + fq.where + ")";
  const std::string order = sort == "first"             ? "first_ns, id"
                            : sort == "bytes"           ? "bytes DESC, first_ns"
                            : sort == "packets"         ? "packets DESC, first_ns"
                            : sort == "rtt"             ? "rtt_us DESC NULLS LAST, first_ns"
                            : sort == "retransmissions" ? "retransmissions DESC, first_ns"
                                                        : "";
  if (order.empty()) throw ApiError(400, "sort: give first, bytes, packets, rtt or retransmissions");
  auto run = [&](const std::string& sql, const std::function<void(sqlite3_stmt*)>& row) {
    sqlite3_stmt* q = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) != SQLITE_OK)
      throw ApiError(500, std::string("flows query: ") + sqlite3_errmsg(db));
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> guard(q, sqlite3_finalize);
    if (from) sqlite3_bind_int64(q, 1, static_cast<sqlite3_int64>(from));
    if (to) sqlite3_bind_int64(q, 2, static_cast<sqlite3_int64>(to));
    if (!filter.empty()) bind(q, fq);
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) row(q);
    if (rc != SQLITE_DONE) throw ApiError(filter.empty() ? 500 : 400, std::string("flows query: ") + sqlite3_errmsg(db));
  };
  json out = json::array();
  run("SELECT record FROM flows" + where + " ORDER BY " + order + " LIMIT " + std::to_string(limit),
      [&](sqlite3_stmt* q) {
        const char* t = reinterpret_cast<const char*>(sqlite3_column_text(q, 0));
        auto j = json::parse(t ? t : "", nullptr, false);
        if (!j.is_discarded()) out.push_back(std::move(j));
      });
  run("SELECT count(*) FROM flows" + where, [&](sqlite3_stmt* q) { *total = static_cast<size_t>(sqlite3_column_int64(q, 0)); });
  return out;
}

std::string identity_dir(const Ctx& ctx, const Params& p) {
  const std::string snapshot = p.get("snapshot");
  if (!snapshot.empty()) ctx.snapshot_dir(snapshot);
  try {
    return cli::identity_stream_dir(ctx.o.data_dir, snapshot);
  } catch (const cli::CliError& e) {
    throw ApiError(404, e.what());
  }
}

}  // namespace

json flows_json(const Ctx& ctx, const Params& p) {
  cli::FlowSourceOptions src = flow_source(ctx, p);
  const std::string filter = p.get("filter"), sort = p.get("sort", "first");
  const size_t limit = p.limit();
  const uint64_t from = p.time("start").value_or(0), to = p.time("end").value_or(0);
  // Without a flow stream, the live DB's flows table (as `tapwire flows`).
  if (src.db.empty() && src.snapshot.empty() && !is_dir(ctx.o.data_dir + "/flows") &&
      ::access((ctx.o.data_dir + "/dissection.db").c_str(), R_OK) == 0)
    src.db = ctx.o.data_dir + "/dissection.db";
  size_t total = 0;
  json flows;
  std::string source;
  if (!src.db.empty()) {
    std::unique_ptr<CallDb> db;
    try {
      db = std::make_unique<CallDb>(src.db, true);
    } catch (const std::exception& e) {
      throw ApiError(503, std::string("cannot open the dissection DB: ") + e.what());
    }
    flows = select_flows(db->handle(), filter, sort, limit, from, to, &total);
    source = "db";
  } else {
    // The stream's flows, named as `tapwire flows` names them, into a table
    // of their own so that the query language selects among them.
    CallDb mem(":memory:", false, /*bulk=*/true);
    cli::LoadedFlows lf = cli::load_flows(src, [&](const cli::FlowRow& r) {
      if (r.flow) mem.upsert_flow(flows::flow_db_row(*r.flow));
    });
    mem.commit();
    flows = select_flows(mem.handle(), filter, sort, limit, 0, 0, &total);
    source = lf.source;
  }
  for (auto& f : flows) f = with_node(std::move(f), ctx.o.node);
  return {{"flows", std::move(flows)}, {"matched", total}, {"truncated", total > limit}};
}

json service_map_json(const Ctx& ctx, const Params& p) {
  const std::string level = p.get("level", "workload");
  if (level != "namespace" && level != "workload" && level != "pod")
    throw ApiError(400, "level: give namespace, workload or pod");
  const cli::FlowSourceOptions src = flow_source(ctx, p);
  nlohmann::ordered_json m = cli::map_json(src, level, p.get("namespace"));
  return json::parse(m.dump(-1, ' ', false, json::error_handler_t::replace));
}

json identity_json(const Ctx& ctx, const Params& p, bool ips) {
  const std::string dir = identity_dir(ctx, p);
  const auto at = p.time("at");
  std::string warning;
  json j = ips ? cli::ips_json(dir, at, &warning) : cli::workloads_json(dir, at, &warning);
  // The stream's node (who captured it), and the serving node as "node".
  j["capture_node"] = j.value("node", "");
  j["node"] = ctx.o.node;
  if (!warning.empty()) j["warning"] = warning;
  return j;
}

// ----------------------------------------------------------- boundaries ---

namespace {

// The time a segment directory's records span, from the segment headers.
json stream_bounds(const std::string& dir) {
  if (!is_dir(dir)) return nullptr;
  uint64_t first = UINT64_MAX, last = 0, bytes = 0, files = 0;
  std::vector<shm::SegmentInfo> segs;
  try {
    segs = shm::list_segments(dir);
  } catch (const shm::SegmentError& e) {
    return {{"error", e.what()}};
  }
  for (const auto& s : segs) {
    struct stat st {};
    if (::stat(s.path.c_str(), &st) != 0) continue;  // retention took it
    files++;
    bytes += static_cast<uint64_t>(st.st_size);
    try {
      auto r = shm::SegmentReader::open(s.path);
      const auto& h = r.header();
      if (h.first_ts_ns) first = std::min(first, h.first_ts_ns);
      last = std::max(last, h.last_ts_ns);
    } catch (const shm::SegmentError&) {
    }
  }
  json j = {{"segments", files}, {"bytes", bytes}, {"first", nullptr}, {"last", nullptr}};
  if (first != UINT64_MAX && last) {
    j["first"] = format_rfc3339_ns(first);
    j["last"] = format_rfc3339_ns(last);
    j["first_ns"] = first;
    j["last_ns"] = last;
  }
  return j;
}

json db_bounds(const std::string& name, const std::string& path) {
  json j = {{"db", name}, {"calls", 0}, {"first", nullptr}, {"last", nullptr}};
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) j["bytes"] = static_cast<uint64_t>(st.st_size);
  try {
    CallDb db(path, true);
    sqlite3_stmt* q = nullptr;
    if (sqlite3_prepare_v2(db.handle(), "SELECT min(ts_ns), max(ts_ns), count(*) FROM calls", -1, &q, nullptr) ==
            SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW && sqlite3_column_type(q, 0) != SQLITE_NULL) {
      const auto first = static_cast<uint64_t>(sqlite3_column_int64(q, 0));
      const auto last = static_cast<uint64_t>(sqlite3_column_int64(q, 1));
      j["first"] = format_rfc3339_ns(first);
      j["last"] = format_rfc3339_ns(last);
      j["first_ns"] = first;
      j["last_ns"] = last;
      j["calls"] = sqlite3_column_int64(q, 2);
    }
    sqlite3_finalize(q);
  } catch (const std::exception& e) {
    j["error"] = e.what();
  }
  return j;
}

}  // namespace

json boundaries_json(const Ctx& ctx) {
  const std::string& d = ctx.o.data_dir;
  json dbs = json::array();
  if (::access((d + "/dissection.db").c_str(), F_OK) == 0) dbs.push_back(db_bounds("live", d + "/dissection.db"));
  json snaps = json::array();
  for (const auto& s : snapshot::list(d)) {
    json sj = {{"name", s.name}};
    if (s.ok) {
      sj["first"] = format_rfc3339_ns(s.manifest.from_ns);
      sj["last"] = format_rfc3339_ns(s.manifest.to_ns);
      sj["first_ns"] = s.manifest.from_ns;
      sj["last_ns"] = s.manifest.to_ns;
    }
    snaps.push_back(std::move(sj));
    if (!valid_name(s.name)) continue;
    std::error_code ec;
    const std::string dir = s.dir + "/" + snapshot::kDissectionsDir;
    std::vector<std::string> ids;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string f = e.path().filename().string();
      if (f.size() > 3 && f.compare(f.size() - 3, 3, ".db") == 0 && e.is_regular_file(ec) &&
          valid_name(f.substr(0, f.size() - 3)))
        ids.push_back(f.substr(0, f.size() - 3));
    }
    std::sort(ids.begin(), ids.end());
    for (auto& id : ids) dbs.push_back(db_bounds(s.name + "/" + id, dir + "/" + id + ".db"));
  }
  return {{"segments", stream_bounds(d + "/segments")},
          {"identity", stream_bounds(d + "/identity")},
          {"flows", stream_bounds(d + "/flows")},
          {"dbs", std::move(dbs)},
          {"snapshots", std::move(snaps)}};
}

void add_view_routes(httplib::Server& s, Ctx& ctx) {
  s.Get("/api/v1/flows", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, flows_json(ctx, Params(req)));
  });
  s.Get("/api/v1/map", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, service_map_json(ctx, Params(req)));
  });
  s.Get("/api/v1/workloads", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, identity_json(ctx, Params(req), false));
  });
  s.Get("/api/v1/ips", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, identity_json(ctx, Params(req), true));
  });
  s.Get("/api/v1/boundaries",
        [&ctx](const httplib::Request&, httplib::Response& res) { ctx.reply(res, boundaries_json(ctx)); });
}

}  // namespace tapwire::serve
