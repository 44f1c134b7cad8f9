#!/usr/bin/env python3
"""Done means (PostgreSQL dissection): a real PostgreSQL 15 server in the lab
(ssl off, trust), psql (SSLRequest refused with sslmode=prefer, DDL, INSERT,
SELECT with rows, a syntax error, a multi-statement query, COPY FROM STDIN,
COPY TO STDOUT, an error on a missing table) and pgbench (-M simple, -M
extended, -M prepared) and a raw CancelRequest, tcpdump on the server veth,
and `tapwire-dissector --pcap` on that file gives, per connection, what
tshark's `pgsql` dissector (decode-as on the port) sees: the same simple
queries in order, one extended call per Execute with the query of its
statement (paired by statement name from the Parse messages) and the
statement name, one prepare call per Parse not executed before its Sync,
the same CommandComplete tags in order, the same error SQLSTATEs in order,
the DataRow count, the startups, SSL requests (refused) and cancels; status
1 exactly for the calls with an error; no password anywhere.

Needs root, netns, tcpdump, tshark, PostgreSQL (server, psql, pgbench) and
the built dissector; skips with 77 otherwise (fails under CI=true).
TW_LAB_KEEP=1 keeps the capture and outputs."""

import collections
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402
import postgresref as pg  # noqa: E402


def require() -> None:
    lab.require(binaries=False, tools=("ip", "tcpdump", "tshark"))
    problems = pg.missing()
    if not os.access(ref.dissector_bin(), os.X_OK):
        problems.append(f"missing binary {ref.dissector_bin()} (build first)")
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def reference(msgs: list[dict]) -> dict:
    """Per client port, what tshark's messages say the calls are."""
    out = collections.defaultdict(lambda: {"simple": [], "extended": [], "prepare": [], "tags": [], "errors": [],
                                           "rows": 0, "startup": 0, "ssl": 0, "cancel": 0})
    statements = collections.defaultdict(dict)  # port -> name -> query
    group = {}  # port -> {"parses": [...], "bound": (statement, query) | None}
    for m in msgs:
        p, f, t = m["client_port"], m["fields"], m["type"]
        r = out[p]
        g = group.setdefault(p, {"parses": [], "bound": None})
        if m["frontend"]:
            if t == "Simple query":
                r["simple"].append(pg.first(f, "pgsql.query"))
            elif t == "Parse":
                name, q = pg.first(f, "pgsql.statement") or "", pg.first(f, "pgsql.query")
                statements[p][name] = q
                g["parses"].append((name, q))
            elif t == "Bind":
                name = pg.first(f, "pgsql.statement") or ""
                g["bound"] = (name, statements[p].get(name))
                g["parses"] = [x for x in g["parses"] if x[0] != name]
            elif t == "Execute":
                r["extended"].append(g["bound"])
            elif t == "Sync":
                r["prepare"] += g["parses"]
                g["parses"] = []
            elif t == "Startup message":
                r["startup"] += 1
            elif t == "SSL request":
                r["ssl"] += 1
            elif t == "Cancel request":
                r["cancel"] += 1
        else:
            if t == "Command completion":
                r["tags"].append(pg.first(f, "pgsql.tag"))
            elif t == "Error":
                r["errors"].append(pg.first(f, "pgsql.code"))
            elif t == "Data row":
                r["rows"] += 1
    return out


def ours(calls: list[dict]) -> dict:
    out = collections.defaultdict(lambda: {"simple": [], "extended": [], "prepare": [], "tags": [], "errors": [],
                                           "rows": 0, "startup": 0, "ssl": 0, "cancel": 0})
    for c in calls:
        r = out[c["src"]["port"]]
        q, s = c.get("request") or {}, c.get("response") or {}
        k = q.get("kind")
        if k == "simple":
            r["simple"].append(q["query"])
        elif k == "extended":
            r["extended"].append((q["statement"], q.get("query")))
        elif k == "prepare":
            r["prepare"].append((q["statement"], q.get("query")))
        elif k == "startup":
            r["startup"] += 1
        elif k == "ssl_request":
            r["ssl"] += 1
        elif k == "cancel":
            r["cancel"] += 1
        if "statements" in s:
            r["tags"] += [x["command_tag"] for x in s["statements"]]
        elif "command_tag" in s:
            r["tags"].append(s["command_tag"])
        if "error" in s:
            r["errors"].append(s["error"]["sqlstate"])
        r["rows"] += s.get("rows", 0)
    return out


