#!/usr/bin/env python3
"""Done means (MySQL / MariaDB dissection): a real mariadbd and real clients
in the lab, tcpdump on the server veth, and `tapwire-dissector --pcap` on
that file gives, connection by connection and in order, the commands tshark's
`mysql` dissector finds (command, SQL text, statement id), the errors it
finds (code, SQLSTATE, message), the affected rows it reads from OK packets,
the handshake's user, schema and server version; and the row counts the
clients themselves report.

Traffic (mysqlref): the mariadb client (SELECT, an error from a missing
table, USE → COM_INIT_DB, INSERT/UPDATE/DELETE, a multi-statement query with
two result sets, COM_QUIT); the same client with --compress (the compressed
framing after the handshake); Perl DBD::MariaDB with server-side prepared
statements (COM_STMT_PREPARE / EXECUTE with a binary result set / an
EXECUTE that fails on a duplicate key / CLOSE); a short mysqlslap run.

Needs root, netns, tcpdump, tshark, mariadb-server, mariadb-client,
libdbd-mariadb-perl and the built binaries; skips with 77 otherwise (fails
under CI=true). TW_LAB_KEEP=1 keeps the capture and the outputs.
"""

import collections
import os
import re
import sqlite3
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402
import mysqlref  # noqa: E402

COMMANDS = {0: "COM_SLEEP", 1: "COM_QUIT", 2: "COM_INIT_DB", 3: "COM_QUERY", 4: "COM_FIELD_LIST",
            9: "COM_STATISTICS", 14: "COM_PING", 17: "COM_CHANGE_USER", 22: "COM_STMT_PREPARE",
            23: "COM_STMT_EXECUTE", 24: "COM_STMT_SEND_LONG_DATA", 25: "COM_STMT_CLOSE", 26: "COM_STMT_RESET",
            27: "COM_SET_OPTION", 28: "COM_STMT_FETCH", 31: "COM_RESET_CONNECTION"}

PLAIN_SQL = """SELECT id, name FROM t;
SELECT * FROM missing_table;
USE other;
USE shop;
INSERT INTO t VALUES (10,'x'),(11,'y');
UPDATE t SET name='z' WHERE id >= 10;
DELIMITER $$
SELECT 1 AS one; SELECT id FROM t WHERE id < 3$$
DELIMITER ;
DELETE FROM t WHERE id >= 10;
"""
COMPRESSED_SQL = "SELECT id, name FROM t WHERE id <= 4;\nSELECT nope FROM t;\n"


def require() -> None:
    lab.require(binaries=False, tools=("ip", "tcpdump", "tshark"))
    problems = [f"missing {t}" for t in mysqlref.missing_tools()]
    if not os.access(ref.dissector_bin(), os.X_OK):
        problems.append(f"missing binary {ref.dissector_bin()} (build first; TW_BUILD_DIR={lab.build_dir()})")
    if problems:
        msg = "cannot run: " + "; ".join(problems) + " (scripts/install-deps.sh)"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


