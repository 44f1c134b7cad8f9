// Which interfaces to capture on: the --interface patterns, the interfaces of
// this network namespace, and a netlink watch for ones that appear later.
#pragma once

#include <cstdint>
#include <regex>
#include <string>
#include <vector>

namespace tapwire::sensor {

struct Interface {
  uint32_t ifindex = 0;
  std::string name;
  bool loopback = false;
  bool has_l2 = true;  // Ethernet-like: packets start with a MAC header
};

std::vector<Interface> list_interfaces();
// Looks one interface up by index; false if it is gone.
bool describe_interface(uint32_t ifindex, Interface& out);

// --interface NAME|REGEX, repeatable. A pattern that names an existing
// interface, or has no regex syntax, is a name; otherwise it is a regular
// expression matched against whole names. With no pattern: every interface
// but loopback.
class InterfaceSelector {
 public:
  // Throws std::runtime_error for a bad regex, or for a plain name that is not
  // an interface of this network namespace.
  explicit InterfaceSelector(const std::vector<std::string>& patterns);
  bool matches(const Interface& i) const;
  bool has_patterns() const { return !names_.empty() || !regexes_.empty(); }

 private:
  std::vector<std::string> names_;
  std::vector<std::regex> regexes_;
};

struct LinkEvent {
  bool added;  // RTM_NEWLINK (added or changed) vs RTM_DELLINK
  uint32_t ifindex;
  std::string name;
};

// A netlink socket subscribed to link changes.
class LinkMonitor {
 public:
  LinkMonitor();  // throws std::runtime_error
  ~LinkMonitor();
  LinkMonitor(const LinkMonitor&) = delete;
  LinkMonitor& operator=(const LinkMonitor&) = delete;
  int fd() const { return fd_; }
  // Reads what is pending, without blocking.
  std::vector<LinkEvent> read_events();

 private:
  int fd_;
};

}  // namespace tapwire::sensor
