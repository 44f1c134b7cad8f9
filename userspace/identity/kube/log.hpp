// stderr of tapwire-kube-watch: one line per state change, prefixed with the
// program's name, never interleaved between threads.
#pragma once

#include <string>

namespace tapwire::kube_watch {

void log_line(const std::string& msg);

}  // namespace tapwire::kube_watch
