// Snapshots: a frozen, immutable set of segment files taken out of the live
// ring for delayed dissection.
//
//   DATA_DIR/snapshots/NAME/
//     manifest.json            {name, created, from_ns, to_ns, interfaces, files, tapwire_version, format}
//     segments/<seq>.twseg     hard links to the ring's sealed segments (copies across file systems)
//     dissections/             DBs of delayed dissections (tapwire serve): derived from the
//                              snapshot, not in its manifest, not verified, not packed
//
// Files are 0440 and directories 0550 once the snapshot is complete. Every
// operation that creates a snapshot builds it in DATA_DIR/snapshots/NAME.tmp
// and renames it into place, so a failure leaves nothing behind.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tapwire::snapshot {

inline constexpr const char* kFormat = "tapwire-snapshot/1";
inline constexpr uint64_t kDefaultStorageSize = 20ull << 30;  // tap.snapshots.storageSize
// The one directory of a snapshot that is not frozen: results derived from it.
inline constexpr const char* kDissectionsDir = "dissections";

// An error a user sees as one line "<what>: <input>: <hint>" (the CLI adds
// "tapwire: "). Nothing has been changed on disk when it is thrown.
class SnapshotError : public std::runtime_error {
 public:
  SnapshotError(std::string what, std::string input, std::string hint)
      : std::runtime_error(what + ": " + input + ": " + hint),
        what_part(std::move(what)),
        input_part(std::move(input)),
        hint_part(std::move(hint)) {}
  std::string what_part, input_part, hint_part;
};

struct FileEntry {
  std::string name;  // relative to the snapshot directory: "segments/<seq>.twseg"
  uint64_t size = 0;
  std::string sha256;  // lowercase hex
};

struct Manifest {
  std::string name;
  std::string created;  // RFC 3339, UTC
  uint64_t from_ns = 0;  // the window [from_ns, to_ns)
  uint64_t to_ns = 0;
  std::vector<std::string> interfaces;  // from the TW_REC_IFACE records of the files
  std::vector<FileEntry> files;
  std::string tapwire_version;
  std::string format = kFormat;

  nlohmann::json to_json() const;
  // Throws SnapshotError (naming `source`) if a field is missing or of the wrong type.
  static Manifest from_json(const nlohmann::json& j, const std::string& source);
  uint64_t total_size() const;
};

// A snapshot name: non-empty, at most 200 bytes, no '/', no NUL, does not
// start with '.', does not end with ".tmp". Throws SnapshotError.
void check_name(const std::string& name);

// DATA_DIR/snapshots
std::string snapshots_dir(const std::string& data_dir);
// DATA_DIR/snapshots/NAME
std::string snapshot_dir(const std::string& data_dir, const std::string& name);

// SHA-256 of a file's content, lowercase hex. Throws SnapshotError.
std::string sha256_file(const std::string& path);

struct CreateOptions {
  std::string data_dir;  // the ring is DATA_DIR/segments
  std::string name;
  uint64_t from_ns = 0;  // window [from_ns, to_ns); default: everything
  uint64_t to_ns = UINT64_MAX;
  std::vector<std::string> interfaces;  // keep only segments that captured on one of these (empty: all)
  uint64_t storage_size = kDefaultStorageSize;  // all snapshots under DATA_DIR/snapshots together
  // Asks the running sensor to seal its open segment now (control socket
  // request {"cmd":"segment","action":"rotate"}); throws SnapshotError if it
  // cannot. Called only when an open segment overlaps the window and a
  // writer holds the ring's lock.
  std::function<void()> request_rotate;
};

// Creates DATA_DIR/snapshots/NAME from the ring segments that overlap the
// window. Throws SnapshotError: bad name, existing name, empty window, no
// data in the window, storage limit exceeded, I/O errors.
Manifest create(const CreateOptions& opts);

struct SnapshotInfo {
  std::string name;
  std::string dir;
  bool ok = false;  // manifest readable
  Manifest manifest;  // when ok
  std::string error;  // when !ok
};
// Every snapshot under DATA_DIR/snapshots, by name.
std::vector<SnapshotInfo> list(const std::string& data_dir);

struct Problem {
  std::string file;  // relative to the snapshot directory ("manifest.json", "segments/…")
  std::string what;
};
// Re-hashes every file of the snapshot directory `dir` against its manifest.
// Reports missing, extra, resized and modified files and an unreadable
// manifest. An empty result means the snapshot is intact.
std::vector<Problem> verify_dir(const std::string& dir, Manifest* manifest_out = nullptr);

// Removes DATA_DIR/snapshots/NAME (restoring write permission first).
void remove(const std::string& data_dir, const std::string& name);

// Writes DATA_DIR/snapshots/NAME as a zstd-compressed tar (NAME/manifest.json,
// NAME/segments/...) to `out` (through out.tmp, renamed once complete).
// Refuses a snapshot that does not verify.
void pack(const std::string& data_dir, const std::string& name, const std::string& out);

// Extracts a pack into DATA_DIR/snapshots/NEW_NAME (NEW_NAME empty: the name
// inside the pack), checking every path, then every hash. Returns the name.
std::string unpack(const std::string& file, const std::string& data_dir, const std::string& new_name,
                   uint64_t storage_size = kDefaultStorageSize);

}  // namespace tapwire::snapshot
