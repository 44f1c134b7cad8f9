"""Pod targeting in the kernel (tap.namespaces, tap.regex), on the identity lab:

- with tap.namespaces: [a], the traffic of pods in namespace b is never
  captured (the sensor's counters and the stored packets prove it), while a's
  traffic is byte-identical to tcpdump's on a's client veth;
- a pod created in a later is targeted as soon as the API server has it;
- a reload that switches the rules to namespace b, under traffic in both
  namespaces, takes effect within a second (packet timestamps around the
  reload), and `tapwire targets --regex` through the control socket too.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import pcapcmp
import lab
from identity_lab import IdentityLab, require_identity_lab
from lab import run, tapwire

check = lab.Checks()


def packets(pcap: Path, flt: str) -> list[tuple[float, str, str]]:
    """(time, source, destination) of every TCP/UDP packet matching flt."""
    r = run(["tshark", "-r", pcap, "-Y", flt, "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst"],
            timeout=120)
    out = []
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if len(f) >= 3 and f[0]:
            out.append((float(f[0]), f[1], f[2]))
    return out


def main() -> int:
    require_identity_lab()
    with IdentityLab() as L:
        a_srv = L.add_pod("a", "srv-a-6f7d8-k2j4m", workload=("Deployment", "srv-a"))
        a_cli = L.add_pod("a", "cli-a-59c4d-p8q7r", workload=("Deployment", "cli-a"))
        b_srv = L.add_pod("b", "srv-b-7b9f5-w3e4r", workload=("Deployment", "srv-b"))
        b_cli = L.add_pod("b", "cli-b-84d6c-t5y6u", workload=("Deployment", "cli-b"))
        for p in (a_srv, b_srv):
            p.start_nginx()

        conf = L.dir / "tapwire.yaml"
        conf.write_text("tap:\n  namespaces: [a]\n")
        data = L.dir / "data"
        sensor = L.start_sensor(data, extra=["--config", conf, "--metrics-address", ""])

        def targeted_pods() -> int:
            st = sensor.status() or {}
            return st.get("identity", {}).get("targets", {}).get("targeted_pods", 0)

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and targeted_pods() < 2:
            time.sleep(0.2)
        check(targeted_pods() == 2, f"2 pods of namespace a targeted, status says {targeted_pods()}")

        # ---- phase 1: only a's traffic -------------------------------------
        tcpd_a = L.start_tcpdump(a_cli.veth, L.dir / "a.pcap")
        tcpd_b = L.start_tcpdump(b_cli.veth, L.dir / "b.pcap")
        st0 = (sensor.status() or {}).get("counters", {})
        for f in ("100b.bin", "10k.bin", "1m.bin"):
            a_cli.curl(f"http://{a_srv.ip}/f/{f}")
            b_cli.curl(f"http://{b_srv.ip}/f/{f}")
        a_cli.curl(f"http://[{a_srv.ip6}]/f/10k.bin")
        b_cli.curl(f"http://[{b_srv.ip6}]/f/10k.bin")
        # A pod that comes later in a is captured as soon as the API server has it.
        a_late = L.add_pod("a", "late-a-5d4c3-z1x2c", workload=("Deployment", "late-a"))
        a_late.start_nginx()
        time.sleep(1.0)
        a_cli.curl(f"http://{a_late.ip}/f/10k.bin")
        time.sleep(1.0)
        tcpd_a.stop()
        tcpd_b.stop()
        st1 = (sensor.status() or {}).get("counters", {})
        check(st1.get("not_targeted", 0) > st0.get("not_targeted", 0),
              f"b's packets counted as not_targeted: {st0.get('not_targeted')} -> {st1.get('not_targeted')}")

        export = L.dir / "phase1.pcapng"
        tapwire("export", "pcap", "--data-dir", data, "-o", export)
        b_ips = f"ip.addr=={b_srv.ip} || ip.addr=={b_cli.ip} || ipv6.addr=={b_srv.ip6} || ipv6.addr=={b_cli.ip6}"
        b_pk = packets(export, f"({b_ips}) && (tcp || udp)")
        check(not b_pk, f"{len(b_pk)} packets of namespace b stored: {b_pk[:3]}")
        ref_b = packets(L.dir / "b.pcap", f"({b_ips}) && tcp")
        check(len(ref_b) > 20, f"b's traffic happened: tcpdump saw {len(ref_b)} packets")
        # a's traffic: byte-identical to tcpdump's view on a's client veth.
        ref = pcapcmp.read_capture(str(L.dir / "a.pcap"))
        got = pcapcmp.read_capture(str(export))
        a_ips = (f"ip.addr=={a_cli.ip} || ipv6.addr=={a_cli.ip6}")
        a_only = L.dir / "phase1-a.pcapng"
        run(["tshark", "-r", export, "-Y", a_ips, "-w", a_only], timeout=120)
        got = pcapcmp.read_capture(str(a_only))
        cmp = pcapcmp.compare(ref, got)
        check(not cmp.problems, "a's streams differ from tcpdump's:\n  " + "\n  ".join(cmp.problems[:10]))
        late = packets(export, f"ip.addr=={a_late.ip} && tcp")
        check(len(late) > 5, f"the pod created later in a was captured ({len(late)} packets)")

        # ---- phase 2: reload to namespace b under traffic ----------------------
        stop = threading.Event()

        def loop(pod, url):
            n = 0
            while not stop.is_set() and n < 400:
                pod.curl(url, check=False, timeout=5)
                n += 1
                time.sleep(0.05)

        threads = [threading.Thread(target=loop, args=(a_cli, f"http://{a_srv.ip}/f/100b.bin"), daemon=True),
                   threading.Thread(target=loop, args=(b_cli, f"http://{b_srv.ip}/f/100b.bin"), daemon=True)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        conf.write_text("tap:\n  namespaces: [b]\n")
        t0 = time.time()
        reply = tapwire("config", "reload", "--data-dir", data, "--json")
        t1 = time.time()
        check(json.loads(reply.stdout).get("ok") is True, f"reload: {reply.stdout}")
        time.sleep(3.0)
        # ---- and by the control socket: back to a, by name ----
        t2 = time.time()
        tapwire("targets", "--regex", "^cli-a-", "--data-dir", data)
        t3 = time.time()
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(15)
        sensor.stop()

        export2 = L.dir / "phase2.pcapng"
        tapwire("export", "pcap", "--data-dir", data, "--from", f"{t0 - 1.5:.3f}", "-o", export2)
        pk = packets(export2, "tcp")
        a_set = {a_cli.ip, a_srv.ip}
        b_set = {b_cli.ip, b_srv.ip}

        def of(ips, lo, hi):
            return [p for p in pk if lo <= p[0] < hi and (p[1] in ips or p[2] in ips)]

        check(of(a_set, t0 - 1.5, t0), "a captured before the reload")
        check(not of(b_set, t0 - 1.5, t0), "b not captured before the reload")
        check(not of(a_set, t1 + 1.0, t2), f"a captured more than 1 s after the reload: {of(a_set, t1 + 1.0, t2)[:3]}")
        check(of(b_set, t1 + 1.0, t2), "b not captured after the reload")
        first_b = min((p[0] for p in of(b_set, t0, t2)), default=None)
        check(first_b is not None and first_b - t1 < 1.0, f"first b packet {first_b} vs reload reply {t1}")
        check(not of(b_set, t3 + 1.0, t3 + 3.0), "b captured after targeting switched back to a's client")
        check(of({a_cli.ip}, t3 + 1.0, t3 + 3.0), "a's client (by regex) not captured after the control request")

    return check.exit_code("pod targeting")


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("test_identity_targeting took over 300 s")))
    signal.alarm(300)
    sys.exit(main())