class PostgresEquivalence(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab(nginx=False, dnsmasq=False).__enter__()
        try:
            L = cls.L
            pg.start_server(L)
            pg.pgbench(L, ["-i", "-s", "1", "-q"])  # before the capture: 100000 COPY rows
            tcpd = L.start_tcpdump(L.srv_veth, L.dir / "pg.pcap")
            pg.psql(L)
            pg.pgbench(L, ["-M", "simple", "-c", "1", "-t", "20", "-n"])
            pg.pgbench(L, ["-M", "extended", "-c", "1", "-t", "10", "-n"])
            pg.pgbench(L, ["-M", "prepared", "-c", "1", "-t", "10", "-n"])
            pg.cancel_request(L, 4242)
            cls.cap = ref.stop_capture(tcpd, settle=1.5)
            cls.pcap = L.dir / "pg.pcap"
            cls.jsonl = L.dir / "calls.jsonl"
            cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl], timeout=120)
            cls.calls = ref.read_jsonl(cls.jsonl) if cls.jsonl.exists() else []
            cls.msgs = pg.tshark_messages(cls.pcap)
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def test_capture_complete(self):
        self.assertTrue(ref.capture_complete(self.cap), self.cap)
        self.assertEqual(self.dis["rc"], 0, self.dis["stderr"])

    def test_calls_match_tshark(self):
        want, got = reference(self.msgs), ours(self.calls)
        self.assertGreaterEqual(len(want), 5, "psql, 3 pgbench runs and a cancel")
        self.assertEqual(sorted(got), sorted(want))
        total = collections.Counter()
        for port, w in want.items():
            with self.subTest(port=port):
                self.assertEqual(got[port], w)
            for k, v in w.items():
                total[k] += len(v) if isinstance(v, list) else v
        self.assertGreater(total["simple"], 40)
        self.assertGreaterEqual(total["extended"], 140)
        self.assertGreater(total["prepare"], 0)
        self.assertEqual(total["cancel"], 1)
        self.assertGreaterEqual(total["errors"], 2)
        self.assertGreater(total["rows"], 20)

    def test_record_fields(self):
        self.assertTrue(all(c["protocol"] == "postgres" for c in self.calls))
        text = "\n".join(json.dumps(c) for c in self.calls)
        self.assertNotIn("password", text.lower().replace('"cleartext_password"', ""))
        ssl = [c for c in self.calls if (c["request"] or {}).get("kind") == "ssl_request"]
        self.assertTrue(ssl)
        for c in ssl:
            self.assertEqual(c["response"], {"ssl": "refused"})
        for c in self.calls:
            q, s = c["request"] or {}, c["response"]
            kind = q.get("kind")
            with self.subTest(call=c["id"]):
                if kind == "cancel":
                    self.assertIsNone(s)
                    self.assertEqual(q["backend_pid"], 4242)
                    self.assertEqual(c["flags"], [])
                    continue
                self.assertIsNotNone(s)
                self.assertEqual(c["flags"], [])
                if kind == "startup":
                    self.assertEqual(q["user"], "postgres")
                    self.assertEqual(q["database"], "postgres")
                    self.assertIn("ok", s["authentication"])
                if kind in ("simple", "extended") and "rows" in s:
                    self.assertIsInstance(s["rows"], int)
        errors = [c for c in self.calls if c["response"] and "error" in c["response"]]
        codes = sorted(c["response"]["error"]["sqlstate"] for c in errors)
        self.assertEqual(codes, ["42601", "42P01"])
        for c in errors:
            self.assertEqual(c["response"]["error"]["severity"], "ERROR")
            self.assertTrue(c["response"]["error"]["message"])
        multi = [c for c in self.calls if c["response"] and len(c["response"].get("statements", [])) == 3]
        self.assertEqual(len(multi), 1)
        copy_in = [c for c in self.calls if (c["request"] or {}).get("copy")]
        self.assertEqual(len(copy_in), 1)
        self.assertEqual(copy_in[0]["response"]["command_tag"], "COPY 2")


if __name__ == "__main__":
    require()
    unittest.main(verbosity=2)
