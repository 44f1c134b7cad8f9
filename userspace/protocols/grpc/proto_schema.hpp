// gRPC messages decoded with the service's .proto files (tap.grpc.protoPaths):
// field names, enum names, nested messages, as protobuf's canonical JSON
// mapping with the .proto field names kept (libprotobuf's JSON printer,
// that of MessageToJsonString, with preserve_proto_field_names).
//
// Loading: each path is a .proto file or a directory searched recursively
// for *.proto files; every file found is compiled (libprotobuf's parser,
// no protoc). Imports resolve against each given directory and each given
// file's directory, in the order given, then against the well-known types
// libprotobuf carries (google/protobuf/timestamp.proto, any, struct, ...),
// so those need not be on disk. A file is named in the pool by its path
// relative to the first of those that holds it.
//
// Decoding: the method's input (request) or output (response) type, found
// by "package.Service" and "Method". Fields the schema does not know (the
// peer's .proto is newer, or the schema is not the one in use) are not
// dropped: each message object that had some gets "@unknown", the
// schema-less decoding of those fields (protobuf_wire.hpp's array; their
// bytes in base64 when that fails) — "@" cannot start a .proto field name. Everything else falls back to
// SchemalessGrpcDecoder's result, so nothing is lost: unknown service or
// method, compressed or truncated messages, messages past
// max_message_bytes, bytes that do not parse as the type (or nest deeper
// than max_depth), and messages the JSON printer refuses.
//
// Caveats of the JSON mapping: 64-bit integers are strings, bytes are
// base64, fields at their default value are left out (proto3), and the
// well-known types print their own way (Timestamp as RFC 3339, ...).
//
// Thread-safety: decode() may be called from any number of threads at once
// (the compiled files are copied into a pool with nothing more to load, and
// every method's prototypes are made at load). A decoder holds no file open.
//
// Cost: about 10 µs for a small message (parse, re-serialize, print, parse
// the JSON); memory, transiently, some tens of times the message's size at
// worst (a packed repeated field becomes one JSON value per element).
//
// Loading silences libprotobuf's log (process-wide, once): hostile traffic
// would otherwise make it log a line per bad string field.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "grpc/grpc.hpp"
#include "grpc/protobuf_wire.hpp"

namespace tapwire::proto {

struct ProtoSchemaLimits {
  size_t max_message_bytes = 4 << 20;  // larger messages are decoded schema-less
  int max_depth = 64;  // messages nested in the message, at most (deeper: schema-less; libprotobuf stops at 100)
  size_t max_files = 10000;  // .proto files found under the paths, at most (more: refused)
};

class ProtoSchemaDecoder final : public GrpcMessageDecoder {
 public:
  // Compiles the .proto files under `paths`. nullptr when a path does not
  // exist, is neither a file nor a directory, a directory holds no .proto
  // file, or a file does not compile; `error` then says why on one line,
  // e.g. "/etc/protos/shop.proto:12:5: Expected ";"." (1-based line and
  // column) or "/etc/protos/x.proto: no such file or directory".
  static std::unique_ptr<ProtoSchemaDecoder> load(const std::vector<std::string>& paths, std::string& error,
                                                  const ProtoSchemaLimits& limits = {},
                                                  const ProtobufLimits& fallback = {});
  ~ProtoSchemaDecoder() override;
  ProtoSchemaDecoder(const ProtoSchemaDecoder&) = delete;
  ProtoSchemaDecoder& operator=(const ProtoSchemaDecoder&) = delete;

  // The message as a JSON object, or the schema-less decoder's result.
  nlohmann::json decode(std::string_view service, std::string_view method, bool request,
                        const GrpcMessage& m) const override;

  // The full name of the method's input (request) or output type, e.g.
  // "helloworld.HelloRequest"; "" when the schema has no such method.
  std::string message_type(std::string_view service, std::string_view method, bool request) const;
  size_t file_count() const;  // .proto files compiled from the paths (their imports not counted)
  size_t method_count() const;  // methods of every service in them and their imports

 private:
  struct Impl;
  explicit ProtoSchemaDecoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapwire::proto
