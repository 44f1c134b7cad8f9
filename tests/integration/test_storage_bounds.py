#!/usr/bin/env python3
"""Done means (issue 9), bounded storage:
- the live dissection DB stays within tap.capture.dbMaxSize under a long run:
  the oldest calls are deleted, the newest (a real client's last requests) are
  there, and the deletions are counted in the DB and in the metrics;
- a segment whose header was zeroed (power loss) does not stop the sensor from
  starting: it is set aside in segments/damaged/, counted and logged, and
  capture goes on (the client's requests after the restart are exported).

Needs root, netns, BPF and the built binaries; skips with 77 otherwise (fails
under CI=true). TW_LAB_KEEP=1 keeps the lab directory.
"""

import os
import sqlite3
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
import pcapcmp  # noqa: E402

MAX = 1 << 20  # 1Mi: a few thousand calls


def db_paths(db):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in con.execute("SELECT path FROM calls WHERE protocol = 'http' ORDER BY rowid")], \
            dict(con.execute("SELECT key, value FROM meta").fetchall())
    finally:
        con.close()


def curl_marks(L, names):
    for n in names:
        r = L.cli(["curl", "-sS", "--fail", "-m", "20", "-o", "/dev/null", L.url(f"/f/100b.bin?mark={n}")],
                  timeout=30)
        assert r.returncode == 0, r.stderr


class StorageBounds(unittest.TestCase):
    maxDiff = None

    def test_db_stays_within_db_max_size(self):
        with lab.Lab() as L:
            data = L.dir / "data"
            cfg = L.dir / "tapwire.yaml"
            cfg.write_text("tap:\n  capture:\n    dbMaxSize: 1Mi\n")
            s = L.start_sensor(data, extra=["--config", cfg, "--dissection"])
            db = data / "dissection.db"
            curl_marks(L, ["first"])
            # A long run: far more calls than 1Mi holds (each row is a few hundred bytes).
            peak = 0
            wrk = L.spawn("wrk", L.cli_ns, ["wrk", "-t1", "-c2", "-d8s", L.url("/f/100b.bin")])
            deadline = time.monotonic() + 40
            while wrk.p.poll() is None and time.monotonic() < deadline:
                if db.exists():
                    peak = max(peak, db.stat().st_size)
                time.sleep(0.1)
            wrk.p.wait(30)
            sent = lab.parse_wrk(wrk.output())["requests"]
            self.assertGreater(sent, 20000, wrk.output())
            curl_marks(L, ["last-1", "last-2"])
            # Until the dissector has written the last marks (it runs about a second behind).
            deadline = time.monotonic() + 60
            paths, meta = [], {}
            while time.monotonic() < deadline:
                if db.exists():
                    peak = max(peak, db.stat().st_size)
                    paths, meta = db_paths(db)
                    if paths and paths[-1].endswith("mark=last-2"):
                        break
                time.sleep(0.3)
            self.assertTrue(paths and paths[-1].endswith("mark=last-2"),
                            f"the last request is not in the DB: {paths[-3:]}\n{s.output()[-2000:]}")
            self.assertIn("/f/100b.bin?mark=last-1", paths)
            self.assertNotIn("/f/100b.bin?mark=first", paths, "the oldest call was not deleted")
            deleted = int(meta.get("calls_deleted", "0"))
            self.assertGreater(deleted, 0, meta)
            # Every request is either still there or counted as deleted.
            self.assertGreaterEqual(len(paths) + deleted, sent + 3 - 50, (len(paths), deleted, sent))
            wal = data / "dissection.db-wal"
            size = db.stat().st_size
            lab.log(f"db bound: {sent + 3} requests, {len(paths)} calls kept, {deleted} deleted; "
                    f"file {size} bytes (peak {peak}), WAL {wal.stat().st_size if wal.exists() else 0}")
            # Pages in use stay within the bound; the file within it plus the pages of one check interval.
            self.assertLessEqual(peak, MAX + MAX // 4, f"dissection.db reached {peak} bytes (bound {MAX})")
            # The metrics say so too (the sensor's /metrics, in the server's namespace).
            line = []
            for _ in range(20):
                out = L.srv(["curl", "-sS", "-m", "5", "http://127.0.0.1:7477/metrics"], check=False).stdout
                line = [x for x in out.splitlines() if x.startswith("tapwire_dissection_db_calls_deleted_total")]
                if line and float(line[0].split()[-1]) > 0:
                    break
                time.sleep(0.5)
            self.assertTrue(line and float(line[0].split()[-1]) > 0, line)
            self.assertEqual(s.stop(), 0, s.output()[-2000:])

    def test_zeroed_segment_header_does_not_stop_the_start(self):
        with lab.Lab() as L:
            data = L.dir / "data"
            s1 = L.start_sensor(data, extra=["--segment-max-age", "1"])
            curl_marks(L, ["before-1"])
            time.sleep(2.5)  # the segment is sealed by age; the next request opens another
            curl_marks(L, ["before-2"])
            time.sleep(1)
            self.assertEqual(s1.stop(), 0, s1.output()[-2000:])
            segs = sorted((data / "segments").glob("*.twseg"))
            self.assertGreaterEqual(len(segs), 2, segs)
            victim = segs[0]
            with open(victim, "r+b") as f:
                f.write(b"\0" * 4096)
            lab.log(f"zeroed the header of {victim.name}")

            s2 = L.start_sensor(data)
            st = s2.status() or {}
            storage = st.get("storage", {})
            self.assertEqual(storage.get("segments_damaged"), 1, storage)
            self.assertIn(victim.name, s2.output(), "the damaged segment is not named in the sensor's log")
            self.assertTrue((data / "segments" / "damaged" / victim.name).exists(), "not set aside")
            ref = L.start_tcpdump(L.srv_veth, L.dir / "after.pcap")
            curl_marks(L, ["after-1"])
            time.sleep(1.5)
            self.assertEqual(s2.stop(), 0, s2.output()[-2000:])
            ref.stop()
            out = L.dir / "export.pcapng"
            r = lab.export_pcap(data, out, check=False)
            self.assertEqual(r.returncode, 0, r.stderr)
            got = pcapcmp.read_capture(out)
            want = pcapcmp.read_capture(ref.out)
            # The request after the restart is captured whole, as tcpdump saw it.
            mark = b"GET /f/100b.bin?mark=after-1 "
            ref_keys = [k for k in want.tcp if mark in pcapcmp.stream_bytes(want, k)]
            self.assertEqual(len(ref_keys), 1, "tcpdump did not see the request after the restart")
            k = ref_keys[0]
            self.assertIn(k, got.tcp, "the request after the restart is not in the export")
            self.assertEqual(pcapcmp.stream_bytes(got, k), pcapcmp.stream_bytes(want, k))


if __name__ == "__main__":
    lab.require()
    unittest.main()
