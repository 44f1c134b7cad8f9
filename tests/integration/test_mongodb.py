#!/usr/bin/env python3
"""Done means (MongoDB dissection): on a capture of a real MongoDB shell and
server (tests/fixtures/mongodb/mongo.pcap: OP_QUERY/OP_REPLY, OP_MSG with
checksums, an ok:0 reply with code 76), `tapwire-dissector --pcap` gives one
`mongodb` record per request/reply pair, equal call for call to tshark's
dissection of the same file (mongodbref.tshark_calls): the two ends, the
request's opcode and requestID, the reply's opcode, requestID and responseTo
(paired with the request's id), the command (first element name), database
($db, or OP_QUERY's collection name), collection (the first element's value
when a string), and the reply's ok, error code and message. The summary
columns (`tapwire calls --db`) say method = command, path = database[.collection],
status = 0, or the error code. A synthetic capture of 400 find/insert pairs
over 4 connections made from the fixture's messages (mongodbref.synth_bench_pcap,
what `make bench` uses) gives 400 calls, all paired, as tshark pairs them.

No server or namespaces: it needs tshark and the built binaries; skips with
77 without them (fails under CI=true). TW_LAB_KEEP=1 keeps the outputs.
"""

import collections
import os
import shutil
import sqlite3
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402
import mongodbref as mref  # noqa: E402


def require() -> None:
    problems = []
    if not shutil.which("tshark"):
        problems.append("missing tool tshark")
    if not os.access(ref.dissector_bin(), os.X_OK):
        problems.append(f"missing binary {ref.dissector_bin()} (build first; TW_BUILD_DIR={lab.build_dir()})")
    if not mref.FIXTURE.exists():
        problems.append(f"missing fixture {mref.FIXTURE}")
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def t_key(c: dict) -> tuple:
    """A tshark call, comparable to w_key."""
    r = c["response"]
    return (ref.norm_ip(c["client"][0]), c["client"][1], ref.norm_ip(c["server"][0]), c["server"][1],
            c["opcode"], c["request_id"], c["command"], c["database"], c["collection"],
            None if r is None else (r["opcode"], r["request_id"], r["response_to"], r["ok"], r["code"], r["message"]))


OPS = {"OP_MSG": 2013, "OP_QUERY": 2004, "OP_REPLY": 1, "OP_COMPRESSED": 2012}


def w_key(c: dict) -> tuple:
    """A tapwire mongodb record, comparable to t_key."""
    q, r = c.get("request"), c.get("response")
    resp = None
    if r is not None:
        err = r.get("error") or {}
        resp = (OPS.get(r["op"]), r["request_id"], r["response_to"], r.get("ok"),
                err.get("code") if r.get("ok") == 0 else None, err.get("message") if r.get("ok") == 0 else None)
    return (ref.norm_ip(c["src"]["ip"]), c["src"]["port"], ref.norm_ip(c["dst"]["ip"]), c["dst"]["port"],
            OPS.get(q["op"]) if q else None, q["request_id"] if q else None, q.get("command") if q else None,
            q.get("database") if q else None, q.get("collection") if q else None, resp)


class MongoDbTest(unittest.TestCase):
    tmp: Path

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="tw-mongodb-"))

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("TW_LAB_KEEP"):
            print(f"kept {cls.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def dissect(self, pcap: Path, name: str) -> tuple[list[dict], list[dict]]:
        jsonl, db = self.tmp / f"{name}.jsonl", self.tmp / f"{name}.db"
        r = ref.run_dissector(["--pcap", pcap, "--jsonl", jsonl, "--db", db], timeout=120)
        self.assertEqual(r["rc"], 0, r["stderr"][-2000:])
        self.assertFalse(r["timed_out"])
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT id, protocol, method, path, status FROM calls").fetchall()
        finally:
            con.close()
        return ref.read_jsonl(jsonl), [dict(zip(("id", "protocol", "method", "path", "status"), r)) for r in rows]

    def test_fixture_matches_tshark_call_for_call(self):
        want = mref.tshark_calls(mref.tshark_messages(mref.FIXTURE))
        self.assertEqual(len(want), 15, "the fixture holds 15 request/reply pairs")
        calls, db = self.dissect(mref.FIXTURE, "fixture")
        self.assertTrue(all(c["protocol"] == "mongodb" for c in calls))
        self.assertEqual([t_key(c) for c in want], [w_key(c) for c in calls])
        for c in calls:
            self.assertEqual(c["flags"], [], c)
        # The opcodes of the fixture: one OP_QUERY/OP_REPLY pair, then OP_MSG.
        self.assertEqual(collections.Counter(c["request"]["op"] for c in calls), {"OP_MSG": 14, "OP_QUERY": 1})
        err = [c for c in calls if c["response"].get("ok") == 0]
        self.assertEqual(len(err), 1)
        self.assertEqual(err[0]["response"]["error"],
                         {"code": 76, "message": "not running with --replSet", "code_name": "NoReplicationEnabled"})
        # The DB's summary columns (what `tapwire calls` filters on).
        self.assertEqual(len(db), len(calls))
        by_id = {c["id"]: c for c in db}
        for c in calls:
            d = by_id[c["id"]]
            q = c["request"]
            path = q["database"] + ("." + q["collection"] if q["collection"] else "")
            status = 0 if c["response"].get("ok") == 1 else c["response"]["error"]["code"]
            self.assertEqual((d.get("method"), d.get("path"), d.get("status")), (q["command"], path, status), d)

    def test_synthetic_bench_capture(self):
        pcap = self.tmp / "bench.pcap"
        port = mref.synth_bench_pcap(pcap, 400, connections=4)
        self.assertEqual(port, 27017)
        want = mref.tshark_calls(mref.tshark_messages(pcap, port))
        calls, _ = self.dissect(pcap, "bench")
        self.assertEqual(len(calls), 400)
        self.assertEqual(sorted(t_key(c) for c in want), sorted(w_key(c) for c in calls))
        self.assertEqual(collections.Counter(c["request"]["command"] for c in calls), {"find": 200, "insert": 200})
        self.assertTrue(all(c["response"] and c["flags"] == [] for c in calls))
        ins = next(c for c in calls if c["request"]["command"] == "insert")
        self.assertEqual(ins["request"]["sequences"], [{"identifier": "documents", "documents": 2}])
        self.assertEqual(len(ins["request"]["document"]["documents"]), 2)


if __name__ == "__main__":
    require()
    unittest.main(verbosity=2)
