// The dissection DB: calls in SQLite, one row per call, the same fields as
// the JSON call record (DESIGN.md). Schema in docs/DISSECTION_DB.md.
// Inserts are batched in transactions; a call already present (same id) is
// ignored, so re-dissecting the same traffic never counts a call twice.
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
  explicit CallDb(const std::string& path, bool read_only = false);
  ~CallDb();  // commits
  CallDb(const CallDb&) = delete;
  CallDb& operator=(const CallDb&) = delete;

  void insert(const Call& c);
  // Commits the open transaction (called every batch and at exit).
  void commit();
  uint64_t inserted() const { return inserted_; }
  uint64_t duplicates() const { return duplicates_; }

  // Key/value metadata kept with the calls (committed with them).
  void set_meta(const std::string& key, const std::string& value);
  std::optional<std::string> meta(const std::string& key);

  struct Query {
    std::string protocol;  // "" = any
    int status = 0;  // exact status (e.g. 404), 0 = any
    int status_class = 0;  // 5 for 5xx, 0 = any
    uint64_t from_ns = 0, to_ns = 0;  // 0 = unbounded
    size_t limit = 0;  // 0 = all
  };
  // Calls as call-record JSON objects, oldest first.
  std::vector<nlohmann::json> query(const Query& q);
  uint64_t count();

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* insert_ = nullptr;
  bool in_tx_ = false;
  size_t batch_ = 0;
  uint64_t inserted_ = 0, duplicates_ = 0;
  void exec(const char* sql);
  void begin();
};

}  // namespace tapwire::dissect
