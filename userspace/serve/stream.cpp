// GET stream: new calls of the live DB as Server-Sent Events.
//
// One thread (the hub) reads the DB for everyone: every stream_poll it asks,
// for each client, for the rows added since that client's last one that
// match its filter (by rowid, so a call is sent once, in the order it was
// written), and queues them, as SSE text, for the client's own connection
// thread to send. A client's queue is bounded: one that does not take its
// calls as fast as they come is dropped (told so if it still listens)
// rather than let the queue grow. While anyone listens the hub tells the
// sensor there is activity, as `tapwire tail` does, so that dissection does
// not stop by itself under a watching dashboard.
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "api.hpp"
#include "call_db.hpp"
#include "commands.hpp"

namespace tapwire::serve {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxQueuedEvents = 20000;  // two seconds at 10k calls/s
constexpr size_t kMaxQueuedBytes = 8u << 20;
constexpr size_t kRowsPerPoll = 500;  // per client and poll; the rest at the next one
constexpr int64_t kMaxResumeBehind = 10000;  // Last-Event-ID: at most this many rows back

struct Client {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::string> queue;
  size_t bytes = 0;
  bool dropped = false;  // its queue overflowed
  bool gone = false;  // its connection ended
  // The hub's side (its thread only):
  std::string filter;
  std::shared_ptr<CompiledQuery> compiled;  // for the DB open now
  int64_t after = -1;  // rowid sent last; -1: from the end of the DB when it opens
  bool resumed = false;  // `after` came from Last-Event-ID: checked against the DB once
};

}  // namespace

struct StreamHub::Impl {
  const Ctx& ctx;
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::shared_ptr<Client>> clients;
  bool stopping = false;
  std::thread thread;
  // The hub thread's DB.
  std::unique_ptr<dissect::CallDb> db;
  ino_t ino = 0;

  explicit Impl(const Ctx& c) : ctx(c) {}

  void run() {
    auto last_activity = Clock::now() - std::chrono::hours(1);
    std::unique_lock lock(m);
    while (!stopping) {
      if (clients.empty()) {
        db.reset();  // nobody listens: hold no file open
        cv.wait(lock, [&] { return stopping || !clients.empty(); });
        continue;
      }
      auto snapshot = clients;
      lock.unlock();
      if (Clock::now() - last_activity > std::chrono::seconds(10)) {
        cli::control_call(ctx.control_socket, {{"cmd", "activity"}});
        last_activity = Clock::now();
      }
      poll(snapshot);
      lock.lock();
      cv.wait_for(lock, ctx.o.stream_poll, [&] { return stopping; });
    }
  }

  // (Re)opens the live DB when it appears or is replaced (a new inode:
  // its rowids start again, so every client does too).
  bool open_db() {
    const std::string path = ctx.o.data_dir + "/dissection.db";
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      db.reset();
      return false;
    }
    if (db && st.st_ino == ino) return true;
    const bool replaced = db != nullptr || ino != 0;
    try {
      db = std::make_unique<dissect::CallDb>(path, true);
    } catch (const std::exception&) {
      db.reset();
      return false;
    }
    ino = st.st_ino;
    std::lock_guard lock(m);
    for (auto& c : clients) {
      c->compiled.reset();
      if (replaced) c->after = 0;
    }
    return true;
  }

  void poll(const std::vector<std::shared_ptr<Client>>& cs) {
    if (!open_db()) return;
    // Every row up to here is committed before the queries below start: a
    // client whose query returns less than it may has seen all of them.
    const int64_t max_rowid = db->max_rowid();
    for (auto& c : cs) {
      {
        std::lock_guard cl(c->m);
        if (c->gone || c->dropped) continue;
      }
      if (c->after < 0 || c->after > max_rowid) c->after = c->after < 0 ? max_rowid : std::min(c->after, max_rowid);
      if (c->resumed) {
        c->resumed = false;
        c->after = std::max(c->after, max_rowid - kMaxResumeBehind);
      }
      // Reads until the client is level with max_rowid (kRowsPerPoll at a
      // time): at 10k calls/s a poll finds 2000 new rows, and a client that
      // got a fixed number per poll would fall further behind for ever.
      for (int page = 0; page < 64; page++) {
        {
          std::lock_guard cl(c->m);
          if (c->dropped) break;
        }
        dissect::CallDb::Query q;
        q.after_rowid = c->after;
        q.by_rowid = true;
        q.limit = kRowsPerPoll;
        if (!c->filter.empty()) {
          try {
            if (!c->compiled)
              c->compiled = std::make_shared<CompiledQuery>(
                  compile_filter(db->handle(), c->filter, Target::Calls, dissect::CallDb::kFirstExtraParam));
          } catch (const ApiError&) {
            drop(*c, "the filter does not compile for this DB");
            break;
          }
          q.extra_where = c->compiled->where;
          auto compiled = c->compiled;
          q.bind_extra = [compiled](sqlite3_stmt* st) { bind(st, *compiled); };
        }
        std::vector<dissect::CallDb::Summary> sums;
        std::vector<json> rows;
        try {
          rows = db->query(q, &q.after_rowid, &sums);
        } catch (const std::exception& e) {
          drop(*c, std::string("the filter failed: ") + e.what());
          break;
        }
        // What did not match up to max_rowid need not be read again.
        const bool level = rows.size() < kRowsPerPoll;
        c->after = level ? std::max(q.after_rowid, max_rowid) : q.after_rowid;
        if (!rows.empty()) {
          std::lock_guard cl(c->m);
          for (size_t i = 0; i < rows.size() && !c->dropped; i++) {
            std::string ev = "id: " + std::to_string(sums[i].rowid) + "\nevent: call\ndata: " +
                             with_node(std::move(rows[i]), ctx.o.node).dump(-1, ' ', false,
                                                                            json::error_handler_t::replace) +
                             "\n\n";
            if (c->queue.size() >= kMaxQueuedEvents || c->bytes + ev.size() > kMaxQueuedBytes) {
              c->dropped = true;
              break;
            }
            c->bytes += ev.size();
            c->queue.push_back(std::move(ev));
          }
          c->cv.notify_all();
        }
        if (level || c->after >= max_rowid) break;
      }
    }
  }

  void drop(Client& c, const std::string& why) {
    std::lock_guard cl(c.m);
    c.queue.push_back("event: error\ndata: " + json{{"error", why}}.dump() + "\n\n");
    c.dropped = true;
    c.cv.notify_all();
  }
};

