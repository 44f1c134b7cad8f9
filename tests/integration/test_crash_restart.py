#!/usr/bin/env python3
"""Done means (issue 2): kill -9 of the sensor while traffic flows, then a
restart: everything committed before the kill still exports, and the
restarted sensor attaches again without leftovers (and leaves none after a
clean stop)."""

import os
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
import pcapcmp  # noqa: E402


def curl_port(L, *urls, v6=False):
    """Fetches urls over one connection; returns the client's local port."""
    cmd = ["curl", "-sS", "--fail", "-m", "30", "-w", "%{http_code} %{local_port}\\n"]
    for u in urls:
        cmd += [u, "-o", "/dev/null"]
    r = L.cli(cmd, timeout=40)
    lines = r.stdout.split()
    assert len(lines) == 2 * len(urls) and all(c == "200" for c in lines[0::2]), r.stdout
    return int(lines[1])


class CrashRestart(unittest.TestCase):
    maxDiff = None

    def test_kill9_then_restart(self):
        with lab.Lab() as L:
            data = L.dir / "data"
            ref = L.start_tcpdump(L.srv_veth, L.dir / "reference.pcap")
            s1 = L.start_sensor(data)
            during = lab.attachments(L.srv_ns, L.srv_veth)
            lab.log(f"attached while capturing: {lab.describe_attachments(during)}")

            # Phase A: complete HTTP exchanges well before the kill.
            mb = L.url("/f/1m.bin")
            port_a = curl_port(L, mb, L.url("/f/10k.bin"), mb)
            port_a6 = curl_port(L, L.url("/f/1m.bin", v6=True))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                st = s1.status() or {}
                if st.get("counters", {}).get("bytes_captured", 0) >= 3 * 1024 * 1024:
                    break
                time.sleep(0.2)
            time.sleep(2)  # several drain/status periods: phase A is committed

            # Phase B: traffic flowing while the sensor is SIGKILLed.
            # paced (1 ms between requests per connection) so that tcpdump, the reference, keeps up
            pace = L.dir / "pace.lua"
            pace.write_text("function delay()\n  return 1\nend\n")
            wrk = L.spawn("wrk", L.cli_ns, ["wrk", "-t1", "-c4", "-d5s", "-s", pace, L.url("/f/10k.bin")])
            time.sleep(2)
            self.assertTrue(s1.alive(), f"sensor died on its own:\n{s1.output()[-2000:]}")
            s1.kill9()
            lab.log("sensor killed with SIGKILL mid-traffic")
            wrk.p.wait(30)
            self.assertEqual(wrk.p.returncode, 0, wrk.output())
            self.assertGreater(lab.parse_wrk(wrk.output())["requests"], 0, wrk.output())

            leftover = lab.attachments(L.srv_ns, L.srv_veth)
            lab.log(f"after kill -9: {lab.describe_attachments(leftover)}")
            print(f"leftovers of the crash: clsact={leftover['clsact']} filters={len(leftover['filters'])} "
                  f"bpf={len(leftover['bpf'])}")

            if during["filters"]:
                # classic tc filters outlive their process: the crash must leave them, or the
                # restart below would not be exercising the clean-up of a crashed run
                self.assertTrue(leftover["filters"], "kill -9 left no tc filters behind (unexpected)")
            # Restart on the same data dir: recovers and attaches once, not twice.
            s2 = L.start_sensor(data)
            again = lab.attachments(L.srv_ns, L.srv_veth)
            self.assertEqual(len(again["filters"]), len(during["filters"]),
                             f"filters after restart vs first run: {again['filters']} vs {during['filters']}")
            self.assertEqual(len(again["bpf"]), len(during["bpf"]),
                             f"programs after restart vs first run: {again['bpf']} vs {during['bpf']}")
            # Phase C: the restarted sensor captures.
            port_c = curl_port(L, L.url("/f/10k.bin"), L.url("/f/100b.bin"), mb)
            time.sleep(1.5)
            rc = s2.stop()
            self.assertEqual(rc, 0, f"restarted sensor exit status {rc}:\n{s2.output()[-3000:]}")
            ref.stop()
            final = s2.final_status or {}
            self.assertEqual(final.get("state"), "stopped", final)
            bad = lab.all_zero(final.get("drops", {}))
            self.assertEqual(bad, [], f"restarted sensor drops: {bad}")
            after = lab.attachments(L.srv_ns, L.srv_veth)
            self.assertTrue(lab.nothing_attached(after),
                            f"left attached after restart + clean stop: {lab.describe_attachments(after)}")
            self.assertEqual(ref.kernel_drops, 0, "reference tcpdump dropped packets")

            # Everything committed before the kill still exports.
            out = L.dir / "export.pcapng"
            r = lab.export_pcap(data, out, check=False)
            self.assertEqual(r.returncode, 0, f"export after crash + restart failed: {r.stderr.strip()}")
            fc = pcapcmp.check_file(out)
            self.assertEqual((fc.returncode, fc.stderr, fc.malformed), (0, "", 0),
                             f"tshark on the export: rc {fc.returncode}, {fc.stderr!r}, {fc.malformed} malformed")
            want = pcapcmp.read_capture(ref.out)
            got = pcapcmp.read_capture(out)

            # Nothing torn or invented: every exported byte is tcpdump's byte at the same offset.
            checked, problems = pcapcmp.compare_subset(want, got)
            self.assertEqual(problems, [], "\n".join(problems))
            lab.log(f"{checked} exported TCP bytes match the reference at their offsets")

            # Complete flows before the kill (v4, v6) and after the restart: identical both ways.
            flows = []
            for port, cli, srv in ((port_a, L.cli4, L.srv4), (port_a6, L.cli6, L.srv6), (port_c, L.cli4, L.srv4)):
                flows += [(cli, port, srv, 80, 0), (srv, 80, cli, port, 0)]
            for k in flows:
                self.assertIn(k, want.tcp, f"{pcapcmp.fmt_flow(k)} not in the reference")
                self.assertIn(k, got.tcp, f"{pcapcmp.fmt_flow(k)} missing from the export")
                a, b = pcapcmp.stream_bytes(want, k), pcapcmp.stream_bytes(got, k)
                if a != b:
                    i = pcapcmp._first_diff(a, b)
                    self.fail(f"{pcapcmp.fmt_flow(k)}: export has {len(b)} bytes, reference {len(a)}; "
                              f"first difference at offset {i}")
            body = L.file_bytes["1m.bin"]
            resp_a = pcapcmp.stream_bytes(got, (L.srv4, 80, L.cli4, port_a, 0))
            self.assertEqual(resp_a.count(body), 2, "the two 1 MB responses before the kill are not in the export")
            resp_a6 = pcapcmp.stream_bytes(got, (L.srv6, 80, L.cli6, port_a6, 0))
            self.assertIn(body, resp_a6, "the IPv6 1 MB response before the kill is not in the export")
            print(f"crash/restart: {checked} bytes verified; 3 complete connections identical to tcpdump; "
                  f"{len(got.tcp)} flow directions exported")


if __name__ == "__main__":
    lab.require()
    unittest.main()
