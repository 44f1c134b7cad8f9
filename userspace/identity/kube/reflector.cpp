#include "reflector.hpp"

#include <cstdio>

#include "kube_parse.hpp"
#include "log.hpp"

namespace tapwire::kube_watch {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// A watch that stays up this long without an error counts as recovered,
// even if the server had nothing to send yet.
constexpr milliseconds kHealthyAfter{2000};
// Lists never wait longer than this for the next byte.
constexpr milliseconds kListStall{60000};

std::string seconds(milliseconds d) {
  char buf[32];
  if (d.count() >= 10000 || d.count() % 1000 == 0)
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>((d.count() + 500) / 1000));
  else
    std::snprintf(buf, sizeof buf, "%.2gs", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

std::string resource_version_of(const k::Json& obj) {
  auto m = obj.find("metadata");
  if (m == obj.end() || !m->is_object()) return {};
  auto rv = m->find("resourceVersion");
  if (rv == m->end() || !rv->is_string() || rv->get_ref<const std::string&>().size() > k::kMaxResourceVersion)
    return {};  // an unusable version is not followed: the last good one stays
  return rv->get<std::string>();
}

}  // namespace

void Shared::request_stop() {
  {
    std::lock_guard lk(mu_);
    stop = true;
  }
  cv_.notify_all();
}

bool Shared::sleep_for(milliseconds d) {
  std::unique_lock lk(mu_);
  return !cv_.wait_for(lk, d, [&] { return stop.load(); });
}

void Shared::mark_listed(k::Resource r) {
  {
    std::lock_guard lk(mu_);
    listed_[static_cast<size_t>(r)] = true;
  }
  cv_.notify_all();
}

void Shared::wait_listed(k::Resource r, milliseconds max) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, max, [&] { return stop.load() || listed_[static_cast<size_t>(r)]; });
}

Reflector::Reflector(k::Resource r, Shared& s, std::vector<k::Resource> wait_for)
    : r_(r),
      info_(k::info(r)),
      s_(s),
      wait_for_(std::move(wait_for)),
      http_(s.creds, s.tokens, s.stop),
      backoff_(s.opts.backoff_scale) {}

void Reflector::failed(const char* what, const std::string& error) {
  auto delay = backoff_.next();
  if (error != lost_) {  // one frame and one line per state change, not per retry
    s_.out.write(k::sync_object(r_, false, error));
    log_line(std::string(info_.name) + ": " + what + " failed: " + error + "; retrying in " + seconds(delay));
    lost_ = error;
  }
  s_.sleep_for(delay);
}

void Reflector::recovered(const std::string& how) {
  if (lost_.empty()) return;
  s_.out.write(k::sync_object(r_, true));
  log_line(std::string(info_.name) + ": " + how + "; synced");
  lost_.clear();
  backoff_.reset();
}

namespace {
// Kept per object until it is deleted: an object without a usable uid and
// name (or with oversized ones, which no API server sends) is left out.
bool usable(const k::ObjectRef& ref) {
  return !ref.uid.empty() && !ref.name.empty() && ref.uid.size() <= k::kMaxName && ref.name.size() <= k::kMaxName &&
         ref.namespace_.size() <= k::kMaxName;
}
}  // namespace

void Reflector::upsert(const k::Json& obj) {
  k::ObjectRef ref = k::object_ref(obj);
  k::Counters n;
  if (!usable(ref)) {
    n.invalid++;
    s_.out.add(n);
    return;
  }
  switch (r_) {
    case k::Resource::Pods: {
      std::lock_guard lk(s_.owners_mu);
      auto res = s_.owners.resolve(obj);
      k::OJson frame = k::normalize_pod(obj, res.owner, n);
      if (res.waiting_for.empty()) {
        s_.owners.forget(ref.uid);
      } else if (auto via = k::controller_of(obj)) {
        s_.owners.wait(ref.uid, res.waiting_for, *via, frame, Clock::now());
      }
      s_.out.write(frame);
      break;
    }
    case k::Resource::Services: s_.out.write(k::normalize_service(obj, n)); break;
    case k::Resource::EndpointSlices: s_.out.write(k::normalize_endpointslice(obj, n)); break;
    case k::Resource::Nodes: s_.out.write(k::normalize_node(obj, n)); break;
    case k::Resource::ReplicaSets:
    case k::Resource::Jobs: {
      auto ctl = k::controller_of(obj);
      std::lock_guard lk(s_.owners_mu);
      s_.owners.put(ref.uid, ctl ? std::optional<k::Owner>(k::Owner{ctl->kind, ctl->name}) : std::nullopt);
      for (const auto& frame : s_.owners.settle(ref.uid)) s_.out.write(frame);
      break;
    }
  }
  s_.out.add(n);
  objects_.put(ref);
  s_.out.set_objects(r_, objects_.size());
}

