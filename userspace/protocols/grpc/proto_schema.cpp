// gRPC messages decoded with .proto files. See proto_schema.hpp.
#include "grpc/proto_schema.hpp"

#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor_database.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/message.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/type_resolver.h>
#include <google/protobuf/util/type_resolver_util.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>
#include <unordered_map>
#include <unordered_set>

#include "body/body_text.hpp"

namespace tapwire::proto {

namespace pb = google::protobuf;
namespace fs = std::filesystem;

namespace {

struct ProtoError {
  std::string file;  // the virtual name (relative to its import path)
  int line = -1, column = -1;  // 0-based; -1 when unknown
  std::string message;
};

// The parser's and the pool's errors (the pool's through the database's
// validation collector, which finds their line and column).
class Collector final : public pb::compiler::MultiFileErrorCollector {
 public:
  void AddError(const std::string& file, int line, int column, const std::string& message) override {
    errors.push_back({file, line, column, message});
  }
  std::vector<ProtoError> errors;
};

// Only FATAL (which aborts anyway) is worth a line: hostile traffic makes
// libprotobuf log an error per string field that is not UTF-8.
void quiet_log(pb::LogLevel level, const char* file, int line, const std::string& message) {
  if (level == pb::LOGLEVEL_FATAL) std::fprintf(stderr, "libprotobuf FATAL %s:%d: %s\n", file, line, message.c_str());
}

// Are messages nested in m at most `left` deep?
bool within_depth(const pb::Message& m, int left) {
  const pb::Reflection* r = m.GetReflection();
  std::vector<const pb::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const pb::FieldDescriptor* f : fields) {
    if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (left == 0) return false;
    if (f->is_repeated()) {
      for (int i = 0, n = r->FieldSize(m, f); i < n; i++)
        if (!within_depth(r->GetRepeatedMessage(m, f, i), left - 1)) return false;
    } else if (!within_depth(r->GetMessage(m, f), left - 1)) {
      return false;
    }
  }
  return true;
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

constexpr const char* kTypeUrlPrefix = "type.googleapis.com";

fs::path normal_absolute(const std::string& p, std::error_code& ec) {
  fs::path a = fs::absolute(fs::path(p), ec).lexically_normal();
  if (!a.has_filename() && a.has_parent_path() && a != a.root_path()) a = a.parent_path();  // "dir/" -> "dir"
  return a;
}

// What compiles the files: a source tree over the import paths, and the
// well-known types libprotobuf carries for imports the disk lacks.
struct Loader {
  pb::compiler::DiskSourceTree tree;
  Collector errors;
  pb::DescriptorPoolDatabase well_known{*pb::DescriptorPool::generated_pool()};
  pb::compiler::SourceTreeDescriptorDatabase db{&tree, &well_known};
  pb::DescriptorPool pool{&db, db.GetValidationErrorCollector()};

  Loader() { db.RecordErrorsTo(&errors); }

  // "file:line:col: message", with the file's path on disk when it has one.
  std::string describe(const ProtoError& e) {
    std::string where = e.file, disk;
    if (!e.file.empty() && tree.VirtualFileToDiskFile(e.file, &disk)) where = disk;
    std::string s = where;
    if (e.line >= 0) s += ":" + std::to_string(e.line + 1) + ":" + std::to_string(e.column + 1);
    return one_line(s + ": " + e.message);
  }

  // The first error with a position (a missing import is reported first
  // without one, then where it is imported), and how many more there were.
  std::string first_error() {
    auto it = std::find_if(errors.errors.begin(), errors.errors.end(), [](const ProtoError& e) { return e.line >= 0; });
    if (it == errors.errors.end()) it = errors.errors.begin();
    std::string s = describe(*it);
    if (errors.errors.size() > 1) s += " (+" + std::to_string(errors.errors.size() - 1) + " more)";
    return s;
  }
};

// Errors building the copy of a file that compiled (not expected).
class CopyErrors final : public pb::DescriptorPool::ErrorCollector {
 public:
  void AddError(const std::string& file, const std::string& element, const pb::Message*, ErrorLocation,
                const std::string& message) override {
    if (first.empty()) first = file + ": " + element + ": " + message;
  }
  std::string first;
};

}  // namespace

struct ProtoSchemaDecoder::Impl {
  ProtoSchemaLimits lim;
  SchemalessGrpcDecoder fallback;
  ProtobufLimits fallback_lim;

  // The compiled files, copied out of the loader's pool into one without a
  // database behind it: decode() only ever reads it (a pool with a database
  // would also remember, forever, every type name it failed to find there,
  // such as hostile google.protobuf.Any type URLs).
  pb::DescriptorPool pool;
  pb::DynamicMessageFactory factory{&pool};
  // For the JSON printer. Stateless (a prefix and the pool): shared by threads.
  std::unique_ptr<pb::util::TypeResolver> resolver{pb::util::NewTypeResolverForDescriptorPool(kTypeUrlPrefix, &pool)};

