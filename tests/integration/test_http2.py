#!/usr/bin/env python3
"""Done means (HTTP/2 dissection), offline equivalence with tshark on
captures of real HTTP/2 clients and servers (h2c):

- nghttp to nghttpd, prior knowledge: three GETs on one connection with two
  pushed streams (PUSH_PROMISE on /index.html) and a 404, a custom header;
  two POSTs of a file on one connection, echoed back;
- nghttp -u to nghttpx (Upgrade: h2c, nginx behind it): stream 1 is the
  upgraded request, then another on the same connection;
- curl to nginx's h2c port (prior knowledge: a 1 MiB GET, a POST of the
  file) and to nghttpx (Upgrade: h2c: a GET and a POST), each response written
  to its own file;
- h2load -n 200 -c 4 -m 10 against nghttpd and against nginx.

`tapwire-dissector --pcap` on tcpdump's capture must give one `http2` call
per stream that tshark finds (`-d tcp.port==P,http2`; it follows Upgrade:
h2c itself): same connection, stream id, method, path, authority, status;
the same regular header names per header block, request and response; the
same DATA byte counts; push (`pushed`, `promised_on`), RST_STREAM
(`rst_stream`, flag `reset`); the upgrade as an `http` call (101, flag
`upgrade`) plus stream 1 as `http2`. Bodies equal, byte for byte, the file
the client sent, the file curl wrote, or the file the server served (nghttp's
HAR gives its sizes); cut at --max-body and flagged body_truncated when
longer. `--dissectors dns` (tap.enabledDissectors) gives no http2 call.

Needs root, netns, tshark, nghttp2-client/-server/-proxy and the built
binaries; skips with 77 otherwise (fails under CI=true). TW_LAB_KEEP=1 keeps
the capture and outputs.
"""

import collections
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import h2ref  # noqa: E402
import lab  # noqa: E402

MAX_BODY = 2_000_000  # every body whole (the largest is 1 MiB)
SMALL_BODY = 4096  # the run that cuts bodies


