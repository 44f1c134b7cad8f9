#!/usr/bin/env python3
"""Done means (issue 12), flow accounting end to end: the sensor's flow records
(`tapwire flows --json`, docs/FLOWS.md) equal tshark's view of tcpdump's
capture of the same interface.

(i)   mixed lab traffic on the veth lab (HTTP over several connections, TCP
      transfers, UDP datagrams both ways, DNS; IPv4 and IPv6): every flow's
      packets, bytes (frames, Ethernet header included) and payload bytes per
      direction equal tshark's conversation tables and frames, nothing extra;
      handshake RTT as tcp.analysis.initial_rtt; the filters (--protocol,
      --port, --ip, --sort, --limit) select what they say; the same records
      from `tapwire flows --pcap` on tcpdump's file, from a snapshot taken
      live (--snapshot) and from the live dissection DB (--db).
(ii)  impaired traffic through the TUN lab (flowlab.py: 5 ms each way, drops
      both ways, reordering towards the server): per flow and direction the
      retransmissions (fast, spurious), out-of-order segments, lost segments
      and dup-acks equal tshark's tcp.analysis.* counts, the handshake RTT
      tcp.analysis.initial_rtt (15% or 100 us), bytes are raw IP (a TUN has no
      link-layer header); the same with `tapwire flows --pcap` on the capture;
      `--retransmitting` lists exactly the flows with a retransmission.
(iii) a connect to a closed port (RST answers the SYN) is `state: refused`
      and `--refused` lists it; SYNs an nftables rule drops in the server's
      input chain (TC and tcpdump see them) are `syn_sent` while live, then
      `unanswered` (tap.flows.synTimeout 2s) and `--unanswered` lists them.
(iv)  a SYN flood (tapwire-synflood: 1,000,000 SYNs from spoofed sources) into
      the captured veth with tap.flows.maxFlows 4096: the sensor keeps
      running, tapwire_flows_active <= 4096 at every poll of /metrics,
      tapwire_flows_evicted_total + tapwire_flow_untracked_packets_total +
      the active flows account for the SYNs that arrived, and a real
      connection made after the flood is listed.

--reference-only runs the labs, the impairment, tcpdump, tshark and the SYN
flood without the sensor and the CLI, and checks the reference side: the
conversation tables agree with the frames, the impairment gives tshark
retransmissions and out-of-order segments, refused and unanswered SYNs are
seen, the comparison finds nothing on records made from the reference and
finds what was changed in them, 1M SYNs go out in a few seconds.

    sudo python3 tests/integration/test_flows.py [--reference-only] [-v] [FlowTests.test_...]

Needs root, netns, tcpdump, tshark, nft, nginx, dnsmasq, the built
binaries (tapwire-synflood too); skips with 77 otherwise (fails under CI=true).
TW_LAB_KEEP=1 keeps the lab directories (captures, sensor logs, flows JSON).
TW_FLOW_SEED picks the relay's seed (default 7), TW_FLOOD_SYNS the flood's size.
"""

import copy
import json
import os
import re
import sys
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowlab  # noqa: E402
import flowref  # noqa: E402
import lab  # noqa: E402
from flowlab import Impair  # noqa: E402

REFERENCE_ONLY = "--reference-only" in sys.argv
if REFERENCE_ONLY:
    sys.argv.remove("--reference-only")

SEED = int(os.environ.get("TW_FLOW_SEED", "7"))
FLOOD_SYNS = int(os.environ.get("TW_FLOOD_SYNS", "1000000"))
MAX_FLOWS = 4096
FLOOD_PORT = 8081          # nothing listens there; the spoofed sources have no route back
# `tapwire flows --pcap` reads tshark's own timestamps: times and RTTs to the microsecond, no slack
PCAP_EXACT = {"use_slack": False, "time_tol_ms": 0.001, "rtt_rel": 0.0, "rtt_abs_us": 1.0}


def synflood_bin():
    return lab.build_dir() / "tapwire-synflood"


