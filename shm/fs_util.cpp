#include "fs_util.hpp"

#include <sys/stat.h>

#include <cerrno>

namespace tapwire {

bool mkdir_p(const std::string& dir, mode_t mode, mode_t parent_mode) {
  const size_t end = dir.find_last_not_of('/') + 1;  // without trailing slashes; 0 for "" and "/"
  for (size_t pos = dir.find('/', 1);; pos = dir.find('/', pos + 1)) {
    const bool leaf = pos == std::string::npos || pos >= end;
    const std::string path = dir.substr(0, leaf ? end : pos);
    if (!path.empty() && path.back() != '/' && ::mkdir(path.c_str(), leaf ? mode : parent_mode) != 0 &&
        errno != EEXIST)
      return false;
    if (leaf) break;
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return false;
  if (!S_ISDIR(st.st_mode)) {
    errno = ENOTDIR;
    return false;
  }
  return true;
}

}  // namespace tapwire
