#include "call_db.hpp"

#include <regex.h>
#include <sqlite3.h>

#include <stdexcept>
#include <unordered_map>

#include "body/body_json.hpp"
#include "json_out.hpp"

namespace tapwire::dissect {
namespace {

constexpr size_t kBatch = 16384;

// Rows are appended in rowid order (no random-key index to maintain), and
// nothing is JSON until it is read back: headers are stored as the header
// block they came in ("name: value" lines), answers one per line.
// The columns of schema 1 (the statement is left open after flags); schema
// 2 appends identity_columns() after them, schema 3 body_columns() after
// those, in the order a migrated DB gets them from ALTER TABLE, so that
// every DB of schema 3 has the same column order (tapwire dissect merges
// part DBs with INSERT ... SELECT *). A new column goes at the end, added to
// new DBs and by the migration in the same order.
const char* kCallsV1 = R"sql(
CREATE TABLE calls (
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
  flags          TEXT NOT NULL,     -- flag names, comma-separated
)sql";

// Identity of the call's ends (docs/IDENTITY.md), NULL when unknown. The
// per-end part is repeated with src_ and dst_.
const char* kEndColumns[] = {"pid INTEGER",  "process TEXT",       "exe TEXT",           "container TEXT",
                             "container_id TEXT", "pod TEXT",      "namespace TEXT",     "workload_kind TEXT",
                             "workload_name TEXT", "service TEXT", "node TEXT"};
constexpr int kEndColumnCount = sizeof kEndColumns / sizeof kEndColumns[0];

std::vector<std::string> identity_columns() {  // "name TYPE", in table order
  std::vector<std::string> out{"node TEXT"};  // the node that captured the call
  for (const char* end : {"src_", "dst_"})
    for (const char* c : kEndColumns) out.push_back(end + std::string(c));
  return out;
}

// Bodies (schema 3), per message: the bytes kept (decoded when a
// Content-Encoding was undone; NULL when none were kept), 'base64' when the
// record shows them as base64 (binary) and NULL for text, the codings
// undone and the decoded size (NULL when not encoded).
const char* kBodyColumns[] = {"body BLOB", "body_encoding TEXT", "content_encoding TEXT",
                              "body_decoded_size INTEGER"};
constexpr int kBodyColumnCount = sizeof kBodyColumns / sizeof kBodyColumns[0];

std::vector<std::string> body_columns() {  // "name TYPE", in table order
  std::vector<std::string> out;
  for (const char* m : {"req_", "resp_"})
    for (const char* c : kBodyColumns) out.push_back(m + std::string(c));
  return out;
}

// The record (schema 4): every protocol's request and response objects as
// JSON text (docs/CALL_RECORD.md), and the call a call belongs to (a
// WebSocket message's upgrade). Rows of schema 4 fill the common columns
// (id ... has_response, method, path, status, flags, identity) and these;
// the HTTP and DNS columns of schemas 1-3 stay for the rows written then.
const char* kRecordColumns[] = {"request TEXT", "response TEXT", "upgrade_id TEXT"};
constexpr int kRecordColumnCount = sizeof kRecordColumns / sizeof kRecordColumns[0];

std::vector<std::string> record_columns() { return {std::begin(kRecordColumns), std::end(kRecordColumns)}; }

// Namespace, the filter that scopes the others, is indexed at both ends.
// Partial indexes: a call without identity (NULL) adds no entry, and
// `x = ?` implies `x IS NOT NULL`, so the either-end filter uses both (a
// multi-index OR). Each index still costs every insert a cursor, and each
// entry a B-tree insert (docs/DISSECTION_DB.md has the numbers): the
// other identity filters scan.
const char* kIndexes = R"sql(
CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts_ns);
CREATE INDEX IF NOT EXISTS calls_src_namespace ON calls(src_namespace) WHERE src_namespace IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_dst_namespace ON calls(dst_namespace) WHERE dst_namespace IS NOT NULL;
)sql";