class MysqlEquivalence(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab(nginx=False, dnsmasq=False).__enter__()
        try:
            L = cls.L
            srv = mysqlref.MariaDB(L)
            srv.start()
            tcpd = L.start_tcpdump(L.srv_veth, L.dir / "mysql.pcap")
            cls.out = {}
            cls.out["plain"] = srv.client(PLAIN_SQL)
            cls.out["compressed"] = srv.client(COMPRESSED_SQL, compress=True)
            cls.out["prepared"] = srv.prepared()
            cls.out["slap"] = srv.slap(0.5, concurrency=2)
            for k, r in cls.out.items():
                lab.log(f"{k}: rc {r.returncode if r else None} "
                        f"{(r.stdout + r.stderr)[-300:] if r else ''}")
            cls.cap = ref.stop_capture(tcpd, settle=1.0)
            srv.stop()
            cls.pcap = tcpd.out
            cls.t = mysqlref.tshark_mysql(cls.pcap)
            cls.jsonl = L.dir / "calls.jsonl"
            cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl], timeout=120)
            lab.log("dissector: " + cls.dis["stderr"].strip()[-400:])
            cls.calls = ref.read_jsonl(cls.jsonl) if cls.jsonl.exists() else []
            cls.my = [c for c in cls.calls if c.get("protocol") == "mysql"]
            cls.by_conn = collections.defaultdict(list)
            for c in cls.my:
                cls.by_conn[c["src"]["port"]].append(c)
            for v in cls.by_conn.values():
                v.sort(key=lambda c: c["ts"])
            lab.log(f"tshark {len(cls.t)} mysql frames; tapwire {len(cls.my)} mysql calls on "
                    f"{len(cls.by_conn)} connections")
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def where(self):
        return f"\n(capture {self.pcap}; TW_LAB_KEEP=1 keeps it)"

    # tshark's values, per client port, in order
    def t_values(self, field: str, to_server: bool) -> dict:
        out = collections.defaultdict(list)
        for row in self.t:
            if row["to_server"] == to_server:
                out[row["cport"]] += row[field]
        return out

    def commands(self, conn):
        return [c for c in self.by_conn[conn] if c["request"] and c["request"]["command"] != "connect"]

    def conn_with(self, query_part: str) -> int:
        for conn, calls in self.by_conn.items():
            if any(query_part in ((c.get("request") or {}).get("query") or "") for c in calls):
                return conn
        self.fail(f"no connection ran {query_part!r}" + self.where())

    def test_0_reference(self):
        """The capture is whole and the clients did what the test is about."""
        self.assertTrue(ref.capture_complete(self.cap), f"tcpdump did not write every packet: {self.cap}")
        self.assertIn("ERROR 1146", self.out["plain"].stderr)
        self.assertIn("ERROR 1054", self.out["compressed"].stderr)
        self.assertEqual(self.out["prepared"].returncode, 0, self.out["prepared"].stderr)
        self.assertEqual(re.findall(r"rows (\d+)", self.out["prepared"].stdout), ["5", "3"])
        self.assertIn("error 1062", self.out["prepared"].stdout)
        self.assertTrue(self.t, "tshark found no MySQL" + self.where())
        self.assertEqual(self.dis["rc"], 0, self.dis["stderr"])

    def test_commands_queries_and_statement_ids(self):
        """Every connection's commands, SQL texts and statement ids are tshark's, in order."""
        t_cmd, t_query = self.t_values("mysql.command", True), self.t_values("mysql.query", True)
        t_stmt = self.t_values("mysql.stmt_id", True)
        t_stmt_resp = self.t_values("mysql.stmt_id", False)
        self.assertEqual(set(t_cmd), set(self.by_conn), "connections" + self.where())
        for conn in t_cmd:
            calls = self.commands(conn)
            want = [COMMANDS.get(int(x), x) for x in t_cmd[conn]]
            self.assertEqual([c["request"]["command"] for c in calls], want, f"port {conn}" + self.where())
            got_q = [c["request"]["query"] for c in calls
                     if c["request"]["command"] in ("COM_QUERY", "COM_STMT_PREPARE")]
            self.assertEqual(got_q, t_query[conn], f"port {conn}" + self.where())
            got_s = [str(c["request"]["statement_id"]) for c in calls if "statement_id" in c["request"]]
            self.assertEqual(got_s, t_stmt[conn], f"port {conn}" + self.where())
            got_sr = [str(c["response"]["statement_id"]) for c in calls
                      if c["response"] and "statement_id" in c["response"]]
            self.assertEqual(got_sr, t_stmt_resp[conn], f"port {conn}" + self.where())

    def test_errors_and_affected_rows(self):
        """Errors (code, SQLSTATE, message) in order, and the affected rows, are tshark's."""
        t_code, t_state = self.t_values("mysql.error_code", False), self.t_values("mysql.sqlstate", False)
        t_msg, t_aff = self.t_values("mysql.error.message", False), self.t_values("mysql.affected_rows", False)
        for conn, calls in self.by_conn.items():
            errs = [c["response"]["error"] for c in calls if c["response"] and "error" in c["response"]]
            self.assertEqual([str(e["code"]) for e in errs], t_code.get(conn, []), f"port {conn}" + self.where())
            self.assertEqual([e["sqlstate"] for e in errs], t_state.get(conn, []), f"port {conn}")
            self.assertEqual([e["message"] for e in errs], t_msg.get(conn, []), f"port {conn}")
            for c in calls:
                if c["response"] and "error" in c["response"]:
                    self.assertEqual(c["status"] if "status" in c else c["response"]["error"]["code"],
                                     c["response"]["error"]["code"])
            got = sum(c["response"].get("affected_rows", 0) for c in calls if c["response"])
            self.assertEqual(got, sum(int(x) for x in t_aff.get(conn, [])), f"port {conn}" + self.where())

    def test_handshake(self):
        """One connect call per connection first: user, schema, plugin, server version; no password."""
        t_user, t_schema = self.t_values("mysql.user", True), {}
        for row in self.t:  # the schema of the handshake response (COM_INIT_DB has one too)
            if row["to_server"] and row["mysql.user"] and row["cport"] not in t_schema:
                t_schema[row["cport"]] = row["mysql.schema"][:1]
        t_version = self.t_values("mysql.version", False)
        for conn, calls in self.by_conn.items():
            c = calls[0]
            self.assertEqual(c["request"]["command"], "connect", f"port {conn}")
            self.assertEqual([c["request"].get("user")], t_user[conn])
            self.assertEqual([c["request"]["database"]] if "database" in c["request"] else [], t_schema[conn])
            self.assertEqual([c["response"]["server_version"]], t_version[conn])
            self.assertIn("auth_plugin", c["request"])
            self.assertNotIn("error", c["response"])
            self.assertEqual([x["request"]["command"] for x in calls].count("connect"), 1)
        text = self.jsonl.read_text()
        self.assertNotIn(mysqlref.PASSWORD, text)

    def test_rows_and_kinds(self):
        """Row counts as the clients saw them; every kind of call there, unflagged."""
        plain = self.commands(self.conn_with("missing_table"))
        by_q = {c["request"].get("query"): c for c in plain}
        self.assertEqual(by_q["SELECT id, name FROM t"]["response"]["rows"], 5)
        self.assertEqual(by_q["SELECT * FROM missing_table"]["response"]["error"]["code"], 1146)
        multi = by_q["SELECT 1 AS one; SELECT id FROM t WHERE id < 3"]["response"]
        self.assertEqual((multi["rows"], multi["result_sets"]), (3, 2))
        self.assertEqual(by_q["INSERT INTO t VALUES (10,'x'),(11,'y')"]["response"]["affected_rows"], 2)
        inits = [c for c in plain if c["request"]["command"] == "COM_INIT_DB"]
        self.assertEqual([c["request"]["database"] for c in inits], ["other", "shop"])
        self.assertEqual(plain[-1]["request"]["command"], "COM_QUIT")
        self.assertIsNone(plain[-1]["response"])

        comp_conn = self.conn_with("nope")
        comp = self.by_conn[comp_conn]
        self.assertTrue(comp[0]["request"].get("compress"), comp[0])
        q = {c["request"].get("query"): c for c in comp}
        self.assertEqual(q["SELECT id, name FROM t WHERE id <= 4"]["response"]["rows"], 4)
        self.assertEqual(q["SELECT nope FROM t"]["response"]["error"]["code"], 1054)

        prep = self.commands(self.conn_with("WHERE id >= ?"))
        execs = [c for c in prep if c["request"]["command"] == "COM_STMT_EXECUTE"]
        self.assertEqual([c["response"].get("rows") for c in execs[:2]], [5, 3])
        self.assertEqual(execs[0]["request"]["query"], "SELECT id, name FROM t WHERE id >= ?")
        self.assertEqual(execs[2]["response"]["affected_rows"], 1)
        self.assertEqual(execs[3]["response"]["error"]["code"], 1062)
        self.assertIn("COM_STMT_CLOSE", [c["request"]["command"] for c in prep])

        for c in self.my:
            self.assertEqual(c["flags"], [], c)

    def test_summary(self):
        """The DB's summary columns (docs/DISSECTION_DB.md): method the SQL verb of a query (and of an
        executed prepared statement), the command name otherwise, "connect" for the handshake; path the
        database, table or statement id; status 0, the MySQL error code, -1 without a response."""
        db = self.L.dir / "calls.db"
        r = ref.run_dissector(["--pcap", self.pcap, "--db", db], timeout=120)
        self.assertEqual(r["rc"], 0, r["stderr"])
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        rows = con.execute("SELECT src_port, method, coalesce(path, ''), coalesce(status, -1) FROM calls "
                           "WHERE protocol = 'mysql'").fetchall()
        con.close()

        def verb(q):
            m = re.match(r"\s*\(?\s*([A-Za-z_]+)", q or "")
            return m.group(1).upper() if m else ""

        want = []
        for c in self.my:
            req, resp = c["request"], c["response"]
            cmd = req["command"]
            method, path = cmd, ""
            if cmd == "COM_QUERY" or (cmd == "COM_STMT_EXECUTE" and req.get("query")):
                method = verb(req.get("query")) or cmd
            if cmd in ("connect", "COM_INIT_DB"):
                path = req.get("database", "")
            if "statement_id" in req:
                path = str(req["statement_id"])
            if cmd == "COM_STMT_PREPARE" and resp and "statement_id" in resp:
                path = str(resp["statement_id"])
            status = -1 if resp is None else resp["error"]["code"] if "error" in resp else 0
            want.append((c["src"]["port"], method, path, status))
        self.assertEqual(sorted(rows), sorted(want))
        self.assertIn(1146, [x[3] for x in rows])
        self.assertIn("SELECT", [x[1] for x in rows])


if __name__ == "__main__":
    require()
    unittest.main(verbosity=2)
