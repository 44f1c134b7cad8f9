// GET calls, calls/{id}, stats and stream: the dissection DBs through
// CallDb and the query language.
#include <sqlite3.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "api.hpp"
#include "call_db.hpp"
#include "timefmt.hpp"

namespace tapwire::serve {
namespace {

using nlohmann::json;
using dissect::CallDb;

// The filter of a request, compiled for `db` after CallDb's own parameters.
void add_filter(CallDb& db, const std::string& text, CallDb::Query& q) {
  if (text.empty()) return;
  auto compiled = std::make_shared<CompiledQuery>(
      compile_filter(db.handle(), text, Target::Calls, CallDb::kFirstExtraParam));
  q.extra_where = compiled->where;
  q.bind_extra = [compiled](sqlite3_stmt* st) {
    if (bind(st, *compiled) != 0) throw std::runtime_error("cannot bind the filter's values");
  };
}

// What a filter can still fail on as it runs (a regex that backtracks past
// its limit on some value) is the caller's: 400.
std::vector<json> run_query(CallDb& db, const CallDb::Query& q, std::vector<CallDb::Summary>* sums) {
  try {
    return db.query(q, nullptr, sums);
  } catch (const std::runtime_error& e) {
    if (q.extra_where.empty()) throw;
    throw ApiError(400, std::string("filter failed: ") + e.what());
  }
}

// The cursor of the row after which the next page starts: "TS_NS-ROWID".
std::string cursor_of(const CallDb::Summary& s) { return std::to_string(s.ts_ns) + "-" + std::to_string(s.rowid); }

void parse_cursor(const std::string& c, CallDb::Query& q) {
  const auto dash = c.find('-');
  auto number = [](const std::string& s, uint64_t& out) {
    if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos) return false;
    errno = 0;
    out = std::strtoull(s.c_str(), nullptr, 10);
    return errno == 0;
  };
  uint64_t ts = 0, rowid = 0;
  if (dash == std::string::npos || !number(c.substr(0, dash), ts) || !number(c.substr(dash + 1), rowid) ||
      rowid == 0 || rowid > INT64_MAX || ts > INT64_MAX)
    throw ApiError(400, "cursor: give the next_cursor of a previous answer");
  q.before_ts_ns = ts;
  q.before_rowid = static_cast<int64_t>(rowid);
}

// A call in brief: who, when, the summary, no headers or bodies.
json compact(const json& c, const CallDb::Summary& s) {
  json out = json::object();
  for (const char* k : {"id", "ts", "protocol", "node", "src", "dst", "duration_us", "flags", "upgrade_id"})
    if (auto it = c.find(k); it != c.end()) out[k] = *it;
  out["ts_ns"] = s.ts_ns;
  out["method"] = s.method.empty() ? json(nullptr) : json(s.method);
  out["path"] = s.path.empty() ? json(nullptr) : json(s.path);
  out["status"] = s.status < 0 ? json(nullptr) : json(s.status);
  return out;
}

std::string db_label(const std::string& db) { return db.empty() ? "live" : db; }

}  // namespace

json calls_json(const Ctx& ctx, const Params& p) {
  const std::string dbname = p.get("db");
  const std::string format = p.get("format", "compact");
  if (format != "compact" && format != "full") throw ApiError(400, "format: give compact or full");
  const size_t limit = p.limit();
  CallDb::Query q;
  q.newest_first = true;
  if (auto t = p.time("start")) q.from_ns = *t;
  if (auto t = p.time("end")) q.to_ns = *t;
  if (const std::string c = p.get("cursor"); !c.empty()) parse_cursor(c, q);
  q.limit = limit + 1;  // one more tells whether there is a next page
  auto db = ctx.open_db(dbname);
  add_filter(*db, p.get("filter"), q);
  std::vector<CallDb::Summary> sums;
  std::vector<json> calls = run_query(*db, q, &sums);
  json out = {{"db", db_label(dbname)}, {"calls", json::array()}, {"next_cursor", nullptr}};
  if (calls.size() > limit) {
    calls.resize(limit);
    out["next_cursor"] = cursor_of(sums[limit - 1]);
  }
  for (size_t i = 0; i < calls.size(); i++)
    out["calls"].push_back(with_node(format == "full" ? std::move(calls[i]) : compact(calls[i], sums[i]), ctx.o.node));
  return out;
}

