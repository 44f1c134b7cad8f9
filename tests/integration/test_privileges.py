#!/usr/bin/env python3
"""Least privilege (hardening issue): the dissector the sensor runs is an
unprivileged user and group (tapwire where it exists, else nobody/nogroup)
with no supplementary groups, no capabilities, no_new_privs, a seccomp
filter and oom_score_adj 1000, as /proc shows it; it still turns curl's
requests into DB rows; a system call outside its allow-list kills it
(TAPWIRE_DISSECTOR_SELFTEST=forbidden-syscall, then SIGUSR1: socket(2)) and
the sensor restarts it, confined again, and calls go on. The data dir is
shared with the dissector's group the way the systemd unit shares
/var/lib/tapwire (3770, setgid, sticky): that group may create files there
and read the segments, not remove or replace the sensor's files, and no one
else may look in. What the dissector's group may plant there does not fool
the sensor: a link at status.json's temporary name is not followed, and
dissector.json as a link, a FIFO, an oversized or an ill-typed file is
ignored or type-checked (metrics still served, promtool accepts them).

Needs root, netns, BPF and the built binaries; skips with 77 otherwise
(fails under CI=true). Run: sudo python3 tests/integration/test_privileges.py
"""

import grp
import json
import os
import pwd
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

METRICS_PORT = 17497


def dissector_account():
    """(uid, gid) the sensor runs the dissector as by default."""
    try:
        uid = pwd.getpwnam("tapwire").pw_uid
    except KeyError:
        uid = pwd.getpwnam("nobody").pw_uid
    try:
        gid = grp.getgrnam("tapwire").gr_gid
    except KeyError:
        gid = grp.getgrnam("nogroup").gr_gid
    return uid, gid


def proc_status(pid) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()
    return out


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def db_rows(db) -> int:
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return c.execute("SELECT count(*) FROM calls").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return -1


