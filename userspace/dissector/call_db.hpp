// The dissection DB: calls in SQLite, one row per call, the same fields as
// the JSON call record (DESIGN.md). Schema in docs/DISSECTION_DB.md.
// Inserts are batched in transactions. A live dissector that restarts does
// not insert a call twice: it suppresses what its checkpoint says it reported.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "call.hpp"

struct sqlite3;
struct sqlite3_stmt;

namespace tapwire::dissect {

inline constexpr int kCallDbSchemaVersion = 1;

class CallDb {
 public:
  // Opens or creates FILE. Throws std::runtime_error (one line) if it cannot,
  // or if FILE is not a tapwire dissection DB of this schema.
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

  // Key/value metadata kept with the calls (committed with them).
  void set_meta(const std::string& key, const std::string& value);
  std::optional<std::string> meta(const std::string& key);

  struct Query {
    std::string protocol;  // "" = any
    int status = 0;  // exact status (e.g. 404), 0 = any
    int status_class = 0;  // 5 for 5xx, 0 = any
    uint64_t from_ns = 0, to_ns = 0;  // 0 = unbounded
    size_t limit = 0;  // 0 = all
    int64_t after_rowid = 0;  // only rows added after this one, in insertion order (tail)
    bool by_rowid = false;  // insertion order instead of time order
  };
  // Calls as call-record JSON objects, oldest first; `last_rowid`, if given,
  // gets the rowid of the last one returned.
  std::vector<nlohmann::json> query(const Query& q, int64_t* last_rowid = nullptr);
  uint64_t count();
  int64_t max_rowid();  // the last row added (0 if none)

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* insert_ = nullptr;
  bool in_tx_ = false;
  bool auto_commit_ = true;
  size_t batch_ = 0;
  uint64_t inserted_ = 0;
  std::string scratch_;
  static nlohmann::json row_json(sqlite3_stmt* st);
  void exec(const char* sql);
  void begin();
};

}  // namespace tapwire::dissect
