#!/usr/bin/env python3
"""Done means (WebSocket dissection): real python3-websockets peers in the lab,
tcpdump on the server veth, and `tapwire-dissector --pcap` on that file gives
one `ws` record per message that equals tshark's frames assembled into
messages, and the payloads the peers themselves wrote down.

Three connections (wsref.SCRIPTS): permessage-deflate (the default) over
IPv4 with text, UTF-8, binary, fragmented text and binary messages both ways
(a fragment over 64 KiB), pings and pongs both ways (solicited and not),
messages over 64 KiB (64-bit lengths), empty messages, a close 1000 "bye"
from the client; compression off over IPv6, the same kinds, a 16-bit length
and a close 4001 "custom" from the server; and a short one that the client
closes with 1001 "going away".

tshark is the reference for each message: TCP stream and direction, opcode,
frame count (frames assembled by FIN: tshark lists frames, not messages),
payload bytes on the wire, RSV1 (compressed), close code and reason, and the
payload: the unmasked bytes tshark shows, inflated here per RFC 7692 (tshark
4.0 decompresses a one-frame message, which must agree, but not a fragmented
one). The peers' logs are the reference for the order and the bytes: what the
client sent is what the server received and the other way round, and equals
the payload tshark's bytes give. Then, from tapwire: every message with its
opcode, direction (client's in `request`, server's in `response`), `size`,
`wire_size`, `frames`, `compressed`, `close_code`/`close_reason`, the payload
byte for byte (text as text, binary as base64), in order per direction;
`upgrade_id` the id of the connection's `http` call (status 101, flagged
`upgrade`); ids unique; the DB equals the JSON lines; over the default
--max-body a payload is cut and flagged `truncated`; `--dissectors http`
gives no `ws` record.

Needs root, netns, tcpdump, tshark, python3-websockets and the built
binaries; skips with 77 otherwise (fails under CI=true). TW_LAB_KEEP=1 keeps
the capture, the peers' logs and the outputs.
"""

import base64
import calendar
import collections
import hashlib
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402
import wsref  # noqa: E402

PORT, PLAIN_PORT = 8765, 8766  # permessage-deflate, no compression
SERVER_PORTS = {PORT, PLAIN_PORT}
MAX_BODY = 1 << 20           # every payload kept whole
DEFAULT_MAX_BODY = 65536     # the dissector's default --max-body
# the connections: script, server address family, port, compression
CONNECTIONS = [("deflate", 4, PORT, "deflate"), ("plain", 6, PLAIN_PORT, "none"), ("away", 4, PORT, "deflate")]
CLOSES = {"deflate": (1000, "bye"), "plain": (4001, "custom"), "away": (1001, "going away")}