json call_json(const Ctx& ctx, std::string id, const Params& p) {
  for (char& ch : id) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (id.size() != 16 || id.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw ApiError(400, "a call id is 16 hex digits");
  const std::string dbname = p.get("db");
  auto db = ctx.open_db(dbname);
  CallDb::Query q;
  q.id = id;
  q.limit = 1;
  auto calls = db->query(q);
  if (calls.empty()) throw ApiError(404, "no call " + id + " in " + db_label(dbname));
  return {{"db", db_label(dbname)}, {"call", with_node(std::move(calls.front()), ctx.o.node)}};
}

// ---------------------------------------------------------------- stats ---

namespace {

// What each group_by groups on: SQL expressions and the names they take in
// the answer's "key". Servers' side for identity: calls a workload or a
// namespace served.
struct Grouping {
  std::vector<std::pair<std::string, std::string>> keys;  // name, SQL
  bool identity = false;  // reads identity columns
};

const std::map<std::string, Grouping>& groupings() {
  static const std::map<std::string, Grouping> g = {
      {"protocol", {{{"protocol", "protocol"}}, false}},
      {"status", {{{"protocol", "protocol"}, {"status", "status"}}, false}},
      {"endpoint",
       {{{"protocol", "protocol"},
         {"method", "method"},
         // HTTP targets without their query string: one endpoint, not one per id.
         {"path", "CASE WHEN protocol IN ('http', 'http2') AND instr(path, '?') > 0 "
                  "THEN substr(path, 1, instr(path, '?') - 1) ELSE path END"}},
        false}},
      {"workload",
       {{{"namespace", "dst_namespace"}, {"kind", "dst_workload_kind"}, {"name", "dst_workload_name"}}, true}},
      {"namespace", {{{"namespace", "dst_namespace"}}, true}},
  };
  return g;
}

// As the service map counts them (CallDb::call_edges): HTTP >= 500, any
// other protocol's status but 0, calls flagged protocol_error, reset or timeout.
constexpr const char* kErrorSql =
    "(CASE WHEN protocol IN ('http', 'http2') THEN coalesce(status, 0) >= 500 ELSE coalesce(status, 0) != 0 END "
    "OR ',' || flags || ',' LIKE '%,protocol_error,%' OR ',' || flags || ',' LIKE '%,reset,%' "
    "OR ',' || flags || ',' LIKE '%,timeout,%')";

json column_json(sqlite3_stmt* st, int i) {
  switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
      return sqlite3_column_int64(st, i);
    case SQLITE_FLOAT:
      return sqlite3_column_double(st, i);
    case SQLITE_TEXT:
      return std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, i)),
                         static_cast<size_t>(sqlite3_column_bytes(st, i)));
    default:
      return nullptr;
  }
}

struct Group {
  json key;
  uint64_t calls = 0, errors = 0;
  std::vector<int64_t> durations;  // sorted (the query orders them)
};

// Nearest rank: the smallest duration with at least p% of them at or below it.
json percentile(const std::vector<int64_t>& d, unsigned p) {
  if (d.empty()) return nullptr;
  const size_t rank = (p * d.size() + 99) / 100;
  return d[std::max<size_t>(rank, 1) - 1];
}

json group_json(Group& g) {
  json dur = nullptr;
  if (!g.durations.empty()) {
    long double sum = 0;
    for (int64_t v : g.durations) sum += static_cast<long double>(v);
    dur = {{"p50", percentile(g.durations, 50)},
           {"p90", percentile(g.durations, 90)},
           {"p99", percentile(g.durations, 99)},
           {"min", g.durations.front()},
           {"max", g.durations.back()},
           {"mean", static_cast<double>(sum / static_cast<long double>(g.durations.size()))}};
  }
  return {{"key", std::move(g.key)},
          {"calls", g.calls},
          {"responses", g.durations.size()},
          {"errors", g.errors},
          {"error_rate", g.calls ? static_cast<double>(g.errors) / static_cast<double>(g.calls) : 0.0},
          {"duration_us", std::move(dur)}};
}

}  // namespace

