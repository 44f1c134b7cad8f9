// The dissection DB: calls in SQLite, one row per call, the same fields as
// the JSON call record (DESIGN.md). Schema in docs/DISSECTION_DB.md.
// Inserts are batched in transactions. A live dissector that restarts does
// not insert a call twice: it suppresses what its checkpoint says it reported.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "call.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace tapwire::dissect {

// 2: identity columns (node, src_*/dst_* pid, process, ... node).
// 3: bodies (req_/resp_ body, body_encoding, content_encoding,
// body_decoded_size). A version-1 or -2 DB opened for writing is migrated in
// place; read-only, it reads as calls without what it lacks.
// 4: every protocol's request and response as record JSON (request,
// response, upgrade_id); method, path and status become every protocol's
// summary columns.
inline constexpr int kCallDbSchemaVersion = 4;

struct RegexCache;

class CallDb {
 public:
  // Opens or creates FILE. Throws std::runtime_error (one line) if it cannot,
  // or if FILE is not a tapwire dissection DB of this schema (or of schema 1,
  // which it migrates when writing).
  explicit CallDb(const std::string& path, bool read_only = false, bool bulk = false);
  ~CallDb();  // commits
  CallDb(const CallDb&) = delete;
  CallDb& operator=(const CallDb&) = delete;

  void insert(const Call& c);
  // Off: insert() never commits by itself; commit() alone ends transactions
  // (live dissection commits calls together with the checkpoint that covers
  // them). On by default: a transaction every 16384 calls.
  void set_auto_commit(bool on) { auto_commit_ = on; }
  // Commits the open transaction (called every batch and at exit).
  void commit();
  uint64_t inserted() const { return inserted_; }

  // tap.capture.dbMaxSize: every few hundred inserts and at each commit, if
  // the calls take more than
  // `bytes` of the file, the oldest are deleted (in insertion order) until
  // they take at most 90% of it; SQLite reuses the freed pages, so the file
  // stops growing near `bytes`. 0: no bound.
  // The write-ahead log is checkpointed and cut back to 1/16 of the bound.
  void set_max_size(uint64_t bytes);
  struct SizeStats {
    uint64_t bytes = 0;  // pages in use (file pages minus free ones)
    uint64_t file_bytes = 0;  // the file's pages, free ones included
    uint64_t max_bytes = 0;
    uint64_t calls_deleted = 0;  // to stay within max_bytes, over the DB's life
    uint64_t flows_deleted = 0;
  };
  SizeStats size_stats();

  // Key/value metadata kept with the calls (committed with them).
  void set_meta(const std::string& key, const std::string& value);
  std::optional<std::string> meta(const std::string& key);

  struct Query {
    std::string protocol;  // "" = any
    // The summary columns every protocol fills (docs/CALL_RECORD.md).
    std::optional<int> status;  // exact status (404; -1: no response), none = any
    int status_class = 0;  // 5 for 5xx, 0 = any
    std::string method;  // exact method, case-insensitive, "" = any
    std::string path_regex;  // POSIX extended regex, unanchored, on the path, "" = any
    uint64_t from_ns = 0, to_ns = 0;  // 0 = unbounded
    size_t limit = 0;  // 0 = all
    int64_t after_rowid = 0;  // only rows added after this one, in insertion order (tail)
    bool by_rowid = false;  // insertion order instead of time order
    // Newest first (ts_ns, then rowid, descending), and with `before_rowid`
    // only the rows after (before_ts_ns, before_rowid) in that order: a
    // cursor for paging back in time that stays put while calls are added
    // (tapwire serve).
    bool newest_first = false;
    uint64_t before_ts_ns = 0;
    int64_t before_rowid = 0;  // 0: no cursor
    // Identity (docs/IDENTITY.md), "" = any. Each matches either end.
    std::string namespace_;  // exact namespace
    std::string pod_regex;  // POSIX extended regex, unanchored, on the pod name
    std::string service;  // exact service name
    std::string process;  // exact process name (comm)
    std::string node;  // exact node name: the capturing node or either end's
    std::string id;  // exact call id (16 hex digits), "" = any (a scan: the id is not indexed)
    // A condition of the caller's own, ANDed with the others: SQL over the
    // calls columns (tapwire calls --filter: the query language,
    // userspace/serve/query.hpp), whose parameters are ?kFirstExtraParam
    // on, bound by bind_extra.
    std::string extra_where;
    std::function<void(sqlite3_stmt*)> bind_extra;
  };
  // The first parameter number extra_where may use: query() binds those
  // below it.
  static constexpr int kFirstExtraParam = 101;
  // Calls as call-record JSON objects, oldest first; `last_rowid`, if given,
  // gets the rowid of the last one returned. Throws std::invalid_argument if
  // q.pod_regex does not compile.
  // `summaries`, if given, gets each call's summary columns, in the same order.
  struct Summary {
    std::string method, path;
    int status = -1;
    uint64_t ts_ns = 0;  // the row's request time and rowid (a cursor)
    int64_t rowid = 0;
  };
  std::vector<nlohmann::json> query(const Query& q, int64_t* last_rowid = nullptr,
                                    std::vector<Summary>* summaries = nullptr);
  // Why `pattern` is not a regex the pod filter accepts ("" if it is).
  static std::string regex_error(const std::string& pattern);
  uint64_t count();
  int64_t max_rowid();  // the last row added (0 if none)
  // The connection, for a caller that adds SQL functions its extra_where
  // uses (serve::register_functions) or looks at the schema.
  sqlite3* handle() { return db_; }

