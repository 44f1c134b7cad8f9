#include "kube_parse.hpp"

#include <vector>

namespace tapwire::identity::kube {

namespace {

using Event = Json::parse_event_t;

constexpr int kMaxDepth = 32;  // deeper values are parsed but never built (no object needs them)

bool in(std::string_view k, std::initializer_list<std::string_view> keys) {
  for (auto x : keys)
    if (k == x) return true;
  return false;
}

// Which keys of metadata / spec / status a workload object is built from;
// everything else under them is dropped while parsing.
bool wanted(std::string_view parent, std::string_view key) {
  if (parent == "metadata")
    return in(key, {"name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences", "continue"});
  if (parent == "spec") return in(key, {"nodeName", "hostNetwork", "type", "clusterIP", "clusterIPs", "ports"});
  if (parent == "status")
    return in(key, {"phase", "podIP", "podIPs", "containerStatuses", "initContainerStatuses", "addresses"});
  return true;
}

// Tracks where the parser is (the key that names each enclosing object) to
// decide what to keep.
class PathFilter {
 public:
  bool keep(int depth, Event ev, const Json& parsed) {
    if (depth > kMaxDepth) return false;
    auto d = static_cast<size_t>(depth);
    switch (ev) {
      case Event::object_start:
      case Event::array_start:
        if (is_array_.size() <= d) is_array_.resize(d + 1);
        is_array_[d] = ev == Event::array_start;
        return true;
      case Event::key: {
        const auto& k = parsed.get_ref<const std::string&>();
        if (keys_.size() <= d) keys_.resize(d + 1);
        keys_[d] = k;
        // The enclosing object sits at index d-1; its name is the key at
        // depth d-1 unless it is an array element.
        std::string_view parent;
        if (d >= 2 && !is_array_[d - 2]) parent = keys_[d - 1];
        return wanted(parent, k);
      }
      default:
        return true;
    }
  }

 private:
  std::vector<std::string> keys_;
  std::vector<bool> is_array_;
};

std::string json_error(const Json::parse_error& e, std::string_view input) {
  // nlohmann: "[json.exception.parse_error.101] parse error at line 1, column 2: <why>"
  std::string_view what = e.what();
  auto colon = what.find(": ");
  std::string why = colon == std::string_view::npos ? std::string(what) : std::string(what.substr(colon + 2));
  std::string s = "invalid JSON at byte " + std::to_string(e.byte) + " (" + printable(why, 120) + ")";
  if (!input.empty()) s += ", starting \"" + printable(input.substr(0, 40), 40) + "\"";
  return s;
}

const Json* find(const Json& o, const char* k) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(k);
  return it == o.end() ? nullptr : &*it;
}

}  // namespace

ListPage parse_list_page(std::string_view body, const std::function<void(Json& item)>& on_item) {
  PathFilter filter;
  bool in_items = false;
  ListPage page;
  auto cb = [&](int depth, Event ev, Json& parsed) -> bool {
    if (!filter.keep(depth, ev, parsed)) return false;
    if (ev == Event::key && depth == 1) in_items = parsed.get_ref<const std::string&>() == "items";
    if (ev == Event::object_end && depth == 2 && in_items) {
      ++page.items;
      on_item(parsed);
      return false;  // handed over: drop it from the tree
    }
    return true;
  };
  Json root;
  try {
    root = Json::parse(body.begin(), body.end(), cb);
  } catch (const Json::parse_error& e) {
    throw ParseError("list response: " + json_error(e, body));
  } catch (const Json::exception& e) {
    throw ParseError("list response: " + printable(e.what(), 160));
  }
  if (auto st = status_of(root)) throw ParseError("list response is a Status: " + printable(st->message, 200));
  const Json* items = find(root, "items");
  if (!items || !(items->is_array() || items->is_null()))
    throw ParseError("list response is not a list (no \"items\")");
  const Json* meta = find(root, "metadata");
  const Json* rv = meta ? find(*meta, "resourceVersion") : nullptr;
  if (!rv || !rv->is_string() || rv->get_ref<const std::string&>().empty())
    throw ParseError("list response has no metadata.resourceVersion");
  if (rv->get_ref<const std::string&>().size() > kMaxResourceVersion)
    throw ParseError("list response has a resourceVersion longer than " + std::to_string(kMaxResourceVersion) +
                     " bytes");
  page.resource_version = rv->get<std::string>();
  const Json* cont = find(*meta, "continue");
  if (cont && cont->is_string()) {
    if (cont->get_ref<const std::string&>().size() > kMaxContinue)
      throw ParseError("list response has a continue token longer than " + std::to_string(kMaxContinue >> 10) +
                       " KiB");
    page.continue_token = cont->get<std::string>();
  }
  return page;
}