json stats_json(const Ctx& ctx, const Params& p) {
  const std::string by = p.get("group_by", "protocol");
  auto gi = groupings().find(by);
  if (gi == groupings().end()) throw ApiError(400, "group_by: give protocol, status, endpoint, workload or namespace");
  const Grouping& grouping = gi->second;
  const size_t limit = p.limit();
  const auto from = p.time("start"), to = p.time("end");
  const std::string dbname = p.get("db");
  auto db = ctx.open_db(dbname);
  CompileOptions cols;
  detect_columns(db->handle(), cols);
  const std::string filter = p.get("filter");
  CompiledQuery fq;
  if (!filter.empty()) fq = compile_filter(db->handle(), filter, Target::Calls, 3);

  // One pass over the matching calls in key order, durations ascending
  // within a key: each group's percentiles from its own sorted durations,
  // one group in memory at a time.
  std::string keys;
  for (const auto& [name, sql] : grouping.keys)
    keys += (keys.empty() ? "" : ", ") + (grouping.identity && !cols.identity_columns ? std::string("NULL") : sql);
  std::string sql = "SELECT " + keys + ", duration_us, " + kErrorSql + " FROM calls WHERE 1=1";
  if (from) sql += " AND ts_ns >= ?1";
  if (to) sql += " AND ts_ns <= ?2";
  if (!filter.empty()) sql += " AND (" + fq.where + ")";
  std::string order;
  for (size_t i = 1; i <= grouping.keys.size(); i++) order += std::to_string(i) + ", ";
  sql += " ORDER BY " + order + "duration_us";
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db->handle(), sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
    throw ApiError(500, std::string("stats query: ") + sqlite3_errmsg(db->handle()));
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> guard(st, sqlite3_finalize);
  if (from) sqlite3_bind_int64(st, 1, static_cast<sqlite3_int64>(*from));
  if (to) sqlite3_bind_int64(st, 2, static_cast<sqlite3_int64>(*to));
  if (!filter.empty() && bind(st, fq) != SQLITE_OK) throw ApiError(500, "cannot bind the filter's values");
  const int n = static_cast<int>(grouping.keys.size());
  std::vector<json> groups;
  Group total, cur;
  bool have = false;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    json key = json::object();
    for (int i = 0; i < n; i++) key[grouping.keys[static_cast<size_t>(i)].first] = column_json(st, i);
    if (!have || key != cur.key) {
      if (have) groups.push_back(group_json(cur));
      cur = Group{std::move(key), 0, 0, {}};
      have = true;
    }
    const bool answered = sqlite3_column_type(st, n) != SQLITE_NULL;
    const bool error = sqlite3_column_int(st, n + 1) != 0;
    cur.calls++;
    total.calls++;
    cur.errors += error;
    total.errors += error;
    if (answered) {
      cur.durations.push_back(sqlite3_column_int64(st, n));
      total.durations.push_back(sqlite3_column_int64(st, n));
    }
  }
  if (rc != SQLITE_DONE) {
    const std::string err = sqlite3_errmsg(db->handle());
    throw ApiError(filter.empty() ? 500 : 400, "stats query failed: " + err);
  }
  if (have) groups.push_back(group_json(cur));
  std::stable_sort(groups.begin(), groups.end(),
                   [](const json& a, const json& b) { return a["calls"].get<uint64_t>() > b["calls"].get<uint64_t>(); });
  const bool cut = groups.size() > limit;
  if (cut) groups.resize(limit);
  std::sort(total.durations.begin(), total.durations.end());
  total.key = nullptr;
  json t = group_json(total);
  t.erase("key");
  return {{"db", db_label(dbname)},
          {"group_by", by},
          {"groups", std::move(groups)},
          {"truncated", cut},
          {"total", std::move(t)}};
}

void add_call_routes(httplib::Server& s, Ctx& ctx) {
  s.Get("/api/v1/calls", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, calls_json(ctx, Params(req)));
  });
  s.Get(R"(/api/v1/calls/([^/]+))", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, call_json(ctx, req.matches[1], Params(req)));
  });
  s.Get("/api/v1/stats", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, stats_json(ctx, Params(req)));
  });
  s.Get("/api/v1/stream", [&ctx](const httplib::Request& req, httplib::Response& res) { ctx.hub->serve(req, res); });
}

}  // namespace tapwire::serve
