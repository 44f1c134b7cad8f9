// What tapwire-kube-watch does with the Kubernetes API's answers
// (userspace/identity/kube_parse.hpp, kube_object.hpp, kube_objectset.hpp,
// kube_owners.hpp), the way its reflector does it (kube/reflector.cpp):
// list pages item by item, watch streams line by line (ADDED, MODIFIED,
// DELETED, BOOKMARK, ERROR with 410 Gone), Status errors.
//
// Input: [mode u8][resource u8][code u16][body...]
//   mode 0: a list page of the resource (resource % 6: pods, services,
//           endpointslices, nodes, replicasets, jobs)
//   mode 1: a watch stream: lines of watch events
//   mode 2: an error answer with HTTP status `code` (describe_http_error)
//
// Checked: errors are ParseError with a one-line message; every object the
// watcher would write is a workload object the sensor accepts
// (parse_workload), since anything else is dropped on the sensor's side;
// the ObjectSet and OwnerIndex stay consistent; an error description is one
// printable line.
// libFuzzer: -max_len=65536
#include "fuzz_common.hpp"
#include "kube_frame.hpp"
#include "kube_objectset.hpp"
#include "kube_owners.hpp"
#include "kube_parse.hpp"
#include "workload_object.hpp"

namespace {

namespace k = tapwire::identity::kube;
using tapwire::fuzz::Reader;

bool one_printable_line(std::string_view s) {
  for (char c : s)
    if (c < 0x20 || c > 0x7e) return false;
  return true;
}

// A frame the watcher writes (kube/output.cpp) must be one the sensor takes.
void check_frame(const k::OJson& frame) {
  const std::string text = frame.dump(-1, ' ', false, k::OJson::error_handler_t::replace);
  FUZZ_CHECK(k::encode_frame(text).has_value() || text.size() > (4u << 20));
  std::string why;
  auto w = tapwire::identity::parse_workload(text, &why);
  FUZZ_CHECK(w.has_value(), "the sensor refuses what the watcher writes: " + why + "; " + text.substr(0, 400));
}

struct Watcher {
  k::Resource r;
  k::ObjectSet objects;
  k::OwnerIndex owners{true, true};
  uint64_t now_s = 0;

  // reflector.cpp Reflector::upsert
  void upsert(const k::Json& obj) {
    k::ObjectRef ref = k::object_ref(obj);
    if (ref.uid.empty() || ref.name.empty()) return;  // counted invalid
    k::Counters n;
    switch (r) {
      case k::Resource::Pods: {
        auto res = owners.resolve(obj);
        k::OJson frame = k::normalize_pod(obj, res.owner, n);
        if (!ref.namespace_.empty()) check_frame(frame);
        if (res.waiting_for.empty()) {
          owners.forget(ref.uid);
        } else if (auto via = k::controller_of(obj)) {
          owners.wait(ref.uid, res.waiting_for, *via, frame,
                      k::OwnerIndex::Clock::time_point(std::chrono::seconds(now_s++)));
        }
        break;
      }
      case k::Resource::Services:
        if (!ref.namespace_.empty()) check_frame(k::normalize_service(obj, n));
        break;
      case k::Resource::EndpointSlices:
        if (!ref.namespace_.empty()) check_frame(k::normalize_endpointslice(obj, n));
        break;
      case k::Resource::Nodes:
        check_frame(k::normalize_node(obj, n));
        break;
      case k::Resource::ReplicaSets:
      case k::Resource::Jobs: {
        auto ctl = k::controller_of(obj);
        owners.put(ref.uid, ctl ? std::optional<k::Owner>(k::Owner{ctl->kind, ctl->name}) : std::nullopt);
        for (const auto& frame : owners.settle(ref.uid)) check_frame(frame);
        break;
      }
    }
    objects.put(ref);
    FUZZ_CHECK(objects.contains(ref.uid));
    FUZZ_CHECK(owners.waiting() <= k::OwnerIndex::kMaxWaiting);
  }