StreamHub::StreamHub(const Ctx& ctx) : impl_(std::make_shared<Impl>(ctx)) {
  impl_->thread = std::thread([impl = impl_] { impl->run(); });
}

StreamHub::~StreamHub() {
  stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void StreamHub::stop() {
  std::vector<std::shared_ptr<Client>> cs;
  {
    std::lock_guard lock(impl_->m);
    impl_->stopping = true;
    cs = impl_->clients;
  }
  impl_->cv.notify_all();
  for (auto& c : cs) c->cv.notify_all();
}

void StreamHub::serve(const httplib::Request& req, httplib::Response& res) {
  auto c = std::make_shared<Client>();
  c->filter = Ctx::param(req, "filter");
  if (const std::string db = Ctx::param(req, "db"); !db.empty() && db != "live")
    throw ApiError(400, "db: the stream follows the live DB only");
  if (!c->filter.empty()) {
    // Checked now, against the newest schema: the client hears of a bad
    // filter as a 400, not as an event.
    try {
      compile(c->filter, CompileOptions{});
    } catch (const QueryError& e) {
      throw ApiError(400, "filter: " + e.message(), e.column());
    }
  }
  // Last-Event-ID: a client that reconnects goes on after the last call it
  // got (within kMaxResumeBehind rows).
  if (const std::string last = req.get_header_value("Last-Event-ID"); !last.empty()) {
    char* end = nullptr;
    const long long v = std::strtoll(last.c_str(), &end, 10);
    if (*end == 0 && v >= 0) {
      c->after = v;
      c->resumed = true;
    }
  }
  {
    std::lock_guard lock(impl_->m);
    if (impl_->stopping) throw ApiError(503, "the server is stopping");
    if (impl_->clients.size() >= impl_->ctx.o.max_stream_clients)
      throw ApiError(503, "too many stream clients (at most " + std::to_string(impl_->ctx.o.max_stream_clients) + ")");
    impl_->clients.push_back(c);
  }
  impl_->cv.notify_all();
  res.set_header("Cache-Control", "no-store");
  res.set_header("X-Accel-Buffering", "no");
  auto impl = impl_;
  const auto heartbeat = impl_->ctx.o.heartbeat;
  res.set_chunked_content_provider(
      "text/event-stream",
      [impl, c, heartbeat, first = true](size_t, httplib::DataSink& sink) mutable {
        auto send = [&](const std::string& s) { return sink.is_writable() && sink.write(s.data(), s.size()); };
        if (first) {
          first = false;
          if (!send(": tapwire stream of node " + impl->ctx.o.node + "\nretry: 2000\n\n")) return false;
        }
        std::unique_lock cl(c->m);
        for (;;) {
          c->cv.wait_for(cl, heartbeat, [&] { return !c->queue.empty() || c->dropped || impl->stopping; });
          if (!c->queue.empty()) {
            std::string batch;
            while (!c->queue.empty()) {
              batch += c->queue.front();
              c->queue.pop_front();
            }
            c->bytes = 0;
            cl.unlock();
            const bool ok = send(batch);
            cl.lock();
            if (!ok) return false;
            continue;
          }
          if (c->dropped) {
            // Told once, if it still takes anything; then closed.
            cl.unlock();
            send("event: dropped\ndata: {\"error\":\"too slow: more than " + std::to_string(kMaxQueuedEvents) +
                 " calls or " + std::to_string(kMaxQueuedBytes >> 20) + " MiB waiting\"}\n\n");
            return false;
          }
          if (impl->stopping) {
            cl.unlock();
            sink.done();
            return true;
          }
          cl.unlock();
          if (!send(": heartbeat\n\n")) return false;
          cl.lock();
        }
      },
      [impl, c](bool) {
        {
          std::lock_guard cl(c->m);
          c->gone = true;
        }
        std::lock_guard lock(impl->m);
        std::erase(impl->clients, c);
      });
}

}  // namespace tapwire::serve