// Flows and passive DNS (docs/DISSECTION_DB.md). Tables of their own, made
// by any tapwire that writes the DB (CREATE ... IF NOT EXISTS): a DB of an
// older tapwire gets them when opened for writing, without a schema bump.
const char* kFlowTables = R"sql(
CREATE TABLE IF NOT EXISTS flows (
  id               TEXT PRIMARY KEY,  -- 16 hex digits, the flow record's id
  first_ns         INTEGER NOT NULL,  -- first packet, ns since the epoch (UTC)
  last_ns          INTEGER NOT NULL,  -- last packet
  protocol         TEXT NOT NULL,     -- tcp, udp
  ip_version       INTEGER NOT NULL,
  client_ip        TEXT NOT NULL,
  client_port      INTEGER NOT NULL,
  server_ip        TEXT NOT NULL,
  server_port      INTEGER NOT NULL,
  client_namespace TEXT,
  client_pod       TEXT,
  client_workload  TEXT,
  server_namespace TEXT,
  server_pod       TEXT,
  server_workload  TEXT,
  state            TEXT NOT NULL,     -- docs/FLOWS.md
  end_reason       TEXT,              -- the record's end; NULL while live
  packets          INTEGER NOT NULL,  -- both directions
  bytes            INTEGER NOT NULL,
  retransmissions  INTEGER NOT NULL,
  rtt_us           REAL,              -- handshake RTT; NULL when unknown
  node             TEXT,
  record           TEXT NOT NULL,     -- the whole flow record (JSON)
  flow_key         BLOB               -- struct tw_flow_key (40 bytes): tapwire packets, export pcap --flow
);
CREATE INDEX IF NOT EXISTS flows_first ON flows(first_ns);
CREATE INDEX IF NOT EXISTS flows_last ON flows(last_ns);
CREATE TABLE IF NOT EXISTS dns_names (
  ip         TEXT NOT NULL,
  name       TEXT NOT NULL,     -- the name asked, or a CNAME on the way to the address
  first_seen INTEGER NOT NULL,  -- first answer, ns since the epoch
  last_seen  INTEGER NOT NULL,  -- last answer
  ttl        INTEGER,           -- of the last answer
  PRIMARY KEY (ip, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dns_names_last ON dns_names(last_seen);
)sql";

std::string column_names(const std::vector<std::string>& columns) {  // "node, src_pid, ..."
  std::string out;
  for (auto& c : columns) out += (out.empty() ? "" : ", ") + c.substr(0, c.find(' '));
  return out;
}

void bind_text(sqlite3_stmt* st, int i, const std::string& s) {
  sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
}

// For strings that outlive the sqlite3_step that uses them: no copy.
void bind_static(sqlite3_stmt* st, int i, const std::string& s) {
  sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
}

// The SQL function regexp(PATTERN, VALUE) behind `VALUE REGEXP PATTERN`:
// POSIX extended, unanchored, bytes. Patterns are compiled once per
// connection (tapwire tail runs the same query every 200 ms) and, within a
// statement, found through SQLite's auxdata without even a lookup.
struct CompiledRegex {
  regex_t re{};
  int rc = 0;  // regcomp's result; re is valid only when 0
  explicit CompiledRegex(const std::string& pattern) : rc(regcomp(&re, pattern.c_str(), REG_EXTENDED | REG_NOSUB)) {}
  ~CompiledRegex() {
    if (rc == 0) regfree(&re);
  }
  CompiledRegex(const CompiledRegex&) = delete;
  CompiledRegex& operator=(const CompiledRegex&) = delete;
  std::string error() const {
    char buf[256];
    regerror(rc, &re, buf, sizeof buf);
    return buf;
  }
};
using CompiledRegexPtr = std::shared_ptr<const CompiledRegex>;

}  // namespace

struct RegexCache {
  static constexpr size_t kMax = 64;  // distinct patterns kept; then it starts over
  std::unordered_map<std::string, CompiledRegexPtr> patterns;
  CompiledRegexPtr get(const std::string& pattern) {
    auto it = patterns.find(pattern);
    if (it != patterns.end()) return it->second;
    if (patterns.size() >= kMax) patterns.clear();  // holders keep theirs alive (shared_ptr)
    return patterns.emplace(pattern, std::make_shared<const CompiledRegex>(pattern)).first->second;
  }
};

namespace {

void regexp_function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL || sqlite3_value_type(argv[1]) == SQLITE_NULL) {
    sqlite3_result_null(ctx);  // an unknown pod matches no pattern
    return;
  }
  auto* held = static_cast<CompiledRegexPtr*>(sqlite3_get_auxdata(ctx, 0));
  CompiledRegexPtr re = held ? *held : nullptr;
  if (!re) {
    const char* p = reinterpret_cast<const char*>(sqlite3_value_text(argv[0]));
    if (!p) {
      sqlite3_result_error_nomem(ctx);
      return;
    }
    re = static_cast<RegexCache*>(sqlite3_user_data(ctx))->get(std::string(p, sqlite3_value_bytes(argv[0])));
    if (re->rc != 0) {
      sqlite3_result_error(ctx, ("bad regex: " + re->error()).c_str(), -1);
      return;
    }
    sqlite3_set_auxdata(ctx, 0, new CompiledRegexPtr(re), [](void* h) { delete static_cast<CompiledRegexPtr*>(h); });
  }
  const char* v = reinterpret_cast<const char*>(sqlite3_value_text(argv[1]));
  regmatch_t span[1];
  span[0].rm_so = 0;  // REG_STARTEND: the value's length, not its first NUL
  span[0].rm_eo = sqlite3_value_bytes(argv[1]);
  sqlite3_result_int(ctx, v && regexec(&re->re, v, 1, span, REG_STARTEND) == 0);
}

// Binds one end's identity from its first column on; unknown fields stay
// NULL (sqlite3_clear_bindings). The identity outlives the statement's step.
void bind_identity(sqlite3_stmt* st, int first, const identity::EndpointIdentity& id) {
  auto put = [&](int off, const std::string& v) {
    if (!v.empty()) bind_static(st, first + off, v);
  };
  if (id.pid) sqlite3_bind_int64(st, first, id.pid);
  put(1, id.process);
  put(2, id.exe);
  put(3, id.container);
  put(4, id.container_id);
  put(5, id.pod);
  put(6, id.namespace_);
  put(7, id.workload_kind);
  put(8, id.workload_name);
  put(9, id.service);
  put(10, id.node);
}

// Parameter numbers of the insert statement and column numbers of a query
// row (0-based): the schema-1 columns, then node, src_*, dst_*, req_ and
// resp_ bodies, rowid.
constexpr int kV1Columns = 25;
constexpr int kNodeColumn = kV1Columns;
constexpr int kSrcIdentity = kNodeColumn + 1;
constexpr int kDstIdentity = kSrcIdentity + kEndColumnCount;
constexpr int kReqBody = kDstIdentity + kEndColumnCount;
constexpr int kRespBody = kReqBody + kBodyColumnCount;
constexpr int kRecordColumn = kRespBody + kBodyColumnCount;  // request, response, upgrade_id
constexpr int kRowidColumn = kRecordColumn + kRecordColumnCount;
// Parameters of the insert statements: the common columns (id ... node),
// then with identity the src_ and dst_ columns.
constexpr int kInsertCommon = 18;

}  // namespace