  // Reflector::vanished and ::remove
  void vanished(const k::ObjectRef& ref) {
    if (r == k::Resource::ReplicaSets || r == k::Resource::Jobs) {
      owners.erase(ref.uid);
      return;
    }
    if (r == k::Resource::Pods) owners.forget(ref.uid);
    check_frame(k::delete_object(r, ref));
  }
  void remove(const k::Json& obj) {
    k::ObjectRef ref = k::object_ref(obj);
    if (ref.uid.empty()) return;
    if (auto known = objects.erase(ref.uid)) {
      FUZZ_CHECK(known->uid == ref.uid, "erase gives back the uid it was given");
      if (ref.name.empty()) ref = *known;
    }
    FUZZ_CHECK(!objects.contains(ref.uid));
    vanished(ref);
  }

  void list(std::string_view body) {
    objects.begin_list();
    size_t items = 0;
    try {
      auto page = k::parse_list_page(body, [&](k::Json& item) {
        items++;
        upsert(item);
      });
      FUZZ_CHECK(page.items == items);
      FUZZ_CHECK(!page.resource_version.empty());
    } catch (const k::ParseError& e) {
      FUZZ_CHECK(std::string_view(e.what()).find('\n') == std::string_view::npos, e.what());
      return;
    }
    const size_t before = objects.size();
    size_t swept = 0;
    objects.sweep([&](const k::ObjectRef& ref) {
      swept++;
      vanished(ref);
    });
    FUZZ_CHECK(objects.size() + swept == before);
  }

  // Reflector::handle_line; false ends the watch.
  bool line(std::string_view l) {
    if (l.find_first_not_of(" \t\r") == std::string_view::npos) return true;
    k::WatchEvent ev;
    try {
      ev = k::parse_watch_event(l);
    } catch (const k::ParseError& e) {
      FUZZ_CHECK(std::string_view(e.what()).find('\n') == std::string_view::npos, e.what());
      return false;
    }
    FUZZ_CHECK(ev.object.is_object());
    if (ev.type == "ERROR") {
      auto st = k::status_of(ev.object);
      if (st && st->code == 410) list("{\"metadata\":{\"resourceVersion\":\"1\"},\"items\":[]}");  // relist
      return false;
    }
    if (ev.type == "ADDED" || ev.type == "MODIFIED")
      upsert(ev.object);
    else if (ev.type == "DELETED")
      remove(ev.object);
    else if (ev.type != "BOOKMARK")
      return false;
    return true;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t mode = in.u8();
  const auto r = k::kAllResources[in.u8() % k::kAllResources.size()];
  const long code = in.u16();
  const std::string_view body = in.text(in.left());
  Watcher w{r, {}, {true, true}, 0};
  switch (mode % 3) {
    case 0:
      w.list(body);
      break;
    case 1: {
      size_t pos = 0;
      while (pos < body.size()) {
        size_t nl = body.find('\n', pos);
        if (nl == std::string_view::npos) break;  // a cut event is an error of the stream, not parsed
        if (!w.line(body.substr(pos, nl - pos))) break;
        pos = nl + 1;
      }
      break;
    }
    default: {
      const std::string d = k::describe_http_error(code, body, k::info(r).name);
      FUZZ_CHECK(one_printable_line(d), d);
      if (auto st = k::parse_status(body)) (void)st->message.size();
      break;
    }
  }
  // The helpers every frame goes through.
  const size_t max = body.size() / 2;
  const std::string t = k::truncate_utf8(body, max);
  FUZZ_CHECK(t.size() <= max && body.substr(0, t.size()) == t);
  const std::string p = k::printable(body, 40);
  FUZZ_CHECK(p.size() <= 43 && one_printable_line(p));
  FUZZ_CHECK(k::is_ip(body) == tapwire::identity::IpKey::parse(body).has_value(),
             "the watcher and the sensor disagree on an address: '" + k::printable(body, 80) + "'");
  return 0;
}