  struct Types {
    const pb::Message* in = nullptr;  // prototypes
    const pb::Message* out = nullptr;
  };
  std::unordered_map<std::string, Types> methods;  // "package.Service/Method"
  size_t files = 0;

  Impl(const ProtoSchemaLimits& l, const ProtobufLimits& f) : lim(l), fallback(f), fallback_lim(f) {}

  const Types* find(std::string_view service, std::string_view method) const {
    std::string key;
    key.reserve(service.size() + 1 + method.size());
    key.append(service).append("/").append(method);
    auto it = methods.find(key);
    return it == methods.end() ? nullptr : &it->second;
  }

  // Copies a compiled file, its imports first, into the pool; false (and
  // why) when it does not build there.
  bool copy(const pb::FileDescriptor* f, std::string& error) {
    if (pool.FindFileByName(f->name())) return true;
    for (int i = 0; i < f->dependency_count(); i++)
      if (!copy(f->dependency(i), error)) return false;
    pb::FileDescriptorProto proto;
    f->CopyTo(&proto);
    CopyErrors errors;
    if (pool.BuildFileCollectingErrors(proto, &errors)) return true;
    error = one_line(errors.first.empty() ? f->name() + ": does not build" : errors.first);
    return false;
  }

  // The methods of the file's services and its imports'.
  void index(const pb::FileDescriptor* f, std::unordered_set<const pb::FileDescriptor*>& seen) {
    if (!seen.insert(f).second) return;
    for (int i = 0; i < f->service_count(); i++) {
      const pb::ServiceDescriptor* s = f->service(i);
      for (int j = 0; j < s->method_count(); j++) {
        const pb::MethodDescriptor* m = s->method(j);
        // Prototypes made now: decode() then only reads the factory.
        methods[s->full_name() + "/" + m->name()] = {factory.GetPrototype(m->input_type()),
                                                     factory.GetPrototype(m->output_type())};
      }
    }
    for (int i = 0; i < f->dependency_count(); i++) index(f->dependency(i), seen);
  }

  // Fields the schema does not know, at every level the JSON mirrors: a
  // message object gets "@unknown" (their schema-less decoding, or their
  // bytes in base64 when that fails). Maps and well-known types (printed
  // their own way) are not looked into.
  void add_unknown(const pb::Message& msg, nlohmann::json& j) const {
    if (!j.is_object()) return;
    const pb::Reflection* r = msg.GetReflection();
    const pb::UnknownFieldSet& u = r->GetUnknownFields(msg);
    if (!u.empty()) {
      std::string b;
      u.SerializeToString(&b);
      const auto bytes = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(b.data()), b.size());
      ProtobufResult pr = decode_protobuf(bytes, fallback_lim);
      j["@unknown"] = pr.ok ? std::move(pr.fields) : nlohmann::json(base64_encode(bytes));
    }
    std::vector<const pb::FieldDescriptor*> fields;
    r->ListFields(msg, &fields);
    for (const pb::FieldDescriptor* f : fields) {
      if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || f->is_extension() || f->is_map()) continue;
      if (f->message_type()->file()->package() == "google.protobuf") continue;
      auto it = j.find(f->name());
      if (it == j.end()) continue;
      if (f->is_repeated()) {
        const int n = r->FieldSize(msg, f);
        if (!it->is_array() || it->size() != static_cast<size_t>(n)) continue;
        for (int i = 0; i < n; i++) add_unknown(r->GetRepeatedMessage(msg, f, i), (*it)[i]);
      } else {
        add_unknown(r->GetMessage(msg, f), *it);
      }
    }
  }
};

ProtoSchemaDecoder::ProtoSchemaDecoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProtoSchemaDecoder::~ProtoSchemaDecoder() = default;

