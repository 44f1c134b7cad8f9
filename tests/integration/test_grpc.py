#!/usr/bin/env python3
"""Done means (gRPC dissection), offline equivalence with tshark and with what
the client itself sent and received, on a capture of a real gRPC client and
server (python3-grpcio both, h2c, tests/integration/data/tapwire_echo.proto):

unary (three calls, one gzip-compressed), server streaming (5 replies),
client streaming (12 requests: more than the 8 messages a record keeps), bidi
(6 each way), NOT_FOUND with a non-ASCII, percent-encoded message
(Trailers-Only), RESOURCE_EXHAUSTED after two replies (status in the
trailers), a call the client cancels (RST_STREAM CANCEL, no grpc-status), and
a message of 1.5 MB each way (many DATA frames).

`tapwire-dissector --pcap` must give one `grpc` call per RPC, as tshark reads
the stream (`-d tcp.port==50051,http2`, its grpc dissector): connection,
stream id, path, authority, HTTP status; service, method, grpc_status (and its
name), grpc_message (percent-decoded), timeout, encoding; header and trailer
names; message_count, message_bytes and the first 8 messages' sizes and
compressed flags per direction; the reset. The kept messages decode, without
a schema, to the fields the client encoded (and with tap.grpc.protoPaths, to
the client's message by field name). `--dissectors dns` gives no grpc call.

Needs root, netns, tshark, python3-grpcio and the built binaries; skips with
77 otherwise (fails under CI=true). TW_LAB_KEEP=1 keeps the capture, the
client's files and outputs.
"""

import collections
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import h2ref  # noqa: E402
import lab  # noqa: E402

KEPT = 8  # messages a record keeps per direction
REQ, REP = "tapwire.test.EchoRequest", "tapwire.test.EchoReply"
WIRE_TYPES = {"int32": "varint", "int64": "varint", "uint64": "varint", "string": "len", "bytes": "len"}


