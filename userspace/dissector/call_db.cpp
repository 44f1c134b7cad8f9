#include "call_db.hpp"

#include <sqlite3.h>

#include <stdexcept>

namespace tapwire::dissect {
namespace {

constexpr size_t kBatch = 16384;

// Rows are appended in rowid order (no random-key index to maintain), and
// nothing is JSON until it is read back: headers are stored as the header
// block they came in ("name: value" lines), answers one per line.
const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS calls (
  id             TEXT NOT NULL,     -- 16 hex digits, stable for the same traffic
  protocol       TEXT NOT NULL,     -- http, dns
  ts_ns          INTEGER NOT NULL,  -- request time, ns since the epoch (UTC)
  duration_us    INTEGER,           -- NULL without a response
  src_ip         TEXT NOT NULL,
  src_port       INTEGER NOT NULL,
  dst_ip         TEXT NOT NULL,
  dst_port       INTEGER NOT NULL,
  has_request    INTEGER NOT NULL,  -- 0 for a response whose request was not seen
  has_response   INTEGER NOT NULL,  -- 0: "response": null
  method         TEXT,              -- HTTP
  path           TEXT,
  version        TEXT,
  req_headers    TEXT,              -- "name: value" lines, names lower-case, in wire order
  req_body_size  INTEGER,
  status         INTEGER,
  reason         TEXT,
  resp_headers   TEXT,
  resp_body_size INTEGER,
  dns_id         INTEGER,           -- DNS
  qname          TEXT,
  qtype          TEXT,
  rcode          TEXT,
  answers        TEXT,              -- one "TYPE data" per line
  flags          TEXT NOT NULL      -- flag names, comma-separated
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts_ns);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql";

void bind_text(sqlite3_stmt* st, int i, const std::string& s) {
  sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
}

// For strings that outlive the sqlite3_step that uses them: no copy.
void bind_static(sqlite3_stmt* st, int i, const std::string& s) {
  sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
}

}  // namespace

CallDb::CallDb(const std::string& path, bool read_only, bool bulk) {
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
      // Bulk (a pcap or a snapshot, which can be dissected again) trades
      // durability on power loss for speed; live dissection keeps it.
      exec(bulk ? "PRAGMA synchronous=OFF" : "PRAGMA synchronous=NORMAL");
      exec("PRAGMA cache_size=-16384");
      exec(kSchema);
      auto v = meta("schema_version");
      if (!v) {
        set_meta("schema_version", std::to_string(kCallDbSchemaVersion));
      } else if (*v != std::to_string(kCallDbSchemaVersion)) {
        throw std::runtime_error(path + ": dissection DB schema " + *v + ", this tapwire writes schema " +
                                 std::to_string(kCallDbSchemaVersion) + ": use a new --db file");
      }
      if (sqlite3_prepare_v2(db_,
                             "INSERT INTO calls (id, protocol, ts_ns, duration_us, src_ip, src_port, dst_ip, dst_port, "
                             "has_request, has_response, method, path, version, req_headers, req_body_size, status, "
                             "reason, resp_headers, resp_body_size, dns_id, qname, qtype, rcode, answers, flags) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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

namespace {

void append_headers(std::string& out, const std::vector<proto::Header>& hs) {
  out.clear();
  for (auto& h : hs) {
    out += h.name;
    out += ": ";
    out += h.value;
    out += '\n';
  }
}

}  // namespace

void CallDb::insert(const Call& c) {
  begin();
  sqlite3_stmt* st = insert_;
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  const std::string id = c.id(), src = c.src.ip(), dst = c.dst.ip();
  std::string req_headers, resp_headers, flags;
  bind_static(st, 1, id);
  sqlite3_bind_text(st, 2, protocol_name(c.protocol), -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, static_cast<sqlite3_int64>(c.ts_ns));
  if (int64_t d = c.duration_us(); d >= 0) sqlite3_bind_int64(st, 4, d);
  bind_static(st, 5, src);
  sqlite3_bind_int(st, 6, c.src.port);
  bind_static(st, 7, dst);
  sqlite3_bind_int(st, 8, c.dst.port);
  sqlite3_bind_int(st, 9, c.has_request());
  sqlite3_bind_int(st, 10, c.has_response());
  if (c.http_request) {
    auto& m = *c.http_request;
    bind_static(st, 11, m.method);
    bind_static(st, 12, m.target);
    sqlite3_bind_text(st, 13, m.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1", -1, SQLITE_STATIC);
    append_headers(req_headers, m.headers);
    bind_static(st, 14, req_headers);
    sqlite3_bind_int64(st, 15, static_cast<sqlite3_int64>(m.body_size));
  }
  if (c.http_response) {
    auto& m = *c.http_response;
    sqlite3_bind_int(st, 16, m.status);
    bind_static(st, 17, m.reason);
    append_headers(resp_headers, m.headers);
    bind_static(st, 18, resp_headers);
    sqlite3_bind_int64(st, 19, static_cast<sqlite3_int64>(m.body_size));
  }
  const proto::DnsMessage* dq = c.dns_query ? &*c.dns_query : c.dns_response ? &*c.dns_response : nullptr;
  if (dq) {
    sqlite3_bind_int(st, 20, dq->id);
    if (!dq->questions.empty()) {
      bind_text(st, 21, dq->questions[0].name);
      bind_text(st, 22, proto::dns_type_name(dq->questions[0].qtype));
    }
  }
  if (c.dns_response) {
    bind_text(st, 23, proto::dns_rcode_name(c.dns_response->rcode));
    scratch_.clear();
    for (auto& a : c.dns_response->answers) {
      scratch_ += proto::dns_type_name(a.type);
      scratch_ += ' ';
      scratch_ += a.data;
      scratch_ += '\n';
    }
    bind_text(st, 24, scratch_);
  }
  for (auto& f : flag_names(c.flags)) flags += (flags.empty() ? "" : ",") + f;
  bind_static(st, 25, flags);
  if (sqlite3_step(st) != SQLITE_DONE)
    throw std::runtime_error(std::string("dissection DB insert: ") + sqlite3_errmsg(db_));
  inserted_++;
  if (++batch_ >= kBatch && auto_commit_) commit();
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

namespace {

// Rebuilds the call record (the same JSON as to_json()) from one row of
// kColumns.
constexpr const char* kColumns =
    "id, protocol, ts_ns, duration_us, src_ip, src_port, dst_ip, dst_port, has_request, has_response, method, path, "
    "version, req_headers, req_body_size, status, reason, resp_headers, resp_body_size, dns_id, qname, qtype, rcode, "
    "answers, flags";

nlohmann::json headers_from_block(const std::string& block) {
  std::vector<proto::Header> hs;
  size_t pos = 0;
  while (pos < block.size()) {
    size_t nl = block.find('\n', pos);
    if (nl == std::string::npos) nl = block.size();
    size_t colon = block.find(": ", pos);
    if (colon != std::string::npos && colon < nl)
      hs.push_back({block.substr(pos, colon - pos), block.substr(colon + 2, nl - colon - 2)});
    pos = nl + 1;
  }
  return headers_json(hs);
}

}  // namespace

nlohmann::json CallDb::row_json(sqlite3_stmt* st) {
  auto text = [&](int col) -> std::string {
    auto* t = sqlite3_column_text(st, col);
    return t ? reinterpret_cast<const char*>(t) : "";
  };
  auto null = [&](int col) { return sqlite3_column_type(st, col) == SQLITE_NULL; };
  nlohmann::json j;
  j["id"] = text(0);
  const std::string protocol = text(1);
  j["protocol"] = protocol;
  j["ts"] = format_ts(static_cast<uint64_t>(sqlite3_column_int64(st, 2)));
  j["duration_us"] = null(3) ? nlohmann::json(nullptr) : nlohmann::json(sqlite3_column_int64(st, 3));
  j["src"] = {{"ip", text(4)}, {"port", sqlite3_column_int(st, 5)}};
  j["dst"] = {{"ip", text(6)}, {"port", sqlite3_column_int(st, 7)}};
  const bool has_req = sqlite3_column_int(st, 8) != 0, has_resp = sqlite3_column_int(st, 9) != 0;
  nlohmann::json req = nullptr, resp = nullptr;
  if (protocol == "http") {
    if (has_req)
      req = {{"method", text(10)},
             {"path", text(11)},
             {"version", text(12)},
             {"headers", headers_from_block(text(13))},
             {"body_size", sqlite3_column_int64(st, 14)}};
    if (has_resp)
      resp = {{"status", sqlite3_column_int(st, 15)},
              {"reason", text(16)},
              {"headers", headers_from_block(text(17))},
              {"body_size", sqlite3_column_int64(st, 18)}};
  } else {
    if (has_req) req = {{"id", sqlite3_column_int(st, 19)}, {"qname", text(20)}, {"qtype", text(21)}};
    if (has_resp) {
      nlohmann::json answers = nlohmann::json::array();
      std::string a = text(23);
      size_t pos = 0;
      while (pos < a.size()) {
        size_t nl = a.find('\n', pos);
        if (nl == std::string::npos) nl = a.size();
        answers.push_back(a.substr(pos, nl - pos));
        pos = nl + 1;
      }
      resp = {{"rcode", text(22)}, {"answers", answers}};
      if (!has_req) {
        resp["qname"] = text(20);
        resp["qtype"] = text(21);
      }
    }
  }
  j["request"] = req;
  j["response"] = resp;
  nlohmann::json flags = nlohmann::json::array();
  std::string f = text(24);
  size_t pos = 0;
  while (pos < f.size()) {
    size_t comma = f.find(',', pos);
    if (comma == std::string::npos) comma = f.size();
    flags.push_back(f.substr(pos, comma - pos));
    pos = comma + 1;
  }
  j["flags"] = flags;
  return j;
}

std::vector<nlohmann::json> CallDb::query(const Query& q, int64_t* last_rowid) {
  std::string sql = std::string("SELECT ") + kColumns + ", rowid FROM calls WHERE 1=1";
  if (!q.protocol.empty()) sql += " AND protocol = ?1";
  if (q.status) sql += " AND status = ?2";
  if (q.status_class) sql += " AND status >= ?3 AND status < ?3 + 100";
  if (q.from_ns) sql += " AND ts_ns >= ?4";
  if (q.to_ns) sql += " AND ts_ns <= ?5";
  if (q.after_rowid) sql += " AND rowid > ?6";
  sql += q.after_rowid || q.by_rowid ? " ORDER BY rowid" : " ORDER BY ts_ns, rowid";
  if (q.limit) sql += " LIMIT " + std::to_string(q.limit);
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("dissection DB query: ") + sqlite3_errmsg(db_));
  if (!q.protocol.empty()) bind_text(st, 1, q.protocol);
  if (q.status) sqlite3_bind_int(st, 2, q.status);
  if (q.status_class) sqlite3_bind_int(st, 3, q.status_class * 100);
  if (q.from_ns) sqlite3_bind_int64(st, 4, static_cast<sqlite3_int64>(q.from_ns));
  if (q.to_ns) sqlite3_bind_int64(st, 5, static_cast<sqlite3_int64>(q.to_ns));
  if (q.after_rowid) sqlite3_bind_int64(st, 6, q.after_rowid);
  std::vector<nlohmann::json> out;
  while (sqlite3_step(st) == SQLITE_ROW) {
    out.push_back(row_json(st));
    if (last_rowid) *last_rowid = sqlite3_column_int64(st, 25);
  }
  sqlite3_finalize(st);
  return out;
}

int64_t CallDb::max_rowid() {
  sqlite3_stmt* st = nullptr;
  int64_t n = 0;
  if (sqlite3_prepare_v2(db_, "SELECT coalesce(max(rowid), 0) FROM calls", -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

}  // namespace tapwire::dissect
