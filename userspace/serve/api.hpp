// Inside tapwire serve: what the route files share. Each file adds its
// routes to the httplib server (add_*_routes) and answers through these
// helpers, so that every answer is JSON with the node's name and every
// error is {"error", "column"?} with its HTTP status.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "query.hpp"
#include "server.hpp"

namespace tapwire::dissect {
class CallDb;
}

namespace tapwire::serve {

// An answer other than 200, thrown by handlers and written by the server's
// exception handler. column: the query's column for a bad filter (0: none).
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, size_t column = 0)
      : std::runtime_error(message), status(status), column(column) {}
  int status;
  size_t column;
};

inline constexpr size_t kMaxLimit = 10000;
inline constexpr size_t kDefaultLimit = 100;
inline constexpr size_t kMaxBodyBytes = 64 * 1024;  // a request body (POST)

class Jobs;
class StreamHub;

// What every handler can reach.
struct Ctx {
  ServeOptions o;
  std::string control_socket;  // resolved
  std::unique_ptr<Jobs> jobs;
  std::unique_ptr<StreamHub> hub;
  ~Ctx();

  // 200 with `j` (an object), after adding "node" when it has none.
  void reply(httplib::Response& res, nlohmann::json j, int status = 200) const;
  // A request parameter, or "" (or `def`).
  static std::string param(const httplib::Request& req, const char* name, const std::string& def = "");
  // limit: default kDefaultLimit, at most kMaxLimit; 400 otherwise.
  static size_t limit_param(const httplib::Request& req, size_t def = kDefaultLimit);
  // A time parameter (RFC 3339, Unix seconds, -5m, now) as ns; nullopt when absent. 400 when bad.
  static std::optional<uint64_t> time_param(const httplib::Request& req, const char* name);
  // The request body as a JSON object ({} when empty); 400 / 415 otherwise.
  static nlohmann::json body_json(const httplib::Request& req);

  // The path of a DB named by a `db` parameter: "live" (or "") is
  // DATA_DIR/dissection.db, "SNAPSHOT/DISSECTION" a delayed dissection's DB
  // in DATA_DIR/snapshots/SNAPSHOT/dissections/. Every part is checked
  // (valid_name), and the result, resolved, must lie under DATA_DIR: 400
  // for a bad name, 404 for a DB that is not there.
  std::string db_path(const std::string& db) const;
  // Opens it read-only; 404 / 503 when it cannot.
  std::unique_ptr<dissect::CallDb> open_db(const std::string& db) const;
  // DATA_DIR/snapshots/NAME after checking NAME (400) and that it exists (404).
  std::string snapshot_dir(const std::string& name) const;
  // One request on the sensor's control socket; 503 when it cannot be reached.
  nlohmann::json control(const nlohmann::json& request) const;
};

// The node's record: each call record gets "node" when it has none.
nlohmann::json with_node(nlohmann::json record, const std::string& node);
// The query language (query.hpp) compiled for the DB `db` (its schema) and
// `target`, parameters from `first_param` on; 400 with the column when the
// text does not parse or compile. Registers tw_regexp on db.
CompiledQuery compile_filter(sqlite3* db, const std::string& text, Target target, int first_param);

void add_call_routes(httplib::Server& s, Ctx& ctx);  // calls, calls/{id}, stats, stream
void add_view_routes(httplib::Server& s, Ctx& ctx);  // flows, map, workloads, ips, boundaries
void add_snapshot_routes(httplib::Server& s, Ctx& ctx);  // snapshots, pcap, dissections; dissection switch
void add_mcp_routes(httplib::Server& s, Ctx& ctx);  // POST/GET/DELETE /mcp (mcp.cpp)

// ---- the answers, as functions --------------------------------------------
// Each route's answer without the HTTP around it: the routes reply with
// these, and the MCP tools (mcp.cpp) return them, so that both give the same
// data and the same errors (ApiError) for the same parameters.

