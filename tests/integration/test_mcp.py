#!/usr/bin/env python3
"""MCP (docs/MCP.md) over a real lab, driven by the official client SDK
(@modelcontextprotocol/sdk, pinned in tests/mcp/package-lock.json): the
sensor captures with live dissection on, curl makes HTTP calls, a snapshot
is made and dissected through the HTTP API, more calls follow; then
tests/mcp/client.mjs connects to `tapwire mcp` over stdio and to `tapwire
serve`'s POST /mcp over Streamable HTTP, lists the tools (each with an
object inputSchema), calls every tool offered, and prints what it got:

- every read-only tool answers what the HTTP API answers for the same
  parameters, on both transports (same call ids, same statistics, same
  snapshot list...); list_api_calls with db=SNAPSHOT/DISSECTION answers
  from that DB: its ids are the DB's own (read by `tapwire calls`), not the
  live DB's;
- export_snapshot_pcap writes the same bytes GET .../pcap sends, inside the
  snapshot's directory, and the snapshot still verifies;
- create_snapshot, start_snapshot_dissection, the dissection switch act as
  their routes do; delete_snapshot is offered only by the process started
  with --allow-destructive, and deletes;
- POST /mcp is under the API's token rule.

Needs root, netns, BPF, the built binaries and node (npm ci in tests/mcp when
its node_modules is missing); skips with 77 otherwise (fails under CI=true).
TW_LAB_KEEP=1 keeps the lab directory.
"""

import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
import unittest
import urllib.parse
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
from test_serve import Api, start_serve, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MCP_DIR = REPO / "tests" / "mcp"
NODE = "lab-node"


def unavailable(msg: str) -> None:
    if lab.in_ci():
        print(f"FAIL (CI=true): cannot run: {msg}", file=sys.stderr)
        sys.exit(1)
    print(f"SKIP: cannot run: {msg}", file=sys.stderr)
    sys.exit(lab.SKIP)


