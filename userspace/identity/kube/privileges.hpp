// Dropping privileges before the first connection: the watcher parses what
// a remote server sends, so it does that as an unprivileged user, with no
// capabilities and no way to gain any (no_new_privs).
#pragma once

#include <stdexcept>
#include <string>

namespace tapwire::kube_watch {

struct PrivilegeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// As root: become user (its uid and primary gid, no supplementary groups).
// Always: clear every capability, set no_new_privs, then check that root
// and capabilities cannot come back. Throws PrivilegeError (one line).
// Returns what it did, for the log.
std::string drop_privileges(const std::string& user);

}  // namespace tapwire::kube_watch