def require() -> None:
    lab.require(binaries=not REFERENCE_ONLY,
                tools=("ip", "tcpdump", "tshark", "curl", "nginx", "dnsmasq", "dig", "nft", "ping"))
    if not os.access(synflood_bin(), os.X_OK):
        msg = f"cannot run: missing binary {synflood_bin()} (build first)"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


# --------------------------------------------------------------------------
# helpers

def start_tcpdump(L):
    """The reference capture on the server's interface, nanosecond timestamps."""
    return L.start_tcpdump(None, L.dir / "reference.pcap", extra=["--time-stamp-precision", "nano"])


def stop_tcpdump(tc, settle: float = 1.5) -> None:
    """tcpdump hands packets over in blocks (no immediate mode): wait for the
    last one before SIGINT. The reference must be complete."""
    time.sleep(settle)
    tc.stop()
    m = re.search(r"(\d+) packets? received by filter", tc.output())
    received = int(m.group(1)) if m else None
    if tc.kernel_drops or (received is not None and tc.captured is not None and received - tc.captured > 5):
        raise AssertionError(f"the reference capture is incomplete: {tc.output()[-500:]}")


def flows(L, *args, name: str = "flows") -> list[dict]:
    """`tapwire flows ARGS --json`, parsed; the output is kept in the lab dir."""
    cmd = [str(lab.cli_bin()), "flows", *map(str, args), "--json"]
    r = lab.run(cmd, check=False, timeout=120)
    (L.dir / f"{name}.jsonl").write_text(r.stdout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr[-2000:]}")
    recs, bad = flowref.parse_jsonl(r.stdout)
    if bad:
        raise AssertionError(f"{' '.join(cmd)}: lines that are not JSON objects: {bad[:3]}")
    return recs


def keys(recs) -> set:
    """(protocol, client, server) of records."""
    out = set()
    for r in recs:
        c, s = flowref.record_ends(r)
        out.add((r.get("protocol"), c, s))
    return out


def ref_keys(flows_) -> set:
    return {(f.protocol, f.client, f.server) for f in flows_}


def total(rec: dict, what: str) -> int:
    return sum((rec.get(d) or {}).get(what, 0) or 0 for d in ("client_to_server", "server_to_client"))


def record_sanity(recs: list[dict], final: bool) -> list[str]:
    """What every record must be by itself (docs/FLOWS.md)."""
    bad = []
    for r in recs:
        n = flowref.record_name(r)
        if not re.fullmatch(r"[0-9a-f]{16}", str(r.get("id"))):
            bad.append(f"{n}: id {r.get('id')!r} is not 16 hex digits")
        if not r.get("node"):
            bad.append(f"{n}: no node")
        if r.get("protocol") == "tcp":
            names = [nm for bit, nm in flowref.COMPLETENESS_NAMES if (r.get("completeness") or 0) & bit]
            if r.get("completeness_flags") != names:
                bad.append(f"{n}: completeness {r.get('completeness')} but flags {r.get('completeness_flags')}")
        a, b = flowref._ts_ns(r.get("first_seen")), flowref._ts_ns(r.get("last_seen"))
        if a is None or b is None or b < a:
            bad.append(f"{n}: first_seen {r.get('first_seen')!r}, last_seen {r.get('last_seen')!r}")
        elif not isinstance(r.get("duration_us"), int) or abs(r["duration_us"] - (b - a) / 1000) > 1:
            bad.append(f"{n}: duration_us {r.get('duration_us')} for {(b - a) / 1000} us")
        if final and r.get("end") is None:
            bad.append(f"{n}: end is null after the sensor stopped")
    return bad