def ensure_client() -> str:
    """node, with the SDK installed in tests/mcp (npm ci from the lock file when missing)."""
    node = shutil.which("node")
    if not node:
        unavailable("node is not installed (make deps)")
    if not (MCP_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json").exists():
        npm = shutil.which("npm")
        if not npm:
            unavailable("npm is not installed and tests/mcp/node_modules is missing (make deps)")
        lab.log("npm ci --prefix tests/mcp")
        lab.run([npm, "ci", "--prefix", str(MCP_DIR), "--no-audit", "--no-fund"], timeout=600)
    return node


class TokenApi(Api):
    """An Api client that sends the bearer token."""

    def __init__(self, host: str, port: int, token: str):
        super().__init__(host, port)
        self.token = token

    def request(self, method, path, body=None, headers=None, timeout: float = 60):
        h = {"Authorization": f"Bearer {self.token}"}
        h.update(headers or {})
        return super().request(method, path, body, h, timeout)

    def answer(self, path: str, **params):
        """(status, JSON) of a GET, whatever the status."""
        q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self.json("GET", f"/api/v1/{path}" + (f"?{q}" if q else ""), want=None)


# The tools that read, and the route that answers the same (path, parameters).
def route_of(tool: str, args: dict) -> tuple[str, dict] | None:
    a = dict(args)
    if tool == "list_api_calls":
        return "calls", a
    if tool == "get_api_call":
        return f"calls/{a.pop('id')}", a
    if tool == "get_api_stats":
        return "stats", a
    if tool == "list_l4_flows":
        return "flows", a
    if tool == "get_service_map":
        return "map", a
    if tool == "list_workloads":
        return "workloads", a
    if tool == "list_ips":
        return "ips", a
    if tool == "list_snapshots":
        return "snapshots", a
    if tool == "list_snapshot_dissections":
        return f"snapshots/{a.pop('name')}/dissections", a
    if tool == "get_snapshot_dissection_status":
        return f"snapshots/{a.pop('name')}/dissections/{a.pop('id')}", a
    if tool == "get_data_boundaries":
        return "boundaries", a
    return None


def settled(tool: str, j):
    """What of an answer holds still while the sensor runs: the streams' sizes
    and ends, and the live DB file's size, move with whatever it still writes."""
    if tool != "get_data_boundaries" or not isinstance(j, dict) or "dbs" not in j:
        return j
    out = dict(j)
    for k in ("segments", "identity", "flows"):
        out[k] = sorted(j[k]) if isinstance(j[k], dict) else j[k]
    out["dbs"] = [without(d, "bytes") for d in j["dbs"]]
    return out


def tool_json(entry: dict):
    """A call's answer as the server wrote it: the text content (exact: the
    SDK's structuredContent went through JavaScript numbers, which lose the
    digits of nanosecond times)."""
    res = entry["result"]
    return json.loads(res["content"][0]["text"])


def without(j: dict, *keys) -> dict:
    return {k: v for k, v in j.items() if k not in keys}


class Mcp(unittest.TestCase):
    maxDiff = None

    def run_client(self, L, node: str, plan: dict, name: str) -> dict:
        plan_file = L.dir / f"{name}.json"
        plan_file.write_text(json.dumps(plan))
        r = lab.run([node, str(MCP_DIR / "client.mjs"), str(plan_file)], check=False, timeout=300, cwd=str(MCP_DIR))
        (L.dir / f"{name}.out.json").write_text(r.stdout)
        if r.returncode != 0:
            raise AssertionError(f"client.mjs {name} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        out = json.loads(r.stdout)
        self.assertEqual(out["problems"], [])
        return out

    def check_same_as_api(self, api: TokenApi, transport: str, entries: list):
        for e in entries:
            route = route_of(e["name"], e["arguments"])
            if route is None:
                continue
            path, params = route
            status, want = api.answer(path, **params)
            what = f"{transport}: {e['name']} {e['arguments']}"
            self.assertIn("result", e, what)
            res = e["result"]
            if status == 200:
                self.assertFalse(res.get("isError", False), f"{what}: {res}")
                self.assertEqual(settled(e["name"], tool_json(e)), settled(e["name"], want), what)
            else:
                self.assertTrue(res.get("isError"), f"{what}: the API answered {status}, the tool {res}")
                self.assertEqual(res["structuredContent"]["status"], status, what)
                self.assertIn(want["error"], res["content"][0]["text"], what)

    def test_mcp(self):
        node = ensure_client()
        with lab.Lab(dnsmasq=False) as L:
            data = L.dir / "data"
            L.start_sensor(data, extra=["--dissection", "--dissection-stop-after", "0", "--metrics-address", ""])
            live_db = data / "dissection.db"
            wait_for(lambda: live_db.exists(), 20, "the live dissector to create DATA_DIR/dissection.db")
            (L.dir / "nginx" / "www" / "hello.json").write_text('{"hello": "mcp"}\n')
            token = secrets.token_hex(20)
            token_file = L.dir / "token"
            token_file.write_text(token + "\n")
            os.chmod(token_file, 0o600)
            # The token from loopback too: the HTTP transport must send it like any client.
            serve, port = start_serve(L, "serve", ["--data-dir", data, "--listen", "127.0.0.1:0", "--token-file",
                                                   token_file, "--loopback-needs-token", "--node", NODE])
            api = TokenApi("127.0.0.1", port, token)

            # ---- traffic before the snapshot ------------------------------------------
            for path in ["/hello.json", "/hello.json", "/no-such-page", "/before-1", "/before-2"]:
                L.cli(["curl", "-sS", "-o", "/dev/null", L.url(path)])

            def live_paths():
                return {c["path"] for c in api.get("calls", filter="http", limit=1000)["calls"]}
            wait_for(lambda: {"/hello.json", "/no-such-page", "/before-2"} <= live_paths(), 30,
                     "the calls in the live DB")
            time.sleep(1.5)  # the sensor drains and publishes the traffic above
            _, j = api.json("POST", "/api/v1/snapshots", {"name": "mcp-snap"}, want=201)
            _, j = api.json("POST", "/api/v1/snapshots/mcp-snap/dissections", {"id": "d1"}, want=202)
            d = wait_for(lambda: (lambda x: x if x["state"] != "running" else None)(
                api.get("snapshots/mcp-snap/dissections/d1")["dissection"]), 180, "the dissection of mcp-snap")
            self.assertEqual(d["state"], "done", d)
            _, j = api.json("POST", "/api/v1/snapshots", {"name": "mcp-throwaway"}, want=201)

            # ---- traffic after it: the live DB now differs from the snapshot's --------
            for path in ["/after-1", "/after-2", "/hello.json"]:
                L.cli(["curl", "-sS", "-o", "/dev/null", L.url(path)])
            wait_for(lambda: {"/after-1", "/after-2"} <= live_paths(), 30, "the later calls in the live DB")
            time.sleep(2)  # nothing left in flight: the live DB holds still from here

            live = api.get("calls", limit=1000)["calls"]
            hello = next(c for c in live if c["path"] == "/hello.json")
            snap_calls = api.get("calls", db="mcp-snap/d1", limit=1000)["calls"]
            self.assertTrue(snap_calls)
            snap_hello = next(c for c in snap_calls if c["path"] == "/hello.json")
            # A fixed time for the identity stream's view: the answers do not move.
            at = api.get("snapshots/mcp-snap")["snapshot"]["to"]

            # ---- what only reads: both transports, the same answers as the API --------
            reads = [
                {"name": "get_data_boundaries"},
                {"name": "list_api_calls"},
                {"name": "list_api_calls", "arguments": {"filter": "http", "limit": 1000, "format": "full"}},
                {"name": "list_api_calls", "arguments": {"filter": 'request.path == "/hello.json"', "limit": 2}},
                {"name": "list_api_calls", "arguments": {"db": "mcp-snap/d1", "limit": 1000}},
                {"name": "list_api_calls", "arguments": {"filter": "http and respnse.status >= 500"}},
                {"name": "get_api_call", "arguments": {"id": hello["id"]}},
                {"name": "get_api_call", "arguments": {"id": snap_hello["id"], "db": "mcp-snap/d1"}},
                {"name": "get_api_call", "arguments": {"id": "0123456789abcdef"}},
                {"name": "get_api_stats"},
                {"name": "get_api_stats", "arguments": {"group_by": "endpoint", "filter": "http"}},
                {"name": "get_api_stats", "arguments": {"group_by": "status", "db": "mcp-snap/d1"}},
                {"name": "list_l4_flows", "arguments": {"snapshot": "mcp-snap", "limit": 1000}},
                {"name": "list_l4_flows", "arguments": {"snapshot": "mcp-snap", "filter": "tcp", "sort": "bytes"}},
                {"name": "get_l4_flow_summary", "arguments": {"snapshot": "mcp-snap"}},
                {"name": "get_service_map", "arguments": {"snapshot": "mcp-snap", "level": "pod"}},
                {"name": "list_workloads", "arguments": {"at": at}},
                {"name": "list_ips", "arguments": {"at": at}},
                {"name": "list_snapshots"},
                {"name": "list_snapshot_dissections", "arguments": {"name": "mcp-snap"}},
                {"name": "get_snapshot_dissection_status", "arguments": {"name": "mcp-snap", "id": "d1"}},
            ]
            stdio = {"name": "stdio", "command": str(lab.cli_bin()),
                     "args": ["mcp", "--data-dir", str(data), "--node", NODE, "--allow-destructive"]}
            http = {"name": "http", "url": f"http://127.0.0.1:{port}/mcp",
                    "headers": {"Authorization": f"Bearer {token}"}}
            prompts = [{"name": "find_errors", "arguments": {"window": "-1h"}},
                       {"name": "latency_analysis", "arguments": {"threshold": "100ms"}},
                       {"name": "show_topology", "arguments": {}}]
            first = self.run_client(L, node, {"transports": [stdio, http], "calls": reads, "prompts": prompts},
                                    "reads")
            lab.log(f"reads: stdio {len(first['stdio']['tools'])} tools, http {len(first['http']['tools'])} tools "
                    f"(version {first['http']['protocol_version']}, session {first['http']['session']})")
            for t in ("stdio", "http"):
                r = first[t]
                self.assertEqual(r["server"]["name"], "tapwire")
                self.assertTrue(r["capabilities"]["tools"] is not None)
                names = [x["name"] for x in r["tools"]]
                self.assertEqual(len(names), len(set(names)))
                self.assertEqual("delete_snapshot" in names, t == "stdio", names)
                for e in r["calls"]:
                    self.assertNotIn("error", e, f"{t}: {e}")
                self.check_same_as_api(api, t, r["calls"])
                # The bad filter: a tool error with the column.
                bad = next(e for e in r["calls"] if "respnse" in e["arguments"].get("filter", ""))
                self.assertTrue(bad["result"]["isError"])
                self.assertEqual(bad["result"]["structuredContent"]["column"], 10)
                # The snapshot's DB: its own calls, read here without the API.
                snap = next(e for e in r["calls"] if e["arguments"].get("db") == "mcp-snap/d1"
                            and e["name"] == "list_api_calls")
                ids = [c["id"] for c in tool_json(snap)["calls"]]
                ref = lab.run([str(lab.cli_bin()), "calls", "--db",
                               str(data / "snapshots" / "mcp-snap" / "dissections" / "d1.db"), "--json"], timeout=120)
                self.assertEqual(sorted(ids), sorted(json.loads(x)["id"] for x in ref.stdout.splitlines() if x.strip()))
                live_ids = [c["id"] for c in tool_json(next(e for e in r["calls"] if e["name"] == "list_api_calls"
                                                              and not e["arguments"]))["calls"]]
                self.assertNotEqual(sorted(ids), sorted(live_ids))
                self.assertTrue({"/after-1", "/after-2"}.isdisjoint(
                    c["path"] for c in tool_json(snap)["calls"]))
                # The flow summary: the totals of the flows GET flows answers.
                summary = tool_json(next(e for e in r["calls"] if e["name"] == "get_l4_flow_summary"))
                flows = api.get("flows", snapshot="mcp-snap", limit=10000, sort="bytes")
                self.assertEqual(summary["matched"], flows["matched"])
                self.assertEqual(summary["totals"]["flows"], len(flows["flows"]))
                self.assertEqual(summary["totals"]["bytes"], sum(
                    f.get("client_to_server", {}).get("bytes", 0) + f.get("server_to_client", {}).get("bytes", 0)
                    for f in flows["flows"]))
                self.assertGreater(summary["totals"]["flows"], 0)
                self.assertTrue(summary["top_talkers"])
                # The prompts name the tools to call.
                self.assertEqual({p["name"] for p in r["prompts"]}, {"find_errors", "latency_analysis", "show_topology"})
                for p in r["prompt_results"]:
                    self.assertNotIn("error", p, p)
                    text = p["result"]["messages"][0]["content"]["text"]
                    self.assertIn("get_api_stats" if p["name"] != "show_topology" else "get_service_map", text)

            # ---- what acts: on each transport, then checked through the API ------------
            acts = []
            for t in ("stdio", "http"):
                acts += [
                    {"name": "get_dissection_status", "only": t},
                    {"name": "export_snapshot_pcap", "arguments": {"name": "mcp-snap"}, "only": t},
                    {"name": "create_snapshot", "arguments": {"name": f"mcp-made-{t}"}, "only": t},
                    {"name": "start_snapshot_dissection", "arguments": {"name": "mcp-snap", "id": f"by-{t}"},
                     "only": t},
                    {"name": "disable_dissection", "only": t},
                    {"name": "enable_dissection", "only": t},
                ]
            acts.append({"name": "delete_snapshot", "arguments": {"name": "mcp-throwaway"}, "only": "stdio"})
            second = self.run_client(L, node, {"transports": [stdio, http], "calls": acts}, "acts")
            got = {t: {e["name"]: e for e in second[t]["calls"]} for t in ("stdio", "http")}
            for t in ("stdio", "http"):
                for e in got[t].values():
                    self.assertNotIn("error", e, f"{t}: {e}")
                    self.assertFalse(e["result"].get("isError", False), f"{t}: {e}")
                # Every tool offered was called, over the two runs.
                called = {e["name"] for e in first[t]["calls"]} | set(got[t])
                offered = {x["name"] for x in second[t]["tools"]}
                self.assertEqual(offered - called, set(), t)
            self.assertNotIn("delete_snapshot", got["http"])

            status, raw, ctype = api.request("GET", "/api/v1/snapshots/mcp-snap/pcap")
            self.assertEqual(status, 200)
            for t in ("stdio", "http"):
                pcap = tool_json(got[t]["export_snapshot_pcap"])
                path = Path(pcap["path"])
                self.assertEqual(path.parent, data / "snapshots" / "mcp-snap" / "dissections" / "exports")
                self.assertEqual(pcap["bytes"], len(raw), t)
                self.assertGreater(pcap["packets"], 0)
            self.assertEqual(hashlib.sha256(path.read_bytes()).hexdigest(), hashlib.sha256(raw).hexdigest())
            r = lab.run([str(lab.cli_bin()), "snapshot", "verify", "mcp-snap", "--data-dir", str(data)], check=False)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

            for t in ("stdio", "http"):
                made = tool_json(got[t]["create_snapshot"])
                self.assertEqual(made["snapshot"], api.get(f"snapshots/mcp-made-{t}")["snapshot"], t)
                job = tool_json(got[t]["start_snapshot_dissection"])["dissection"]
                self.assertEqual(job["db"], f"mcp-snap/by-{t}")
                self.assertEqual(tool_json(got[t]["get_dissection_status"])["dissection"]["enabled"], True, t)
                self.assertEqual(tool_json(got[t]["enable_dissection"])["dissection"]["enabled"], True, t)
            # The one `tapwire serve` runs to its end; `tapwire mcp`'s lasts as long as its
            # session, and the client has closed it: done if it was quick, else cancelled.
            for t in ("http", "stdio"):
                d = wait_for(lambda: (lambda x: x if x["state"] != "running" else None)(
                    api.get(f"snapshots/mcp-snap/dissections/by-{t}")["dissection"]), 180, f"the dissection by {t}")
                lab.log(f"the dissection started over {t}: {d['state']}")
                self.assertIn(d["state"], ("done",) if t == "http" else ("done", "cancelled"), d)
                if d["state"] == "done":
                    self.assertEqual(
                        sorted(c["id"] for c in api.get("calls", db=f"mcp-snap/by-{t}", limit=1000)["calls"]),
                        sorted(c["id"] for c in snap_calls))
            self.assertEqual(api.get("dissection")["dissection"]["enabled"], True)
            self.assertEqual(tool_json(got["stdio"]["delete_snapshot"])["deleted"], "mcp-throwaway")
            status, _ = api.json("GET", "/api/v1/snapshots/mcp-throwaway", want=None)
            self.assertEqual(status, 404)

            # ---- POST /mcp is under the token rule -------------------------------------
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            status, _, _ = Api("127.0.0.1", port).request("POST", "/mcp", ping)
            self.assertEqual(status, 401)
            status, raw, _ = api.request("POST", "/mcp", ping)
            self.assertEqual((status, json.loads(raw)["result"]), (200, {}))

            self.assertEqual(serve.stop(signal.SIGTERM, 10), 0, serve.output()[-2000:])


if __name__ == "__main__":
    lab.require()
    ensure_client()
    unittest.main()