def require() -> None:
    lab.require(binaries=False, tools=("ip", "tcpdump", "tshark"))
    problems = []
    for b in (ref.dissector_bin(), lab.cli_bin()):
        if not os.access(b, os.X_OK):
            problems.append(f"missing binary {b} (build first; TW_BUILD_DIR={lab.build_dir()})")
    if not wsref.peer_python():
        problems.append("no Python with websockets (Debian: python3-websockets; scripts/install-deps.sh)")
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def ts_ns(ts: str) -> int:
    """RFC 3339 UTC with up to nanoseconds -> epoch nanoseconds."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z", ts or "")
    if not m:
        raise AssertionError(f"ts {ts!r} is not RFC 3339 UTC")
    y, mo, d, h, mi, s = map(int, m.groups()[:6])
    frac = (m.group(7) or "").ljust(9, "0")
    return calendar.timegm((y, mo, d, h, mi, s)) * 10**9 + int(frac)


def body_bytes(m: dict) -> bytes:
    """The payload a message object holds: body, base64-decoded when so marked."""
    b = m.get("body")
    if b is None:
        return b""
    return base64.b64decode(b) if m.get("body_encoding") == "base64" else b.encode()


def digest(b: bytes | None) -> str:
    return "none" if b is None else f"{len(b)}:{hashlib.sha256(b).hexdigest()[:16]}"


def close_payload(code, reason) -> bytes:
    return b"" if code is None else int(code).to_bytes(2, "big") + (reason or "").encode()


def side(c: dict) -> tuple[str, dict | None]:
    """(direction, message object) of a ws record: the client's in request, the server's in response."""
    req, resp = c.get("request"), c.get("response")
    if req and not resp:
        return "c2s", req
    if resp and not req:
        return "s2c", resp
    return "both" if req else "none", req or resp


def t_key(m: dict) -> tuple:
    """A tshark message, comparable."""
    return (ref.norm_ip(m["client"][0]), m["client"][1], ref.norm_ip(m["server"][0]), m["server"][1], m["dir"],
            m["opcode"], m["frames"], m["wire_size"], len(m["payload"]), m["compressed"], m["close_code"],
            m["close_reason"], digest(m["payload"]))


def w_key(c: dict) -> tuple:
    """A tapwire ws record, comparable to t_key."""
    d, m = side(c)
    m = m or {}
    is_close = m.get("opcode") == "close"
    payload = close_payload(m.get("close_code"), m.get("close_reason")) if is_close else body_bytes(m)
    return (ref.norm_ip(c["src"]["ip"]), c["src"]["port"], ref.norm_ip(c["dst"]["ip"]), c["dst"]["port"], d,
            m.get("opcode"), m.get("frames"), m.get("wire_size"), m.get("size"), m.get("compressed"),
            m.get("close_code") if is_close else None, m.get("close_reason") if is_close else None,
            digest(payload))


class WebSocketEquivalence(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab(nginx=False, dnsmasq=False).__enter__()
        try:
            L = cls.L
            py = wsref.peer_python()
            tcpd = L.start_tcpdump(L.srv_veth, L.dir / "ws.pcap")
            cls.srv_log, cls.cli_log = L.dir / "ws-server.jsonl", L.dir / "ws-client.jsonl"
            srv = L.spawn("ws-server", L.srv_ns, [py, wsref.__file__, "server", "--port", PORT,
                                                  "--plain-port", PLAIN_PORT, "--log", cls.srv_log])
            if not srv.wait_for_line(r"^listening", 20):
                raise RuntimeError(f"websockets server did not start:\n{srv.output()}")
            cls.conns = {}  # client port -> script
            for script, fam, port, comp in CONNECTIONS:
                host = L.srv6 if fam == 6 else L.srv4
                r = L.cli([py, wsref.__file__, "client", "--host", host, "--port", port, "--script", script,
                           "--compression", comp, "--log", cls.cli_log], timeout=60)
                out = r.stdout.strip().splitlines()
                cls.conns[int(re.search(r'"conn": (\d+)', out[-1]).group(1))] = script
            cls.cap = ref.stop_capture(tcpd, settle=1.5)
            srv.stop()
            cls.pcap = tcpd.out
            cls.events = wsref.read_log(cls.cli_log) + wsref.read_log(cls.srv_log)
            cls.client_view = wsref.expected_messages(cls.events, "client")
            cls.server_view = wsref.expected_messages(cls.events, "server")
            cls.info = {e["conn"]: e for e in cls.events if e["ev"] == "info"}

            # tshark: frames -> messages -> payloads
            cls.frames = wsref.tshark_frames(cls.pcap)
            cls.t_msgs, cls.t_problems = wsref.assemble(cls.frames, SERVER_PORTS)
            exts = {m["stream"]: wsref.parse_extensions((cls.info.get(m["client"][1]) or {}).get("extensions"))
                    for m in cls.t_msgs}
            cls.t_problems += wsref.inflate(cls.t_msgs, exts)
            cls.t_http, _ = ref.tshark_http(cls.pcap)
            lab.log(f"capture {cls.pcap.stat().st_size} bytes: tshark {len(cls.frames)} WebSocket frames, "
                    f"{len(cls.t_msgs)} messages, {len(cls.t_http)} HTTP requests")

            # the dissector: whole payloads (+ DB), the default --max-body, HTTP only
            d = L.dir
            cls.jsonl, cls.db = d / "calls.jsonl", d / "calls.db"
            cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl, "--db", cls.db,
                                         "--max-body", MAX_BODY], timeout=120)
            lab.log("dissector: " + cls.dis["stderr"].strip()[-500:])
            cls.small_jsonl = d / "calls-small.jsonl"
            cls.dis_small = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.small_jsonl], timeout=120)
            cls.http_jsonl = d / "calls-http.jsonl"
            cls.dis_http = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.http_jsonl,
                                              "--dissectors", "http"], timeout=120)
            read = lambda p: ref.read_jsonl(p) if p.exists() else []  # noqa: E731
            cls.calls, cls.calls_small, cls.calls_http = read(cls.jsonl), read(cls.small_jsonl), read(cls.http_jsonl)
            cls.ws = [c for c in cls.calls if c.get("protocol") == "ws"]
            cls.http = [c for c in cls.calls if c.get("protocol") == "http"]
            lab.log(f"tapwire: {len(cls.ws)} ws records, {len(cls.http)} http calls")
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def where(self):
        return f"\n(capture {self.pcap}; TW_LAB_KEEP=1 keeps it and the peers' logs)"

    def conn_of(self, c: dict) -> int:
        return c["src"]["port"]

    def need_ws(self):
        if not self.ws:
            self.fail("no ws record at all" + self.where())

    # ---- the reference -----------------------------------------------------
    def test_0_reference(self):
        """The capture is whole, tshark's messages are the peers' messages, and the traffic has
        every kind the test is about."""
        self.assertEqual(self.cap.get("kernel_drops"), 0, f"tcpdump dropped packets: {self.cap}")
        self.assertTrue(ref.capture_complete(self.cap), f"tcpdump did not write every packet: {self.cap}")
        self.assertEqual(sorted(self.conns.values()), sorted(s for s, *_ in CONNECTIONS))
        self.assertEqual(self.t_problems, [], "tshark's frames do not assemble into messages" + self.where())
        # tshark, per connection and direction, in order, equals what the client saw
        t_view = collections.defaultdict(list)
        for m in self.t_msgs:
            t_view[(m["client"][1], m["dir"])].append(m)
        for (conn, d), want in self.client_view.items():
            got = t_view.get((conn, d), [])
            got_k = [(m["opcode"], digest(m["payload"]), m["close_code"], m["close_reason"]) for m in got]
            want_k = [(op, digest(close_payload(code, reason) if op == "close" else data), code, reason)
                      for op, data, code, reason in want]
            self.assertEqual(got_k, want_k, f"{self.conns.get(conn)} {d}: tshark's messages are not the client's"
                             + self.where())
        self.assertEqual(set(t_view), set(self.client_view), "tshark's connections are not the client's")
        # the server received what the client sent and the other way round (data messages and closes)
        for k in set(self.client_view) | set(self.server_view):
            a = [x for x in self.client_view.get(k, []) if x[0] in ("text", "binary", "close")]
            b = [x for x in self.server_view.get(k, []) if x[0] in ("text", "binary", "close")]
            self.assertEqual([(x[0], digest(x[1]), x[2], x[3]) for x in a],
                             [(x[0], digest(x[1]), x[2], x[3]) for x in b],
                             f"{self.conns.get(k[0])} {k[1]}: client and server logs differ")
        # where tshark decompressed a message itself, it agrees with the inflated bytes (tshark 4.0
        # shows an empty compressed message as its one stub byte, not decompressed)
        bad = [f"frame {m['first']}: tshark {digest(m['tshark_decoded'])}, inflated {digest(m['payload'])}"
               for m in self.t_msgs if m["tshark_decoded"] is not None and m["tshark_decoded"] != m["payload"]
               and not (m["compressed"] and m["payload"] == b"" and m["tshark_decoded"] == m["wire"])]
        self.assertEqual(bad, [], "tshark's own decoding disagrees" + self.where())
        # what the traffic holds
        by_script = collections.defaultdict(list)
        for m in self.t_msgs:
            by_script[self.conns.get(m["client"][1])].append(m)
        data = [m for m in self.t_msgs if m["opcode"] in ("text", "binary")]
        self.assertTrue(any(m["compressed"] for m in by_script["deflate"]), "no compressed message")
        self.assertFalse(any(m["compressed"] for m in by_script["plain"]), "a compressed message with compression off")
        for script in ("deflate", "plain"):
            for d in ("c2s", "s2c"):
                for op in ("text", "binary"):
                    self.assertTrue(any(m["frames"] > 1 and m["dir"] == d and m["opcode"] == op
                                        for m in by_script[script]), f"{script}: no fragmented {op} message {d}")
                for op in ("ping", "pong"):
                    self.assertTrue(any(m["dir"] == d and m["opcode"] == op for m in by_script[script]),
                                    f"{script}: no {op} {d}")
            self.assertTrue(any(len(m["payload"]) > 65536 for m in by_script[script] if m["dir"] == "c2s"),
                            f"{script}: no message over 64 KiB")
        self.assertTrue(any(m["wire_size"] > 65535 and m["frames"] == 1 for m in data), "no 64-bit length")
        self.assertTrue(any(126 <= m["wire_size"] <= 65535 and m["frames"] == 1 for m in data), "no 16-bit length")
        self.assertTrue(any(m["payload"] == b"" for m in data), "no empty message")
        closes = {(self.conns.get(m["client"][1]), m["dir"], m["close_code"], m["close_reason"])
                  for m in self.t_msgs if m["opcode"] == "close"}
        want = {(s, d, code, reason) for s, (code, reason) in CLOSES.items() for d in ("c2s", "s2c")}
        self.assertEqual(closes, want, "close frames")
        # the upgrades, as tshark reads them
        ups = sorted((k[1], k[4], k[5], k[6]) for k in self.t_http)
        want = sorted((port, "GET", f"/{script}", 101) for port, script in self.conns.items())
        self.assertEqual(ups, want, "tshark's HTTP requests are not the three upgrades")

    # ---- the dissector -----------------------------------------------------
    def test_1_dissector_runs(self):
        runs = (("main", self.dis), ("default --max-body", self.dis_small), ("--dissectors http", self.dis_http))
        for name, r in runs:
            self.assertFalse(r["timed_out"], f"{name}: tapwire-dissector did not finish")
            self.assertEqual(r["rc"], 0, f"{name}: tapwire-dissector exit {r['rc']}:\n{r['stderr'][-3000:]}")
        other = sorted({c.get("protocol") for c in self.calls} - {"ws", "http"})
        self.assertEqual(other, [], "records of an unexpected protocol")
        self.assertGreater(len(self.ws), 0, "no ws record at all" + self.where())

    def test_messages_equal_tshark(self):
        """(client, server, direction, opcode, frames, wire size, size, compressed, close code and
        reason, payload) multiset: every message tshark finds, no other."""
        d = ref.diff_multisets([t_key(m) for m in self.t_msgs], [w_key(c) for c in self.ws])
        if d:
            self.fail("ws messages differ from tshark's (client ip, port, server ip, port, dir, opcode, frames, "
                      "wire_size, size, compressed, close_code, close_reason, payload length:sha256):\n" + d
                      + self.where())

    def test_payloads_equal_peer_files(self):
        """Per connection and direction, in time order: opcode, payload bytes (what the peer
        received), close code and reason, as the peers wrote them down; text as text, binary as base64."""
        self.need_ws()
        got = collections.defaultdict(list)
        order = sorted(enumerate(self.ws), key=lambda ic: (ts_ns(ic[1].get("ts")), ic[0]))
        bad = []
        for _, c in order:
            d, m = side(c)
            m = m or {}
            got[(self.conn_of(c), d)].append(m)
            op = m.get("opcode")
            if op == "text" and "body_encoding" in m:
                bad.append(f"text message {c['id']} has body_encoding {m['body_encoding']!r}")
            if op == "binary" and m.get("size") and m.get("body_encoding") != "base64":
                bad.append(f"binary message {c['id']}: body_encoding {m.get('body_encoding')!r}, not base64")
        self.assertEqual(bad, [], self.where())
        for (conn, d), want in sorted(self.client_view.items()):
            mine = got.get((conn, d), [])
            g = [(m.get("opcode"), digest(b"" if m.get("opcode") == "close" else body_bytes(m)),
                  m.get("close_code"), m.get("close_reason")) for m in mine]
            w = [(op, digest(b"" if op == "close" else data), code, reason) for op, data, code, reason in want]
            self.assertEqual(g, w, f"{self.conns.get(conn)} (client port {conn}) {d}: tapwire's messages in time "
                             "order (opcode, payload, close code, reason) are not what the peers sent and received"
                             + self.where())
        self.assertEqual(set(k for k in got), set(self.client_view), "connections/directions")

    def test_upgrade_link(self):
        """Each connection's upgrade is one `http` call, status 101, flagged `upgrade`, and every
        ws record of the connection has its id as `upgrade_id`."""
        d = ref.diff_multisets(self.t_http, [ref.http_key(c) for c in self.http])
        if d:
            self.fail("http calls differ from tshark's:\n" + d + self.where())
        ups = {}
        for c in self.http:
            resp = c.get("response") or {}
            self.assertEqual(resp.get("status"), 101, f"http call {c['id']}")
            self.assertIn("upgrade", c.get("flags") or [], f"http call {c['id']} not flagged upgrade")
            conn = (ref.norm_ip(c["src"]["ip"]), c["src"]["port"], ref.norm_ip(c["dst"]["ip"]), c["dst"]["port"])
            self.assertNotIn(conn, ups, f"two http calls on {conn}")
            ups[conn] = c["id"]
        self.need_ws()
        bad = []
        for c in self.ws:
            conn = (ref.norm_ip(c["src"]["ip"]), c["src"]["port"], ref.norm_ip(c["dst"]["ip"]), c["dst"]["port"])
            if c.get("upgrade_id") != ups.get(conn):
                bad.append(f"ws {c['id']} on {conn}: upgrade_id {c.get('upgrade_id')!r}, "
                           f"the upgrade is {ups.get(conn)!r}")
        self.assertEqual(bad[:10], [], f"{len(bad)} ws records not linked to their upgrade" + self.where())

    def test_record_shape(self):
        """One side per record, 16-hex ids unique across all records, the client as src, nothing
        flagged on clean traffic, ts and duration_us within the capture."""
        self.need_ws()
        t0 = min(f["time"] for f in self.frames) if self.frames else 0
        t1 = max(f["time"] for f in self.frames) if self.frames else 0
        bad = []
        for c in self.ws:
            d, m = side(c)
            if d not in ("c2s", "s2c"):
                bad.append(f"{c['id']}: request and response {d}")
            if not re.fullmatch(r"[0-9a-f]{16}", str(c.get("id"))) or not re.fullmatch(r"[0-9a-f]{16}",
                                                                                        str(c.get("upgrade_id"))):
                bad.append(f"{c['id']}: id / upgrade_id not 16 hex digits: {c.get('upgrade_id')!r}")
            if c["dst"]["port"] not in SERVER_PORTS or c["src"]["port"] not in self.conns:
                bad.append(f"{c['id']}: src {c['src']} dst {c['dst']}: not client -> server")
            if c.get("flags"):
                bad.append(f"{c['id']}: flags {c['flags']}")
            t = ts_ns(c.get("ts")) / 1e9
            if not (t0 - 1 <= t <= t1 + 1):
                bad.append(f"{c['id']}: ts {c.get('ts')} outside the capture")
            du = c.get("duration_us")
            if not isinstance(du, int) or du < 0 or du > (t1 - t0) * 1e6 + 1e6:
                bad.append(f"{c['id']}: duration_us {du!r}")
        self.assertEqual(bad[:20], [], f"{len(bad)} problems" + self.where())
        ids = collections.Counter(c["id"] for c in self.calls)
        self.assertEqual({i: n for i, n in ids.items() if n > 1}, {}, "record ids shared")

    def test_default_max_body_cuts(self):
        """With the default --max-body (64 KiB) a longer payload keeps its beginning and is flagged
        `truncated`; size and wire_size are still the whole message's; the others are unchanged."""
        self.need_ws()
        full = {c["id"]: c for c in self.ws}
        small = [c for c in self.calls_small if c.get("protocol") == "ws"]
        self.assertEqual(sorted(c["id"] for c in small), sorted(full), "other ws records with the default --max-body")
        bad, cut = [], 0
        for c in small:
            f = full.get(c["id"])
            if not f:
                continue
            (_, m), (_, fm) = side(c), side(f)
            m, fm = m or {}, fm or {}
            whole = body_bytes(fm)
            if fm.get("opcode") in ("text", "binary") and len(whole) > DEFAULT_MAX_BODY:
                cut += 1
                b = body_bytes(m)
                if "truncated" not in (c.get("flags") or []):
                    bad.append(f"{c['id']}: {len(whole)} bytes, not flagged truncated: {c.get('flags')}")
                if not (DEFAULT_MAX_BODY - 3 <= len(b) <= DEFAULT_MAX_BODY and whole.startswith(b)):
                    bad.append(f"{c['id']}: kept {len(b)} bytes, not the first {DEFAULT_MAX_BODY} of the payload")
                for k in ("size", "wire_size", "frames", "compressed", "opcode"):
                    if m.get(k) != fm.get(k):
                        bad.append(f"{c['id']}: {k} {m.get(k)!r}, {fm.get(k)!r} with the whole payload")
            elif (c.get("flags"), m) != (f.get("flags"), fm):
                bad.append(f"{c['id']}: differs with the default --max-body")
        self.assertGreater(cut, 0, "no payload over 64 KiB in tapwire's records")
        self.assertEqual(bad[:20], [], f"{len(bad)} problems" + self.where())

    def test_dissectors_http_only(self):
        """--dissectors http: the upgrades, no ws record."""
        protos = collections.Counter(c.get("protocol") for c in self.calls_http)
        self.assertEqual(dict(protos), {"http": len(self.conns)},
                         f"--dissectors http gave {dict(protos)}" + self.where())

    def test_db_equals_jsonl(self):
        """--db (read back with `tapwire calls --json`) holds the ws records of --jsonl, upgrade_id included."""
        self.need_ws()
        got = [c for c in ref.db_calls(self.db) if c.get("protocol") == "ws"]
        key = lambda c: ref.full_key(c) + (c.get("upgrade_id"), c.get("id"))  # noqa: E731
        d = ref.diff_multisets([key(c) for c in self.ws], [key(c) for c in got], "jsonl", "db", limit=8)
        if d:
            self.fail("--db and --jsonl differ for ws records:\n" + d + self.where())


if __name__ == "__main__":
    require()
    unittest.main()