def check_comparison_itself(tc: unittest.TestCase, ref: flowref.Reference) -> None:
    """The comparison finds nothing on records made from the reference, and
    finds what was changed in them."""
    recs = flowref.synthesize_records(ref)
    tc.assertEqual(flowref.compare(ref, recs), [], "the comparison differs on the reference's own records")
    tc.assertEqual(record_sanity(recs, final=True), [])
    if not recs:
        return
    changed = copy.deepcopy(recs)
    tcp = [r for r in changed if r["protocol"] == "tcp"]
    changed[0]["client_to_server"]["bytes"] += 1
    if tcp:
        tcp[-1]["server_to_client"]["retransmissions"] += 1
        if tcp[-1].get("handshake_rtt_us"):
            tcp[-1]["handshake_rtt_us"] = tcp[-1]["handshake_rtt_us"] * 1.5 + 200
    extra = copy.deepcopy(recs[0])
    extra["id"], extra["client"] = "00000000000000ff", {"ip": "192.0.2.1", "port": 7}
    dropped = changed.pop()
    diffs = flowref.compare(ref, changed + [extra])
    text = "\n".join(diffs)
    tc.assertIn("client_to_server.bytes", text)
    tc.assertIn("a record tshark has no flow for", text)
    tc.assertIn("no tapwire record", text)
    if tcp and dropped is not tcp[-1]:
        tc.assertIn("server_to_client.retransmissions", text)


def log_reference(ref: flowref.Reference, what: str) -> None:
    for line in flowref.describe(ref):
        lab.log(f"{what}: {line}")


# --------------------------------------------------------------------------

