// Small file system helpers shared by the sensor, the snapshots and the
// segment store. Here in tw_shm, the library everything else builds on, so
// that the segment store can use them too.
#pragma once

#include <sys/types.h>

#include <string>

namespace tapwire {

// Creates `dir` and its missing parents, as `mkdir -p` does: `dir` itself
// with `mode`, the parents it creates with `parent_mode` (both less the
// umask). Directories that exist are left as they are. Returns false with
// errno set: that of the mkdir that failed, or ENOTDIR when `dir` exists but
// is not a directory. Each caller words its own error.
bool mkdir_p(const std::string& dir, mode_t mode, mode_t parent_mode = 0755);

}  // namespace tapwire