CallDb::CallDb(const std::string& path, bool read_only, bool bulk) : regex_cache_(std::make_unique<RegexCache>()) {
  int flags = read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (sqlite3_open_v2(path.c_str(), &db_, flags | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    std::string err = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::runtime_error(path + ": cannot open the dissection DB: " + err);
  }
  sqlite3_busy_timeout(db_, 5000);
  try {
    if (sqlite3_create_function_v2(db_, "regexp", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS,
                                   regex_cache_.get(), regexp_function, nullptr, nullptr, nullptr) != SQLITE_OK)
      throw std::runtime_error(path + ": " + sqlite3_errmsg(db_));
    if (!read_only) {
      // Bulk (a pcap or a snapshot, dissected again if need be) writes each
      // page once, with no journal: a WAL would write every page twice
      // (the log, then the checkpoint), which was most of the system time
      // of a dissection. Live dissection keeps the WAL (readers alongside,
      // crash safety).
      exec(bulk ? "PRAGMA journal_mode=OFF" : "PRAGMA journal_mode=WAL");
      // Bulk (a pcap or a snapshot, which can be dissected again) trades
      // durability on power loss for speed; live dissection keeps it.
      exec(bulk ? "PRAGMA synchronous=OFF" : "PRAGMA synchronous=NORMAL");
      exec("PRAGMA cache_size=-16384");
      create_or_migrate(path);
      const std::string common = "id, protocol, ts_ns, duration_us, src_ip, src_port, dst_ip, dst_port, has_request, "
                                 "has_response, method, path, status, flags, request, response, upgrade_id, node";
      auto prepare = [&](sqlite3_stmt** st, const std::string& columns, int n) {
        std::string sql = "INSERT INTO calls (" + columns + ") VALUES (?";
        for (int i = 1; i < n; i++) sql += ",?";
        if (sqlite3_prepare_v2(db_, (sql + ")").c_str(), -1, st, nullptr) != SQLITE_OK)
          throw std::runtime_error(path + ": " + sqlite3_errmsg(db_));
      };
      std::vector<std::string> ends = identity_columns();
      ends.erase(ends.begin());  // node is a common column
      prepare(&insert_[0], common, kInsertCommon);
      prepare(&insert_[1], common + ", " + column_names(ends), kInsertCommon + 2 * kEndColumnCount);
      prepare_flow_statements();
    } else {
      sqlite3_stmt* st = nullptr;
      bool ok = sqlite3_prepare_v2(db_, "SELECT count(*) FROM calls", -1, &st, nullptr) == SQLITE_OK;
      sqlite3_finalize(st);
      if (!ok) throw std::runtime_error(path + ": not a tapwire dissection DB (" + sqlite3_errmsg(db_) + ")");
      identity_columns_ = has_column("calls", "node");
      body_columns_ = has_column("calls", "resp_body");
      record_columns_ = has_column("calls", "upgrade_id");
      flow_tables_ = has_column("flows", "flow_key") && has_column("dns_names", "ttl");
    }
  } catch (...) {
    for (sqlite3_stmt* st : insert_) sqlite3_finalize(st);
    sqlite3_finalize(flow_upsert_);
    sqlite3_finalize(dns_upsert_);
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

// Creates the schema in a new file, or brings a DB of schema 1 to 3 to
// schema 4, in one IMMEDIATE transaction: two writers opening the same file at once
// cannot both create or both migrate it, and a crash leaves it as it was.
void CallDb::create_or_migrate(const std::string& path) {
  exec("BEGIN IMMEDIATE");
  try {
    exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)");
    const std::string current = std::to_string(kCallDbSchemaVersion);
    auto v = meta("schema_version");
    if (!has_column("calls", "id")) {
      if (v && *v != current)
        throw std::runtime_error(path + ": dissection DB schema " + *v + " without its calls table: use a new --db file");
      std::string sql = kCallsV1;
      const char* sep = "  ";
      std::vector<std::string> added = identity_columns();
      for (auto& c : body_columns()) added.push_back(c);
      for (auto& c : record_columns()) added.push_back(c);
      for (auto& c : added) {
        sql += sep + c;
        sep = ",\n  ";
      }
      exec(sql + "\n)");
    } else if (!v) {
      // Calls but no version: a DB whose creator died between the two
      // (schema 1 did not create them in one transaction). Its columns tell.
      v = has_column("calls", "node") ? current : "1";
    }
    if (v == "1")
      for (auto& c : identity_columns()) exec("ALTER TABLE calls ADD COLUMN " + c);
    if (v == "1" || v == "2")
      for (auto& c : body_columns()) exec("ALTER TABLE calls ADD COLUMN " + c);
    if (v == "1" || v == "2" || v == "3") {
      for (auto& c : record_columns()) exec("ALTER TABLE calls ADD COLUMN " + c);
    } else if (v && *v != current) {
      throw std::runtime_error(path + ": dissection DB schema " + *v + ", this tapwire writes schema " + current +
                               ": use a new --db file");
    }
    exec(kIndexes);
    exec(kFlowTables);
    if (v != current) set_meta("schema_version", current);
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

bool CallDb::has_column(const char* table, const char* column) {
  // Preparing a statement that names it is the cheapest check, and it
  // fails the same way for a missing table.
  sqlite3_stmt* st = nullptr;
  const std::string sql = std::string("SELECT ") + column + " FROM " + table + " LIMIT 0";
  bool ok = sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) == SQLITE_OK;
  sqlite3_finalize(st);
  return ok;
}

CallDb::~CallDb() {
  if (!db_) return;
  try {
    commit();
  } catch (...) {
  }
  for (sqlite3_stmt* st : insert_) sqlite3_finalize(st);
  sqlite3_finalize(flow_upsert_);
  sqlite3_finalize(dns_upsert_);
  sqlite3_close(db_);
}

std::string CallDb::regex_error(const std::string& pattern) {
  if (pattern.find('\0') != std::string::npos) return "contains a NUL byte";
  CompiledRegex re(pattern);
  return re.rc == 0 ? "" : re.error();
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
    if (max_size_) enforce_max_size();  // in the same transaction: the DB is never seen over its bound
    exec("COMMIT");
    in_tx_ = false;
    batch_ = 0;
  }
}

int64_t CallDb::pragma_int(const char* sql) {
  sqlite3_stmt* st = nullptr;
  int64_t v = 0;
  if (sqlite3_prepare_v2(db_, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

void CallDb::set_max_size(uint64_t bytes) {
  max_size_ = bytes;
  if (!bytes) return;
  const int64_t page = std::max<int64_t>(pragma_int("PRAGMA page_size"), 512);
  const uint64_t wal = std::clamp<uint64_t>(bytes / 16, 64u << 10, 64u << 20);
  exec("PRAGMA journal_size_limit=" + std::to_string(wal));
  exec("PRAGMA wal_autocheckpoint=" + std::to_string(std::max<uint64_t>(wal / static_cast<uint64_t>(page), 16)));
}

CallDb::SizeStats CallDb::size_stats() {
  SizeStats s;
  const int64_t page = pragma_int("PRAGMA page_size");
  const int64_t pages = pragma_int("PRAGMA page_count");
  const int64_t free_pages = pragma_int("PRAGMA freelist_count");
  s.file_bytes = static_cast<uint64_t>(pages * page);
  s.bytes = static_cast<uint64_t>((pages - free_pages) * page);
  s.max_bytes = max_size_;
  if (!calls_deleted_loaded_) {
    calls_deleted_loaded_ = true;
    if (auto v = meta("calls_deleted")) calls_deleted_ = std::strtoull(v->c_str(), nullptr, 10);
  }
  s.calls_deleted = calls_deleted_;
  s.flows_deleted = flows_deleted_;
  return s;
}

void CallDb::enforce_max_size() {
  SizeStats s = size_stats();
  if (s.bytes <= max_size_) return;
  if (!flows_deleted_loaded_) {
    flows_deleted_loaded_ = true;
    if (auto v = meta("flows_deleted")) flows_deleted_ = std::strtoull(v->c_str(), nullptr, 10);
  }
  // Calls take about the same room each, and so do flows: delete the share
  // of each that brings the pages in use to 90% of the bound, oldest first
  // (calls in insertion order, flows by first packet), then check again
  // (indexes and the meta table make the estimate approximate).
  for (int round = 0; round < 8 && s.bytes > max_size_ * 9 / 10; round++) {
    const uint64_t calls = count();
    const uint64_t flows = flow_count();
    const uint64_t rows = calls + flows;
    if (rows == 0) break;
    const uint64_t target = max_size_ * 9 / 10;
    auto share = [&](uint64_t n_rows) -> uint64_t {
      if (!n_rows) return 0;
      uint64_t n = n_rows - n_rows * target / s.bytes;
      return std::clamp<uint64_t>(n + n_rows / 100, 1, n_rows);
    };
    auto run = [&](const char* sql, uint64_t n) -> uint64_t {
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db_, sql, -1, &st, nullptr) != SQLITE_OK)
        throw std::runtime_error(std::string("dissection DB: ") + sqlite3_errmsg(db_));
      sqlite3_bind_int64(st, 1, static_cast<sqlite3_int64>(n - 1));
      const int rc = sqlite3_step(st);
      sqlite3_finalize(st);
      if (rc != SQLITE_DONE) throw std::runtime_error(std::string("dissection DB: ") + sqlite3_errmsg(db_));
      return static_cast<uint64_t>(sqlite3_changes(db_));
    };
    if (calls) {
      calls_deleted_ += run("DELETE FROM calls WHERE rowid <= (SELECT rowid FROM calls ORDER BY rowid LIMIT 1 OFFSET ?1)",
                            share(calls));
      set_meta("calls_deleted", std::to_string(calls_deleted_));
    }
    if (flows) {
      flows_deleted_ += run("DELETE FROM flows WHERE id IN (SELECT id FROM flows ORDER BY first_ns LIMIT ?1 + 1)",
                            share(flows));
      set_meta("flows_deleted", std::to_string(flows_deleted_));
      // Names last answered before the oldest flow left name nothing any more.
      exec("DELETE FROM dns_names WHERE last_seen < (SELECT coalesce(min(first_ns), 0) FROM flows)");
    }
    s = size_stats();
  }
}

void CallDb::insert(const Call& c) {
  begin();
  const bool identity = c.src.identity || c.dst.identity;
  sqlite3_stmt* st = insert_[identity ? 1 : 0];
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  const std::string id = c.id(), src = c.src.ip(), dst = c.dst.ip();
  std::string flags;
  bind_static(st, 1, id);
  sqlite3_bind_text(st, 2, c.protocol, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, static_cast<sqlite3_int64>(c.ts_ns));
  if (int64_t d = c.duration_us(); d >= 0) sqlite3_bind_int64(st, 4, d);
  bind_static(st, 5, src);
  sqlite3_bind_int(st, 6, c.src.port);
  bind_static(st, 7, dst);
  sqlite3_bind_int(st, 8, c.dst.port);
  sqlite3_bind_int(st, 9, c.has_request());
  sqlite3_bind_int(st, 10, c.has_response());
  if (!c.method.empty()) bind_static(st, 11, c.method);
  if (!c.path.empty()) bind_static(st, 12, c.path);
  if (c.status >= 0) sqlite3_bind_int(st, 13, c.status);
  for (auto& f : flag_names(c.flags)) flags += (flags.empty() ? "" : ",") + f;
  bind_static(st, 14, flags);
  req_json_.clear();
  resp_json_.clear();
  if (c.request) {
    JsonOut j(req_json_);
    c.request->write_json(j);
    bind_static(st, 15, req_json_);
  }
  if (c.response) {
    JsonOut j(resp_json_);
    c.response->write_json(j);
    bind_static(st, 16, resp_json_);
  }
  std::string link;
  if (c.link_key) {
    link = key_hex(c.link_key);
    bind_static(st, 17, link);
  }
  if (!c.node.empty()) bind_static(st, 18, c.node);
  if (c.src.identity) bind_identity(st, kInsertCommon + 1, *c.src.identity);
  if (c.dst.identity) bind_identity(st, kInsertCommon + 1 + kEndColumnCount, *c.dst.identity);
  if (sqlite3_step(st) != SQLITE_DONE)
    throw std::runtime_error(std::string("dissection DB insert: ") + sqlite3_errmsg(db_));
  inserted_++;
  if (c.request) body_bytes_since_check_ += c.request->body_bytes();
  if (c.response) body_bytes_since_check_ += c.response->body_bytes();
  // A few pragmas, every 256 calls or every 1/32 of the bound in bodies
  // (a row with a body kept can be --max-body bytes): the file never holds
  // a whole batch over the bound.
  if (max_size_ && (++since_size_check_ >= 256 || body_bytes_since_check_ >= max_size_ / 32)) {
    since_size_check_ = 0;
    body_bytes_since_check_ = 0;
    enforce_max_size();
  }
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

uint64_t CallDb::count_rows(const char* table) {
  sqlite3_stmt* st = nullptr;
  uint64_t n = 0;
  const std::string sql = std::string("SELECT count(*) FROM ") + table;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    n = static_cast<uint64_t>(sqlite3_column_int64(st, 0));
  sqlite3_finalize(st);
  return n;
}

uint64_t CallDb::count() { return count_rows("calls"); }

namespace {

// The columns of a query row, in kV1Columns / kNodeColumn / kSrcIdentity /
// kDstIdentity order; row_json rebuilds the call record (the same JSON as
// to_json()) from them.
constexpr const char* kColumns =
    "id, protocol, ts_ns, duration_us, src_ip, src_port, dst_ip, dst_port, has_request, has_response, method, path, "
    "version, req_headers, req_body_size, status, reason, resp_headers, resp_body_size, dns_id, qname, qtype, rcode, "
    "answers, flags";

// The select list: identity and body columns, or NULLs in their place for a
// schema-1 or -2 DB read without migrating it.
std::string select_list(bool identity, bool bodies, bool records) {
  std::string out = std::string(kColumns) + ", ";
  if (identity) {
    out += column_names(identity_columns());
  } else {
    for (int i = kNodeColumn; i < kReqBody; i++) out += i == kNodeColumn ? "NULL" : ", NULL";
  }
  out += ", ";
  if (bodies) {
    out += column_names(body_columns());
  } else {
    for (int i = kReqBody; i < kRecordColumn; i++) out += i == kReqBody ? "NULL" : ", NULL";
  }
  out += records ? ", request, response, upgrade_id" : ", NULL, NULL, NULL";
  return out + ", rowid";
}

// Column text with its length: a value may hold NUL bytes.
std::string column_string(sqlite3_stmt* st, int col) {
  auto* t = reinterpret_cast<const char*>(sqlite3_column_text(st, col));
  return t ? std::string(t, static_cast<size_t>(sqlite3_column_bytes(st, col))) : std::string();
}

// Header fields as the record shows them (rows of schemas 1-3): an object,
// repeated names joined with ", ".
nlohmann::json headers_json(const std::vector<proto::Header>& hs) {
  nlohmann::json j = nlohmann::json::object();
  for (auto& h : hs) {
    auto it = j.find(h.name);
    if (it == j.end())
      j[h.name] = h.value;
    else
      *it = it->get<std::string>() + ", " + h.value;
  }
  return j;
}

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

// One message's body fields from its body columns, as put_body_json() in
// call.cpp makes them.
void body_from_row(nlohmann::json& j, sqlite3_stmt* st, int first) {
  if (sqlite3_column_type(st, first) != SQLITE_NULL) {
    const void* p = sqlite3_column_blob(st, first);
    const int n = sqlite3_column_bytes(st, first);
    const bool base64 = sqlite3_column_type(st, first + 1) != SQLITE_NULL;
    j.update(proto::body_json(std::span<const uint8_t>(static_cast<const uint8_t*>(p), p ? static_cast<size_t>(n) : 0),
                              !base64));
  }
  if (sqlite3_column_type(st, first + 2) != SQLITE_NULL) {
    j["content_encoding"] = column_string(st, first + 2);
    j["body_decoded_size"] = sqlite3_column_int64(st, first + 3);
  }
}

// One end as the record shows it: {ip, port} and the identity fields that
// are not NULL, shaped as endpoint_json() in call.cpp shapes them.
nlohmann::json endpoint_from_row(sqlite3_stmt* st, int ip_col, int port_col, int first) {
  nlohmann::json e = {{"ip", column_string(st, ip_col)}, {"port", sqlite3_column_int(st, port_col)}};
  auto known = [&](int off) { return sqlite3_column_type(st, first + off) != SQLITE_NULL; };
  auto put = [&](nlohmann::json& obj, const char* key, int off) {
    if (known(off)) obj[key] = column_string(st, first + off);
  };
  nlohmann::json process = nlohmann::json::object();
  if (known(0)) process["pid"] = sqlite3_column_int64(st, first);
  put(process, "name", 1);
  put(process, "exe", 2);
  if (!process.empty()) e["process"] = std::move(process);
  put(e, "container", 3);
  put(e, "container_id", 4);
  put(e, "pod", 5);
  put(e, "namespace", 6);
  nlohmann::json workload = nlohmann::json::object();
  put(workload, "kind", 7);
  put(workload, "name", 8);
  if (!workload.empty()) e["workload"] = std::move(workload);
  put(e, "service", 9);
  put(e, "node", 10);
  return e;
}

}  // namespace

nlohmann::json CallDb::row_json(sqlite3_stmt* st) {
  auto text = [&](int col) { return column_string(st, col); };
  auto null = [&](int col) { return sqlite3_column_type(st, col) == SQLITE_NULL; };
  nlohmann::json j;
  j["id"] = text(0);
  const std::string protocol = text(1);
  j["protocol"] = protocol;
  j["ts"] = format_ts(static_cast<uint64_t>(sqlite3_column_int64(st, 2)));
  j["duration_us"] = null(3) ? nlohmann::json(nullptr) : nlohmann::json(sqlite3_column_int64(st, 3));
  j["src"] = endpoint_from_row(st, 4, 5, kSrcIdentity);
  j["dst"] = endpoint_from_row(st, 6, 7, kDstIdentity);
  const bool has_req = sqlite3_column_int(st, 8) != 0, has_resp = sqlite3_column_int(st, 9) != 0;
  nlohmann::json req = nullptr, resp = nullptr;
  auto parsed = [&](int col) {
    return nlohmann::json::parse(column_string(st, col), nullptr, false);  // a discarded value on bad text
  };
  if (!null(kRecordColumn) || !null(kRecordColumn + 1)) {  // schema 4: the record's own objects
    if (!null(kRecordColumn)) req = parsed(kRecordColumn);
    if (!null(kRecordColumn + 1)) resp = parsed(kRecordColumn + 1);
    if (req.is_discarded()) req = nullptr;
    if (resp.is_discarded()) resp = nullptr;
  } else if (protocol == "http") {
    if (has_req)
      req = {{"method", text(10)},
             {"path", text(11)},
             {"version", text(12)},
             {"headers", headers_from_block(text(13))},
             {"body_size", sqlite3_column_int64(st, 14)}};
    if (has_req) body_from_row(req, st, kReqBody);
    if (has_resp)
      resp = {{"status", sqlite3_column_int(st, 15)},
              {"reason", text(16)},
              {"headers", headers_from_block(text(17))},
              {"body_size", sqlite3_column_int64(st, 18)}};
    if (has_resp) body_from_row(resp, st, kRespBody);
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
  if (!null(kRecordColumn + 2)) j["upgrade_id"] = text(kRecordColumn + 2);
  if (!null(kNodeColumn)) j["node"] = text(kNodeColumn);
  return j;
}

std::vector<nlohmann::json> CallDb::query(const Query& q, int64_t* last_rowid, std::vector<Summary>* summaries) {
  if (!q.pod_regex.empty())
    if (std::string err = regex_error(q.pod_regex); !err.empty())
      throw std::invalid_argument("bad pod regex '" + q.pod_regex + "': " + err);
  if (!q.path_regex.empty())
    if (std::string err = regex_error(q.path_regex); !err.empty())
      throw std::invalid_argument("bad path regex '" + q.path_regex + "': " + err);
  if (!identity_columns_) identity_columns_ = has_column("calls", "node");  // migrated since?
  if (!body_columns_) body_columns_ = has_column("calls", "resp_body");
  if (!record_columns_) record_columns_ = has_column("calls", "upgrade_id");
  // Without identity columns no call has a namespace, pod, ...: an
  // identity filter matches nothing.
  const char* none = " AND 0";
  const bool id = identity_columns_;
  std::string sql = "SELECT " + select_list(id, body_columns_, record_columns_) + " FROM calls WHERE 1=1";
  if (!q.protocol.empty()) sql += " AND protocol = ?1";
  if (q.status) sql += *q.status < 0 ? " AND status IS NULL" : " AND status = ?2";
  if (q.status_class) sql += " AND status >= ?3 AND status < ?3 + 100";
  if (q.from_ns) sql += " AND ts_ns >= ?4";
  if (q.to_ns) sql += " AND ts_ns <= ?5";
  if (q.after_rowid) sql += " AND rowid > ?6";
  if (!q.namespace_.empty()) sql += id ? " AND (src_namespace = ?7 OR dst_namespace = ?7)" : none;
  if (!q.pod_regex.empty()) sql += id ? " AND (src_pod REGEXP ?8 OR dst_pod REGEXP ?8)" : none;
  if (!q.service.empty()) sql += id ? " AND (src_service = ?9 OR dst_service = ?9)" : none;
  if (!q.process.empty()) sql += id ? " AND (src_process = ?10 OR dst_process = ?10)" : none;
  if (!q.node.empty()) sql += id ? " AND (node = ?11 OR src_node = ?11 OR dst_node = ?11)" : none;
  if (!q.id.empty()) sql += " AND id = ?12";
  if (!q.method.empty()) sql += " AND method = ?13 COLLATE NOCASE";
  if (!q.path_regex.empty()) sql += " AND path REGEXP ?14";
  if (q.newest_first && q.before_rowid) sql += " AND (ts_ns < ?15 OR (ts_ns = ?15 AND rowid < ?16))";
  if (!q.extra_where.empty()) sql += " AND (" + q.extra_where + ")";
  if (q.newest_first)
    sql += " ORDER BY ts_ns DESC, rowid DESC";
  else
    sql += q.after_rowid || q.by_rowid ? " ORDER BY rowid" : " ORDER BY ts_ns, rowid";
  if (q.limit) sql += " LIMIT " + std::to_string(q.limit);
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("dissection DB query: ") + sqlite3_errmsg(db_));
  if (!q.protocol.empty()) bind_text(st, 1, q.protocol);
  if (q.status && *q.status >= 0) sqlite3_bind_int(st, 2, *q.status);
  if (q.status_class) sqlite3_bind_int(st, 3, q.status_class * 100);
  if (q.from_ns) sqlite3_bind_int64(st, 4, static_cast<sqlite3_int64>(q.from_ns));
  if (q.to_ns) sqlite3_bind_int64(st, 5, static_cast<sqlite3_int64>(q.to_ns));
  if (q.after_rowid) sqlite3_bind_int64(st, 6, q.after_rowid);
  if (id) {
    if (!q.namespace_.empty()) bind_text(st, 7, q.namespace_);
    if (!q.pod_regex.empty()) bind_text(st, 8, q.pod_regex);
    if (!q.service.empty()) bind_text(st, 9, q.service);
    if (!q.process.empty()) bind_text(st, 10, q.process);
    if (!q.node.empty()) bind_text(st, 11, q.node);
  }
  if (!q.id.empty()) bind_text(st, 12, q.id);
  if (!q.method.empty()) bind_text(st, 13, q.method);
  if (!q.path_regex.empty()) bind_text(st, 14, q.path_regex);
  if (q.newest_first && q.before_rowid) {
    sqlite3_bind_int64(st, 15, static_cast<sqlite3_int64>(q.before_ts_ns));
    sqlite3_bind_int64(st, 16, q.before_rowid);
  }
  if (!q.extra_where.empty() && q.bind_extra) {
    try {
      q.bind_extra(st);
    } catch (...) {
      sqlite3_finalize(st);
      throw;
    }
  }
  std::vector<nlohmann::json> out;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    out.push_back(row_json(st));
    if (summaries)
      summaries->push_back({column_string(st, 10), column_string(st, 11),
                            sqlite3_column_type(st, 15) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 15),
                            static_cast<uint64_t>(sqlite3_column_int64(st, 2)), sqlite3_column_int64(st, kRowidColumn)});
    if (last_rowid) *last_rowid = sqlite3_column_int64(st, kRowidColumn);
  }
  std::string err = rc == SQLITE_DONE ? "" : sqlite3_errmsg(db_);
  sqlite3_finalize(st);
  if (!err.empty()) throw std::runtime_error("dissection DB query: " + err);
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

void CallDb::prepare_flow_statements() {
  const char* flow_sql =
      "INSERT INTO flows (id, first_ns, last_ns, protocol, ip_version, client_ip, client_port, server_ip, server_port, "
      "client_namespace, client_pod, client_workload, server_namespace, server_pod, server_workload, state, end_reason, "
      "packets, bytes, retransmissions, rtt_us, node, record, flow_key) "
      "VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24) "
      "ON CONFLICT(id) DO UPDATE SET first_ns=excluded.first_ns, last_ns=excluded.last_ns, "
      "client_namespace=coalesce(excluded.client_namespace, client_namespace), "
      "client_pod=coalesce(excluded.client_pod, client_pod), "
      "client_workload=coalesce(excluded.client_workload, client_workload), "
      "server_namespace=coalesce(excluded.server_namespace, server_namespace), "
      "server_pod=coalesce(excluded.server_pod, server_pod), "
      "server_workload=coalesce(excluded.server_workload, server_workload), state=excluded.state, "
      "end_reason=excluded.end_reason, packets=excluded.packets, bytes=excluded.bytes, "
      "retransmissions=excluded.retransmissions, rtt_us=excluded.rtt_us, node=coalesce(excluded.node, node), "
      "record=excluded.record, flow_key=coalesce(excluded.flow_key, flow_key) "
      "WHERE excluded.last_ns >= flows.last_ns OR excluded.end_reason IS NOT NULL";
  if (sqlite3_prepare_v2(db_, flow_sql, -1, &flow_upsert_, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("dissection DB: ") + sqlite3_errmsg(db_));
  const char* dns_sql =
      "INSERT INTO dns_names (ip, name, first_seen, last_seen, ttl) VALUES (?1, ?2, ?3, ?3, ?4) "
      "ON CONFLICT(ip, name) DO UPDATE SET first_seen=min(first_seen, excluded.first_seen), "
      "last_seen=max(last_seen, excluded.last_seen), "
      "ttl=CASE WHEN excluded.last_seen >= last_seen THEN excluded.ttl ELSE ttl END";
  if (sqlite3_prepare_v2(db_, dns_sql, -1, &dns_upsert_, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("dissection DB: ") + sqlite3_errmsg(db_));
}

void CallDb::upsert_flow(const FlowRow& f) {
  if (!flow_upsert_) throw std::runtime_error("dissection DB: opened read-only");
  begin();
  sqlite3_stmt* st = flow_upsert_;
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  auto text = [&](int i, const std::string& v) {
    if (!v.empty()) bind_static(st, i, v);
  };
  bind_static(st, 1, f.id);
  sqlite3_bind_int64(st, 2, static_cast<sqlite3_int64>(f.first_ns));
  sqlite3_bind_int64(st, 3, static_cast<sqlite3_int64>(f.last_ns));
  bind_static(st, 4, f.protocol);
  sqlite3_bind_int(st, 5, f.ip_version);
  bind_static(st, 6, f.client_ip);
  sqlite3_bind_int(st, 7, f.client_port);
  bind_static(st, 8, f.server_ip);
  sqlite3_bind_int(st, 9, f.server_port);
  text(10, f.client_namespace);
  text(11, f.client_pod);
  text(12, f.client_workload);
  text(13, f.server_namespace);
  text(14, f.server_pod);
  text(15, f.server_workload);
  bind_static(st, 16, f.state);
  text(17, f.end);
  sqlite3_bind_int64(st, 18, static_cast<sqlite3_int64>(f.packets));
  sqlite3_bind_int64(st, 19, static_cast<sqlite3_int64>(f.bytes));
  sqlite3_bind_int64(st, 20, static_cast<sqlite3_int64>(f.retransmissions));
  if (f.rtt_us >= 0) sqlite3_bind_double(st, 21, f.rtt_us);
  text(22, f.node);
  bind_static(st, 23, f.record);
  if (!f.key.empty()) sqlite3_bind_blob(st, 24, f.key.data(), static_cast<int>(f.key.size()), SQLITE_STATIC);
  if (sqlite3_step(st) != SQLITE_DONE)
    throw std::runtime_error(std::string("dissection DB flow upsert: ") + sqlite3_errmsg(db_));
  if (max_size_ && ++since_size_check_ >= 256) {
    since_size_check_ = 0;
    enforce_max_size();
  }
  if (++batch_ >= kBatch && auto_commit_) commit();
}

void CallDb::add_dns_name(const std::string& ip, const std::string& name, uint64_t ts_ns, uint32_t ttl) {
  if (!dns_upsert_) throw std::runtime_error("dissection DB: opened read-only");
  begin();
  sqlite3_stmt* st = dns_upsert_;
  sqlite3_reset(st);
  bind_static(st, 1, ip);
  bind_static(st, 2, name);
  sqlite3_bind_int64(st, 3, static_cast<sqlite3_int64>(ts_ns));
  sqlite3_bind_int64(st, 4, ttl);
  if (sqlite3_step(st) != SQLITE_DONE)
    throw std::runtime_error(std::string("dissection DB dns_names: ") + sqlite3_errmsg(db_));
  if (++batch_ >= kBatch && auto_commit_) commit();
}

uint64_t CallDb::flow_count() { return count_rows("flows"); }

std::vector<CallDb::FlowRow> CallDb::query_flows(uint64_t from_ns, uint64_t to_ns, const std::string& id) {
  std::vector<FlowRow> out;
  if (!flow_tables_) flow_tables_ = has_column("flows", "flow_key");
  if (!flow_tables_) return out;
  std::string sql = "SELECT record, first_ns, last_ns, flow_key FROM flows WHERE 1=1";
  if (from_ns) sql += " AND last_ns >= ?1";
  if (to_ns) sql += " AND first_ns <= ?2";
  if (!id.empty()) sql += " AND id = ?3";
  sql += " ORDER BY first_ns, id";
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("dissection DB query: ") + sqlite3_errmsg(db_));
  if (from_ns) sqlite3_bind_int64(st, 1, static_cast<sqlite3_int64>(from_ns));
  if (to_ns) sqlite3_bind_int64(st, 2, static_cast<sqlite3_int64>(to_ns));
  if (!id.empty()) bind_text(st, 3, id);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    FlowRow f;
    f.record = column_string(st, 0);
    f.first_ns = static_cast<uint64_t>(sqlite3_column_int64(st, 1));
    f.last_ns = static_cast<uint64_t>(sqlite3_column_int64(st, 2));
    if (sqlite3_column_type(st, 3) == SQLITE_BLOB)
      f.key.assign(static_cast<const char*>(sqlite3_column_blob(st, 3)), static_cast<size_t>(sqlite3_column_bytes(st, 3)));
    out.push_back(std::move(f));
  }
  std::string err = rc == SQLITE_DONE ? "" : sqlite3_errmsg(db_);
  sqlite3_finalize(st);
  if (!err.empty()) throw std::runtime_error("dissection DB query: " + err);
  return out;
}

std::vector<CallDb::DnsName> CallDb::dns_names(uint64_t from_ns, uint64_t to_ns) {
  std::vector<DnsName> out;
  if (!flow_tables_) flow_tables_ = has_column("dns_names", "ttl");
  if (!flow_tables_) return out;
  std::string sql = "SELECT ip, name, first_seen, last_seen, ttl FROM dns_names WHERE 1=1";
  if (to_ns) sql += " AND first_seen <= ?1";
  (void)from_ns;  // names learnt before the window still name its flows
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("dissection DB query: ") + sqlite3_errmsg(db_));
  if (to_ns) sqlite3_bind_int64(st, 1, static_cast<sqlite3_int64>(to_ns));
  while (sqlite3_step(st) == SQLITE_ROW)
    out.push_back({column_string(st, 0), column_string(st, 1), static_cast<uint64_t>(sqlite3_column_int64(st, 2)),
                   static_cast<uint64_t>(sqlite3_column_int64(st, 3)), static_cast<uint32_t>(sqlite3_column_int64(st, 4))});
  sqlite3_finalize(st);
  return out;
}

std::vector<CallDb::CallEdge> CallDb::call_edges(uint64_t from_ns, uint64_t to_ns) {
  std::vector<CallEdge> out;
  std::string sql =
      "SELECT src_ip, dst_ip, dst_port, protocol, count(*), "
      "sum(CASE WHEN protocol IN ('http', 'http2') THEN status >= 500 "
      "ELSE coalesce(status, 0) != 0 END "
      "OR ',' || flags || ',' LIKE '%,protocol_error,%' OR ',' || flags || ',' LIKE '%,reset,%' "
      "OR ',' || flags || ',' LIKE '%,timeout,%') "
      "FROM calls WHERE 1=1";
  if (from_ns) sql += " AND ts_ns >= ?1";
  if (to_ns) sql += " AND ts_ns <= ?2";
  sql += " GROUP BY src_ip, dst_ip, dst_port, protocol";
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK)
    throw std::runtime_error(std::string("dissection DB query: ") + sqlite3_errmsg(db_));
  if (from_ns) sqlite3_bind_int64(st, 1, static_cast<sqlite3_int64>(from_ns));
  if (to_ns) sqlite3_bind_int64(st, 2, static_cast<sqlite3_int64>(to_ns));
  while (sqlite3_step(st) == SQLITE_ROW)
    out.push_back({column_string(st, 0), column_string(st, 1), column_string(st, 3), sqlite3_column_int(st, 2),
                   static_cast<uint64_t>(sqlite3_column_int64(st, 4)), static_cast<uint64_t>(sqlite3_column_int64(st, 5))});
  sqlite3_finalize(st);
  return out;
}

}  // namespace tapwire::dissect
