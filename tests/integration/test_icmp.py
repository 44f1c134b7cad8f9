#!/usr/bin/env python3
"""Done means (ICMP records): ping and ping6 in the lab, a UDP datagram to a
closed port (IPv4 and IPv6), pings to where there is no route, pings whose TTL
or hop limit runs out at the server acting as a router, and pings that are
never answered; tcpdump on the server veth, then `tapwire-dissector --pcap`
on that file gives `icmp` records equal to tshark's view of the same file:

- every echo request is one call keyed (client, server, identifier,
  sequence), answered when tshark pairs a reply with it, with
  tshark's response time (icmp.resp_to and icmp.resptime of the reply, to the microsecond), or when an
  error quotes it (unreachable, time exceeded: its type, code and reporter);
  never answered otherwise, then flagged `timeout`;
- every other error is one call on the connection it is about (tshark's
  quoted IP and UDP header: the sender and port that got it), with the
  error's type and code and the reporter (tshark's outer source);
- neighbour discovery and the like are no records; `--dissectors http`
  gives no icmp record; the DB equals the JSON lines.

Needs root, netns, ping, tcpdump, tshark and the built binaries; skips with
77 otherwise (fails under CI=true). TW_LAB_KEEP=1 keeps the capture.
"""

import collections
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

NOROUTE4, NOROUTE6 = "192.0.2.7", "2001:db8:2::7"   # routed to the server, which has no route on
FAR4, FAR6 = "198.51.100.5", "2001:db8:1::5"         # routed by the server into a dummy device
CLOSED_PORT = 9                                      # nothing listens there
ECHO_TYPES = {4: (8, 0), 6: (128, 129)}
ERROR_TYPES = {4: {3, 11, 12}, 6: {1, 2, 3, 4}}


def require() -> None:
    lab.require(binaries=False, tools=("ip", "tcpdump", "tshark", "ping"))
    if not os.access(ref.dissector_bin(), os.X_OK):
        msg = f"cannot run: missing binary {ref.dissector_bin()} (build first)"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def tshark_icmp(pcap) -> list[dict]:
    """Every ICMP/ICMPv6 message in the file: outer and quoted fields."""
    fields = ["frame.number", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "icmp.type", "icmp.code", "icmp.ident",
              "icmp.seq", "icmp.resp_to", "icmp.resptime", "icmpv6.type", "icmpv6.code",
              "icmpv6.echo.identifier", "icmpv6.echo.sequence_number", "icmpv6.resp_to", "icmpv6.resptime",
              "udp.srcport", "udp.dstport"]
    rows = ref._tshark_fields(pcap, "icmp || icmpv6", fields)
    out = []
    for r in rows:
        v6 = bool(r["icmpv6.type"])
        t = "icmpv6" if v6 else "icmp"
        src = r["ipv6.src" if v6 else "ip.src"]
        dst = r["ipv6.dst" if v6 else "ip.dst"]
        ident = r[f"{t}.echo.identifier" if v6 else "icmp.ident"]
        seq = r[f"{t}.echo.sequence_number" if v6 else "icmp.seq"]
        out.append({
            "frame": int(r["frame.number"][0]), "v": 6 if v6 else 4,
            "src": ref.norm_ip(src[0]), "dst": ref.norm_ip(dst[0]),
            # quoted (inner) header of an error: the second occurrence
            "inner_src": ref.norm_ip(src[1]) if len(src) > 1 else None,
            "inner_dst": ref.norm_ip(dst[1]) if len(dst) > 1 else None,
            "types": [int(x) for x in r[f"{t}.type"]], "codes": [int(x) for x in r[f"{t}.code"]],
            # icmp.ident is shown twice (big and little endian): the first is the wire's
            "ident": int(ident[0], 0) if ident else None, "idents": [int(x, 0) for x in ident],
            "seq": int(seq[0], 0) if seq else None, "seqs": [int(x, 0) for x in seq],
            # on a reply: the request it answers (tshark pairs them in one pass this way round)
            "resp_to": int(r[f"{t}.resp_to"][0]) if r[f"{t}.resp_to"] else None,
            "resptime_ms": float(r[f"{t}.resptime"][0]) if r[f"{t}.resptime"] else None,
            "sport": int(r["udp.srcport"][0]) if r["udp.srcport"] else None,
            "dport": int(r["udp.dstport"][0]) if r["udp.dstport"] else None,
        })
    return out