def norm(v):
    """Numbers as strings (proto3 JSON writes 64-bit integers as strings), recursively."""
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [norm(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(int(v))
    return v


def no_defaults(v):
    """A proto3 JSON object as the printer writes it: fields at their default value (0, "",
    false, empty lists and maps) left out, recursively."""
    if isinstance(v, dict):
        out = {k: no_defaults(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x not in ("0", "", False, [], {}, None)}
    if isinstance(v, list):
        return [no_defaults(x) for x in v]
    return v


def expected_fields(type_name: str, fields: dict) -> list[tuple]:
    """The wire fields the client encoded, in order: (number, wire type, value or None for bytes,
    nested list for a message)."""
    out = []
    schema = h2ref.PB_SCHEMA[type_name]
    for name, (num, typ) in sorted(schema.items(), key=lambda kv: kv[1][0]):
        if name not in fields:
            continue
        t = typ.replace("repeated ", "")
        for v in (fields[name] if typ.startswith("repeated ") else [fields[name]]):
            if t in h2ref.PB_SCHEMA:
                out.append((num, "len", expected_fields(t, v)))
            elif t == "bytes":
                out.append((num, "len", None))
            else:
                out.append((num, WIRE_TYPES[t], str(v)))
    return out


def got_fields(fields, with_wire: bool) -> list[tuple] | None:
    """A schema-less `data` ({"fields": [...]}) as expected_fields() says it."""
    if isinstance(fields, dict):
        fields = fields.get("fields")
    if not isinstance(fields, list):
        return None
    out = []
    for f in fields:
        v = f.get("value")
        if isinstance(v, (list, dict)):
            v = got_fields(v, with_wire)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(int(v))
        out.append((f.get("field"), f.get("wire_type") if with_wire else None, v))
    return out


def strip(exp: list[tuple], got: list[tuple] | None, with_wire: bool) -> list[tuple] | None:
    """got, with the values of bytes fields (None in exp: their schema-less reading is a guess) dropped."""
    if got is None or len(got) != len(exp):
        return got
    out = []
    for (en, ew, ev), (gn, gw, gv) in zip(exp, got):
        if ev is None:
            gv = None
        elif isinstance(ev, list) and isinstance(gv, list):
            gv = strip(ev, gv, with_wire)
        out.append((gn, gw, gv))
    return out


def no_wire(exp: list[tuple]) -> list[tuple]:
    return [(n, None, no_wire(v) if isinstance(v, list) else v) for n, _w, v in exp]


class GrpcEquivalence(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab(nginx=False, dnsmasq=False).__enter__()
        try:
            cls._run()
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def _run(cls):
        L = cls.L
        h2ref.start_grpc_server(L)
        tcpd = h2ref.capture(L, "grpc.pcap")
        cls.client = h2ref.run_grpc_client(L)["calls"]
        cls.cap = ref.stop_capture(tcpd)
        cls.pcap = tcpd.out
        lab.log(f"{len(cls.client)} RPCs; capture {cls.pcap.stat().st_size} bytes, {cls.cap}")
        cls.jsonl, cls.db = L.dir / "calls.jsonl", L.dir / "calls.db"
        cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl, "--db", cls.db], timeout=120)
        lab.log(cls.dis["stderr"].strip()[-2000:])
        cls.calls = ref.read_jsonl(cls.jsonl) if cls.jsonl.exists() else []
        cls.dns_jsonl = L.dir / "dns-only.jsonl"
        cls.dis_dns = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.dns_jsonl, "--dissectors", "dns"],
                                        timeout=120)
        cls.dns_only = ref.read_jsonl(cls.dns_jsonl) if cls.dns_jsonl.exists() else []
        # tap.grpc.protoPaths: the directory of tapwire_echo.proto, through the dissector's flag for it
        cls.proto_flag = h2ref.proto_path_flag()
        cls.proto_calls, cls.dis_proto = [], None
        if cls.proto_flag:
            pj = L.dir / "proto.jsonl"
            cls.dis_proto = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", pj, cls.proto_flag,
                                               h2ref.PROTO_FILE.parent], timeout=120)
            cls.proto_calls = ref.read_jsonl(pj) if pj.exists() else []

        streams, cls.t_notes = h2ref.tshark_h2(cls.pcap, h2_ports=(h2ref.GRPC_PORT,), http_ports=())
        cls.t_all = streams
        cls.t = sorted((st for st in streams if h2ref.is_grpc_stream(st)), key=lambda s: (s["tcp_stream"],
                                                                                          s["stream_id"]))
        cls.g = [c for c in cls.calls if c.get("protocol") == "grpc"]
        cls.by = {}
        for c in cls.g:
            cls.by.setdefault(h2ref.c_conn_sid(c), []).append(c)
        lab.log(f"tshark: {len(cls.t)} gRPC streams; tapwire: {len(cls.g)} grpc calls of {len(cls.calls)}")

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def where(self):
        return f"\n(capture {self.pcap}; TW_LAB_KEEP=1 keeps it)"

    def rpcs(self) -> list[tuple[dict, dict, dict]]:
        """(client's call, tshark stream, grpc call record) for every RPC; fails unless each stream has
        exactly one record."""
        out, missing = [], []
        for cl, st in zip(self.client, self.t):
            cs = self.by.get(h2ref.t_conn_sid(st), [])
            if len(cs) == 1:
                out.append((cl, st, cs[0]))
            else:
                missing.append(f"{cl['path']} (stream {st['stream_id']}): {len(cs)} grpc calls")
        self.assertEqual(missing, [], f"{len(missing)} of {len(self.t)} RPCs without exactly one grpc call "
                         "(test_calls_equal_tshark has the details):\n" + "\n".join(missing) + self.where())
        return out

    def rpc(self, pred) -> tuple[dict, dict, dict]:
        found = [r for r in self.rpcs() if pred(r[0])]
        self.assertEqual(len(found), 1)
        return found[0]

    # ---- the reference itself -------------------------------------------
    def test_0_reference(self):
        """tcpdump got every packet; tshark's gRPC streams are the client's RPCs, in order, with its
        statuses, messages and message sizes."""
        self.assertTrue(ref.capture_complete(self.cap), f"tcpdump did not write every packet: {self.cap}")
        self.assertEqual(self.t_notes, [])
        self.assertEqual(len({st["tcp_stream"] for st in self.t}), 1, "one channel, one connection")
        self.assertEqual([st["path"] for st in self.t], [c["path"] for c in self.client], "tshark: the RPCs in order")
        self.assertEqual(len(self.t), len(self.t_all), "HTTP/2 streams that are not gRPC")
        for cl, st in zip(self.client, self.t):
            g = h2ref.grpc_info(st)
            what = f"RPC {cl['n']} {cl['path']} ({cl['code_name']})"
            if cl.get("cancelled"):
                self.assertEqual((g["grpc_status"], st["rst"]), (None, {"client": "CANCEL"}), what)
                self.assertGreaterEqual(len(g["resp_msgs"]), len(cl["received"]), what)
            else:
                self.assertEqual(g["grpc_status"], cl["code"], what)
                self.assertEqual(g["grpc_message"] or "", cl["details"] or "", what)
                self.assertEqual(len(g["resp_msgs"]), len(cl["received"]), what)
            self.assertEqual(len(g["req_msgs"]), len(cl["sent"]), what)
            if not cl.get("compressed"):
                self.assertEqual(g["req_msgs"], [m["size"] for m in cl["sent"]], what)
                self.assertEqual(g["resp_msgs"][:len(cl["received"])], [m["size"] for m in cl["received"]], what)
            else:
                self.assertEqual((g["encoding"], g["req_compressed"]), ("gzip", [1]), what)
        kinds = collections.Counter(c["kind"] for c in self.client)
        self.assertEqual(set(kinds), {"unary", "server_stream", "client_stream", "bidi"})
        large = [c for c in self.client if c["method"] == "Large"][0]
        self.assertGreater(large["sent"][0]["size"], 1 << 20)
        st = self.t[large["n"]]
        self.assertGreater(min(st["req_frames"], st["resp_frames"]), 20, "the large message: many DATA frames")

    # ---- the dissector ----------------------------------------------------
    def test_1_dissector_runs(self):
        for name, r in (("main", self.dis), ("--dissectors dns", self.dis_dns)):
            self.assertFalse(r["timed_out"], f"tapwire-dissector ({name}) did not finish")
            self.assertEqual(r["rc"], 0, f"tapwire-dissector ({name}) exit {r['rc']}:\n{r['stderr'][-3000:]}")
        protos = collections.Counter(c.get("protocol") for c in self.calls)
        self.assertEqual(dict(protos), {"grpc": len(self.t)},
                         "one grpc call per RPC and nothing else (a gRPC stream is not also an http2 call)"
                         + self.where())

    def test_calls_equal_tshark(self):
        """(client, server, stream id, path, authority, HTTP status) of every RPC."""
        d = ref.diff_multisets([h2ref.t_key(st) for st in self.t], [h2ref.c_key(c) for c in self.g])
        self.assertEqual(d, "", "grpc calls differ from tshark's gRPC streams:\n" + d + self.where())

    def test_service_method_status(self):
        bad = []
        for cl, st, c in self.rpcs():
            g = h2ref.grpc_info(st)
            req, resp = c.get("request") or {}, c.get("response") or {}
            want = (g["service"], g["method"], g["grpc_status"],
                    h2ref.GRPC_STATUS.get(g["grpc_status"]) if g["grpc_status"] is not None else None,
                    g["grpc_message"])
            got = (req.get("service"), req.get("method"), resp.get("grpc_status"), resp.get("grpc_status_name"),
                   resp.get("grpc_message"))
            if got[4] == "" and want[4] is None:
                got = got[:4] + (None,)  # no grpc-message: empty or absent, either is fine
            if got != want:
                bad.append(f"RPC {cl['n']} {cl['path']}: (service, method, grpc_status, name, message) {got}, "
                           f"tshark {want}")
            if "grpc_status" not in resp:
                bad.append(f"RPC {cl['n']} {cl['path']}: no grpc_status key (null when there is none)")
        self.assertEqual(bad, [], "\n".join(bad) + self.where())

    def test_error_statuses(self):
        """NOT_FOUND (Trailers-Only) with its message as the client got it, non-ASCII and '%' decoded;
        RESOURCE_EXHAUSTED after two replies."""
        cl, st, c = self.rpc(lambda c: c["method"] == "Lookup")
        r = c["response"]
        self.assertEqual((r.get("grpc_status"), r.get("grpc_status_name"), r.get("grpc_message")),
                         (5, "NOT_FOUND", cl["details"]), self.where())
        self.assertEqual((r.get("message_count"), r.get("message_bytes")), (0, 0), self.where())
        cl, st, c = self.rpc(lambda c: c["code_name"] == "RESOURCE_EXHAUSTED")
        r = c["response"]
        self.assertEqual((r.get("grpc_status"), r.get("grpc_status_name"), r.get("grpc_message"),
                          r.get("message_count")), (8, "RESOURCE_EXHAUSTED", cl["details"], 2), self.where())

    def test_cancelled_call(self):
        """The client's cancel: RST_STREAM CANCEL in the request object, flag reset, grpc_status null."""
        cl, st, c = self.rpc(lambda c: c.get("cancelled"))
        req, resp = c.get("request") or {}, c.get("response") or {}
        self.assertEqual(req.get("rst_stream"), "CANCEL", self.where())
        self.assertIn("reset", c.get("flags") or [], self.where())
        self.assertIn("grpc_status", resp, "grpc_status null, not absent" + self.where())
        self.assertIsNone(resp.get("grpc_status"), self.where())

    def test_headers_and_trailers(self):
        """Names of the request headers, response headers and trailers equal tshark's; timeout and
        encoding as sent."""
        bad = []
        for cl, st, c in self.rpcs():
            g = h2ref.grpc_info(st)
            for side in ("request", "response"):
                obj, t = c.get(side) or {}, h2ref.h2_side(st, side)
                if h2ref.names(obj.get("headers")) != t["headers"]:
                    bad.append(f"RPC {cl['n']} {side} headers {h2ref.names(obj.get('headers'))}, tshark {t['headers']}")
                if h2ref.names(obj.get("trailers")) not in ((t["trailers"],) if t["trailers"] else (None, [])):
                    bad.append(f"RPC {cl['n']} {side} trailers {h2ref.names(obj.get('trailers'))}, "
                               f"tshark {t['trailers']}")
            req = c.get("request") or {}
            if req.get("timeout") != g["timeout"]:
                bad.append(f"RPC {cl['n']}: timeout {req.get('timeout')!r}, grpc-timeout {g['timeout']!r}")
            if req.get("encoding") != (g["encoding"] if g["encoding"] not in (None, "identity") else None):
                bad.append(f"RPC {cl['n']}: encoding {req.get('encoding')!r}, grpc-encoding {g['encoding']!r}")
        self.assertEqual(bad, [], "\n".join(bad) + self.where())

    def test_message_counts(self):
        """message_count, message_bytes, and the first 8 messages' size and compressed flag, per
        direction, equal tshark's; and the client's counts for each kind of RPC."""
        bad = []
        for cl, st, c in self.rpcs():
            g = h2ref.grpc_info(st)
            for side, sizes, comp in (("request", g["req_msgs"], g["req_compressed"]),
                                      ("response", g["resp_msgs"], g["resp_compressed"])):
                obj = c.get(side) or {}
                msgs = obj.get("messages") or []
                got = (obj.get("message_count"), obj.get("message_bytes"),
                       [(m.get("size"), bool(m.get("compressed"))) for m in msgs])
                want = (len(sizes), sum(sizes), [(n, bool(f)) for n, f in zip(sizes, comp)][:KEPT])
                if got != want:
                    bad.append(f"RPC {cl['n']} {cl['path']} {side}: (count, bytes, first {KEPT}) {got}, tshark {want}")
        self.assertEqual(bad, [], "\n".join(bad) + self.where())
        kinds = {}
        for cl, st, c in self.rpcs():
            if cl["code_name"] == "OK":
                kinds.setdefault(cl["kind"], set()).add((c["request"].get("message_count"),
                                                         c["response"].get("message_count"),
                                                         len(cl["sent"]), len(cl["received"])))
        for kind, seen in kinds.items():
            for rq, rp, n_sent, n_recv in seen:
                self.assertEqual((rq, rp), (n_sent, n_recv), f"{kind}: messages (request, response)")
        self.assertEqual(set(kinds), {"unary", "server_stream", "client_stream", "bidi"})

    def test_large_message(self):
        """1.5 MB each way, over many DATA frames: counted whole, kept only in part (truncated)."""
        cl, st, c = self.rpc(lambda c: c["method"] == "Large")
        for side, d in (("request", "sent"), ("response", "received")):
            obj = c.get(side) or {}
            size = cl[d][0]["size"]
            self.assertEqual((obj.get("message_count"), obj.get("message_bytes")), (1, size), f"Large {side}")
            m = (obj.get("messages") or [{}])[0]
            self.assertEqual(m.get("size"), size, f"Large {side}")
            self.assertTrue(m.get("truncated"), f"Large {side}: a {size}-byte message kept whole?")
        self.assertNotIn("incomplete", c.get("flags") or [])

    def _check_data(self, calls_by: dict, by_name: bool) -> list[str]:
        bad, checked = [], 0
        for cl, st, c0 in self.rpcs():
            c = calls_by.get(h2ref.t_conn_sid(st))
            if not c:
                bad.append(f"RPC {cl['n']} {cl['path']}: no call")
                continue
            for side, d, typ in (("request", "sent", REQ), ("response", "received", REP)):
                msgs = (c.get(side) or {}).get("messages") or []
                for i, (m, want) in enumerate(zip(msgs, cl[d][:KEPT])):
                    if m.get("truncated") or (m.get("compressed") and (m.get("data") is None or by_name)):
                        continue  # cut, or compressed: left undecoded, or decoded schema-less only
                    checked += 1
                    if by_name:
                        if no_defaults(norm(m.get("data"))) != no_defaults(norm(want["fields"])):
                            bad.append(f"RPC {cl['n']} {cl['path']} {side} message {i}: data {m.get('data')!r:.300}, "
                                       f"the client's {want['fields']!r:.300}")
                    else:
                        exp = expected_fields(typ, want["fields"])
                        got = strip(exp, got_fields(m.get("data"), False), False)
                        if got != no_wire(exp):
                            bad.append(f"RPC {cl['n']} {cl['path']} {side} message {i}: fields {got!r:.300}, "
                                       f"the client encoded {no_wire(exp)!r:.300}")
        if not checked:
            bad.append("no message checked")
        return bad

    def test_message_data_schemaless(self):
        """Without a schema: field numbers and values (strings, integers, nested messages) the client encoded."""
        calls = {h2ref.c_conn_sid(c): c for c in self.g}
        bad = self._check_data(calls, by_name=False)
        self.assertEqual(bad, [], "\n".join(bad[:20]) + self.where())

    def test_message_wire_types(self):
        """Schema-less fields name their wire type as the call record says: "wire_type": varint, i64, len, i32."""
        bad = []
        for cl, st, c in self.rpcs():
            for side, d, typ in (("request", "sent", REQ), ("response", "received", REP)):
                for i, (m, want) in enumerate(zip((c.get(side) or {}).get("messages") or [], cl[d][:KEPT])):
                    if m.get("truncated") or (m.get("compressed") and m.get("data") is None):
                        continue
                    exp = expected_fields(typ, want["fields"])
                    got = got_fields(m.get("data"), True)
                    top = [(n, w) for n, w, _ in got] if got is not None else None
                    if top != [(n, w) for n, w, _ in exp]:
                        bad.append(f"RPC {cl['n']} {side} message {i}: (field, wire_type) {top}, "
                                   f"expected {[(n, w) for n, w, _ in exp]}; data {m.get('data')!r:.200}")
        self.assertEqual(bad, [], "\n".join(bad[:10]) + self.where())

    def test_message_data_with_proto(self):
        """tap.grpc.protoPaths (tests/integration/data/tapwire_echo.proto): messages by field name."""
        self.assertIsNotNone(self.proto_flag, "tapwire-dissector --help lists no flag for tap.grpc.protoPaths "
                             "(looked for an option with 'proto' in its name)")
        r = self.dis_proto
        self.assertEqual(r["rc"], 0, f"tapwire-dissector {self.proto_flag} {h2ref.PROTO_FILE.parent}: exit "
                         f"{r['rc']}:\n{r['stderr'][-3000:]}")
        calls = {h2ref.c_conn_sid(c): c for c in self.proto_calls if c.get("protocol") == "grpc"}
        bad = self._check_data(calls, by_name=True)
        self.assertEqual(bad, [], "\n".join(bad[:20]) + self.where())

    def test_dissectors_dns_only(self):
        """--dissectors dns (tap.enabledDissectors: [dns]): no grpc or http2 calls."""
        protos = collections.Counter(c.get("protocol") for c in self.dns_only)
        self.assertEqual(protos.get("grpc", 0) + protos.get("http2", 0), 0,
                         f"--dissectors dns gave {dict(protos)}" + self.where())

    def test_db_equals_jsonl(self):
        self.rpcs()
        got_db = ref.db_calls(self.db) if self.db.exists() else []
        d = ref.diff_multisets([ref.full_key(c) for c in self.calls], [ref.full_key(c) for c in got_db],
                               "jsonl", "db", limit=8)
        self.assertEqual(d, "", "--db and --jsonl differ:\n" + d + self.where())

    def test_call_ids_unique(self):
        self.rpcs()
        ids = collections.Counter(c["id"] for c in self.calls)
        self.assertEqual([i for i, n in ids.items() if n > 1], [], "call ids shared by several calls" + self.where())

    def test_no_other_flags(self):
        """Flags only where due: reset on the cancelled call, body_truncated on a call with a message
        kept only in part; every call answered."""
        bad = []
        for cl, st, c in self.rpcs():
            allowed = {"reset", "incomplete"} if cl.get("cancelled") else set()
            if any(m.get("truncated") for side in ("request", "response")
                   for m in (c.get(side) or {}).get("messages") or []):
                allowed.add("body_truncated")
            if set(c.get("flags") or []) - allowed or not c.get("response"):
                bad.append(f"RPC {cl['n']} {cl['path']}: flags {c.get('flags')}, "
                           f"response {'yes' if c.get('response') else 'none'}")
        self.assertEqual(bad, [], "\n".join(bad) + self.where())


if __name__ == "__main__":
    h2ref.require(grpc=True)
    unittest.main()