class Http2Equivalence(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab(dnsmasq=False, nginx_http_extra=h2ref.NGINX_H2C_SERVER).__enter__()
        try:
            cls._run()
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def _run(cls):
        L = cls.L
        h2ref.start_h2_servers(L)
        tcpd = h2ref.capture(L, "h2.pcap")
        cls.did = h2ref.make_h2_traffic(L)
        cls.cap = ref.stop_capture(tcpd)
        cls.pcap = tcpd.out
        lab.log(f"capture {cls.pcap.stat().st_size} bytes, {cls.cap}")
        cls.jsonl, cls.db = L.dir / "calls.jsonl", L.dir / "calls.db"
        cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl, "--db", cls.db,
                                     "--max-body", MAX_BODY], timeout=120)
        lab.log(cls.dis["stderr"].strip()[-2000:])
        cls.calls = ref.read_jsonl(cls.jsonl) if cls.jsonl.exists() else []
        # bodies cut at SMALL_BODY
        cls.small_jsonl = L.dir / "small.jsonl"
        cls.dis_small = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.small_jsonl,
                                           "--max-body", SMALL_BODY], timeout=120)
        cls.small = ref.read_jsonl(cls.small_jsonl) if cls.small_jsonl.exists() else []
        # tap.enabledDissectors: DNS only
        cls.dns_jsonl = L.dir / "dns-only.jsonl"
        cls.dis_dns = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.dns_jsonl, "--dissectors", "dns"],
                                        timeout=120)
        cls.dns_only = ref.read_jsonl(cls.dns_jsonl) if cls.dns_jsonl.exists() else []

        cls.t, cls.t_notes = h2ref.tshark_h2(cls.pcap)
        cls.t_by = {h2ref.t_conn_sid(st): st for st in cls.t}
        cls.h2 = [c for c in cls.calls if c.get("protocol") == "http2"]
        cls.by = {}
        for c in cls.h2:
            cls.by.setdefault(h2ref.c_conn_sid(c), []).append(c)
        lab.log(f"tshark: {len(cls.t)} HTTP/2 streams; tapwire: {len(cls.h2)} http2 calls of {len(cls.calls)}")
        # the connections of each client, found in tshark's streams
        cls.conns = collections.defaultdict(list)  # (client ip, port, server ip, port) -> streams
        for st in cls.t:
            cls.conns[h2ref.t_conn_sid(st)[:4]].append(st)

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def where(self):
        return f"\n(capture {self.pcap}; TW_LAB_KEEP=1 keeps it)"

    def one(self, key) -> dict:
        cs = self.by.get(key, [])
        self.assertEqual(len(cs), 1, f"{len(cs)} http2 calls for connection+stream {key}" + self.where())
        return cs[0]

    def matched(self) -> list[tuple[dict, dict]]:
        """(tshark stream, its http2 call) for every stream; fails unless each has exactly one."""
        pairs, missing = [], []
        for st in self.t:
            cs = self.by.get(h2ref.t_conn_sid(st), [])
            if len(cs) == 1:
                pairs.append((st, cs[0]))
            else:
                missing.append(f"{h2ref.t_key(st)}: {len(cs)} calls")
        self.assertEqual(missing, [], f"{len(missing)} of {len(self.t)} tshark streams without exactly one http2 "
                         "call (test_streams_equal_tshark has the details):\n" + "\n".join(missing[:10]) + self.where())
        return pairs

    def har_conn(self, name: str, port: int) -> tuple:
        """The connection of a nghttp run: its (stream id, path) set equals the HAR's."""
        want = {(e["stream_id"], e["path"]) for e in self.did["har"][name]}
        found = [conn for conn, sts in self.conns.items()
                 if conn[3] == port and {(st["stream_id"], st["path"]) for st in sts} == want]
        self.assertEqual(len(found), 1, f"nghttp {name}: {len(found)} connections in the capture with streams {want}")
        return found[0]

    def curl_conn(self, c: dict) -> tuple:
        found = [conn for conn in self.conns if conn[1] == c["client_port"] and conn[3] == c["port"]]
        self.assertEqual(len(found), 1, f"curl {c['path']}: connection from port {c['client_port']} not in the capture")
        return found[0]

    # ---- the reference itself -------------------------------------------
    def test_0_reference(self):
        """tcpdump got every packet, and tshark's streams are what the clients say they did."""
        self.assertTrue(ref.capture_complete(self.cap), f"tcpdump did not write every packet: {self.cap}")
        self.assertEqual(self.t_notes, [], "tshark: connections without a SYN")
        for name, port in (("get", h2ref.NGHTTPD_PORT), ("post", h2ref.NGHTTPD_PORT), ("upgrade", h2ref.NGHTTPX_PORT)):
            conn = self.har_conn(name, port)
            for e in self.did["har"][name]:
                st = self.t_by[conn + (e["stream_id"],)]
                self.assertEqual(st["status"], e["status"], f"nghttp {name} {e}")
                if e["method"]:  # the HAR of a pushed stream has no method
                    self.assertEqual(st["method"], e["method"], f"nghttp {name} {e}")
                if e["authority"]:
                    self.assertEqual(st["authority"], e["authority"], f"nghttp {name} {e}")
                self.assertEqual(h2ref.h2_side(st, "response")["headers"], e["resp_names"], f"nghttp {name} {e}")
                if not st["upgrade"] and not st["pushed"]:  # (the HAR has no request headers for those)
                    self.assertEqual(h2ref.h2_side(st, "request")["headers"], e["req_names"], f"nghttp {name} {e}")
                self.assertEqual(st["resp_body"], e["size"], f"nghttp {name} {e}: DATA bytes")
        # what nghttp got is what the servers have
        for e in self.did["har"]["get"] + self.did["har"]["upgrade"]:
            path = e["path"]
            if e["status"] == 200:
                self.assertEqual(e["size"], len(self.did["served"][path]), f"nghttp got {path}")
        for e in self.did["har"]["post"]:
            self.assertEqual(e["size"], len(self.did["post_file"]), f"nghttpd echoed {e['path']}")
        conn = self.har_conn("early", h2ref.NGINX_H2C_PORT)
        e = self.did["har"]["early"][0]
        st = self.t_by[conn + (e["stream_id"],)]
        self.assertEqual((e["status"], st["status"], st["rst"]), (200, 200, {"server": "NO_ERROR"}),
                         f"nghttp POST /early (exit {self.did['early_rc']}): answered, then reset by nginx")
        self.assertLess(st["req_body"], len(self.did["served"]["/f/1m.bin"]), "POST /early: all of the body sent")
        pushed = [st for st in self.t if st["pushed"]]
        self.assertEqual(sorted(st["path"] for st in pushed), ["/f/100b.bin", "/style.css"], "tshark: pushed streams")
        ups = [st for st in self.t if st["upgrade"]]
        self.assertEqual(len(ups), 1 + sum(c["upgrade"] for c in self.did["curl"]), "tshark: upgraded connections")
        self.assertTrue(all(st["upgrade_request"]["status"] == 101 for st in ups), "tshark: 101 to every upgrade")
        for c in self.did["curl"]:
            st = self.t_by[self.curl_conn(c) + (1,)]
            self.assertEqual((st["method"], st["path"], st["status"], st["upgrade"]),
                             (c["method"], c["path"], c["status"], c["upgrade"]), f"curl {c['path']}")
            self.assertEqual(st["resp_body"], len(c["bytes"]), f"curl {c['path']}: DATA bytes")
        for h in self.did["h2load"]:
            port = int(h["url"].split(":")[2].split("/")[0])
            n = sum(1 for st in self.t if st["server"][1] == port and
                    h2ref.h2_side(st, "request")["fields"].get("user-agent", "").startswith("h2load"))
            self.assertEqual(n, h["n"], f"tshark: streams of h2load {h['url']}")

    # ---- the dissector ----------------------------------------------------
    def test_1_dissector_runs(self):
        for name, r in (("main", self.dis), ("--max-body small", self.dis_small), ("--dissectors dns", self.dis_dns)):
            self.assertFalse(r["timed_out"], f"tapwire-dissector ({name}) did not finish")
            self.assertEqual(r["rc"], 0, f"tapwire-dissector ({name}) exit {r['rc']}:\n{r['stderr'][-3000:]}")
        other = sorted({c.get("protocol") for c in self.calls} - {"http2", "http"})
        self.assertEqual(other, [], "calls of an unexpected protocol" + self.where())
        self.assertGreater(len(self.h2), 0, "no http2 calls at all: HTTP/2 is not dissected (by default)" + self.where())

    def test_streams_equal_tshark(self):
        """(client, server, stream id, method, path, authority, status), every stream."""
        d = ref.diff_multisets([h2ref.t_key(st) for st in self.t], [h2ref.c_key(c) for c in self.h2])
        self.assertEqual(d, "", "http2 calls differ from tshark's streams:\n" + d + self.where())

    def test_scheme_and_version(self):
        bad = []
        for st, c in self.matched():
            req = c.get("request") or {}
            if (req.get("scheme"), req.get("version")) != (st["scheme"], "HTTP/2"):
                bad.append(f"{h2ref.t_key(st)}: scheme {req.get('scheme')!r} version {req.get('version')!r}, "
                           f"tshark: scheme {st['scheme']!r}")
        self.assertEqual(bad, [], "\n".join(bad[:20]) + self.where())

    def test_header_names(self):
        """Regular header names of each block equal tshark's: request headers (the PUSH_PROMISE's for a
        pushed stream), response headers, trailers of either side when sent."""
        bad = []
        for st, c in self.matched():
            req, resp = c.get("request") or {}, c.get("response") or {}
            for side, obj in (("request", req), ("response", resp)):
                t = h2ref.h2_side(st, side)
                if side == "request" and st["upgrade"]:
                    continue  # stream 1 of an upgrade: its request is HTTP/1.1 (the http call has it)
                if h2ref.names(obj.get("headers")) != t["headers"]:
                    bad.append(f"{h2ref.t_key(st)} {side} headers: {h2ref.names(obj.get('headers'))}, "
                               f"tshark {t['headers']}")
                if h2ref.names(obj.get("trailers")) not in ((t["trailers"],) if t["trailers"] else (None, [])):
                    bad.append(f"{h2ref.t_key(st)} {side} trailers: {h2ref.names(obj.get('trailers'))}, "
                               f"tshark {t['trailers']}")
            if st["interim"] and resp.get("interim") != st["interim"]:
                bad.append(f"{h2ref.t_key(st)}: interim {resp.get('interim')}, tshark {st['interim']}")
        self.assertEqual(bad, [], "\n".join(bad[:30]) + self.where())

    def test_header_values(self):
        """A few values, as the client sent them: the custom header, content-type, content-length."""
        conn = self.har_conn("get", h2ref.NGHTTPD_PORT)
        for e in self.did["har"]["get"]:
            if e["method"] == "GET":
                c = self.one(conn + (e["stream_id"],))
                self.assertEqual(c["request"]["headers"].get("x-tapwire-test"), "h2 get", f"{e['path']}")
        conn = self.har_conn("post", h2ref.NGHTTPD_PORT)
        for e in self.did["har"]["post"]:
            c = self.one(conn + (e["stream_id"],))
            self.assertEqual(c["request"]["headers"].get("content-type"), "application/octet-stream")
            self.assertEqual(c["request"]["headers"].get("content-length"), str(len(self.did["post_file"])))

    def test_body_sizes(self):
        """body_size: the DATA payload bytes of each side, as tshark counts them."""
        bad = []
        for st, c in self.matched():
            req, resp = c.get("request") or {}, c.get("response") or {}
            # A stream reset by one side ends there: DATA the other side still sent after
            # the RST_STREAM (tshark counts it) is not part of the call.
            if not st["upgrade"] and req.get("body_size") != st["req_body"] and \
                    not (st["rst"] and req.get("body_size", 0) <= st["req_body"]):
                bad.append(f"{h2ref.t_key(st)}: request body_size {req.get('body_size')}, tshark {st['req_body']}")
            if resp.get("body_size") != st["resp_body"]:
                bad.append(f"{h2ref.t_key(st)}: response body_size {resp.get('body_size')}, tshark {st['resp_body']}")
        self.assertEqual(bad, [], "\n".join(bad[:30]) + self.where())

    def test_bodies_equal_client_files(self):
        """Bodies byte for byte: what nghttp and curl POSTed (their file), what curl wrote, what
        the servers served (nghttp's HAR sizes agree), what nghttpd echoed."""
        served, post = self.did["served"], self.did["post_file"]
        checks = []  # (what, the call's side, the bytes it must hold)
        for name, port in (("get", h2ref.NGHTTPD_PORT), ("upgrade", h2ref.NGHTTPX_PORT)):
            conn = self.har_conn(name, port)
            for e in self.did["har"][name]:
                if e["status"] == 200:
                    checks.append((f"nghttp {name} {e['path']} (stream {e['stream_id']}): response body, as served",
                                   conn + (e["stream_id"],), "response", served[e["path"]]))
        conn = self.har_conn("post", h2ref.NGHTTPD_PORT)
        for e in self.did["har"]["post"]:
            for side in ("request", "response"):
                checks.append((f"nghttp POST {e['path']}: {side} body, the file posted", conn + (e["stream_id"],),
                               side, post))
        for cu in self.did["curl"]:
            checks.append((f"curl {cu['path']}: response body, as curl wrote it", self.curl_conn(cu) + (1,),
                           "response", cu["bytes"]))
            if cu["sent"] and not cu["upgrade"]:
                checks.append((f"curl POST {cu['path']}: request body, the file posted", self.curl_conn(cu) + (1,),
                               "request", cu["sent"]))
        self.assertGreaterEqual(len(checks), 12)
        bad = []
        for what, key, side, want in checks:
            cs = self.by.get(key, [])
            if len(cs) != 1:
                bad.append(f"{what}: {len(cs)} calls")
                continue
            got = h2ref.body_bytes(cs[0].get(side))
            if got != want:
                n = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
                bad.append(f"{what}: {len(got)} bytes, want {len(want)}; first difference at byte {n}")
        self.assertEqual(bad, [], "\n".join(bad) + self.where())

    def test_bodies_cut_at_max_body(self):
        """--max-body 4096: longer bodies keep their first 4096 bytes, flagged body_truncated; body_size stays whole."""
        small = {h2ref.c_conn_sid(c): c for c in self.small if c.get("protocol") == "http2"}
        self.assertGreater(len(small), 0, "no http2 calls with --max-body 4096" + self.where())
        bad = []
        for st in self.t:
            c = small.get(h2ref.t_conn_sid(st))
            full = self.by.get(h2ref.t_conn_sid(st), [None])[0]
            if not c or not full:
                continue
            for side, n in (("request", st["req_body"]), ("response", st["resp_body"])):
                if side == "request" and st["upgrade"]:
                    continue
                whole, got = h2ref.body_bytes(full.get(side)), h2ref.body_bytes(c.get(side))
                cut = n > SMALL_BODY
                if got != whole[:SMALL_BODY]:
                    bad.append(f"{h2ref.t_key(st)} {side}: {len(got)} bytes kept, not the first {SMALL_BODY} of the "
                               f"{len(whole)} kept with --max-body {MAX_BODY}")
                if (c.get(side) or {}).get("body_size") != (full.get(side) or {}).get("body_size"):
                    bad.append(f"{h2ref.t_key(st)} {side}: body_size {(c.get(side) or {}).get('body_size')} with "
                               f"--max-body {SMALL_BODY}, {(full.get(side) or {}).get('body_size')} with --max-body {MAX_BODY}")
                if cut and "body_truncated" not in (c.get("flags") or []):
                    bad.append(f"{h2ref.t_key(st)} {side}: {n} bytes > {SMALL_BODY}, not flagged body_truncated")
            if st["req_body"] <= SMALL_BODY and st["resp_body"] <= SMALL_BODY and \
                    "body_truncated" in (c.get("flags") or []):
                bad.append(f"{h2ref.t_key(st)}: flagged body_truncated, bodies {st['req_body']}/{st['resp_body']}")
        self.assertEqual(bad, [], "\n".join(bad[:30]) + self.where())

    def test_push(self):
        """Pushed streams: pushed true, promised_on the stream of the PUSH_PROMISE; others not pushed."""
        bad = []
        for st, c in self.matched():
            req = c.get("request") or {}
            if st["pushed"]:
                if req.get("pushed") is not True or req.get("promised_on") != st["promised_on"]:
                    bad.append(f"{h2ref.t_key(st)}: pushed {req.get('pushed')!r} promised_on "
                               f"{req.get('promised_on')!r}, tshark: promised on {st['promised_on']}")
            elif req.get("pushed"):
                bad.append(f"{h2ref.t_key(st)}: pushed, tshark: not pushed")
        self.assertEqual(bad, [], "\n".join(bad) + self.where())
        self.assertEqual(sum(1 for c in self.h2 if (c.get("request") or {}).get("pushed")), 2, self.where())

    def test_rst_stream(self):
        """rst_stream (error code name) in the object of the side that sent it, flag reset; none elsewhere."""
        bad = []
        for st, c in self.matched():
            got = {side: (c.get(obj) or {}).get("rst_stream") for side, obj in (("client", "request"),
                                                                                 ("server", "response"))}
            got = {k: v for k, v in got.items() if v}
            if got != st["rst"] or ("reset" in (c.get("flags") or [])) != bool(st["rst"]):
                bad.append(f"{h2ref.t_key(st)}: rst_stream {got}, flags {c.get('flags')}; tshark {st['rst']}")
        self.assertEqual(bad, [], "\n".join(bad) + self.where())

    def test_upgrade(self):
        """Upgrade: h2c: the HTTP/1.1 request and its 101 are an `http` call flagged upgrade; stream 1
        (the same request, answered in HTTP/2) an http2 call."""
        http = [c for c in self.calls if c.get("protocol") == "http"]
        for st in (st for st in self.t if st["upgrade"]):
            u = st["upgrade_request"]
            conn = h2ref.t_conn_sid(st)[:4]
            hs = [c for c in http if h2ref.c_conn(c) == conn]
            self.assertEqual(len(hs), 1, f"{conn}: {len(hs)} http calls for the upgrade request" + self.where())
            h = hs[0]
            self.assertEqual((h["request"]["method"], h["request"]["path"], (h.get("response") or {}).get("status")),
                             (u["method"], u["uri"], 101), f"{conn}: the upgrade's http call")
            self.assertIn("upgrade", h.get("flags") or [], f"{conn}: the upgrade's http call")
            self.assertEqual(h["request"].get("body_size", 0), u["body"], f"{conn}: the upgrade request's body")
            c = self.one(conn + (1,))
            self.assertEqual((c["request"]["method"], c["request"]["path"], c["response"]["status"]),
                             (u["method"], u["uri"], st["status"]), f"{conn}: stream 1 after the upgrade")
        self.assertEqual(len(http), sum(1 for st in self.t if st["upgrade"]), "http calls other than the upgrades")

    def test_h2load(self):
        """h2load's streams: all of them, 200 each, on its 4 connections per run."""
        for h in self.did["h2load"]:
            port = int(h["url"].split(":")[2].split("/")[0])
            path = "/" + h["url"].split("/", 3)[3]
            conns = {h2ref.t_conn_sid(st)[:4] for st in self.t if st["server"][1] == port and
                     h2ref.h2_side(st, "request")["fields"].get("user-agent", "").startswith("h2load")}
            self.assertEqual(len(conns), h["clients"], f"h2load {h['url']}: connections in the capture")
            mine = [c for c in self.h2 if h2ref.c_conn(c) in conns]
            self.assertEqual(len(mine), h["n"], f"h2load {h['url']}: http2 calls" + self.where())
            self.assertEqual(collections.Counter((c["request"]["path"], c["response"]["status"]) for c in mine),
                             collections.Counter({(path, 200): h["n"]}), f"h2load {h['url']}" + self.where())

    def test_dissectors_dns_only(self):
        """--dissectors dns (tap.enabledDissectors: [dns]): no http2, grpc or http calls."""
        protos = collections.Counter(c.get("protocol") for c in self.dns_only)
        self.assertEqual(protos.get("http2", 0) + protos.get("grpc", 0) + protos.get("http", 0), 0,
                         f"--dissectors dns gave {dict(protos)}" + self.where())

    def test_db_equals_jsonl(self):
        self.matched()
        got_db = ref.db_calls(self.db) if self.db.exists() else []
        d = ref.diff_multisets([ref.full_key(c) for c in self.calls], [ref.full_key(c) for c in got_db],
                               "jsonl", "db", limit=8)
        self.assertEqual(d, "", "--db and --jsonl differ:\n" + d + self.where())

    def test_call_ids_unique(self):
        self.matched()
        ids = collections.Counter(c["id"] for c in self.calls)
        dup = [i for i, n in ids.items() if n > 1]
        self.assertEqual(dup, [], f"{len(dup)} call ids shared by several calls" + self.where())

    def test_no_other_flags(self):
        """Clean traffic: flags only where due (reset, maybe incomplete, with an RST_STREAM; upgrade on the
        http call), and every call answered."""
        self.matched()
        bad = []
        for c in self.calls:
            allowed = {"upgrade"} if c.get("protocol") == "http" else set()
            st = self.t_by.get(h2ref.c_conn_sid(c)) if c.get("protocol") == "http2" else None
            if st and st["rst"]:
                allowed |= {"reset", "incomplete"}  # (a request whose body the reset cut may say so)
            extra = set(c.get("flags") or []) - allowed
            if extra or not c.get("response"):
                bad.append(f"{c.get('protocol')} {h2ref.c_conn_sid(c)} {(c.get('request') or {}).get('path')}: "
                           f"flags {c.get('flags')}, response {'yes' if c.get('response') else 'none'}")
        self.assertEqual(bad, [], "\n".join(bad[:20]) + self.where())


if __name__ == "__main__":
    h2ref.require()
    unittest.main()