  // Flows (docs/FLOWS.md, docs/DISSECTION_DB.md): one row per flow id,
  // replaced by each newer record of the flow (upsert by id). Deleted with
  // the calls when the DB is bounded (set_max_size), oldest first_seen first.
  struct FlowRow {
    std::string id, protocol, state, end, node;
    uint64_t first_ns = 0, last_ns = 0;
    int ip_version = 4;
    std::string client_ip, server_ip;
    int client_port = 0, server_port = 0;
    std::string client_namespace, client_pod, client_workload;
    std::string server_namespace, server_pod, server_workload;
    uint64_t packets = 0, bytes = 0, retransmissions = 0;
    double rtt_us = -1;  // < 0: unknown
    std::string record;  // the flow record, JSON text
    std::string key;  // the flow's tw_flow_key, 40 bytes ("" if unknown)
  };
  void upsert_flow(const FlowRow& f);
  // Flows active in [from_ns, to_ns] (0 = unbounded), by first_ns; only
  // record, first_ns, last_ns and key are filled. Empty for a DB without the
  // flows table (written before flows existed).
  std::vector<FlowRow> query_flows(uint64_t from_ns, uint64_t to_ns, const std::string& id = "");
  uint64_t flow_count();

  // Passive DNS: one row per (ip, name), first and last answer time.
  void add_dns_name(const std::string& ip, const std::string& name, uint64_t ts_ns, uint32_t ttl);
  struct DnsName {
    std::string ip, name;
    uint64_t first_seen = 0, last_seen = 0;
    uint32_t ttl = 0;
  };
  // Names whose answers overlap [from_ns, to_ns] (0 = unbounded), and those
  // last answered before from_ns (a flow may use a name it learnt earlier).
  std::vector<DnsName> dns_names(uint64_t from_ns, uint64_t to_ns);

  // Calls between two ends, for the map: per (client ip, server ip, server
  // port, protocol) the calls and the errors among them (HTTP status >= 500;
  // any other protocol's status other than 0 (gRPC status, DNS rcode, ...);
  // the flags protocol_error, reset, timeout).
  struct CallEdge {
    std::string client_ip, server_ip, protocol;
    int server_port = 0;
    uint64_t calls = 0, errors = 0;
  };
  std::vector<CallEdge> call_edges(uint64_t from_ns, uint64_t to_ns);

 private:
  uint64_t count_rows(const char* table);  // a table of this DB's own schema
  sqlite3* db_ = nullptr;
  // Two insert statements: one for calls with endpoint identity, which
  // binds the identity columns, one without them (NULL by default), which
  // spares binding and clearing them. Index: 1 for identity.
  sqlite3_stmt* insert_[2] = {};
  sqlite3_stmt* flow_upsert_ = nullptr;
  sqlite3_stmt* dns_upsert_ = nullptr;
  bool flow_tables_ = true;  // false for a DB read-only without them
  void prepare_flow_statements();
  uint64_t max_size_ = 0;
  uint64_t calls_deleted_ = 0;
  uint32_t since_size_check_ = 0;
  uint64_t body_bytes_since_check_ = 0;
  bool calls_deleted_loaded_ = false;
  uint64_t flows_deleted_ = 0;
  bool flows_deleted_loaded_ = false;
  void enforce_max_size();
  int64_t pragma_int(const char* sql);
  bool in_tx_ = false;
  bool auto_commit_ = true;
  size_t batch_ = 0;
  uint64_t inserted_ = 0;
  std::string req_json_, resp_json_;  // the record objects of the call being inserted
  // False for a version-1 DB opened read-only: identity reads as unknown
  // (checked again at each query, in case a writer migrates it meanwhile).
  bool identity_columns_ = true;
  bool body_columns_ = true;  // the same for a version-1 or -2 DB and the body columns
  bool record_columns_ = true;  // and for a DB before 4 and the record columns
  std::unique_ptr<RegexCache> regex_cache_;  // compiled pod regexes, for the SQL regexp()
  static nlohmann::json row_json(sqlite3_stmt* st);
  void exec(const char* sql);
  void exec(const std::string& sql) { exec(sql.c_str()); }
  void begin();
  bool has_column(const char* table, const char* column);
  void create_or_migrate(const std::string& path);
};

}  // namespace tapwire::dissect