std::unique_ptr<ProtoSchemaDecoder> ProtoSchemaDecoder::load(const std::vector<std::string>& paths, std::string& error,
                                                             const ProtoSchemaLimits& limits,
                                                             const ProtobufLimits& fallback) {
  static std::once_flag quiet;
  std::call_once(quiet, [] { pb::SetLogHandler(&quiet_log); });

  error.clear();
  if (paths.empty()) {
    error = "no .proto paths given";
    return nullptr;
  }
  Loader loader;

  // Import paths first (in the order given, once each), then the files.
  std::vector<std::string> files;
  std::set<std::string> mapped;
  auto map_root = [&](const fs::path& dir) {
    if (mapped.insert(dir.string()).second) loader.tree.MapPath("", dir.string());
  };
  for (const std::string& p : paths) {
    std::error_code ec;
    const fs::file_status st = fs::status(p, ec);  // as given: "file.proto/" is no directory
    const fs::path a = ec ? fs::path() : normal_absolute(p, ec);
    if (ec || !fs::exists(st)) {
      const bool missing = !ec || ec == std::errc::no_such_file_or_directory;
      error = p + ": " + (missing ? std::string("no such file or directory") : ec.message());
      return nullptr;
    }
    if (fs::is_regular_file(st)) {
      map_root(a.parent_path());
      files.push_back(a.string());
    } else if (fs::is_directory(st)) {
      map_root(a);
      std::vector<std::string> found;
      fs::recursive_directory_iterator it(a, fs::directory_options::none, ec), end;
      for (; !ec && it != end; it.increment(ec)) {
        std::error_code fec;
        if (it->path().extension() == ".proto" && it->is_regular_file(fec)) found.push_back(it->path().string());
        if (found.size() + files.size() > limits.max_files) {
          error = p + ": more than " + std::to_string(limits.max_files) + " .proto files";
          return nullptr;
        }
      }
      if (ec) {
        error = p + ": " + ec.message();
        return nullptr;
      }
      if (found.empty()) {
        error = p + ": no .proto file in this directory";
        return nullptr;
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      error = p + ": not a file or directory";
      return nullptr;
    }
  }

  // Each file by its name in the import path: the one its imports use.
  std::vector<std::string> names;
  std::unordered_set<std::string> named;
  for (const std::string& f : files) {
    std::string name, shadow;
    switch (loader.tree.DiskFileToVirtualFile(f, &name, &shadow)) {
      case pb::compiler::DiskSourceTree::SUCCESS:
        if (named.insert(name).second) names.push_back(name);
        break;
      case pb::compiler::DiskSourceTree::SHADOWED:
        error = f + ": shadowed by " + shadow + " (both are \"" + name + "\" in the import path)";
        return nullptr;
      case pb::compiler::DiskSourceTree::CANNOT_OPEN:
        error = f + ": " + one_line(loader.tree.GetLastErrorMessage());
        return nullptr;
      case pb::compiler::DiskSourceTree::NO_MAPPING:
        error = f + ": not under any import path";
        return nullptr;
    }
  }

  auto impl = std::make_unique<Impl>(limits, fallback);
  std::unordered_set<const pb::FileDescriptor*> seen;
  for (const std::string& name : names) {
    const pb::FileDescriptor* compiled = loader.pool.FindFileByName(name);
    if (!loader.errors.errors.empty()) {
      error = loader.first_error();
      return nullptr;
    }
    if (!compiled) {
      error = name + ": does not compile";
      return nullptr;
    }
    if (!impl->copy(compiled, error)) return nullptr;
    impl->index(impl->pool.FindFileByName(name), seen);
  }
  impl->files = names.size();
  return std::unique_ptr<ProtoSchemaDecoder>(new ProtoSchemaDecoder(std::move(impl)));
}

nlohmann::json ProtoSchemaDecoder::decode(std::string_view service, std::string_view method, bool request,
                                          const GrpcMessage& m) const {
  const Impl& d = *impl_;
  auto fallback = [&] { return d.fallback.decode(service, method, request, m); };
  if (m.compressed || m.truncated || m.data.size() > d.lim.max_message_bytes || m.data.size() > INT_MAX)
    return fallback();
  const Impl::Types* t = d.find(service, method);
  if (!t) return fallback();

  try {
    const pb::Message* proto = request ? t->in : t->out;
    std::unique_ptr<pb::Message> msg(proto->New());
    // From the array, not a CodedInputStream: only then does the parser know
    // where the bytes end, and so does not reserve what a length claims (up
    // to 50 MB a string) before finding it is not there. Its own recursion
    // limit (100) keeps the stack safe; ours is checked on the result.
    // Partial: a proto2 message without its required fields is still shown.
    // It must end where the bytes do (not at an end-group or a zero tag).
    if (!msg->ParsePartialFromArray(m.data.data(), static_cast<int>(m.data.size())) ||
        !within_depth(*msg, d.lim.max_depth))
      return fallback();

    // MessageToJsonString, but serializing partially: it would CHECK-fail on
    // a missing required field. The printer reads the well-formed bytes the
    // parsed message makes, not the ones from the wire.
    std::string bin, text;
    if (!msg->SerializePartialToString(&bin)) return fallback();
    pb::util::JsonPrintOptions opts;
    opts.preserve_proto_field_names = true;
    const std::string type_url = std::string(kTypeUrlPrefix) + "/" + proto->GetDescriptor()->full_name();
    if (!pb::util::BinaryToJsonString(d.resolver.get(), type_url, bin, &text, opts).ok()) return fallback();
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return fallback();
    d.add_unknown(*msg, j);
    return j;
  } catch (...) {
    // libprotobuf throws on a failed internal CHECK (none known reachable
    // from the wire); bad_alloc alike. The message is then shown schema-less.
    return fallback();
  }
}

std::string ProtoSchemaDecoder::message_type(std::string_view service, std::string_view method, bool request) const {
  const Impl::Types* t = impl_->find(service, method);
  if (!t) return "";
  return (request ? t->in : t->out)->GetDescriptor()->full_name();
}

size_t ProtoSchemaDecoder::file_count() const { return impl_->files; }
size_t ProtoSchemaDecoder::method_count() const { return impl_->methods.size(); }

}  // namespace tapwire::proto
