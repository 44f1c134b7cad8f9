#!/usr/bin/env python3
"""The sensor's control plane (issue 4, first part): dissection switched on
and off through the control socket and through SIGUSR1/SIGUSR2, the
dissector process appearing and disappearing accordingly; the idle stop
(raw capture goes on); kill -9 of the dissector (restarted, no call lost or
counted twice, against tcpdump's capture dissected offline); the socket's
mode and SO_PEERCRED check; malformed requests; /metrics served (on
127.0.0.1:7477 by default). Idle and slow clients lock nothing out: 100 idle
control clients do not stop `tapwire dissection status`, a 10 MB request is
cut off, 8 idle /metrics connections do not delay a scrape by more than a
second, and the idle connections are closed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref  # noqa: E402
import lab  # noqa: E402


def request(sock_path, obj, raw: bytes | None = None, timeout=10) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock_path))
    s.sendall(raw if raw is not None else (json.dumps(obj) + "\n").encode())
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf.split(b"\n")[0])


def dissector_pids(data_dir) -> list[int]:
    r = subprocess.run(["pgrep", "-f", f"tapwire-dissector --data-dir {data_dir}"], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ControlPlane(unittest.TestCase):
    maxDiff = None

    def test_enable_disable_signals_idle_stop(self):
        with lab.Lab(dnsmasq=False) as L:
            data = L.dir / "data"
            # the socket where another uid can reach it (the lab's directory is private)
            sock = f"/tmp/tw-ctl-{os.getpid()}.sock"
            self.addCleanup(lambda: os.path.exists(sock) and os.unlink(sock))
            # metrics at the default address
            s = L.start_sensor(data, extra=["--dissection-stop-after", "2", "--control-socket", sock])
            st = os.stat(sock)
            self.assertEqual(st.st_mode & 0o777, 0o600, "the control socket is for its owner only")
            self.assertEqual(dissector_pids(data), [], "dissection is off at start")

            r = request(sock, {"cmd": "dissection", "action": "enable"})
            self.assertTrue(r["ok"], r)
            wait_for(lambda: dissector_pids(data), 10, "the dissector to start (control socket)")
            # disabled through the CLI
            subprocess.run([lab.cli_bin(), "dissection", "disable", "--control-socket", sock], check=True, timeout=20)
            wait_for(lambda: not dissector_pids(data), 10, "the dissector to stop (control socket)")

            s.send(signal.SIGUSR1)
            wait_for(lambda: dissector_pids(data), 10, "the dissector to start (SIGUSR1)")
            s.send(signal.SIGUSR2)
            wait_for(lambda: not dissector_pids(data), 10, "the dissector to stop (SIGUSR2)")

            # idle stop after 2 s without activity; raw capture continues
            s.send(signal.SIGUSR1)
            wait_for(lambda: dissector_pids(data), 10, "the dissector to start again")
            wait_for(lambda: not dissector_pids(data), 15, "dissection to stop by itself (stopAfter 2s)")
            before = (s.wait_status_update() or {})["counters"]["packets_captured"]
            L.curl(L.url("/f/10k.bin"))
            after = wait_for(lambda: (s.wait_status_update() or {})["counters"]["packets_captured"] > before and
                             s.status(), 10, "raw capture to go on")
            self.assertFalse(after["dissection"]["enabled"], after["dissection"])
            self.assertTrue(s.alive())

            # malformed requests get an error reply; the daemon stays up
            for raw in (b"{not json\n", b"[1,2,3]\n", b'{"cmd": 7}\n', b'{"cmd": "reboot"}\n',
                        b'{"cmd": "dissection", "action": "sideways"}\n'):
                r = request(sock, None, raw=raw)
                self.assertFalse(r["ok"], raw)
                self.assertTrue(r["error"], raw)
            r = request(sock, {"cmd": "status"})
            self.assertTrue(r["ok"])
            self.assertEqual(r["status"]["state"], "capturing")

            # another uid: even with the socket opened up, SO_PEERCRED refuses it
            os.chmod(sock, 0o666)
            # (the server answers a refused client at once and hangs up: its request may meet a closed socket)
            code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                    "try:\n  s.sendall(b'{\"cmd\": \"status\"}\\n')\nexcept OSError:\n  pass\n"
                    "print(s.recv(4096).decode())")
            out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                                  code, str(sock)], capture_output=True, text=True, timeout=20)
            self.assertTrue(out.stdout.strip(), f"no reply to another uid: {out.stderr[-500:]}")
            reply = json.loads(out.stdout.strip().splitlines()[0])
            self.assertFalse(reply["ok"], reply)
            self.assertIn("permission denied", reply["error"])

            # metrics are served, at the default address
            out = L.srv(["curl", "-sS", "-m", "5", "http://127.0.0.1:7477/metrics"]).stdout
            self.assertIn('tapwire_packets_captured_total{interface="', out)
            self.assertIn("tapwire_dissection_enabled 0", out)
            self.assertRegex(out, r'tapwire_drops_total\{reason="ringbuf_full",cpu="0"\} 0')
            self.assertEqual(s.stop(), 0)
            self.assertEqual(dissector_pids(data), [])

    def test_dissector_killed_is_restarted_without_losing_or_repeating_calls(self):
        dissectref.require()
        with lab.Lab() as L:
            data = L.dir / "data"
            ref = L.start_tcpdump(L.srv_veth, L.dir / "reference.pcap")
            s = L.start_sensor(data, extra=["--dissection", "--dissection-stop-after", "0",
                                            "--metrics-address", ""])
            wait_for(lambda: dissector_pids(data), 10, "the dissector to start")
            for six in (False, True):
                L.curl(*([L.url("/f/10k.bin", v6=six)] * 5))
            first = dissector_pids(data)[0]
            wrk = L.spawn("wrk", L.cli_ns, ["wrk", "-t1", "-c2", "-d3s", L.url("/f/100b.bin")])
            time.sleep(1.5)
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: [p for p in dissector_pids(data) if p != first], 15, "the dissector to be restarted")
            wrk.stop(timeout=20)
            for six in (False, True):
                L.curl(*([L.url("/f/100b.bin", v6=six)] * 5))
            cap = dissectref.stop_capture(ref)
            self.assertTrue(dissectref.capture_complete(cap), cap)
            st = s.wait_status_update()
            self.assertGreaterEqual(st["dissection"]["restarts"], 1, st["dissection"])
            self.assertEqual(lab.all_zero(st["drops"]), [], f"capture lost packets: {st['drops']}")
            time.sleep(3)  # the dissector catches up with the segments
            self.assertEqual(s.stop(), 0)  # stops the dissector too (it checkpoints)
            got = dissectref.db_calls(data / "dissection.db")
            want = dissectref.read_jsonl(self._offline(L))
            key = dissectref.full_key
            self.assertEqual(len(got), len(want), "calls lost or counted twice")
            diff = dissectref.diff_multisets([key(c) for c in want], [key(c) for c in got], "offline", "live")
            self.assertEqual(diff, "", diff)

    def test_config_file_reload_and_metrics(self):
        with lab.Lab(dnsmasq=False) as L:
            data = L.dir / "data"
            cfg = L.dir / "tapwire.yaml"

            # bad configs: each rejected at start, naming the key and its line, nothing attached
            bad = {"unknown key": ("tap:\n  capture:\n    stoped: true\n", "tap.capture.stoped"),
                   "wrong type": ("tap:\n  snaplen: [1, 2]\n", "tap.snaplen"),
                   "negative size": ("tap:\n  capture:\n    raw:\n      storageSize: -5Gi\n",
                                     "tap.capture.raw.storageSize"),
                   "unknown dissector": ("tap:\n  enabledDissectors: [http, gopher]\n", "tap.enabledDissectors"),
                   "bad duration": ("tap:\n  capture:\n    dissection:\n      stopAfter: soon\n",
                                    "tap.capture.dissection.stopAfter")}
            for what, (text, key) in bad.items():
                cfg.write_text(text)
                r = L.srv([lab.sensor_bin(), "--config", cfg, "--data-dir", data, "--interface", L.srv_veth],
                          check=False, timeout=30)
                lines = r.stderr.strip().splitlines()
                self.assertNotEqual(r.returncode, 0, what)
                self.assertEqual(len(lines), 1, f"{what}: {r.stderr}")
                self.assertIn(key, lines[0], what)
                self.assertRegex(lines[0], r"tapwire\.yaml:\d+: ", f"{what}: the line number")
                self.assertTrue(lab.nothing_attached(lab.attachments(L.srv_ns, L.srv_veth)), what)

            good = ("tap:\n  filters:\n    ports:\n      deny: [{port}]\n"
                    "  metrics:\n    address: 127.0.0.1:17477\n  capture:\n    dissection:\n      stopAfter: 0\n")
            cfg.write_text(good.format(port=12345))
            s = L.start_sensor(data, extra=["--config", cfg])

            def scrape():
                return L.srv(["curl", "-sS", "-m", "5", "http://127.0.0.1:17477/metrics"]).stdout

            def value(text, name):
                total = 0.0
                for line in text.splitlines():
                    if line.startswith(name + "{") or line.startswith(name + " "):
                        total += float(line.rsplit(" ", 1)[1])
                return total

            L.curl(L.url("/f/10k.bin"))
            time.sleep(1.5)
            m1 = scrape()
            L.curl(*([L.url("/f/1m.bin")] * 3))
            time.sleep(1.5)
            m2 = scrape()
            check = subprocess.run(["promtool", "check", "metrics"], input=m2, capture_output=True, text=True,
                                   timeout=30)
            self.assertEqual(check.returncode, 0, f"promtool check metrics:\n{check.stdout}{check.stderr}")
            for name in ("tapwire_packets_captured_total", "tapwire_captured_bytes_total"):
                self.assertGreater(value(m2, name), value(m1, name), f"{name} did not rise with the traffic")
            self.assertGreaterEqual(value(m2, "tapwire_captured_bytes_total"), 3 * 1024 * 1024)

            # a SIGHUP with a bad file keeps the old configuration (and the daemon)
            cfg.write_text("tap:\n  filters:\n    ports:\n      deny: [99999]\n")
            s.send(signal.SIGHUP)
            time.sleep(1)
            self.assertTrue(s.alive())
            self.assertIn("config reload rejected", s.output())
            before = s.wait_status_update()["counters"]
            L.curl(L.url("/f/10k.bin"))
            after = s.wait_status_update()["counters"]
            self.assertGreater(after["packets_captured"], before["packets_captured"], "the old filters stay")

            # a good file through `tapwire config reload`: port 80 is now filtered out in the kernel
            cfg.write_text(good.format(port=80))
            r = subprocess.run([lab.cli_bin(), "config", "reload", "--data-dir", data], capture_output=True,
                               text=True, timeout=20)
            self.assertEqual(r.returncode, 0, r.stderr)
            before = s.wait_status_update()["counters"]
            L.curl(L.url("/f/10k.bin"))
            after = s.wait_status_update()["counters"]
            self.assertEqual(after["packets_captured"], before["packets_captured"], "port 80 still captured")
            self.assertGreater(after["filtered"], before["filtered"])
            self.assertEqual(s.stop(), 0)

    def test_idle_and_slow_clients_lock_nothing_out(self):
        with lab.Lab(nginx=False, dnsmasq=False) as L:
            data = L.dir / "data"
            s = L.start_sensor(data)  # metrics at the default 127.0.0.1:7477, DATA_DIR/control.sock
            sock = str(data / "control.sock")

            # 100 idle control clients (a third with half a request) at once
            idle = []
            for i in range(100):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.connect(sock)
                if i % 3 == 0:
                    c.sendall(b'{"cmd": "sta')
                idle.append(c)
            t0 = time.monotonic()
            r = subprocess.run([lab.cli_bin(), "dissection", "status", "--data-dir", data], capture_output=True,
                               text=True, timeout=30)
            took = time.monotonic() - t0
            lab.log(f"tapwire dissection status with 100 idle control clients: {took:.3f} s")
            self.assertEqual(r.returncode, 0, f"with 100 idle control clients: {r.stdout}{r.stderr}")
            self.assertIn("dissection", r.stdout.lower())
            # promptly: not after the idle clients time out (5 s)
            self.assertLess(took, 2.5, "the control socket answered only after the idle clients were gone")
            # ... and they are cut off (each gets a line saying why, then the end of the stream)
            for c in idle:
                c.settimeout(30)
                buf = b""
                try:
                    while chunk := c.recv(4096):
                        buf += chunk
                except ConnectionResetError:
                    pass
                c.close()
                self.assertTrue(buf.endswith(b"\n") and json.loads(buf.splitlines()[-1])["ok"] is False, buf)

            # 10 MB without a newline: cut off long before the end
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(sock)
            c.settimeout(30)
            sent, chunk = 0, b"x" * 65536
            try:
                while sent < 10 << 20:
                    sent += c.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            c.close()
            lab.log(f"control socket took {sent} bytes of a 10 MB line before closing")
            self.assertLess(sent, 10 << 20, "the control socket read a 10 MB line")
            self.assertTrue(request(sock, {"cmd": "status"})["ok"])

            # 8 idle /metrics connections (half of them with half a request) do not delay a scrape
            code = """if True:
                import json, socket, time
                def scrape():
                    t = time.monotonic()
                    c = socket.create_connection(("127.0.0.1", 7477), timeout=60)
                    c.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
                    data = b""
                    while chunk := c.recv(65536):
                        data += chunk
                    c.close()
                    return time.monotonic() - t, data
                base, _ = scrape()
                idle = [socket.create_connection(("127.0.0.1", 7477)) for _ in range(8)]
                for k in idle[::2]:
                    k.sendall(b"GET /metr")
                time.sleep(0.5)
                took, data = scrape()
                closed = 0
                for k in idle:
                    k.settimeout(60)
                    try:
                        closed += k.recv(1) == b""
                    except OSError:
                        closed += 1
                print(json.dumps({"base": base, "took": took, "closed": closed,
                                  "ok": data.startswith(b"HTTP/1.1 200 ") and b"tapwire_packets_seen_total" in data}))
            """
            out = json.loads(L.srv(["python3", "-c", code], timeout=180).stdout)
            lab.log(f"scrape: {out['base']:.3f} s alone, {out['took']:.3f} s with 8 idle connections")
            self.assertTrue(out["ok"], out)
            self.assertLess(out["took"] - out["base"], 1.0, f"8 idle connections delayed a scrape: {out}")
            self.assertEqual(out["closed"], 8, f"idle /metrics connections left open: {out}")
            self.assertTrue(s.alive())
            self.assertEqual(s.stop(), 0)

    def _offline(self, L):
        out = L.dir / "offline.jsonl"
        r = dissectref.run_dissector(["--pcap", L.dir / "reference.pcap", "--jsonl", out, "-q"])
        self.assertEqual(r["rc"], 0, r)
        return out


if __name__ == "__main__":
    lab.require()
    unittest.main()
