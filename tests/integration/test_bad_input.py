#!/usr/bin/env python3
"""Done means (issue 2): bad input gets one clear error line and a non-zero
exit, with nothing left attached: unknown interface, unwritable data dir, no
permission to load BPF, a segment file that is not one."""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

JUNK_NAME = "0000000000000001.twseg"


def run_bounded(cmd, timeout=30):
    """Runs cmd; if it is still running after timeout (it should have failed),
    stops it with SIGINT (so a sensor detaches) and reports rc=None."""
    p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        return None, out, err


class BadInput(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab(nginx=False, dnsmasq=False).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def sensor_cmd(self, data_dir, interface=None, prefix=()):
        L = self.L
        return (["ip", "netns", "exec", L.srv_ns] + list(prefix) +
                [lab.sensor_bin(), "--interface", interface or L.srv_veth, "--data-dir", data_dir])

    def assert_one_line_error(self, what, rc, err, needles):
        lines = [l for l in err.splitlines() if l.strip()]
        print(f"{what}: exit {rc}: {err.strip()}")
        self.assertIsNotNone(rc, f"{what}: still running after 30s instead of failing; stderr: {err!r}")
        self.assertGreater(rc, 0, f"{what}: killed by signal {-rc if rc < 0 else rc} (a crash), stderr: {err!r}")
        self.assertNotIn(rc, (134, 139), f"{what}: exit {rc} looks like abort/segfault; stderr: {err!r}")
        self.assertEqual(len(lines), 1, f"{what}: expected one error line on stderr, got {len(lines)}: {lines}")
        for n in needles:
            self.assertRegex(lines[0], n, f"{what}: the error line does not name {n!r}")

    def assert_nothing_attached(self, what):
        att = lab.attachments(self.L.srv_ns, self.L.srv_veth)
        self.assertTrue(lab.nothing_attached(att), f"{what}: left attached: {lab.describe_attachments(att)}")

    # ---- sensor ----------------------------------------------------------
    def test_unknown_interface(self):
        rc, out, err = run_bounded(self.sensor_cmd(self.L.dir / "d-unknown", interface="nosuchif0"))
        self.assert_one_line_error("unknown interface", rc, err, [r"nosuchif0"])
        self.assert_nothing_attached("unknown interface")

    def test_unknown_interface_with_a_good_one(self):
        # one good, one unknown: still an error, and the good one must not stay attached
        L = self.L
        cmd = self.sensor_cmd(L.dir / "d-mixed") + ["--interface", "nosuchif1"]
        rc, out, err = run_bounded(cmd)
        self.assert_one_line_error("good + unknown interface", rc, err, [r"nosuchif1"])
        self.assert_nothing_attached("good + unknown interface")

    def test_data_dir_under_a_file(self):
        f = self.L.dir / "a-regular-file"
        f.write_text("not a directory\n")
        d = f / "data"
        rc, out, err = run_bounded(self.sensor_cmd(d))
        self.assert_one_line_error("data dir under a file", rc, err, [re.escape(str(f))])
        self.assert_nothing_attached("data dir under a file")

    def test_data_dir_is_a_file(self):
        f = self.L.dir / "data-is-a-file"
        f.write_text("x")
        rc, out, err = run_bounded(self.sensor_cmd(f))
        self.assert_one_line_error("data dir is a file", rc, err, [re.escape(str(f))])
        self.assert_nothing_attached("data dir is a file")

    def test_data_dir_on_read_only_fs(self):
        # root ignores file modes, so use a read-only tmpfs in a private mount namespace
        L = self.L
        mnt = L.dir / "ro-mount"
        mnt.mkdir()
        for sub in ("data", "existing"):  # a dir to create, and one that exists but is read-only
            d = mnt / sub
            shell = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && mkdir {mnt}/existing && "
                     f"mount -o remount,ro {mnt} && exec {lab.sensor_bin()} --interface {L.srv_veth} "
                     f"--data-dir {d}")
            cmd = ["ip", "netns", "exec", L.srv_ns, "unshare", "-m", "--propagation", "private", "sh", "-c", shell]
            rc, out, err = run_bounded(cmd)
            self.assert_one_line_error(f"read-only data dir ({sub})", rc, err, [re.escape(str(d))])
            self.assert_nothing_attached(f"read-only data dir ({sub})")

    def test_no_permission_to_load_bpf(self):
        d = self.L.dir / "d-nobody"
        d.mkdir()
        os.chown(d, 65534, 65534)
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
        rc, out, err = run_bounded(self.sensor_cmd(d, prefix=prefix))
        self.assert_one_line_error("unprivileged", rc, err, [r"(?i)(permi|privilege|root|cap_bpf|capabilit)"])
        self.assert_nothing_attached("unprivileged")

    # ---- segment files that are not ---------------------------------------
    def junk_dirs(self):
        """(description, data dir) with a segments/0000000000000001.twseg that is not a segment."""
        L = self.L
        cases = []
        bodies = {
            "random bytes": bytes(range(256)) * 32,
            "5 bytes": b"short",
            "empty": b"",
            "text": b"this is not a tapwire segment\n" * 200,
            # right magic, impossible version and sizes
            "bad version": b"TWSEG\r\n\x1a" + struct.pack("<II", 999, 4096) + b"\xff" * 8 + bytes(4096 - 24),
        }
        for i, (desc, body) in enumerate(bodies.items()):
            d = L.dir / f"junk{i}"
            (d / "segments").mkdir(parents=True)
            (d / "segments" / JUNK_NAME).write_bytes(body)
            cases.append((desc, d))
        return cases

    def test_export_of_a_junk_segment(self):
        for desc, d in self.junk_dirs():
            with self.subTest(junk=desc):
                out = self.L.dir / f"{d.name}.pcapng"
                rc, _, err = run_bounded([lab.cli_bin(), "export", "pcap", "--data-dir", d, "-o", out])
                self.assert_one_line_error(f"export with a junk segment ({desc})", rc, err, [re.escape(JUNK_NAME)])

    def test_sensor_on_a_dir_with_a_junk_segment(self):
        """The sensor captures anyway: the file is set aside, unchanged, in
        segments/damaged/, one line names it, and the sensor stops cleanly.
        (A sensor that refused the directory would have to say so in one
        error line naming the file.)"""
        L = self.L
        d = L.dir / "junk-sensor"
        (d / "segments").mkdir(parents=True)
        junk = d / "segments" / JUNK_NAME
        body = b"this is not a tapwire segment\n" * 200
        junk.write_bytes(body)
        s = L.start_sensor(d, wait=False)
        deadline = time.monotonic() + 20
        ready = False
        while time.monotonic() < deadline and s.alive():
            st = s.status() or {}
            if st.get("state") == "capturing" and st.get("pid") == s.pid:
                ready = True
                break
            time.sleep(0.1)
        if not ready:
            rc = s.stop()
            self.assert_one_line_error("sensor with a junk segment", rc, s.output(), [re.escape(JUNK_NAME)])
        else:
            time.sleep(1)
            rc = s.stop()
            out = s.output()
            print(f"sensor with a junk segment: captured anyway, exit {rc}; output: {out.strip()}")
            self.assertEqual(rc, 0, f"sensor exit {rc} on SIGINT: {out}")
            aside = d / "segments" / "damaged" / JUNK_NAME
            self.assertFalse(junk.exists(), f"{junk} is still among the segments")
            self.assertEqual(aside.read_bytes(), body, f"the sensor changed {junk} when it set it aside")
            self.assertEqual((s.final_status or {}).get("storage", {}).get("segments_damaged"), 1,
                             s.final_status)
            self.assertIn(JUNK_NAME, out,
                          f"the sensor ran on a data dir holding a file that is not a segment ({junk}) without a "
                          f"word about it; `tapwire export pcap` on that dir then fails. Its output: {out!r}")
        self.assert_nothing_attached("sensor with a junk segment")


if __name__ == "__main__":
    lab.require(tools=("ip", "tc", "setpriv", "unshare"))
    unittest.main()