class FlowTests(unittest.TestCase):
    maxDiff = None

    def assertNoDiffs(self, diffs: list[str], what: str):
        if diffs:
            self.fail(f"{what}: {len(diffs)} difference(s):\n" + "\n".join(diffs[:60]))

    # ---- (i) ---------------------------------------------------------------
    def test_1_mixed_traffic_counts(self):
        with lab.Lab() as L:
            flowlab.start_peers(L)
            tcpd = start_tcpdump(L)
            # with the live dissector: it copies the flow records into the DB's flows table
            sensor = None if REFERENCE_ONLY else L.start_sensor(L.dir / "data", extra=["--dissection"])
            # HTTP: one file per connection, all files on one keep-alive connection, IPv6, a 1 MB POST
            for f in lab.FILES:
                L.curl(L.url(f"/f/{f}"))
            L.curl(*[L.url(f"/f/{f}") for f in lab.FILES])
            L.curl(L.url("/f/10k.bin", v6=True), L.url("/f/1m.bin", v6=True))
            body = L.dir / "nginx" / "www" / "f" / "1m.bin"
            L.curl(L.url("/post"), extra=["-X", "POST", "-H", "Expect:", "--data-binary", f"@{body}"])
            # TCP both ways, both families; UDP datagrams both ways; DNS
            did = {"fetch4": flowlab.fetch(L, 200_000), "fetch6": flowlab.fetch(L, 150_000, v6=True),
                   "send4": flowlab.bulk_send(L, 300_000), "udp4": flowlab.udp_echo(L, 10, 300),
                   "udp6": flowlab.udp_echo(L, 5, 1200, v6=True)}
            self.assertEqual(did["udp4"]["answered"], 10, did)
            self.assertEqual(did["udp6"]["answered"], 5, did)
            L.dig(f"www.{L.DOMAIN}", "A")
            L.dig(f"www.{L.DOMAIN}", "AAAA", v6=True)
            stop_tcpdump(tcpd)
            snap = None
            if sensor:
                time.sleep(1.5)  # the flow records of the last packets are written (every second)
                lab.tapwire("snapshot", "create", "--name", "flows", "--data-dir", sensor.data_dir)
                snap = sensor.data_dir / "snapshots" / "flows"
                self.assertEqual(sensor.stop(), 0, sensor.output()[-3000:])

            ref = flowref.read_reference(tcpd.out)
            log_reference(ref, "mixed")
            self.assertNoDiffs(flowref.check_conv(ref), "tshark's conversation tables against its frames")
            ports = [f.server[1] for f in ref.flows]
            self.assertEqual((ports.count(80), ports.count(9001), ports.count(9002), ports.count(9003),
                              ports.count(53)), (6, 2, 1, 2, 2), ref_keys(ref.flows))
            self.assertEqual(sum(f.ip_version == 6 for f in ref.flows), 4)
            # a clean veth may still see a retransmission now and then (a FIN sent again by
            # the loss probe before the peer's ACK came back): whatever tshark says is the reference
            check_comparison_itself(self, ref)
            if REFERENCE_ONLY:
                return

            recs = flows(L, "--data-dir", sensor.data_dir, name="flows-all")
            self.assertNoDiffs(record_sanity(recs, final=True), "records")
            self.assertNoDiffs(flowref.compare(ref, recs), "tapwire flows --data-dir against tshark")
            # the userspace path on tcpdump's file
            precs = flows(L, "--pcap", tcpd.out, name="flows-pcap")
            self.assertNoDiffs(flowref.compare(ref, precs, **PCAP_EXACT), "tapwire flows --pcap against tshark")
            # a snapshot taken live carries the records; the dissection DB has them too
            srecs = flows(L, "--snapshot", snap, name="flows-snapshot")
            self.assertNoDiffs(flowref.compare(ref, srecs, live=True), "tapwire flows --snapshot against tshark")
            drecs = flows(L, "--db", sensor.data_dir / "dissection.db", name="flows-db")
            self.assertNoDiffs(flowref.compare(ref, drecs), "tapwire flows --db against tshark")
            # filters
            d = ["--data-dir", sensor.data_dir]
            self.assertEqual(keys(flows(L, *d, "--protocol", "udp")), ref_keys(ref.udp()), "--protocol udp")
            self.assertEqual(keys(flows(L, *d, "--protocol", "tcp")), ref_keys(ref.tcp()), "--protocol tcp")
            self.assertEqual(keys(flows(L, *d, "--port", 9003)),
                             ref_keys(f for f in ref.flows if 9003 in (f.client[1], f.server[1])), "--port 9003")
            self.assertEqual(keys(flows(L, *d, "--ip", L.cli6)),
                             ref_keys(f for f in ref.flows if f.ip_version == 6), f"--ip {L.cli6}")
            for what in ("bytes", "packets"):
                got = flows(L, *d, "--sort", what, "--limit", 3, name=f"flows-sort-{what}")
                want = sorted((total(r, what) for r in recs), reverse=True)[:3]
                self.assertEqual([total(r, what) for r in got], want, f"--sort {what} --limit 3")

    # ---- (ii) --------------------------------------------------------------
    def test_2_impaired_traffic_analysis(self):
        to_srv = Impair(drop=0.03, swap=0.03, late=0.02, late_ms=3)
        to_cli = Impair(drop=0.03)
        with flowlab.FlowLab(to_srv=to_srv, to_cli=to_cli, delay_ms=5, seed=SEED) as L:
            L.start_peers()
            tcpd = start_tcpdump(L)
            sensor = None if REFERENCE_ONLY else L.start_sensor(L.dir / "data")
            t0 = time.monotonic()
            did = {"fetch4": L.fetch(1 << 20), "send4": L.bulk_send(1 << 20),
                   "fetch6": L.fetch(300_000, v6=True), "send6": L.bulk_send(300_000, v6=True),
                   "udp4": L.udp_echo(20, 500)}
            lab.log(f"impaired: traffic took {time.monotonic() - t0:.1f}s; relay: {L.relay.summary()}")
            stop_tcpdump(tcpd)
            if sensor:
                self.assertEqual(sensor.stop(), 0, sensor.output()[-3000:])
            self.assertIsNone(L.relay.error)

            ref = flowref.read_reference(tcpd.out)
            log_reference(ref, "impaired")
            near = flowref.add_timing_slack(ref, jitter_us=20)
            lab.log(f"impaired: {near} frame(s) whose verdict changes when timestamps move by 20 us: "
                    f"{[(f.name(), f.slack) for f in ref.flows if f.slack]}")
            self.assertNoDiffs(flowref.check_conv(ref), "tshark's conversation tables against its frames")
            st = L.relay.summary()
            self.assertGreater(st["to_srv"]["dropped"], 0, st)
            self.assertGreater(st["to_srv"]["swapped"] + st["to_srv"]["late"], 0, st)
            self.assertGreater(st["to_cli"]["dropped"], 0, st)
            self.assertEqual(st["to_srv"]["overflow"] + st["to_cli"]["overflow"], 0, st)
            t = ref.totals("tcp")
            self.assertGreater(t["retransmissions"], 0, f"tshark saw no retransmission: {t}")
            self.assertGreater(t["out_of_order"], 0, f"tshark saw no out-of-order segment: {t}")
            self.assertGreater(t["dup_acks"], 0, t)
            self.assertEqual(len(ref.tcp()), 4, ref_keys(ref.flows))
            for f in ref.tcp():
                self.assertTrue(f.initial_rtt_us and 2 * 5000 * 0.8 < f.initial_rtt_us < 200_000,
                                f"{f.name()}: initial RTT {f.initial_rtt_us} us with 5 ms each way")
                self.assertEqual(f.expected_state(), "closed", f.name())
            check_comparison_itself(self, ref)
            if REFERENCE_ONLY:
                return

            recs = flows(L, "--data-dir", sensor.data_dir, name="flows-all")
            self.assertNoDiffs(record_sanity(recs, final=True), "records")
            self.assertNoDiffs(flowref.compare(ref, recs), "tapwire flows --data-dir against tshark")
            precs = flows(L, "--pcap", tcpd.out, name="flows-pcap")
            self.assertNoDiffs(flowref.compare(ref, precs, **PCAP_EXACT), "tapwire flows --pcap against tshark")
            d = ["--data-dir", sensor.data_dir]
            self.assertEqual(keys(flows(L, *d, "--retransmitting")),
                             ref_keys(f for f in ref.flows if f.c2s.retransmissions + f.s2c.retransmissions),
                             "--retransmitting")
            by_rtt = flows(L, *d, "--protocol", "tcp", "--sort", "rtt", name="flows-sort-rtt")
            rtts = [r.get("handshake_rtt_us") or 0 for r in by_rtt]
            self.assertEqual(rtts, sorted(rtts, reverse=True), "--sort rtt: the slowest handshake first")

    # ---- (iii) -------------------------------------------------------------
    def test_3_refused_and_unanswered(self):
        with flowlab.FlowLab(delay_ms=2) as L:
            table = L.nft_drop_syn(flowlab.BLACKHOLE_PORT)
            tcpd = start_tcpdump(L)
            sensor = None
            if not REFERENCE_ONLY:
                cfg = flowlab.sensor_config(L.dir / "tapwire.yaml", flows={"synTimeout": "2s"})
                sensor = L.start_sensor(L.dir / "data", extra=["--config", cfg])
            with ThreadPoolExecutor(4) as ex:
                futs = {"refused4": ex.submit(L.connect, flowlab.CLOSED_PORT),
                        "refused6": ex.submit(L.connect, flowlab.CLOSED_PORT, v6=True),
                        "unanswered4": ex.submit(L.connect, flowlab.BLACKHOLE_PORT, wait=2.5),
                        "unanswered6": ex.submit(L.connect, flowlab.BLACKHOLE_PORT, v6=True, wait=2.5)}
                res = {k: f.result(timeout=60) for k, f in futs.items()}
            lab.log(f"connects: {res}")
            for k, v in res.items():
                self.assertEqual(v["result"], "refused" if k.startswith("refused") else "timeout", res)
            refused_ports = {res["refused4"]["port"], res["refused6"]["port"]}
            unanswered_ports = {res["unanswered4"]["port"], res["unanswered6"]["port"]}
            dropped = flowlab.nft_counter(L, table)
            self.assertGreaterEqual(dropped, 4, "the nft rule dropped fewer SYNs than were sent")

            live_unanswered = []
            if sensor:
                d = ["--data-dir", sensor.data_dir]
                # live: syn_sent, then unanswered once tap.flows.synTimeout (2 s) has passed
                deadline = time.monotonic() + 15
                states = {}
                while time.monotonic() < deadline:
                    live_unanswered = flows(L, *d, "--unanswered", name="flows-unanswered-live")
                    states = {flowref.record_ends(r)[0][1]: r.get("state") for r in live_unanswered}
                    if all(states.get(p) == "unanswered" for p in unanswered_ports):
                        break
                    time.sleep(0.5)
                self.assertEqual(states, {p: "unanswered" for p in unanswered_ports},
                                 "--unanswered: the SYNs nft dropped, state unanswered after synTimeout")
                refused = flows(L, *d, "--refused", name="flows-refused-live")
                self.assertEqual({flowref.record_ends(r)[0][1]: r.get("state") for r in refused},
                                 {p: "refused" for p in refused_ports}, "--refused")
            stop_tcpdump(tcpd)
            if sensor:
                self.assertEqual(sensor.stop(), 0, sensor.output()[-3000:])

            ref = flowref.read_reference(tcpd.out)
            log_reference(ref, "refused/unanswered")
            self.assertNoDiffs(flowref.check_conv(ref), "tshark's conversation tables against its frames")
            self.assertEqual({f.client[1] for f in ref.tcp() if f.refused}, refused_ports)
            self.assertEqual({f.client[1] for f in ref.tcp() if f.unanswered}, unanswered_ports)
            for f in ref.tcp():
                if f.unanswered:
                    self.assertGreaterEqual(f.c2s.syns, 2, f"{f.name()}: the SYN was not sent again")
                    self.assertEqual(f.c2s.retransmissions, f.c2s.syns - 1, f"{f.name()}: {f.c2s}")
                    self.assertEqual(f.s2c.packets, 0)
                if f.refused:
                    self.assertEqual((f.c2s.packets, f.s2c.packets, f.s2c.resets), (1, 1, 1), f.name())
            self.assertGreaterEqual(dropped, sum(f.c2s.syns for f in ref.tcp() if f.unanswered))
            check_comparison_itself(self, ref)
            if REFERENCE_ONLY:
                return

            recs = flows(L, "--data-dir", sensor.data_dir, name="flows-all")
            self.assertNoDiffs(record_sanity(recs, final=True), "records")
            self.assertNoDiffs(flowref.compare(ref, recs), "tapwire flows --data-dir against tshark")
            precs = flows(L, "--pcap", tcpd.out, name="flows-pcap")
            # the capture alone cannot say that a SYN's time ran out: syn_sent or unanswered
            self.assertNoDiffs(flowref.compare(ref, precs, live=True, **PCAP_EXACT),
                               "tapwire flows --pcap against tshark")
            self.assertEqual({flowref.record_ends(r)[0][1] for r in flows(L, "--data-dir", sensor.data_dir,
                                                                          "--refused")}, refused_ports)

    # ---- (iv) --------------------------------------------------------------
    def test_4_syn_flood_bounds(self):
        with lab.Lab(dnsmasq=False) as L:
            mac = json.loads(L.srv(["ip", "-j", "link", "show", L.srv_veth]).stdout)[0]["address"]
            sensor = None
            if not REFERENCE_ONLY:
                cfg = flowlab.sensor_config(L.dir / "tapwire.yaml",
                                            flows={"maxFlows": MAX_FLOWS, "synTimeout": "60s"})
                sensor = L.start_sensor(L.dir / "data", extra=["--config", cfg])
            polls: list[dict] = []
            stop = threading.Event()

            def poll():
                deadline = time.monotonic() + 180
                while not stop.is_set() and time.monotonic() < deadline:
                    m = flowlab.metrics(L)
                    polls.append({"t": time.monotonic(),
                                  "active": flowlab.metric_sum(m, "tapwire_flows_active"),
                                  "evicted": flowlab.metric_sum(m, "tapwire_flows_evicted_total"),
                                  "untracked": flowlab.metric_sum(m, "tapwire_flow_untracked_packets_total")})
                    stop.wait(0.25)

            poller = threading.Thread(target=poll, daemon=True) if sensor else None
            rx0 = rx_packets(L)
            if poller:
                poller.start()
            try:
                r = L.cli([synflood_bin(), "--interface", L.cli_veth, "--dst-ip", L.srv4, "--dst-port", FLOOD_PORT,
                           "--dst-mac", mac, "--count", FLOOD_SYNS, "--seed", SEED], timeout=300)
                flood = json.loads(r.stdout.strip().splitlines()[-1])
                lab.log(f"flood: {flood}")
                time.sleep(2.5 if sensor else 0.5)  # a couple of the sensor's cycles
            finally:
                stop.set()
                if poller:
                    poller.join(10)
            received = rx_packets(L) - rx0
            lab.log(f"flood: {received} packets arrived at {L.srv_veth}")
            self.assertEqual(flood["sent"], FLOOD_SYNS, flood)
            self.assertGreaterEqual(received, FLOOD_SYNS, "SYNs were lost on the veth")
            if REFERENCE_ONLY:
                self.assertLess(flood["seconds"], 10, f"{FLOOD_SYNS} SYNs should take a few seconds: {flood}")
                return

            self.assertTrue(sensor.alive(), f"the sensor died under the flood:\n{sensor.output()[-3000:]}")
            self.assertEqual((sensor.status() or {}).get("state"), "capturing", sensor.status())
            good = [p for p in polls if p["active"] is not None]
            lab.log(f"flood: {len(polls)} polls of /metrics, first {polls[:1]}, last {polls[-1:]}")
            self.assertGreaterEqual(len(good), 3, f"/metrics had tapwire_flows_active in too few polls: {polls[-5:]}")
            over = [p for p in good if p["active"] > MAX_FLOWS]
            self.assertEqual(over, [], f"tapwire_flows_active above maxFlows {MAX_FLOWS}")
            last = flowlab.metrics(L)
            active = flowlab.metric_sum(last, "tapwire_flows_active") or 0
            evicted = flowlab.metric_sum(last, "tapwire_flows_evicted_total") or 0
            untracked = flowlab.metric_sum(last, "tapwire_flow_untracked_packets_total") or 0
            lab.log(f"flood: active {active}, evicted {evicted}, untracked packets {untracked}")
            # every SYN opened a flow (distinct tuples) or was counted untracked; a few
            # more flows (the lab's own) are allowed for
            accounted = active + evicted + untracked
            self.assertGreaterEqual(accounted, FLOOD_SYNS * 0.99,
                                    f"active {active} + evicted {evicted} + untracked {untracked} < the SYNs")
            self.assertLessEqual(accounted, received + 1000, "more flows accounted than packets arrived")
            self.assertGreater(evicted, 0, "a full table evicts")

            # a real connection after the flood is listed
            r = L.cli(["curl", "-sS", "--fail", "-m", "20", "-o", "/dev/null", "-w", "%{local_port}",
                       L.url("/f/10k.bin")], timeout=30)
            port = int(r.stdout.strip())
            deadline = time.monotonic() + 15
            found = []
            while time.monotonic() < deadline and not found:
                found = [x for x in flows(L, "--data-dir", sensor.data_dir, "--port", 80, name="flows-after-flood")
                         if flowref.record_ends(x)[0] == (L.cli4, port)]
                if not found:
                    time.sleep(0.5)
            self.assertTrue(found, f"the connection from port {port} after the flood is not listed")
            self.assertEqual(found[0]["server_to_client"]["payload_bytes"] >= 10 * 1024, True, found[0])
            self.assertEqual(sensor.stop(), 0, sensor.output()[-3000:])


def rx_packets(L) -> int:
    j = json.loads(L.srv(["ip", "-j", "-s", "link", "show", L.srv_veth]).stdout)[0]
    return int(j["stats64"]["rx"]["packets"])


if __name__ == "__main__":
    require()
    unittest.main(verbosity=2)
