// tapwire export har: the HTTP calls of a dissection DB as a HAR 1.2 file
// (http://www.softwareishard.com/blog/har-12-spec/), which browser dev tools
// and HAR viewers open. tapwire export jsonl: every call record, one per line.
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "call_db.hpp"
#include "commands.hpp"
#include "output_file.hpp"

namespace tapwire::cli {
namespace {

using nlohmann::json;

struct ExportDbOptions {
  std::string db;
  std::string output = "-";
};

void write_all(OutputFile& out, const std::string& text) {
  if (std::fwrite(text.data(), 1, text.size(), out.fp()) != text.size())
    throw CliError("cannot write the output", out.writing_path(), std::strerror(errno));
}

std::string str_or(const json& j, const char* key, const std::string& dflt = "") {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : dflt;
}

// The record's headers (an object, repeated names joined with ", ") as HAR's
// list of {name, value}.
json har_headers(const json& hs, std::string* host = nullptr, std::string* content_type = nullptr) {
  json out = json::array();
  if (!hs.is_object()) return out;
  for (auto it = hs.begin(); it != hs.end(); ++it) {
    std::string v = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    if (host && it.key() == "host") *host = v;
    if (content_type && it.key() == "content-type") *content_type = v;
    out.push_back({{"name", it.key()}, {"value", v}});
  }
  return out;
}

json query_string(const std::string& path) {
  json out = json::array();
  size_t q = path.find('?');
  if (q == std::string::npos) return out;
  std::string qs = path.substr(q + 1);
  if (size_t hash = qs.find('#'); hash != std::string::npos) qs.resize(hash);
  for (size_t pos = 0; pos <= qs.size();) {
    size_t amp = qs.find('&', pos);
    if (amp == std::string::npos) amp = qs.size();
    std::string kv = qs.substr(pos, amp - pos);
    if (!kv.empty()) {
      size_t eq = kv.find('=');
      out.push_back({{"name", kv.substr(0, eq)}, {"value", eq == std::string::npos ? "" : kv.substr(eq + 1)}});
    }
    pos = amp + 1;
  }
  return out;
}

// RFC 3339 with nanoseconds -> ISO 8601 with milliseconds, as HAR tools expect.
std::string har_time(const std::string& ts) {
  size_t dot = ts.find('.');
  if (dot == std::string::npos || ts.size() < dot + 4) return ts;
  size_t end = dot + 1;
  while (end < ts.size() && ts[end] >= '0' && ts[end] <= '9') end++;
  return ts.substr(0, dot + 4) + ts.substr(end);
}

bool is_base64(const json& m) { return str_or(m, "body_encoding") == "base64"; }

bool has_flag(const json& c, const char* flag) {
  auto f = c.find("flags");
  if (f == c.end() || !f->is_array()) return false;
  for (auto& x : *f)
    if (x.is_string() && x.get_ref<const std::string&>() == flag) return true;
  return false;
}

// HAR content: `size` the decoded length (the body as sent when it was not
// encoded), `compression` the bytes the Content-Encoding saved, `text` the
// body kept (decoded), with "encoding": "base64" when it is binary.
json response_content(const json& resp, const std::string& mime_type, bool body_cut) {
  const int64_t wire = resp.value("body_size", int64_t{0});
  json content = {{"size", wire}, {"mimeType", mime_type}};
  if (resp.contains("content_encoding")) {
    const int64_t decoded = resp.value("body_decoded_size", int64_t{0});
    content["size"] = decoded;
    // With a body cut (the call's flag body_truncated) the decoded size
    // counts what was decoded of it: the saving is not known.
    if (!body_cut) content["compression"] = decoded - wire;
  }
  if (auto b = resp.find("body"); b != resp.end() && b->is_string()) {
    content["text"] = *b;
    if (is_base64(resp)) content["encoding"] = "base64";
  }
  return content;
}

json har_entry(const json& c) {
  const json& req = c["request"];
  const json& resp = c["response"];
  std::string host, ctype, req_ctype;
  json req_headers = har_headers(req["headers"], &host, &req_ctype);
  const std::string dst_ip = c["dst"]["ip"].get<std::string>();
  const int dst_port = c["dst"]["port"].get<int>();
  if (host.empty())
    host = (dst_ip.find(':') != std::string::npos ? "[" + dst_ip + "]" : dst_ip) +
           (dst_port == 80 ? "" : ":" + std::to_string(dst_port));
  const std::string path = str_or(req, "path", "/");
  const bool absolute = path.rfind("http://", 0) == 0 || path.rfind("https://", 0) == 0;
  const std::string url = absolute ? path : "http://" + host + (path.empty() || path[0] != '/' ? "/" : "") + path;
  const std::string version = str_or(req, "version", "HTTP/1.1");

  json request = {{"method", str_or(req, "method")},
                  {"url", url},
                  {"httpVersion", version},
                  {"cookies", json::array()},
                  {"headers", req_headers},
                  {"queryString", query_string(path)},
                  {"headersSize", -1},
                  {"bodySize", req.value("body_size", int64_t{0})}};
  // The request body kept (HAR 1.2 postData has no encoding field: a binary
  // body is its base64, said so by the custom field _encoding).
  if (auto b = req.find("body"); b != req.end() && b->is_string()) {
    json post = {{"mimeType", req_ctype}, {"text", *b}};
    if (is_base64(req)) {
      post["_encoding"] = "base64";
      post["comment"] = "the body is binary: text holds its base64";
    }
    request["postData"] = std::move(post);
  }
  json response;
  double wait_ms = 0;
  if (resp.is_object()) {
    json headers = har_headers(resp["headers"], nullptr, &ctype);
    std::string location;
    for (auto& h : headers)
      if (h["name"] == "location") location = h["value"];
    const int64_t body = resp.value("body_size", int64_t{0});
    response = {{"status", resp.value("status", 0)},
                {"statusText", str_or(resp, "reason")},
                {"httpVersion", version},
                {"cookies", json::array()},
                {"headers", headers},
                {"content", response_content(resp, ctype, has_flag(c, "body_truncated"))},
                {"redirectURL", location},
                {"headersSize", -1},
                {"bodySize", body}};
    if (c["duration_us"].is_number()) wait_ms = c["duration_us"].get<int64_t>() / 1000.0;
  } else {
    // No response (timeout, closed): what browsers record for a request
    // that got none.
    response = {{"status", 0},
                {"statusText", ""},
                {"httpVersion", ""},
                {"cookies", json::array()},
                {"headers", json::array()},
                {"content", {{"size", 0}, {"mimeType", ""}}},
                {"redirectURL", ""},
                {"headersSize", -1},
                {"bodySize", -1}};
  }
  json entry = {{"startedDateTime", har_time(str_or(c, "ts"))},
                {"time", wait_ms},
                {"request", request},
                {"response", response},
                {"cache", json::object()},
                {"timings", {{"send", 0}, {"wait", wait_ms}, {"receive", 0}}},
                {"serverIPAddress", dst_ip},
                {"connection", std::to_string(c["src"]["port"].get<int>())}};
  std::string comment = c["id"].is_string() ? "tapwire call " + c["id"].get<std::string>() : "";
  if (c["flags"].is_array() && !c["flags"].empty()) {
    std::string flags;
    for (auto& f : c["flags"]) flags += (flags.empty() ? "" : ",") + f.get<std::string>();
    comment += " [" + flags + "]";
  }
  if (!comment.empty()) entry["comment"] = comment;
  // Who the ends are (HAR 1.2 allows custom fields that start with "_"):
  // the record's endpoint objects, identity included, and the node that
  // captured the call when the record names it.
  entry["_src"] = c["src"];
  entry["_dst"] = c["dst"];
  if (auto node = c.find("node"); node != c.end() && node->is_string()) entry["_node"] = *node;
  return entry;
}

int run_export_har(const ExportDbOptions& o) {
  auto db = open_call_db(o.db);
  dissect::CallDb::Query q;
  json entries = json::array();
  uint64_t orphans = 0;
  for (auto& c : db->query(q)) {
    // HTTP/1 and HTTP/2 (gRPC, WebSocket and the rest are not HAR entries).
    if (const std::string p = c.value("protocol", ""); p != "http" && p != "http2") continue;
    if (!c["request"].is_object()) {
      orphans++;  // a response without its request has no place in HAR
      continue;
    }
    entries.push_back(har_entry(c));
  }
  const size_t n = entries.size();
  json har = {{"log",
               {{"version", "1.2"},
                {"creator", {{"name", "tapwire"}, {"version", TAPWIRE_VERSION}}},
                {"pages", json::array()},
                {"entries", std::move(entries)},
                {"comment", "HTTP calls dissected by tapwire from " + o.db}}}};
  OutputFile out(o.output);
  write_all(out, har.dump(1, '\t', false, json::error_handler_t::replace) + "\n");
  out.commit();
  std::fprintf(stderr, "tapwire: exported %zu HTTP calls%s as HAR 1.2 to %s\n", n,
               orphans ? (", skipped " + std::to_string(orphans) + " responses without a request").c_str() : "",
               o.output == "-" ? "standard output" : o.output.c_str());
  return 0;
}

int run_export_jsonl(const ExportDbOptions& o) {
  auto db = open_call_db(o.db);
  OutputFile out(o.output);
  dissect::CallDb::Query q;
  uint64_t n = 0;
  std::string buf;
  for (auto& c : db->query(q)) {
    buf += c.dump(-1, ' ', false, json::error_handler_t::replace);
    buf += '\n';
    n++;
    if (buf.size() >= (1u << 16)) {
      write_all(out, buf);
      buf.clear();
    }
  }
  write_all(out, buf);
  out.commit();
  if (o.output != "-")
    std::fprintf(stderr, "tapwire: exported %" PRIu64 " call records to %s\n", n, o.output.c_str());
  return 0;
}

}  // namespace

void register_export_har(CLI::App& export_app, Action& action) {
  auto o = std::make_shared<ExportDbOptions>();
  CLI::App* sub = export_app.add_subcommand("har", "Write the HTTP calls of a dissection DB as HAR 1.2");
  sub->add_option("--db", o->db, "the dissection DB (tapwire dissect, tapwire-dissector)")->required();
  sub->add_option("-o,--output", o->output, "HAR file to write ('-' for standard output)")->required();
  sub->callback([o, &action] { action = [o] { return run_export_har(*o); }; });
}

void register_export_jsonl(CLI::App& export_app, Action& action) {
  auto o = std::make_shared<ExportDbOptions>();
  CLI::App* sub = export_app.add_subcommand("jsonl", "Write the calls of a dissection DB as JSON lines (call records)");
  sub->add_option("--db", o->db, "the dissection DB (tapwire dissect, tapwire-dissector)")->required();
  sub->add_option("-o,--output", o->output, "file to write ('-', the default, for standard output)")
      ->capture_default_str();
  sub->callback([o, &action] { action = [o] { return run_export_jsonl(*o); }; });
}

}  // namespace tapwire::cli