class IcmpEquivalence(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab(nginx=False, dnsmasq=False).__enter__()
        try:
            L = cls.L
            # The server routes: forwarding on, no rate limit on its errors, and
            # a veth pair of its own where what is routed to FAR4/FAR6 leaves
            # for a neighbour that is not there (a fixed link-layer address).
            for cmd in (["sysctl", "-qw", "net.ipv4.ip_forward=1"],
                        ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
                        ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"],
                        ["sysctl", "-qw", "net.ipv6.icmp.ratelimit=0"],
                        ["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"],
                        ["ip", "link", "add", "twsink0", "type", "veth", "peer", "name", "twsink1"],
                        ["ip", "link", "set", "twsink0", "up"],
                        ["ip", "link", "set", "twsink1", "up"],
                        ["ip", "route", "add", "198.51.100.0/24", "dev", "twsink0"],
                        ["ip", "-6", "route", "add", "2001:db8:1::/64", "dev", "twsink0"],
                        ["ip", "neigh", "replace", FAR4, "lladdr", "02:00:00:00:00:99", "dev", "twsink0",
                         "nud", "permanent"],
                        ["ip", "-6", "neigh", "replace", FAR6, "lladdr", "02:00:00:00:00:99", "dev", "twsink0",
                         "nud", "permanent"]):
                L.ns(L.srv_ns, cmd)
            for cmd in (["ip", "route", "add", "192.0.2.0/24", "via", L.srv4],
                        ["ip", "route", "add", "198.51.100.0/24", "via", L.srv4],
                        ["ip", "-6", "route", "add", "2001:db8::/32", "via", L.srv6]):
                L.ns(L.cli_ns, cmd)
            # The sensor captures the same traffic on the same interface.
            sensor = L.start_sensor(L.dir / "data")
            tcpd = L.start_tcpdump(L.srv_veth, L.dir / "icmp.pcap")
            ping = lambda *a: L.ns(L.cli_ns, ["ping", "-n", *a], check=False, timeout=30)  # noqa: E731
            cls.pings = {
                "v4": ping("-c", "4", "-i", "0.2", L.srv4),
                "v6": ping("-6", "-c", "4", "-i", "0.2", "-s", "1000", L.srv6),
                "noroute4": ping("-c", "2", "-i", "0.2", "-W", "1", NOROUTE4),
                "noroute6": ping("-6", "-c", "2", "-i", "0.2", "-W", "1", NOROUTE6),
                "ttl4": ping("-c", "2", "-i", "0.2", "-W", "1", "-t", "1", FAR4),
                "ttl6": ping("-6", "-c", "2", "-i", "0.2", "-W", "1", "-t", "1", FAR6),
                "lost4": ping("-c", "2", "-i", "0.2", "-W", "1", FAR4),
            }
            # Datagrams to a closed port, both families.
            code = ("import socket,sys\n"
                    "for host in sys.argv[1:]:\n"
                    "    fam = socket.AF_INET6 if ':' in host else socket.AF_INET\n"
                    "    s = socket.socket(fam, socket.SOCK_DGRAM)\n"
                    f"    for i in range(2): s.sendto(b'hello %d' % i, (host, {CLOSED_PORT}))\n"
                    "    s.close()\n")
            L.ns(L.cli_ns, ["python3", "-c", code, L.srv4, L.srv6], timeout=30)
            cls.cap = ref.stop_capture(tcpd, settle=1.5)
            cls.sensor_rc = sensor.stop()
            cls.pcap = tcpd.out
            cls.sensor_pcap = L.dir / "sensor.pcapng"
            lab.export_pcap(L.dir / "data", cls.sensor_pcap)
            cls.sensor_jsonl = L.dir / "sensor.jsonl"
            cls.dis_sensor = ref.run_dissector(["--pcap", cls.sensor_pcap, "--jsonl", cls.sensor_jsonl], timeout=120)
            cls.t = tshark_icmp(cls.pcap)
            cls.jsonl, cls.db = L.dir / "icmp.jsonl", L.dir / "icmp.db"
            cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl, "--db", cls.db], timeout=120)
            cls.http_jsonl = L.dir / "http-only.jsonl"
            cls.dis_http = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.http_jsonl,
                                              "--dissectors", "http"], timeout=120)
            cls.calls = [c for c in ref.read_jsonl(cls.jsonl) if c["protocol"] == "icmp"]
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def test_0_capture_and_traffic(self):
        self.assertTrue(ref.capture_complete(self.cap), f"tcpdump did not write every packet: {self.cap}")
        self.assertEqual(self.dis["rc"], 0, self.dis.get("stderr", "")[-2000:])
        self.assertEqual(self.pings["v4"].returncode, 0, self.pings["v4"].stdout)
        self.assertEqual(self.pings["v6"].returncode, 0, self.pings["v6"].stdout)
        for k in ("noroute4", "noroute6", "ttl4", "ttl6", "lost4"):
            self.assertNotEqual(self.pings[k].returncode, 0, f"{k} was answered:\n{self.pings[k].stdout}")
        # tshark saw all that was made: 4 + 4 answered pings, 2 pings each
        # to the other places, 4 datagrams refused.
        t_types = collections.Counter((m["v"], m["types"][0], m["codes"][0]) for m in self.t)
        self.assertEqual(t_types[(4, 8, 0)], 4 + 2 + 2 + 2, t_types)
        self.assertEqual(t_types[(4, 0, 0)], 4, t_types)
        self.assertEqual(t_types[(6, 128, 0)], 4 + 2 + 2, t_types)
        self.assertEqual(t_types[(6, 129, 0)], 4, t_types)
        self.assertEqual(t_types[(4, 3, 0)], 2, t_types)   # net unreachable
        self.assertEqual(t_types[(4, 11, 0)], 2, t_types)  # TTL exceeded
        self.assertEqual(t_types[(4, 3, 3)], 2, t_types)   # port unreachable
        self.assertEqual(t_types[(6, 1, 0)], 2, t_types)   # no route
        self.assertEqual(t_types[(6, 3, 0)], 2, t_types)   # hop limit exceeded
        self.assertEqual(t_types[(6, 1, 4)], 2, t_types)   # port unreachable

    def test_echo_calls_equal_tshark(self):
        replied = {m["resp_to"]: m for m in self.t if m["resp_to"]}  # request frame -> its reply
        errors_about = {}  # (v, client, server, id, seq) -> the error quoting that echo request
        for m in self.t:
            if m["types"][0] in ERROR_TYPES[m["v"]] and len(m["types"]) > 1 and \
                    m["types"][1] == ECHO_TYPES[m["v"]][0]:
                errors_about[(m["v"], m["inner_src"], m["inner_dst"], m["ident"], m["seq"])] = m
        expected = []
        for m in self.t:
            if m["types"][0] != ECHO_TYPES[m["v"]][0] or len(m["types"]) != 1:
                continue
            key = (m["v"], m["src"], m["dst"], m["ident"], m["seq"])
            if m["frame"] in replied:
                reply = replied[m["frame"]]
                expected.append(key + ("reply", ECHO_TYPES[m["v"]][1], 0, reply["src"],
                                       round(reply["resptime_ms"] * 1000) if reply["resptime_ms"] is not None
                                       else None))
            elif key in errors_about:
                e = errors_about[key]
                expected.append(key + ("error", e["types"][0], e["codes"][0], e["src"], None))
            else:
                expected.append(key + ("none", None, None, None, None))
        got = []
        durations = {}
        for c in self.calls:
            q = c.get("request")
            if not q:
                continue
            v = 6 if q["version"] == "ICMPv6" else 4
            key = (v, ref.norm_ip(c["src"]["ip"]), ref.norm_ip(c["dst"]["ip"]), q["id"], q["seq"])
            a = c.get("response")
            if not a:
                got.append(key + ("none", None, None, None, None))
                self.assertIn("timeout", c["flags"], c)
                continue
            kind = "reply" if a["type_name"] == "echo-reply" else "error"
            got.append(key + (kind, a["type"], a["code"], ref.norm_ip(a["reporter"]) if kind == "error"
                              else ref.norm_ip(c["dst"]["ip"]), None))
            durations[key] = c["duration_us"]
        # tshark's response time, to the microsecond, for the replied ones
        for e in expected:
            if e[5] == "reply" and e[9] is not None:
                self.assertLessEqual(abs(durations.get(e[:5], -10) - e[9]), 1, (e, durations.get(e[:5])))
        strip = lambda k: k[:9]  # noqa: E731
        d = ref.diff_multisets([strip(e) for e in expected], [strip(g) for g in got])
        self.assertFalse(d, d)
        self.assertEqual(len(expected), 4 + 4 + 2 * 5, expected)

    def test_errors_on_the_connection_they_are_about(self):
        expected = []
        for m in self.t:
            if m["types"][0] not in ERROR_TYPES[m["v"]] or m["dport"] is None:
                continue
            expected.append((m["v"], m["types"][0], m["codes"][0], m["src"], m["inner_src"], m["sport"],
                             m["inner_dst"], m["dport"]))
        got = []
        for c in self.calls:
            a = c.get("response")
            if c.get("request") or not a or "original" not in a:
                continue
            v = 6 if a["version"] == "ICMPv6" else 4
            o = a["original"]
            self.assertEqual(o["protocol"], "udp", c)
            self.assertEqual((ref.norm_ip(c["src"]["ip"]), c["src"]["port"], ref.norm_ip(c["dst"]["ip"]),
                              c["dst"]["port"]),
                             (ref.norm_ip(o["src"]), o["src_port"], ref.norm_ip(o["dst"]), o["dst_port"]), c)
            got.append((v, a["type"], a["code"], ref.norm_ip(a["reporter"]), ref.norm_ip(o["src"]), o["src_port"],
                        ref.norm_ip(o["dst"]), o["dst_port"]))
        d = ref.diff_multisets(expected, got)
        self.assertFalse(d, d)
        self.assertEqual(len(expected), 4, expected)
        self.assertTrue(all(e[7] == CLOSED_PORT for e in expected), expected)

    def test_the_sensor_captures_them(self):
        # The sensor's capture, exported and dissected, holds the same ICMP
        # records (its timestamps are its own: compared without them).
        self.assertEqual(self.sensor_rc, 0)
        self.assertEqual(self.dis_sensor["rc"], 0, self.dis_sensor.get("stderr", "")[-2000:])

        def key(c):
            q, a = c.get("request") or {}, c.get("response") or {}
            strip = lambda m: {k: v for k, v in m.items()}  # noqa: E731
            return (ref.norm_ip(c["src"]["ip"]), c["src"]["port"], ref.norm_ip(c["dst"]["ip"]), c["dst"]["port"],
                    repr(sorted(strip(q).items())), repr(sorted(strip(a).items())), tuple(c["flags"]))
        got = [key(c) for c in ref.read_jsonl(self.sensor_jsonl) if c["protocol"] == "icmp"]
        d = ref.diff_multisets([key(c) for c in self.calls], got, "tcpdump", "sensor")
        self.assertFalse(d, d)

    def test_nothing_else_and_switches(self):
        # Only echoes and errors are records: one per echo request, one per
        # error not quoting an echo request.
        quoting_echo = sum(1 for m in self.t if m["types"][0] in ERROR_TYPES[m["v"]] and len(m["types"]) > 1
                           and m["types"][1] == ECHO_TYPES[m["v"]][0])
        requests = sum(1 for m in self.t if m["types"][0] == ECHO_TYPES[m["v"]][0] and len(m["types"]) == 1)
        errors = sum(1 for m in self.t if m["types"][0] in ERROR_TYPES[m["v"]])
        self.assertEqual(len(self.calls), requests + errors - quoting_echo)
        self.assertEqual(len({c["id"] for c in self.calls}), len(self.calls), "ids unique")
        self.assertEqual(self.dis_http["rc"], 0)
        self.assertFalse([c for c in ref.read_jsonl(self.http_jsonl) if c["protocol"] == "icmp"])
        db = [c for c in ref.db_calls(self.db) if c["protocol"] == "icmp"]
        self.assertEqual(sorted(c["id"] for c in db), sorted(c["id"] for c in self.calls))

    def test_calls_filters_on_the_summary(self):
        def ids(*args):
            r = lab.tapwire("calls", "--db", self.db, "--protocol", "icmp", "--json", *args)
            self.assertEqual(r.returncode, 0, r.stderr)
            return sorted(json.loads(l)["id"] for l in r.stdout.splitlines() if l.strip())
        echo = [c for c in self.calls if c.get("request")]
        self.assertEqual(ids("--method", "ECHO"), sorted(c["id"] for c in echo))
        self.assertEqual(ids("--status", "-1"), sorted(c["id"] for c in echo if not c.get("response")))
        self.assertEqual(ids("--status", "0"), sorted(c["id"] for c in echo if (c.get("response") or {})
                                                       .get("type_name") == "echo-reply"))
        self.assertEqual(ids("--path", "^port-unreachable$"),
                         sorted(c["id"] for c in self.calls if (c.get("response") or {}).get("code_name")
                                == "port-unreachable"))
        self.assertEqual(len(ids("--status", "303")), 2)  # IPv4 port unreachable: type 3, code 3
        self.assertEqual(len(ids("--status", "104")), 2)  # IPv6 port unreachable: type 1, code 4
        r = lab.run([lab.cli_bin(), "calls", "--db", self.db, "--status", "abc"], check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("bad --status", r.stderr)


if __name__ == "__main__":
    require()
    unittest.main(verbosity=2)