void Reflector::vanished(const k::ObjectRef& ref) {
  if (r_ == k::Resource::ReplicaSets || r_ == k::Resource::Jobs) {
    std::lock_guard lk(s_.owners_mu);
    s_.owners.erase(ref.uid);
    return;
  }
  if (r_ == k::Resource::Pods) {
    std::lock_guard lk(s_.owners_mu);
    s_.owners.forget(ref.uid);
  }
  s_.out.write(k::delete_object(r_, ref));
}

void Reflector::remove(const k::Json& obj) {
  k::ObjectRef ref = k::object_ref(obj);
  if (ref.uid.empty() || ref.uid.size() > k::kMaxName) {
    k::Counters n;
    n.invalid++;
    s_.out.add(n);
    return;
  }
  if (auto known = objects_.erase(ref.uid)) {
    if (ref.name.empty()) ref = *known;
  }
  vanished(ref);
  s_.out.set_objects(r_, objects_.size());
}

std::optional<std::string> Reflector::list(bool& stopped, bool forced) {
  if (listed_once_) s_.out.count_relist();
  objects_.begin_list();
  std::string body, cont, rv, page_error;
  const milliseconds stall = std::min(s_.opts.idle_timeout, kListStall);
  do {
    std::string q = path() + "?limit=" + std::to_string(s_.opts.page_size);
    if (!cont.empty()) q += "&continue=" + http_.escape(cont);
    body.clear();
    HttpHooks hooks;
    hooks.on_data = [&](std::string_view d) {
      if (body.size() + d.size() > k::kMaxListPage) {
        page_error = "a list page is larger than 64 MiB; lower --page-size";
        return false;
      }
      body.append(d);
      return true;
    };
    s_.out.count_request(r_, false);
    HttpResult res = http_.get(q, stall, hooks);
    if (res.stopped) {
      stopped = true;
      return std::string("stopping");
    }
    if (!page_error.empty()) return page_error;
    if (res.stalled) return "no answer for " + seconds(stall) + " to a list request; is the API server overloaded?";
    if (res.code != CURLE_OK) return http_.describe(res);
    if (res.status != 200) return k::describe_http_error(res.status, res.error_body, info_.name);
    try {
      auto page = k::parse_list_page(body, [&](k::Json& item) { upsert(item); });
      cont = page.continue_token;
      rv = page.resource_version;
    } catch (const k::ParseError& e) {
      return std::string(e.what());
    }
  } while (!cont.empty());
  std::string().swap(body);  // a big page's buffer is not kept between lists
  objects_.sweep([&](const k::ObjectRef& ref) { vanished(ref); });
  s_.out.set_objects(r_, objects_.size());
  rv_ = rv;
  bool was_listed = listed_once_;
  listed_once_ = true;
  // A relist that a failing watch forced proves nothing until a watch works
  // again (recovered()): declaring it synced would flap with every retry.
  if (forced && !lost_.empty()) return std::nullopt;
  s_.out.write(k::sync_object(r_, true));
  if (!lost_.empty() || !was_listed || gone_in_row_ > 0)
    log_line(std::string(info_.name) + ": " + (was_listed ? "relisted " : "listed ") +
             std::to_string(objects_.size()) + " objects at resourceVersion " + rv_ + "; synced");
  lost_.clear();
  return std::nullopt;
}

bool Reflector::handle_line(std::string_view line, std::string& error, bool& gone) {
  if (line.find_first_not_of(" \t\r") == std::string_view::npos) return true;
  k::WatchEvent ev;
  try {
    ev = k::parse_watch_event(line);
  } catch (const k::ParseError& e) {
    error = e.what();
    return false;
  }
  if (ev.type == "ERROR") {
    auto st = k::status_of(ev.object);
    if (st && st->code == 410) {
      gone = true;
      return false;
    }
    error = "the server ended the watch with an error: " +
            (st ? "HTTP " + std::to_string(st->code) + " " + k::printable(st->reason, 60) + ": " +
                      k::printable(st->message, 200)
                : std::string("(not a Status object)"));
    return false;
  }
  std::string rv = resource_version_of(ev.object);
  if (ev.type == "ADDED" || ev.type == "MODIFIED") {
    upsert(ev.object);
    s_.out.count_event();
  } else if (ev.type == "DELETED") {
    remove(ev.object);
    s_.out.count_event();
  } else if (ev.type == "BOOKMARK") {
    s_.out.count_bookmark();
  } else {
    error = "unknown watch event type \"" + k::printable(ev.type, 40) + "\"";
    return false;
  }
  if (!rv.empty()) rv_ = std::move(rv);  // bookmarks included: the next watch starts here
  gone_in_row_ = 0;
  quiet_retry_used_ = false;
  return true;
}