// The parameters of a request by name: an HTTP request's query string, or an
// MCP tool's arguments. Read through Ctx's helpers, so that every rule (a
// name given twice, limit's bounds, the forms of a time) is the HTTP API's.
class Params {
 public:
  Params() = default;
  explicit Params(const httplib::Request& req) { req_.params = req.params; }
  Params& set(const std::string& name, const std::string& value) {
    req_.params.emplace(name, value);
    return *this;
  }
  std::string get(const char* name, const std::string& def = "") const { return Ctx::param(req_, name, def); }
  size_t limit(size_t def = kDefaultLimit) const { return Ctx::limit_param(req_, def); }
  std::optional<uint64_t> time(const char* name) const { return Ctx::time_param(req_, name); }

 private:
  httplib::Request req_;
};

// GET calls: {db, calls, next_cursor} (filter, limit, format, start, end, cursor, db).
nlohmann::json calls_json(const Ctx& ctx, const Params& p);
// GET calls/{id}: {db, call}; 400 for an id that is not 16 hex digits, 404 when absent.
nlohmann::json call_json(const Ctx& ctx, std::string id, const Params& p);
// GET stats: {db, group_by, groups, truncated, total} (filter, group_by, limit, start, end, db).
nlohmann::json stats_json(const Ctx& ctx, const Params& p);
// GET flows: {flows, matched, truncated} (filter, sort, limit, start, end, db, snapshot).
nlohmann::json flows_json(const Ctx& ctx, const Params& p);
// GET map: {level, nodes, edges} (level, namespace, start, end, db, snapshot).
nlohmann::json service_map_json(const Ctx& ctx, const Params& p);
// GET workloads and ips: the identity stream at `at` (snapshot, at).
nlohmann::json identity_json(const Ctx& ctx, const Params& p, bool ips);
// GET boundaries: what each stream and DB holds.
nlohmann::json boundaries_json(const Ctx& ctx);
// GET snapshots: {snapshots}; GET snapshots/{name}: {snapshot}.
nlohmann::json snapshots_json(const Ctx& ctx);
nlohmann::json snapshot_json(const Ctx& ctx, const std::string& name);
// POST snapshots (body: name, start, end, interfaces): {snapshot}.
nlohmann::json create_snapshot(const Ctx& ctx, const nlohmann::json& body);
// DELETE snapshots/{name}: {deleted}; 403 unless destructive operations are allowed.
nlohmann::json delete_snapshot(const Ctx& ctx, const std::string& name);
// The pcapng of a snapshot (start, end, flow) as GET snapshots/{name}/pcap
// sends it, written instead into the snapshot's dissections/exports/ (not
// part of the snapshot, as dissections are not): {snapshot, path, bytes, packets}.
nlohmann::json write_snapshot_pcap(const Ctx& ctx, const std::string& name, const Params& p);
// GET dissection, POST dissection/enable|disable: {dissection} from the sensor.
nlohmann::json dissection_switch(const Ctx& ctx, const std::string& action);
void add_static_routes(httplib::Server& s, Ctx& ctx);  // the dashboard's files at / (o.ui_dir)

// ---- delayed dissections (jobs.cpp) ----------------------------------------

class Jobs {
 public:
  explicit Jobs(const Ctx& ctx);
  ~Jobs();  // cancels what runs
  // Starts `tapwire dissect` on a snapshot into its dissections/ID.db.
  // 429 when max_jobs run, 409 when the id exists.
  nlohmann::json start(const std::string& snapshot, const nlohmann::json& body);
  nlohmann::json list(const std::string& snapshot);
  nlohmann::json get(const std::string& snapshot, const std::string& id);  // 404
  // Cancels a running one; removes a finished one (403 unless destructive operations are allowed).
  nlohmann::json remove(const std::string& snapshot, const std::string& id);
  bool running_on(const std::string& snapshot);
  // The snapshot's dissections/ directory (made if need be: the snapshot's
  // own directory is read-only), where results derived from it go.
  std::string results_dir(const std::string& snapshot);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- the live stream (stream.cpp) ------------------------------------------

class StreamHub {
 public:
  explicit StreamHub(const Ctx& ctx);
  ~StreamHub();
  // Serves one GET stream request (text/event-stream), or throws ApiError
  // (503 beyond max_stream_clients, 400 for a bad filter).
  void serve(const httplib::Request& req, httplib::Response& res);
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tapwire::serve
