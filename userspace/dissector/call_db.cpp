#include "call_db.hpp"

#include <sqlite3.h>

#include <stdexcept>

namespace tapwire::dissect {
namespace {

constexpr size_t kBatch = 4096;

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS calls (
  id          TEXT PRIMARY KEY,      -- 16 hex digits, stable for the same traffic
  protocol    TEXT NOT NULL,         -- http, dns
  ts_ns       INTEGER NOT NULL,      -- request time, ns since the epoch (UTC)
  ts          TEXT NOT NULL,         -- the same as RFC 3339
  duration_us INTEGER,               -- NULL without a response
  src_ip      TEXT NOT NULL,
  src_port    INTEGER NOT NULL,
  dst_ip      TEXT NOT NULL,
  dst_port    INTEGER NOT NULL,
  method      TEXT,                  -- HTTP request method
  path        TEXT,                  -- HTTP request target
  status      INTEGER,               -- HTTP status code
  qname       TEXT,                  -- DNS question name
  qtype       TEXT,                  -- DNS question type (A, AAAA, ...)
  rcode       TEXT,                  -- DNS response code name (NOERROR, NXDOMAIN, ...)
  request     TEXT,                  -- the call record's "request" object, JSON
  response    TEXT,                  -- the call record's "response" object, JSON; NULL if none
  flags       TEXT NOT NULL          -- the call record's "flags" list, JSON
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts_ns);
CREATE INDEX IF NOT EXISTS calls_protocol_status ON calls(protocol, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql";

void bind_text(sqlite3_stmt* st, int i, const std::string& s) {
  sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
}

}  // namespace

CallDb::CallDb(const std::string& path, bool read_only) {
  int flags = read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (sqlite3_open_v2(path.c_str(), &db_, flags | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    std::string err = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::runtime_error(path + ": cannot open the dissection DB: " + err);
  }
  sqlite3_busy_timeout(db_, 5000);
  try {
    if (!read_only) {
      exec("PRAGMA journal_mode=WAL");
      exec("PRAGMA synchronous=NORMAL");
      exec(kSchema);
      auto v = meta("schema_version");
      if (!v) {
        set_meta("schema_version", std::to_string(kCallDbSchemaVersion));
      } else if (*v != std::to_string(kCallDbSchemaVersion)) {
        throw std::runtime_error(path + ": dissection DB schema " + *v + ", this tapwire writes schema " +
                                 std::to_string(kCallDbSchemaVersion) + ": use a new --db file");
      }
      if (sqlite3_prepare_v2(db_,
                             "INSERT OR IGNORE INTO calls (id, protocol, ts_ns, ts, duration_us, src_ip, src_port, "
                             "dst_ip, dst_port, method, path, status, qname, qtype, rcode, request, response, flags) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             -1, &insert_, nullptr) != SQLITE_OK)
        throw std::runtime_error(path + ": " + sqlite3_errmsg(db_));
    } else {
      sqlite3_stmt* st = nullptr;
      bool ok = sqlite3_prepare_v2(db_, "SELECT count(*) FROM calls", -1, &st, nullptr) == SQLITE_OK;
      sqlite3_finalize(st);
      if (!ok) throw std::runtime_error(path + ": not a tapwire dissection DB (" + sqlite3_errmsg(db_) + ")");
    }
  } catch (...) {
    sqlite3_finalize(insert_);
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

CallDb::~CallDb() {
  if (!db_) return;
  try {
    commit();
  } catch (...) {
  }
  sqlite3_finalize(insert_);
  sqlite3_close(db_);
}

void CallDb::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "error";
    sqlite3_free(err);
    throw std::runtime_error(std::string("dissection DB: ") + msg);
  }
}

void CallDb::begin() {
  if (!in_tx_) {
    exec("BEGIN");
    in_tx_ = true;
  }
}

void CallDb::commit() {
  if (in_tx_) {
    exec("COMMIT");
    in_tx_ = false;
    batch_ = 0;
  }
}

void CallDb::insert(const Call& c) {
  begin();
  nlohmann::json j = to_json(c);
  sqlite3_stmt* st = insert_;
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  bind_text(st, 1, j["id"].get_ref<const std::string&>());
  bind_text(st, 2, j["protocol"].get_ref<const std::string&>());
  sqlite3_bind_int64(st, 3, static_cast<sqlite3_int64>(c.ts_ns));
  bind_text(st, 4, j["ts"].get_ref<const std::string&>());
  if (int64_t d = c.duration_us(); d >= 0) sqlite3_bind_int64(st, 5, d);
  bind_text(st, 6, c.src.ip());
  sqlite3_bind_int(st, 7, c.src.port);
  bind_text(st, 8, c.dst.ip());
  sqlite3_bind_int(st, 9, c.dst.port);
  if (c.http_request) {
    bind_text(st, 10, c.http_request->method);
    bind_text(st, 11, c.http_request->target);
  }
  if (c.http_response) sqlite3_bind_int(st, 12, c.http_response->status);
  const proto::DnsMessage* dq = c.dns_query ? &*c.dns_query : c.dns_response ? &*c.dns_response : nullptr;
  if (dq && !dq->questions.empty()) {
    bind_text(st, 13, dq->questions[0].name);
    bind_text(st, 14, proto::dns_type_name(dq->questions[0].qtype));
  }
  if (c.dns_response) bind_text(st, 15, proto::dns_rcode_name(c.dns_response->rcode));
  if (!j["request"].is_null()) bind_text(st, 16, j["request"].dump());
  if (!j["response"].is_null()) bind_text(st, 17, j["response"].dump());
  bind_text(st, 18, j["flags"].dump());
  int rc = sqlite3_step(st);
  if (rc != SQLITE_DONE) throw std::runtime_error(std::string("dissection DB insert: ") + sqlite3_errmsg(db_));
  if (sqlite3_changes(db_) > 0)
    inserted_++;
  else
    duplicates_++;
  if (++batch_ >= kBatch) commit();
}

void CallDb::set_meta(const std::string& key, const std::string& value) {
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db_, "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", -1, &st, nullptr);
  bind_text(st, 1, key);
  bind_text(st, 2, value);
  int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) throw std::runtime_error(std::string("dissection DB meta: ") + sqlite3_errmsg(db_));
}

std::optional<std::string> CallDb::meta(const std::string& key) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT value FROM meta WHERE key = ?", -1, &st, nullptr) != SQLITE_OK) return std::nullopt;
  bind_text(st, 1, key);
  std::optional<std::string> out;
  if (sqlite3_step(st) == SQLITE_ROW) out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  return out;
}

uint64_t CallDb::count() {
  sqlite3_stmt* st = nullptr;
  uint64_t n = 0;
  if (sqlite3_prepare_v2(db_, "SELECT count(*) FROM calls", -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    n = static_cast<uint64_t>(sqlite3_column_int64(st, 0));
  sqlite3_finalize(st);
  return n;
}

std::vector<nlohmann::json> CallDb::query(const Query& q) {
  std::string sql =
      "SELECT id, protocol, ts, duration_us, src_ip, src_port, dst_ip, dst_port, request, response, flags "
      "FROM calls WHERE 1=1";
  if (!q.protocol.empty()) sql += " AND protocol = ?1";
  if (q.status) sql += " AND status = ?2";
  if (q.status_class) sql += " AND status >= ?3 AND status < ?3 + 100";
  if (q.from_ns) sql += " AND ts_ns >= ?4";
  if (q.to_ns) sql += " AND ts_ns <= ?5";
  sql += " ORDER BY ts_ns, id";
  if (q.limit) sql += " LIMIT " + std::to_string(q.limit);
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("dissection DB query: ") + sqlite3_errmsg(db_));
  if (!q.protocol.empty()) bind_text(st, 1, q.protocol);
  if (q.status) sqlite3_bind_int(st, 2, q.status);
  if (q.status_class) sqlite3_bind_int(st, 3, q.status_class * 100);
  if (q.from_ns) sqlite3_bind_int64(st, 4, static_cast<sqlite3_int64>(q.from_ns));
  if (q.to_ns) sqlite3_bind_int64(st, 5, static_cast<sqlite3_int64>(q.to_ns));
  std::vector<nlohmann::json> out;
  auto text = [&](int col) -> std::string {
    auto* t = sqlite3_column_text(st, col);
    return t ? reinterpret_cast<const char*>(t) : "";
  };
  auto parsed = [&](int col) -> nlohmann::json {
    if (sqlite3_column_type(st, col) == SQLITE_NULL) return nullptr;
    return nlohmann::json::parse(text(col), nullptr, false);
  };
  while (sqlite3_step(st) == SQLITE_ROW) {
    nlohmann::json j;
    j["id"] = text(0);
    j["protocol"] = text(1);
    j["ts"] = text(2);
    j["duration_us"] = sqlite3_column_type(st, 3) == SQLITE_NULL ? nlohmann::json(nullptr)
                                                                 : nlohmann::json(sqlite3_column_int64(st, 3));
    j["src"] = {{"ip", text(4)}, {"port", sqlite3_column_int(st, 5)}};
    j["dst"] = {{"ip", text(6)}, {"port", sqlite3_column_int(st, 7)}};
    j["request"] = parsed(8);
    j["response"] = parsed(9);
    j["flags"] = parsed(10);
    out.push_back(std::move(j));
  }
  sqlite3_finalize(st);
  return out;
}

}  // namespace tapwire::dissect