Reflector::WatchResult Reflector::watch() {
  WatchResult w;
  std::string q = path() + "?allowWatchBookmarks=true&resourceVersion=" + http_.escape(rv_) +
                  "&timeoutSeconds=" + std::to_string(s_.opts.watch_timeout.count()) + "&watch=true";
  std::string line;
  bool gone = false;
  bool established = false;
  Clock::time_point established_at;
  const std::string from = rv_;
  HttpHooks hooks;
  hooks.on_headers = [&](long status) {
    if (status == 200) {
      established = true;
      established_at = Clock::now();
    }
  };
  hooks.on_tick = [&] {
    if (established && !lost_.empty() && Clock::now() - established_at >= kHealthyAfter)
      recovered("watch resumed from resourceVersion " + from);
  };
  hooks.on_data = [&](std::string_view d) {
    while (!d.empty()) {
      auto nl = d.find('\n');
      std::string_view piece = d.substr(0, nl);
      if (line.size() + piece.size() > k::kMaxWatchLine) {
        w.error = "a watch event is larger than 4 MiB; relisting";
        w.relist = true;
        return false;
      }
      line.append(piece);
      if (nl == std::string_view::npos) break;
      d.remove_prefix(nl + 1);
      bool ok = handle_line(line, w.error, gone);
      if (ok) {
        w.had_events = true;
        if (!lost_.empty()) recovered("watch resumed from resourceVersion " + from);
      }
      line.clear();
      if (line.capacity() > (1u << 20)) std::string().swap(line);  // after a big event
      if (!ok) return false;
    }
    return true;
  };
  s_.out.count_request(r_, true);
  HttpResult res = http_.get(q, s_.opts.idle_timeout, hooks);
  w.end = End::Failed;
  if (res.stopped) {
    w.end = End::Stopped;
    return w;
  }
  if (gone || res.status == 410) {
    w.end = End::Gone;
    return w;
  }
  if (!w.error.empty()) return w;
  if (res.stalled) {
    w.error = "nothing arrived on the watch for " + seconds(s_.opts.idle_timeout) +
              " (not even a bookmark; --idle-timeout): dropped it";
    return w;
  }
  bool mid_event = line.find_first_not_of(" \t\r") != std::string::npos;
  if (res.code != CURLE_OK) {
    if (mid_event) {
      w.error = "the watch stream was cut in the middle of an event (" + std::to_string(line.size()) +
                " bytes of it)";
    } else {
      w.error = http_.describe(res);
      w.dropped = established && (res.code == CURLE_PARTIAL_FILE || res.code == CURLE_RECV_ERROR ||
                                  res.code == CURLE_GOT_NOTHING || res.code == CURLE_SEND_ERROR);
    }
    return w;
  }
  if (res.status != 200) {
    w.error = k::describe_http_error(res.status, res.error_body, info_.name);
    return w;
  }
  if (mid_event) {
    w.error = "the watch stream ended in the middle of an event (" + std::to_string(line.size()) + " bytes of it)";
    return w;
  }
  w.end = End::Closed;
  return w;
}

void Reflector::run() {
  // Owners first, so that pods are reported with them from the start.
  auto deadline = Clock::now() + s_.opts.owners_wait;
  for (auto dep : wait_for_) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (left.count() > 0) s_.wait_listed(dep, left);
  }
  bool need_list = true, forced = false;
  while (!s_.stop) {
    if (need_list) {
      bool stopped = false;
      auto err = list(stopped, forced);
      s_.mark_listed(r_);
      if (stopped) break;
      if (err) {
        failed("list", *err);
        continue;
      }
      need_list = forced = false;
      if (lost_.empty()) backoff_.reset();  // a forced relist while lost keeps backing off
    }
    auto started = Clock::now();
    WatchResult w = watch();
    switch (w.end) {
      case End::Stopped: return;
      case End::Closed:
        // The server ended it (timeoutSeconds): watch again at once, unless
        // it keeps closing right away.
        if (!w.had_events && Clock::now() - started < std::chrono::seconds(1)) s_.sleep_for(backoff_.next());
        else if (lost_.empty()) backoff_.reset();
        break;
      case End::Gone:
        need_list = forced = true;
        if (gone_in_row_++ > 0)
          failed("watch", "HTTP 410 Gone again right after a relist: the API server cannot serve the version it "
                          "just listed");
        break;
      case End::Failed:
        if (w.relist) need_list = forced = true;
        if (w.dropped && lost_.empty() && !quiet_retry_used_) {
          // A connection that just ended (an API server restart, a load
          // balancer's idle cut) is not an outage yet: re-watch at once.
          quiet_retry_used_ = true;
          break;
        }
        failed("watch", w.error);
        break;
    }
  }
}

}  // namespace tapwire::kube_watch
