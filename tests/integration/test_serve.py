#!/usr/bin/env python3
"""tapwire serve (docs/API.md) over a real lab: the sensor captures with live
dissection on, curl makes HTTP calls, and the API answers with them:

- /api/v1/calls has the calls curl made (method, path, status, the body
  curl received), and /api/v1/stream delivers a new call within 2 s;
- a snapshot made through the API, dissected by a job started through the
  API (progress, state), reads through calls?db=SNAPSHOT/ID exactly as
  `tapwire dissect` of the same snapshot does; its pcap streams;
- serve runs without capabilities (CapEff 0);
- listening on the lab's veth address inside the server namespace, it
  answers 401 to a client of the other namespace without the token, 200
  with it, and it refuses to listen there at all without a token.

Needs root, netns, BPF and the built binaries; skips with 77 otherwise
(fails under CI=true). TW_LAB_KEEP=1 keeps the lab directory.
"""

import base64
import collections
import http.client
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

BODY = '{"served": "by nginx", "for": "tapwire serve", "n": [1, 2, 3]}\n'


def wait_for(fn, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Api:
    """A client of one serve process."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        h = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        c.close()
        return r.status, raw, r.getheader("Content-Type", "")

    def json(self, method: str, path: str, body=None, want: int | None = 200, **kw):
        status, raw, ctype = self.request(method, path, body, **kw)
        j = json.loads(raw) if ctype.startswith("application/json") else None
        if want is not None and status != want:
            raise AssertionError(f"{method} {path}: {status}, wanted {want}: {raw[:2000]!r}")
        return status, j

    def get(self, path: str, **params):
        q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self.json("GET", f"/api/v1/{path}" + (f"?{q}" if q else ""))[1]


def start_serve(L, name: str, args: list, ns: str | None = None) -> tuple[lab.Proc, int]:
    cmd = [str(lab.cli_bin()), "serve"] + [str(a) for a in args]
    if ns:
        p = L.spawn(name, ns, cmd)
    else:
        p = lab.Proc(name, cmd, L.dir / f"{name}.log")
        L.procs.append(p)
    if not p.wait_for_line(r"tapwire serve: http://", 20):
        raise AssertionError(f"{name} did not start:\n{p.output()}")
    port = int(re.search(r"tapwire serve: http://\S+:(\d+)/api/v1/", p.output()).group(1))
    return p, port


def caps(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                k, v = line.split(":")
                out[k] = int(v.strip(), 16)
    return out


def comparable(c: dict) -> str:
    return json.dumps({k: v for k, v in c.items() if k != "node"}, sort_keys=True)


class Serve(unittest.TestCase):
    maxDiff = None

    def test_serve(self):
        with lab.Lab(dnsmasq=False) as L:
            data = L.dir / "data"
            sensor = L.start_sensor(data, extra=["--dissection", "--dissection-stop-after", "0",
                                                 "--metrics-address", ""])
            live_db = data / "dissection.db"
            wait_for(lambda: live_db.exists(), 20, "the live dissector to create DATA_DIR/dissection.db")
            (L.dir / "nginx" / "www" / "hello.json").write_text(BODY)
            token = secrets.token_hex(20)
            token_file = L.dir / "token"
            token_file.write_text(token + "\n")
            os.chmod(token_file, 0o600)

            serve, port = start_serve(L, "serve", ["--data-dir", data, "--listen", "127.0.0.1:0",
                                                   "--token-file", token_file, "--node", "lab-node"])
            api = Api("127.0.0.1", port)

            # No capability left (its bounding set emptied too: nothing it runs gains one).
            c = caps(serve.pid)
            self.assertEqual(c["CapEff"], 0, c)
            self.assertEqual(c["CapPrm"], 0, c)
            self.assertEqual(c["CapBnd"], 0, c)

            # ---- the calls curl made ------------------------------------------------
            r = L.cli(["curl", "-sS", "-H", "X-Serve-Test: 1", L.url("/hello.json")])
            self.assertEqual(r.stdout, BODY)
            r = L.cli(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", L.url("/no-such-page")])
            self.assertEqual(r.stdout, "404")

            def find(path):
                j = api.get("calls", filter=f'request.path == "{path}"', format="full")
                return j["calls"]
            got = wait_for(lambda: find("/hello.json"), 30, "/hello.json in /api/v1/calls")
            self.assertEqual(len(got), 1, got)
            call = got[0]
            self.assertEqual(call["protocol"], "http")
            self.assertEqual(call["request"]["method"], "GET")
            self.assertEqual(call["request"]["path"], "/hello.json")
            self.assertEqual(call["request"]["headers"]["x-serve-test"], "1")
            self.assertEqual(call["response"]["status"], 200)
            # As the record keeps it: text, or base64 when the dissector took it for binary
            # (the lab's nginx serves .json without a text type).
            body = call["response"]["body"]
            if call["response"].get("body_encoding") == "base64":
                body = base64.b64decode(body).decode()
            self.assertEqual(body, BODY)
            self.assertEqual(call["dst"]["ip"], L.srv4)
            self.assertEqual(call["src"]["ip"], L.cli4)
            self.assertTrue(call["node"])
            missing = wait_for(lambda: find("/no-such-page"), 30, "/no-such-page in /api/v1/calls")
            self.assertEqual(missing[0]["response"]["status"], 404)
            # The compact form and the one call whole.
            j = api.get("calls", filter='request.path == "/hello.json"')
            self.assertEqual({k: j["calls"][0][k] for k in ("method", "path", "status")},
                             {"method": "GET", "path": "/hello.json", "status": 200})
            self.assertNotIn("request", j["calls"][0])
            self.assertEqual(j["node"], "lab-node")
            whole = api.get(f"calls/{call['id']}")["call"]
            self.assertEqual(whole, call)
            st = api.get("stats", group_by="endpoint", filter="http")
            self.assertTrue(any(g["key"]["path"] == "/hello.json" and g["calls"] == 1 for g in st["groups"]), st)
            status, err = api.json("GET", "/api/v1/calls?filter=" + urllib.parse.quote("http and respnse.status"),
                                   want=400)
            self.assertEqual(err["column"], 10, err)

            # ---- the stream -----------------------------------------------------------
            self.stream_delivers(L, api)

            # ---- snapshot, delayed dissection, same calls as `tapwire dissect` --------------
            time.sleep(1.5)  # the sensor drains and publishes the traffic above
            status, j = api.json("POST", "/api/v1/snapshots", {"name": "serve-snap"}, want=201)
            self.assertEqual(j["snapshot"]["name"], "serve-snap")
            status, j = api.json("POST", "/api/v1/snapshots/serve-snap/dissections", {"id": "d1"}, want=202)
            self.assertEqual(j["dissection"]["state"], "running")
            seen = []

            def finished():
                d = api.get("snapshots/serve-snap/dissections/d1")["dissection"]
                seen.append(d)
                return d if d["state"] != "running" else None
            d = wait_for(finished, 180, "the dissection job to finish", step=0.1)
            self.assertEqual(d["state"], "done", d)
            self.assertEqual(d["progress"]["fraction"], 1.0, d)
            self.assertGreater(d["progress"]["total_bytes"], 0, d)
            self.assertGreater(d["progress"]["calls"], 0, d)
            lab.log(f"dissection job: {len(seen)} polls, last {d}")
            listed = api.get("snapshots/serve-snap/dissections")["dissections"]
            self.assertEqual([x["id"] for x in listed], ["d1"])
            snaps = api.get("snapshots")["snapshots"]
            self.assertEqual([x["id"] for x in snaps[0]["dissections"]], ["d1"])
            # The snapshot still verifies: its dissections are not part of it.
            r = lab.run([str(lab.cli_bin()), "snapshot", "verify", "serve-snap", "--data-dir", str(data)], check=False)
            self.assertEqual(r.returncode, 0, r.stderr)

            ref_db = L.dir / "reference.db"
            lab.run([str(lab.cli_bin()), "dissect", "--snapshot", "serve-snap", "--data-dir", str(data),
                     "--db", str(ref_db), "--quiet"], timeout=300)
            r = lab.run([str(lab.cli_bin()), "calls", "--db", str(ref_db), "--json"], timeout=120)
            want = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
            got, cursor = [], None
            while True:
                j = api.get("calls", db="serve-snap/d1", format="full", limit=1000, cursor=cursor)
                got += j["calls"]
                cursor = j["next_cursor"]
                if not cursor:
                    break
            self.assertGreater(len(want), 0)
            self.assertTrue(all(c.get("node") for c in got))
            self.assertEqual(collections.Counter(map(comparable, got)), collections.Counter(map(comparable, want)))
            self.assertTrue(any(c["request"] and c["request"].get("path") == "/hello.json" for c in got))
            # The snapshot's packets as pcapng.
            status, raw, ctype = api.request("GET", "/api/v1/snapshots/serve-snap/pcap")
            self.assertEqual(status, 200)
            self.assertEqual(ctype, "application/x-pcapng")
            self.assertEqual(raw[:4], b"\x0a\x0d\x0d\x0a", "not pcapng")
            self.assertGreater(len(raw), 1000)
            b = api.get("boundaries")
            self.assertTrue(b["segments"]["first"], b)
            self.assertIn("serve-snap/d1", [x["db"] for x in b["dbs"]])

            # ---- the token, from another host ------------------------------------------------
            self.token_from_another_namespace(L, data, token_file, token)

            self.assertTrue(sensor.alive(), sensor.output()[-2000:])
            self.assertTrue(serve.alive(), serve.output()[-2000:])
            self.assertEqual(serve.stop(signal.SIGTERM, 10), 0, serve.output()[-2000:])

    def stream_delivers(self, L, api):
        """A call made after connecting arrives on the stream, within 2 s of curl
        ending (the live dissector runs one second behind the wire and commits
        every half second). Three tries: the lab shares two cores with other work."""
        latencies = []
        for attempt in range(3):
            path = f"/stream-probe-{attempt}"
            conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
            conn.request("GET", "/api/v1/stream?filter=" + urllib.parse.quote(f'request.path == "{path}"'))
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.getheader("Content-Type"), "text/event-stream")
            events, opened = [], threading.Event()

            def reader():
                cur = {}
                for raw in resp.fp:
                    line = raw.decode().rstrip("\n")
                    if line.startswith(": tapwire stream"):
                        opened.set()
                    if line.startswith("data: "):
                        cur["data"] = json.loads(line[6:])
                    elif line.startswith("event: "):
                        cur["event"] = line[7:]
                    elif line == "" and cur:
                        cur["at"] = time.monotonic()
                        events.append(cur)
                        cur = {}
                        if events[-1].get("event") == "call":
                            return
            t = threading.Thread(target=reader, daemon=True)
            t.start()
            self.assertTrue(opened.wait(10), "the stream did not open")
            time.sleep(0.4)  # the server has placed this client at the DB's end
            L.cli(["curl", "-sS", "-o", "/dev/null", L.url(path)])
            done = time.monotonic()
            t.join(15)
            conn.close()
            calls = [e for e in events if e.get("event") == "call"]
            self.assertTrue(calls, f"no call on the stream for {path}: {events}")
            self.assertEqual(calls[0]["data"]["request"]["path"], path)
            latencies.append(calls[0]["at"] - done)
            lab.log(f"stream: {path} arrived {latencies[-1]:.2f} s after curl ended")
            if latencies[-1] <= 2.0:
                return
        self.fail(f"the stream never delivered within 2 s: {latencies}")

    def token_from_another_namespace(self, L, data, token_file, token):
        # Without a token it refuses to listen beyond loopback.
        r = lab.run(["ip", "netns", "exec", L.srv_ns, str(lab.cli_bin()), "serve", "--data-dir", str(data),
                     "--listen", f"{L.srv4}:8899", "--node", "lab-node"], check=False, timeout=30,
                    env={k: v for k, v in os.environ.items() if k != "TAPWIRE_TOKEN"})
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("needs a token", r.stderr)
        p, port = start_serve(L, "serve-veth", ["--data-dir", data, "--listen", f"{L.srv4}:8899",
                                                "--token-file", token_file, "--node", "lab-node"], ns=L.srv_ns)
        self.assertEqual(port, 8899)
        url = f"http://{L.srv4}:8899/api/v1/calls?limit=1"
        fmt = ["-o", "/dev/null", "-w", "%{http_code}"]
        r = L.cli(["curl", "-sS"] + fmt + [url], check=False)
        self.assertEqual(r.stdout, "401", r.stderr)
        r = L.cli(["curl", "-sS"] + fmt + ["-H", "Authorization: Bearer wrong" + token, url], check=False)
        self.assertEqual(r.stdout, "401", r.stderr)
        r = L.cli(["curl", "-sS", "-H", f"Authorization: Bearer {token}", url], check=False)
        self.assertEqual(json.loads(r.stdout)["node"], "lab-node", r.stdout + r.stderr)
        r = L.cli(["curl", "-sS"] + fmt + ["-H", f"Authorization: Bearer {token}", url], check=False)
        self.assertEqual(r.stdout, "200")
        self.assertEqual(caps(p.pid)["CapEff"], 0)
        self.assertEqual(p.stop(signal.SIGTERM, 10), 0, p.output()[-2000:])


if __name__ == "__main__":
    lab.require()
    unittest.main()
