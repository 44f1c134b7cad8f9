// Snapshots (the code of `tapwire snapshot`), their packets as pcapng (the
// code of `tapwire export pcap`), their delayed dissections (jobs.cpp), and
// the sensor's dissection switch (its control socket, as `tapwire
// dissection`).
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "api.hpp"
#include "call_db.hpp"
#include "snapshot.hpp"
#include "timefmt.hpp"
#include "views.hpp"

namespace tapwire::serve {
namespace {

using nlohmann::json;
namespace snap = tapwire::snapshot;

json manifest_json(const snap::Manifest& m) {
  json files = json::array();
  uint64_t segs = 0;
  for (const auto& f : m.files) segs += f.name.rfind("segments/", 0) == 0;
  return {{"name", m.name},
          {"created", m.created},
          {"from", format_rfc3339_ns(m.from_ns)},
          {"to", format_rfc3339_ns(m.to_ns)},
          {"from_ns", m.from_ns},
          {"to_ns", m.to_ns},
          {"interfaces", m.interfaces},
          {"files", m.files.size()},
          {"segments", segs},
          {"bytes", m.total_size()},
          {"tapwire_version", m.tapwire_version}};
}

json info_json(const Ctx& ctx, const snap::SnapshotInfo& s) {
  json j = s.ok ? manifest_json(s.manifest) : json{{"name", s.name}, {"error", s.error}};
  j["ok"] = s.ok;
  // A name the API cannot address (made by hand) lists no dissections.
  j["dissections"] = valid_name(s.name) ? ctx.jobs->list(s.name)["dissections"] : json::array();
  return j;
}

json time_field(const json& body, const char* k) {
  if (!body.contains(k) || body[k].is_null()) return nullptr;
  if (!body[k].is_string()) throw ApiError(400, std::string(k) + ": give a time as a string (RFC 3339, Unix seconds, -5m)");
  auto t = parse_time_arg(body[k].get<std::string>(), realtime_now_ns());
  if (!t.ns) throw ApiError(400, std::string(k) + ": " + t.error);
  return *t.ns;
}

// The pcapng export of a snapshot (or of the live ring: snapshot ""), as
// `tapwire export pcap` plans it: every error of the request is found here.
cli::PcapPlan pcap_plan(const Ctx& ctx, const Params& p, const std::string& snapshot) {
  cli::PcapExportOptions po;
  po.data_dir = ctx.o.data_dir;
  po.snapshot = snapshot;
  po.from = p.get("start");
  po.to = p.get("end");
  po.flow = p.get("flow");
  return cli::plan_pcap_export(po);
}

}  // namespace

json snapshots_json(const Ctx& ctx) {
  json arr = json::array();
  for (const auto& info : snap::list(ctx.o.data_dir)) arr.push_back(info_json(ctx, info));
  return {{"snapshots", arr}};
}

json snapshot_json(const Ctx& ctx, const std::string& name) {
  ctx.snapshot_dir(name);
  for (const auto& info : snap::list(ctx.o.data_dir))
    if (info.name == name) return {{"snapshot", info_json(ctx, info)}};
  throw ApiError(404, "no such snapshot: " + name);
}

json create_snapshot(const Ctx& ctx, const json& body) {
  for (auto& [k, v] : body.items())
    if (k != "start" && k != "end" && k != "name" && k != "interfaces")
      throw ApiError(400, "unknown field " + k + " (start, end, name, interfaces)");
  snap::CreateOptions c;
  c.data_dir = ctx.o.data_dir;
  if (body.contains("name")) {
    if (!body["name"].is_string() || !valid_name(body["name"].get<std::string>()))
      throw ApiError(400, "name: 1-128 of [A-Za-z0-9._-], not starting with '.' nor ending with .tmp");
    c.name = body["name"].get<std::string>();
  } else {
    std::string t = format_rfc3339_ns(realtime_now_ns()).substr(0, 19);
    std::erase_if(t, [](char ch) { return ch == '-' || ch == ':'; });
    c.name = "snap-" + t + "Z";
  }
  if (auto v = time_field(body, "start"); !v.is_null()) c.from_ns = v.get<uint64_t>();
  if (auto v = time_field(body, "end"); !v.is_null()) c.to_ns = v.get<uint64_t>();
  if (body.contains("interfaces")) {
    if (!body["interfaces"].is_array()) throw ApiError(400, "interfaces: a list of interface names");
    for (auto& i : body["interfaces"]) {
      if (!i.is_string()) throw ApiError(400, "interfaces: a list of interface names");
      c.interfaces.push_back(i.get<std::string>());
    }
  }
  c.storage_size = ctx.o.snapshot_storage_size;
  c.request_rotate = cli::sensor_rotate(ctx.control_socket);
  const snap::Manifest m = snap::create(c);
  json j = manifest_json(m);
  j["ok"] = true;
  j["dissections"] = json::array();
  return {{"snapshot", j}};
}

json delete_snapshot(const Ctx& ctx, const std::string& name) {
  ctx.snapshot_dir(name);
  if (!ctx.o.allow_destructive) throw ApiError(403, "deleting snapshots needs tapwire serve --allow-destructive");
  if (ctx.jobs->running_on(name)) throw ApiError(409, "a dissection of " + name + " runs; cancel it first");
  snap::remove(ctx.o.data_dir, name);
  return {{"deleted", name}};
}

json write_snapshot_pcap(const Ctx& ctx, const std::string& name, const Params& p) {
  ctx.snapshot_dir(name);
  const cli::PcapPlan plan = pcap_plan(ctx, p, name);
  // One file per set of parameters, named by them: asking again rewrites it
  // rather than piling up copies. Times as the plan resolved them (a
  // relative -5m is a fixed window by now).
  std::string file = name;
  if (!p.get("flow").empty()) file += "-flow-" + p.get("flow");
  if (plan.from_ns) file += "-from-" + std::to_string(plan.from_ns);
  if (plan.to_ns != UINT64_MAX) file += "-to-" + std::to_string(plan.to_ns);
  file += ".pcapng";
  const std::string dir = ctx.jobs->results_dir(name) + "/exports";
  if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST)
    throw ApiError(500, "cannot create " + dir + ": " + std::strerror(errno));
  const std::string path = dir + "/" + file, tmp = path + ".tmp";
  FILE* fp = std::fopen(tmp.c_str(), "wbx");
  if (!fp && errno == EEXIST) {
    // Left by a writer that died, or being written by another request now:
    // this one writes its own.
    ::unlink(tmp.c_str());
    fp = std::fopen(tmp.c_str(), "wbx");
  }
  if (!fp) throw ApiError(500, "cannot write " + tmp + ": " + std::strerror(errno));
  cli::PcapExportResult r;
  try {
    r = cli::write_pcap_export(plan, fp);
  } catch (...) {
    std::fclose(fp);
    ::unlink(tmp.c_str());
    throw;
  }
  const bool closed = std::fclose(fp) == 0;
  if (!closed || !r.ok) {
    ::unlink(tmp.c_str());
    throw ApiError(500, "writing " + path + " failed: " + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw ApiError(500, "cannot rename " + tmp + ": " + std::strerror(errno));
  }
  struct stat st {};
  ::stat(path.c_str(), &st);
  return {{"snapshot", name},
          {"path", path},
          {"bytes", static_cast<uint64_t>(st.st_size)},
          {"packets", r.stats.packets},
          {"segments_read", r.read}};
}

json dissection_switch(const Ctx& ctx, const std::string& action) {
  json reply = ctx.control({{"cmd", "dissection"}, {"action", action}});
  return {{"dissection", reply.value("dissection", json::object())}};
}

namespace {

// A FILE* whose bytes go to the HTTP response, chunk by chunk, as the
// pcapng writer produces them.
FILE* sink_file(httplib::DataSink& sink) {
  cookie_io_functions_t io{};
  io.write = [](void* c, const char* buf, size_t n) -> ssize_t {
    auto* s = static_cast<httplib::DataSink*>(c);
    if (n == 0) return 0;
    return s->write(buf, n) ? static_cast<ssize_t>(n) : -1;
  };
  return fopencookie(&sink, "w", io);
}

// GET pcap (the live ring) and GET snapshots/{name}/pcap.
void get_pcap(Ctx& ctx, const httplib::Request& req, httplib::Response& res, const std::string& snapshot) {
  // Everything that can be wrong with the request is found here, while the
  // status can still say so.
  auto plan = std::make_shared<cli::PcapPlan>(pcap_plan(ctx, Params(req), snapshot));
  const std::string file = (snapshot.empty() ? ctx.o.node : snapshot) + ".pcapng";
  res.set_header("Content-Disposition", "attachment; filename=\"" + file + "\"");
  res.set_chunked_content_provider("application/x-pcapng", [plan](size_t, httplib::DataSink& sink) {
    FILE* fp = sink_file(sink);
    if (!fp) return false;
    bool ok = false;
    try {
      ok = cli::write_pcap_export(*plan, fp).ok;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tapwire serve: pcap export: %s\n", e.what());
    }
    ok = std::fclose(fp) == 0 && ok;
    if (!ok) return false;  // the client sees the stream cut: no terminating chunk
    sink.done();
    return true;
  });
}

}  // namespace

void add_snapshot_routes(httplib::Server& s, Ctx& ctx) {
  s.Get("/api/v1/snapshots",
        [&ctx](const httplib::Request&, httplib::Response& res) { ctx.reply(res, snapshots_json(ctx)); });
  s.Post("/api/v1/snapshots", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, create_snapshot(ctx, Ctx::body_json(req)), 201);
  });
  s.Get(R"(/api/v1/snapshots/([^/]+))", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, snapshot_json(ctx, req.matches[1]));
  });
  s.Delete(R"(/api/v1/snapshots/([^/]+))", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, delete_snapshot(ctx, req.matches[1]));
  });
  s.Get(R"(/api/v1/snapshots/([^/]+)/pcap)", [&ctx](const httplib::Request& req, httplib::Response& res) {
    const std::string name = req.matches[1];
    ctx.snapshot_dir(name);
    get_pcap(ctx, req, res, name);
  });
  s.Get("/api/v1/pcap", [&ctx](const httplib::Request& req, httplib::Response& res) { get_pcap(ctx, req, res, ""); });
  s.Get(R"(/api/v1/snapshots/([^/]+)/dissections)", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, ctx.jobs->list(req.matches[1]));
  });
  s.Post(R"(/api/v1/snapshots/([^/]+)/dissections)", [&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.reply(res, {{"dissection", ctx.jobs->start(req.matches[1], Ctx::body_json(req))}}, 202);
  });
  s.Get(R"(/api/v1/snapshots/([^/]+)/dissections/([^/]+))",
        [&ctx](const httplib::Request& req, httplib::Response& res) {
          ctx.reply(res, {{"dissection", ctx.jobs->get(req.matches[1], req.matches[2])}});
        });
  s.Delete(R"(/api/v1/snapshots/([^/]+)/dissections/([^/]+))",
           [&ctx](const httplib::Request& req, httplib::Response& res) {
             ctx.reply(res, {{"dissection", ctx.jobs->remove(req.matches[1], req.matches[2])}});
           });
  s.Get("/api/v1/dissection", [&ctx](const httplib::Request&, httplib::Response& res) {
    ctx.reply(res, dissection_switch(ctx, "status"));
  });
  s.Post("/api/v1/dissection/enable", [&ctx](const httplib::Request&, httplib::Response& res) {
    ctx.reply(res, dissection_switch(ctx, "enable"));
  });
  s.Post("/api/v1/dissection/disable", [&ctx](const httplib::Request&, httplib::Response& res) {
    ctx.reply(res, dissection_switch(ctx, "disable"));
  });
}

}  // namespace tapwire::serve
