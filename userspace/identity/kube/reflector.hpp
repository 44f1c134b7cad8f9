// One resource's list + watch loop, as client-go's reflector: list in pages,
// watch from the list's resourceVersion with bookmarks and a server-side
// timeout, watch again from the last version seen, relist only on 410 Gone,
// back off (jittered, 1 s doubling to 60 s) on every other failure.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "credentials.hpp"
#include "http.hpp"
#include "kube_backoff.hpp"
#include "kube_objectset.hpp"
#include "kube_owners.hpp"
#include "output.hpp"

namespace tapwire::kube_watch {

struct Options {
  std::chrono::seconds watch_timeout{300};  // timeoutSeconds of every watch
  std::chrono::milliseconds idle_timeout{330000};  // a watch silent this long is dropped
  double backoff_scale = 1.0;
  int page_size = 500;
  // Pods wait this long at most for the first list of ReplicaSets and Jobs,
  // so that their owners are known when they are first reported.
  std::chrono::milliseconds owners_wait{30000};
};

// What the reflector threads share.
class Shared {
 public:
  Shared(Output& out, const Credentials& creds, TokenSource& tokens, Options opts, bool replicasets, bool jobs)
      : out(out), creds(creds), tokens(tokens), opts(opts), owners(replicasets, jobs) {}

  Output& out;
  const Credentials& creds;
  TokenSource& tokens;
  const Options opts;
  std::atomic<bool> stop{false};

  void request_stop();
  // Sleeps; false when the watcher is stopping.
  bool sleep_for(std::chrono::milliseconds d);
  // The first list of r was tried (whether it worked or not).
  void mark_listed(k::Resource r);
  void wait_listed(k::Resource r, std::chrono::milliseconds max);

  std::mutex owners_mu;  // taken before Output's lock, never after
  k::OwnerIndex owners;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::array<bool, 6> listed_{};
};

class Reflector {
 public:
  // wait_for: resources whose first list this one waits for (pods: the
  // watched ones of replicasets and jobs).
  Reflector(k::Resource r, Shared& s, std::vector<k::Resource> wait_for);
  void run();

 private:
  enum class End { Closed, Gone, Failed, Stopped };
  struct WatchResult {
    End end = End::Closed;
    std::string error;
    bool had_events = false;
    bool relist = false;  // the failure lost an event: only a relist recovers it
    bool dropped = false;  // a working watch's connection just ended (no error of the server's)
  };
  // nullopt: listed; else the error. stopped is set when interrupted.
  // forced: a watch failure made this relist necessary.
  std::optional<std::string> list(bool& stopped, bool forced);
  WatchResult watch();
  bool handle_line(std::string_view line, std::string& error, bool& gone);
  void upsert(const k::Json& obj);
  void remove(const k::Json& obj);
  void vanished(const k::ObjectRef& ref);
  void failed(const char* what, const std::string& error);
  void recovered(const std::string& how);
  std::string path() const { return std::string(info_.path); }

  k::Resource r_;
  const k::ResourceInfo& info_;
  Shared& s_;
  std::vector<k::Resource> wait_for_;
  HttpClient http_;
  k::ObjectSet objects_;
  k::Backoff backoff_;
  std::string rv_;
  bool listed_once_ = false;
  std::string lost_;  // the error while lost; "" while synced
  int gone_in_row_ = 0;  // 410s without a working watch in between
  bool quiet_retry_used_ = false;  // the one silent re-watch after a dropped connection
};

}  // namespace tapwire::kube_watch