def as_user(uid, gid, cmd, timeout=20) -> subprocess.CompletedProcess:
    """cmd as uid:gid with no supplementary groups (the dissector's credentials)."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"] + [str(c) for c in cmd],
                          capture_output=True, text=True, timeout=timeout)


class Privileges(unittest.TestCase):
    maxDiff = None

    def check_confined(self, pid, uid, gid):
        st = proc_status(pid)
        self.assertEqual(st["Uid"], [str(uid)] * 4, f"dissector {pid}: Uid (real, effective, saved, fs)")
        self.assertEqual(st["Gid"], [str(gid)] * 4, f"dissector {pid}: Gid")
        self.assertEqual(st["Groups"], [], f"dissector {pid}: supplementary groups")
        self.assertEqual(st["NoNewPrivs"], ["1"], f"dissector {pid}: no_new_privs")
        self.assertEqual(st["Seccomp"], ["2"], f"dissector {pid}: seccomp filter mode")
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            self.assertEqual(int(st[cap][0], 16), 0, f"dissector {pid}: {cap}")
        with open(f"/proc/{pid}/oom_score_adj") as f:
            self.assertEqual(f.read().strip(), "1000", f"dissector {pid}: oom_score_adj")
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        self.assertEqual(fields[16], "19", f"dissector {pid}: nice")  # field 19 of stat
        self.assertEqual(fields[38], "5", f"dissector {pid}: scheduling policy SCHED_IDLE")  # field 41

    def test_dissector_is_confined_and_a_forbidden_syscall_kills_it(self):
        uid, gid = dissector_account()
        with lab.Lab(dnsmasq=False) as L:
            data = L.dir / "data"
            os.environ["TAPWIRE_DISSECTOR_SELFTEST"] = "forbidden-syscall"  # the sensor's children inherit it
            try:
                s = L.start_sensor(data, extra=["--dissection", "--dissection-stop-after", "0",
                                                "--metrics-address", ""])
            finally:
                del os.environ["TAPWIRE_DISSECTOR_SELFTEST"]
            first = wait_for(lambda: (s.status() or {}).get("dissection", {}).get("pid"), 15,
                             "the dissector to start")
            db = data / "dissection.db"
            wait_for(lambda: db_rows(db) >= 0, 15, "the dissector to create DATA_DIR/dissection.db")
            self.check_confined(first, uid, gid)

            # the data dir, shared with the dissector's group; segments readable by that group only
            st = os.stat(data)
            self.assertEqual((st.st_uid, st.st_gid), (0, gid), "DATA_DIR owner and group")
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o3770, "DATA_DIR mode (setgid, sticky, group-writable)")
            for sub in ("segments", "identity", "flows"):
                sst = os.stat(data / sub)
                self.assertEqual(sst.st_gid, gid, f"{sub}/ group")
                self.assertEqual(stat.S_IMODE(sst.st_mode) & 0o7, 0, f"{sub}/ is not for others")
            segs = sorted((data / "segments").glob("*.twseg"))
            self.assertTrue(segs, "no segment file")
            for f in segs:
                fst = os.stat(f)
                self.assertEqual((fst.st_gid, stat.S_IMODE(fst.st_mode)), (gid, 0o640), f.name)
            dst = os.stat(db)
            self.assertEqual((dst.st_uid, dst.st_gid), (uid, gid), "dissection.db belongs to the dissector")

            # it still dissects: curl's requests become rows
            L.curl(*([L.url("/f/10k.bin")] * 5))
            wait_for(lambda: db_rows(db) >= 5, 30, "5 calls in the DB")

            # a system call outside the allow-list kills it; the sensor restarts it
            os.kill(first, signal.SIGUSR1)
            wait_for(lambda: not os.path.exists(f"/proc/{first}"), 10, "the dissector to be killed")
            d = wait_for(lambda: (lambda d: d if d.get("pid") not in (0, first, None) else None)(
                (s.status() or {}).get("dissection", {})), 15, "the dissector to be restarted")
            self.assertIn("Bad system call", d["last_exit"], d)
            self.assertGreaterEqual(d["restarts"], 1, d)
            # (the sensor knows the pid from fork on; the dissector confines itself once started)
            wait_for(lambda: proc_status(d["pid"]).get("Seccomp") == ["2"], 15, "the new dissector to confine itself")
            self.check_confined(d["pid"], uid, gid)
            before = db_rows(db)
            L.curl(*([L.url("/f/100b.bin")] * 3))
            wait_for(lambda: db_rows(db) >= before + 3, 30, "calls after the restart")
            self.assertTrue(s.alive())
            self.assertEqual(s.stop(), 0)

    def test_the_dissectors_group_cannot_touch_the_sensors_files(self):
        uid, gid = dissector_account()
        with lab.Lab(nginx=False, dnsmasq=False) as L:
            data = L.dir / "data"
            s = L.start_sensor(data, extra=["--metrics-address", f"127.0.0.1:{METRICS_PORT}"])
            s.wait_status_update()

            def scrape() -> str:
                return L.srv(["curl", "-sS", "-m", "10", f"http://127.0.0.1:{METRICS_PORT}/metrics"]).stdout

            # what the group may and may not do in DATA_DIR
            r = as_user(uid, gid, ["touch", data / "planted"])
            self.assertEqual(r.returncode, 0, f"the dissector's group cannot create a file: {r.stderr}")
            for cmd in (["rm", "-f", data / "status.json"], ["mv", "-f", data / "planted", data / "status.json"],
                        ["rm", "-f", data / "control.sock"]):
                r = as_user(uid, gid, cmd)
                self.assertNotEqual(r.returncode, 0, f"{cmd} succeeded as the dissector")
            self.assertTrue((data / "status.json").is_file() and (data / "control.sock").is_socket())
            seg = sorted((data / "segments").glob("*.twseg"))[0]
            r = as_user(uid, gid, ["head", "-c", "16", seg])
            self.assertEqual(r.returncode, 0, f"the dissector's group cannot read a segment: {r.stderr}")
            r = as_user(54321, 54321, ["ls", data])
            self.assertNotEqual(r.returncode, 0, "another user can list DATA_DIR")

            # a link planted at status.json's temporary name is removed, not followed
            victim = L.dir / "victim"
            victim.write_text("untouched\n")
            r = as_user(uid, gid, ["ln", "-s", victim, data / "status.json.tmp"])
            self.assertEqual(r.returncode, 0, r.stderr)
            first = s.status()["updated_ns"]
            s.wait_status_update()
            s.wait_status_update()
            self.assertNotEqual(s.status()["updated_ns"], first, "the sensor stopped writing its status")
            self.assertEqual(victim.read_text(), "untouched\n", "the sensor wrote through a planted link")
            self.assertTrue(stat.S_ISREG(os.lstat(data / "status.json").st_mode))

            # dissector.json as the dissector's group may leave it
            dj = data / "dissector.json"

            def plant(kind, content=""):
                as_user(uid, gid, ["rm", "-f", dj])
                if kind == "file":
                    tmp = data / "planted.json"
                    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
                                        "sh", "-c", 'cat > "$1" && mv "$1" "$2"', "sh", tmp, dj],
                                       input=content, capture_output=True, text=True, timeout=60)
                elif kind == "link":
                    r = as_user(uid, gid, ["ln", "-s", content, dj])
                else:
                    r = as_user(uid, gid, ["mkfifo", dj])
                self.assertEqual(r.returncode, 0, r.stderr)
                s.wait_status_update()
                s.wait_status_update()  # the exporter has read it (once a second, with the status)

            plant("file", json.dumps({"calls": {"http": 31337}, "redis_commands": {"SET": 12},
                                      "kafka_apis": {"Produce": 4}, "icmp_types": {"echo-request": 2}}))
            text = scrape()  # control: a good file is read
            self.assertIn('tapwire_calls_total{protocol="http"} 31337', text)
            self.assertIn('tapwire_redis_commands_total{command="SET"} 12', text)
            self.assertIn('tapwire_kafka_requests_total{api="Produce"} 4', text)
            self.assertIn('tapwire_icmp_messages_total{type="echo-request"} 2', text)

            secret = L.dir / "secret.json"
            secret.write_text(json.dumps({"calls": {"http": 424242}}))
            os.chmod(secret, 0o600)
            plant("link", secret)
            self.assertNotIn("424242", scrape(), "the sensor followed a link planted as dissector.json")

            plant("fifo")
            self.assertTrue(s.alive())
            before = s.status()["updated_ns"]
            self.assertNotEqual((s.wait_status_update() or {}).get("updated_ns"), before,
                                "the sensor stopped writing its status with a FIFO as dissector.json")
            self.assertIn("tapwire_packets_seen_total", scrape())

            plant("file", json.dumps({"calls": {"http": 777777}, "pad": "x" * (2 << 20)}))
            self.assertNotIn("777777", scrape(), "a dissector.json over 1 MiB was read")

            plant("file", json.dumps({"calls": {"http": "many", "dns": 5}, "http_methods": [1, 2],
                                      "http_status_class": {"2xx": {"n": 1}}, "dns_rcodes": "NOERROR",
                                      "duration_seconds": {"http": {"count": "x", "buckets": [{"le": "a"}]},
                                                           "dns": {"count": 2, "sum_seconds": 0.5,
                                                                   "buckets": [{"le": 1.0, "count": 2},
                                                                               {"le": 0.5, "count": 0}]}},
                                      "parse_errors": None, "memory": 7, "shed": {"x": [1]},
                                      "reassembly_gaps": "3", "flows_active": {"a": 1}}))
            text = scrape()
            self.assertTrue(s.alive(), "an ill-typed dissector.json stopped the sensor")
            self.assertIn('tapwire_calls_total{protocol="dns"} 5', text)
            self.assertNotIn('tapwire_calls_total{protocol="http"}', text)
            self.assertNotIn("tapwire_call_duration_seconds_bucket", text, "a histogram with bad buckets was served")
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                                   timeout=30)
            self.assertEqual(check.returncode, 0, f"promtool check metrics:\n{check.stdout}{check.stderr}")
            self.assertEqual(s.stop(), 0)


if __name__ == "__main__":
    lab.require(tools=("ip", "tc", "nginx", "curl", "setpriv", "promtool"))
    unittest.main()
