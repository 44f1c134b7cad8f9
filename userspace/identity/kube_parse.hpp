// Parsing what the Kubernetes API sends: list pages item by item (an item's
// tree is freed as soon as it has been handed over, so a page never exists
// as a whole tree), watch events, and Status errors. Fields a workload object
// does not need (managedFields, annotations, pod spec containers, templates,
// node images, …) are skipped while parsing and never allocated.
#pragma once

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "kube_object.hpp"

namespace tapwire::identity::kube {

inline constexpr size_t kMaxWatchLine = 4u << 20;  // one watch event
inline constexpr size_t kMaxListPage = 64u << 20;  // one list response
inline constexpr size_t kMaxResourceVersion = 256;  // the API sends decimal numbers
inline constexpr size_t kMaxContinue = 64u << 10;

// What a server sent could not be used; what() is one line that says why.
struct ParseError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ListPage {
  std::string resource_version;  // metadata.resourceVersion
  std::string continue_token;  // metadata.continue; "" on the last page
  size_t items = 0;
};

// Calls on_item for every element of "items", in order. Throws ParseError.
ListPage parse_list_page(std::string_view body, const std::function<void(Json& item)>& on_item);

struct WatchEvent {
  std::string type;  // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
  Json object;
};
// One line of a watch stream. Throws ParseError.
WatchEvent parse_watch_event(std::string_view line);

// A Status object ({"kind":"Status","code":410,...}).
struct ApiStatus {
  long code = 0;
  std::string reason;
  std::string message;
};
std::optional<ApiStatus> status_of(const Json& obj);
std::optional<ApiStatus> parse_status(std::string_view body);

// One line for an HTTP error answer: "HTTP 401 Unauthorized: check the token
// or kubeconfig", with the server's message where it helps.
std::string describe_http_error(long code, std::string_view body, std::string_view resource);

}  // namespace tapwire::identity::kube
