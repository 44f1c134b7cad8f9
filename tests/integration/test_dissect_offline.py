#!/usr/bin/env python3
"""Done means (issue 3), offline equivalence with tshark: real clients (curl
GET/POST/HEAD, chunked uploads, keep-alive, pipelining, a 404, wrk, dig for
A/AAAA/MX/TXT/CNAME/NXDOMAIN over UDP and TCP; IPv4 and IPv6) make traffic in
the lab while tcpdump records it on the server veth; `tapwire-dissector
--pcap` on that file yields exactly the HTTP requests (client and server
address and port, method, URI, status of the paired response) and DNS queries
(addresses and ports, name, type, rcode, whether answered, answer count) that
`tshark -r` finds in it. Every call, not a sample.

The lab runs once (setUpClass); each test checks one property of the result.
Needs root, netns, tshark and the built binaries; skips with 77 otherwise
(fails under CI=true). TW_LAB_KEEP=1 keeps the capture and outputs.
"""

import collections
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402


def short(c):
    return (c["protocol"],) + (ref.http_key(c) if c["protocol"] == "http" else ref.dns_key(c))


class OfflineEquivalence(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab().__enter__()
        try:
            L = cls.L
            tcpd = L.start_tcpdump(L.srv_veth, L.dir / "traffic.pcap")
            cls.did = ref.make_traffic(L, wrk_seconds=2, wrk_delay_ms=1)
            cls.cap = ref.stop_capture(tcpd)  # the last FIN/ACKs, every packet written
            cls.drops = tcpd.kernel_drops
            cls.pcap = tcpd.out
            lab.log(f"traffic: http {cls.did['http']} + wrk {cls.did['wrk']}, dns {cls.did['dns']}; "
                    f"capture {cls.pcap.stat().st_size} bytes")
            cls.jsonl, cls.db = L.dir / "calls.jsonl", L.dir / "calls.db"
            cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl, "--db", cls.db], timeout=300)
            lab.log(cls.dis["stderr"].strip())
            cls.calls = ref.read_jsonl(cls.jsonl) if cls.jsonl.exists() else []
            cls.t_http, cls.t_notes = ref.tshark_http(cls.pcap)
            cls.t_dns, cls.t_answers = ref.tshark_dns(cls.pcap)
            http, dns = ref.split_calls(cls.calls)
            lab.log(f"tshark: {len(cls.t_http)} HTTP requests, {len(cls.t_dns)} DNS queries; "
                    f"tapwire: {len(http)} HTTP calls, {len(dns)} DNS calls")
            # pipelines with a HEAD: tshark 4.0 takes the HEAD response's Content-Length for a
            # body (it pairs by the last request seen) and swallows the responses after it; those
            # connections are checked against what the client itself received instead
            cls.truth = {(ref.norm_ip(t["client"]), t["port"]): t for t in cls.did.get("truth", [])}
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def where(self):
        return f"\n(capture {self.pcap}; TW_LAB_KEEP=1 keeps it)"

    def test_0_runs(self):
        self.assertEqual(self.drops, 0, f"tcpdump dropped {self.drops} packets: the reference is incomplete")
        self.assertTrue(ref.capture_complete(self.cap), f"tcpdump did not write every packet: {self.cap}")
        r = self.dis
        self.assertFalse(r["timed_out"], "tapwire-dissector did not finish in 300 s")
        self.assertEqual(r["rc"], 0, f"tapwire-dissector exit {r['rc']}:\n{r['stderr'][-3000:]}")
        other = [c for c in self.calls if c.get("protocol") not in ("http", "dns")]
        self.assertEqual(other, [], "calls of an unexpected protocol")
        # the reference saw what the clients did
        self.assertGreaterEqual(len(self.t_http), self.did["http"] + self.did["wrk"],
                                "tshark found fewer HTTP requests than the clients made")
        self.assertEqual(len(self.t_dns), self.did["dns"], "tshark found another number of DNS queries than dig made")
        self.assertEqual(len(self.truth), 2)

    def test_http_equals_tshark(self):
        """(client, server, method, URI, status) multiset, every request."""
        t_http = [k for k in self.t_http if (k[0], k[1]) not in self.truth]
        mine = [ref.http_key(c) for c in self.calls if c["protocol"] == "http" and
                (ref.norm_ip(c["src"]["ip"]), c["src"]["port"]) not in self.truth]
        d = ref.diff_multisets(t_http, mine)
        self.assertEqual(d, "", "HTTP (client, server, method, URI, status) differs from tshark:\n" + d + self.where())

    def test_http_pipelined_head(self):
        """The pipelines with a HEAD inside: what the client received, in order."""
        mine = [ref.http_key(c) for c in self.calls if c["protocol"] == "http"]
        for conn, t in self.truth.items():
            want = sorted((m, p, code) for (m, p), code in zip(t["requests"], t["codes"]))
            got = sorted(k[4:] for k in mine if (k[0], k[1]) == conn)
            self.assertEqual(got, want, f"pipelined connection {conn}: the client got {want}" + self.where())

    def test_dns_equals_tshark(self):
        """(client, server, qname, qtype, rcode or no response) multiset; answer counts."""
        dns = [c for c in self.calls if c["protocol"] == "dns"]
        d = ref.diff_multisets(self.t_dns, [ref.dns_key(c) for c in dns])
        self.assertEqual(d, "", "DNS (client, server, qname, qtype, rcode) differs from tshark:\n" + d + self.where())
        bad = []
        for c in dns:
            k = ref.dns_key(c)
            if c.get("response") and k in self.t_answers:
                n = len(c["response"].get("answers") or [])
                if n not in self.t_answers[k]:
                    bad.append(f"DNS {k}: {n} answers {c['response'].get('answers')}, tshark counts {self.t_answers[k]}")
        self.assertEqual(bad, [], "\n".join(bad) + self.where())

    def test_db_equals_jsonl(self):
        """--db (read back with `tapwire calls --json`) holds the calls of --jsonl."""
        got_db = ref.db_calls(self.db)
        d = ref.diff_multisets([short(c) for c in self.calls], [short(c) for c in got_db], "jsonl", "db", limit=12)
        if not d:
            d = ref.diff_multisets([ref.full_key(c) for c in self.calls], [ref.full_key(c) for c in got_db],
                                   "jsonl", "db", limit=6)
        self.assertEqual(d, "", "--db and --jsonl differ:\n" + d + self.where())

    def test_no_flags(self):
        """Clean traffic: every request answered, nothing flagged but bodies cut at the 64 KiB kept."""
        flagged = [(short(c), c.get("flags")) for c in self.calls if set(c.get("flags") or []) - {"body_truncated"}]
        self.assertEqual(flagged, [], self.where())
        unanswered = [short(c) for c in self.calls if not c.get("response")]
        self.assertEqual(unanswered, [], self.where())

    def test_call_ids_unique(self):
        """A call's id names one call (DESIGN: "id", 16 hex digits, stable for the same traffic)."""
        ids = collections.Counter(c["id"] for c in self.calls)
        dup = {i: [short(c) for c in self.calls if c["id"] == i] for i, n in ids.items() if n > 1}
        if dup:
            self.fail(f"{len(dup)} call ids are shared by several calls: " +
                      "; ".join(f"{i}: {v[:3]}{'...' if len(v) > 3 else ''} ({len(v)} calls)"
                                for i, v in list(dup.items())[:5]) + self.where())


if __name__ == "__main__":
    ref.require()
    unittest.main()