WatchEvent parse_watch_event(std::string_view line) {
  PathFilter filter;
  auto cb = [&](int depth, Event ev, Json& parsed) { return filter.keep(depth, ev, parsed); };
  Json ev;
  try {
    ev = Json::parse(line.begin(), line.end(), cb);
  } catch (const Json::parse_error& e) {
    throw ParseError("watch event: " + json_error(e, line));
  } catch (const Json::exception& e) {
    throw ParseError("watch event: " + printable(e.what(), 160));
  }
  const Json* type = find(ev, "type");
  const Json* obj = find(ev, "object");
  if (!type || !type->is_string() || !obj || !obj->is_object())
    throw ParseError("watch event without \"type\" and \"object\": \"" + printable(line, 60) + "\"");
  return {type->get<std::string>(), std::move(ev["object"])};
}

std::optional<ApiStatus> status_of(const Json& obj) {
  const Json* kind = find(obj, "kind");
  if (!kind || !kind->is_string() || kind->get_ref<const std::string&>() != "Status") return std::nullopt;
  ApiStatus st;
  if (const Json* c = find(obj, "code"); c && c->is_number_integer()) st.code = c->get<long>();
  if (const Json* r = find(obj, "reason"); r && r->is_string()) st.reason = r->get<std::string>();
  if (const Json* m = find(obj, "message"); m && m->is_string()) st.message = m->get<std::string>();
  return st;
}

std::optional<ApiStatus> parse_status(std::string_view body) {
  Json j = Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return status_of(j);
}

std::string describe_http_error(long code, std::string_view body, std::string_view resource) {
  std::string reason;
  switch (code) {
    case 400: reason = "Bad Request"; break;
    case 401: reason = "Unauthorized"; break;
    case 403: reason = "Forbidden"; break;
    case 404: reason = "Not Found"; break;
    case 410: reason = "Gone"; break;
    case 429: reason = "Too Many Requests"; break;
    case 500: reason = "Internal Server Error"; break;
    case 502: reason = "Bad Gateway"; break;
    case 503: reason = "Service Unavailable"; break;
    case 504: reason = "Gateway Timeout"; break;
    default: break;
  }
  std::string s = "HTTP " + std::to_string(code) + (reason.empty() ? "" : " " + reason);
  std::string message;
  if (auto st = parse_status(body)) message = st->message;
  // A Status message that only repeats the reason adds nothing.
  if (!message.empty() && message != "Unauthorized" && message != reason) s += ": " + printable(message, 200);
  if (code == 401) {
    s += ": check the token or kubeconfig";
  } else if (code == 403) {
    s += ": grant list and watch on " + std::string(resource) + " to this account (ClusterRole)";
  } else if (code == 404) {
    s += ": the API server does not serve " + std::string(resource) + "; check the server URL";
  } else if (code == 429 || code >= 500) {
    s += ": the API server is overloaded or failing";
  } else if (message.empty() && !body.empty() && !parse_status(body)) {
    s += ": \"" + printable(body, 60) + "\"";
  }
  return s;
}

}  // namespace tapwire::identity::kube
