#!/usr/bin/env python3
"""Done means (issue 5), delayed dissection:
- identical results: the lab's traffic is captured by tapwire-sensor while it
  dissects live (`--dissection`, the live DB is DATA_DIR/dissection.db); the
  same segments, hard-linked into a snapshot directory, dissected afterwards
  with `tapwire dissect --snapshot DIR` (--jobs 1, then --jobs 2, split by
  flow) give the same calls as the live DB, field for field (ids aside);
- the HAR export of that DB is valid HAR 1.2 (every required field with its
  type, checked here; and by node-har-validator's JSON schema when installed)
  and its entries are the DB's HTTP calls (method, URL path, status);
  `tapwire export jsonl` prints the same records as `tapwire calls --json`;
- bad input: a missing snapshot, a snapshot with a junk segment file, a
  segment with a damaged record: one clear line, non-zero exit, no --db left.

Needs root, netns, BPF and the built binaries; skips with 77 otherwise (fails
under CI=true). TW_LAB_KEEP=1 keeps the data dir, snapshot and DBs.
"""

import collections
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

NODE_PATH = "/usr/share/nodejs"  # Debian's node modules (node-har-validator)


def tapwire(args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(lab.cli_bin())] + [str(a) for a in args], capture_output=True, text=True,
                          errors="replace", timeout=timeout)


def wait_stable(path, timeout: float = 60) -> int:
    """Until the DB's call count stays the same for 3 s."""
    deadline = time.monotonic() + timeout
    last, since = -2, time.monotonic()
    while time.monotonic() < deadline:
        n = ref.db_count(path)
        if n != last:
            last, since = n, time.monotonic()
        elif n > 0 and time.monotonic() - since >= 3:
            break
        time.sleep(0.25)
    return last


def leftovers(directory: Path, stem: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(stem))


# --------------------------------------------------------------------------
# HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/): required fields
# and their types.

NUM = (int, float)


def _check(obj, spec: dict, where: str, errs: list):
    if not isinstance(obj, dict):
        errs.append(f"{where}: not an object")
        return
    for name, typ in spec.items():
        if name not in obj:
            errs.append(f"{where}.{name}: missing")
        elif isinstance(typ, tuple) and bool in typ:
            pass
        elif not isinstance(obj[name], typ) or isinstance(obj[name], bool):
            errs.append(f"{where}.{name}: {type(obj[name]).__name__}, want {typ}")


def _pairs(lst, where: str, errs: list):
    if not isinstance(lst, list):
        errs.append(f"{where}: not a list")
        return
    for i, p in enumerate(lst):
        _check(p, {"name": str, "value": str}, f"{where}[{i}]", errs)


def har_errors(har) -> list[str]:
    errs: list[str] = []
    _check(har, {"log": dict}, "", errs)
    if errs:
        return errs
    log = har["log"]
    _check(log, {"version": str, "creator": dict, "entries": list}, "log", errs)
    if log.get("version") != "1.2":
        errs.append(f"log.version: {log.get('version')!r}, want '1.2'")
    _check(log.get("creator"), {"name": str, "version": str}, "log.creator", errs)
    if "pages" in log and not isinstance(log["pages"], list):
        errs.append("log.pages: not a list")
    for i, e in enumerate(log.get("entries") or []):
        w = f"log.entries[{i}]"
        _check(e, {"startedDateTime": str, "time": NUM, "request": dict, "response": dict, "cache": dict,
                   "timings": dict}, w, errs)
        if errs:
            break
        try:
            from datetime import datetime
            datetime.fromisoformat(e["startedDateTime"].replace("Z", "+00:00"))
        except ValueError:
            errs.append(f"{w}.startedDateTime: not ISO 8601: {e['startedDateTime']!r}")
        if e["time"] < 0:
            errs.append(f"{w}.time: negative")
        if "serverIPAddress" in e and not isinstance(e["serverIPAddress"], str):
            errs.append(f"{w}.serverIPAddress: not a string")
        rq, rs = e["request"], e["response"]
        _check(rq, {"method": str, "url": str, "httpVersion": str, "cookies": list, "headers": list,
                    "queryString": list, "headersSize": int, "bodySize": int}, f"{w}.request", errs)
        _check(rs, {"status": int, "statusText": str, "httpVersion": str, "cookies": list, "headers": list,
                    "content": dict, "redirectURL": str, "headersSize": int, "bodySize": int}, f"{w}.response", errs)
        _pairs(rq.get("headers"), f"{w}.request.headers", errs)
        _pairs(rq.get("queryString"), f"{w}.request.queryString", errs)
        _pairs(rs.get("headers"), f"{w}.response.headers", errs)
        _check(rs.get("content"), {"size": int, "mimeType": str}, f"{w}.response.content", errs)
        u = urllib.parse.urlsplit(rq.get("url", ""))
        if u.scheme not in ("http", "https") or not u.netloc:
            errs.append(f"{w}.request.url: not an absolute URL: {rq.get('url')!r}")
        t = e["timings"]
        _check(t, {"send": NUM, "wait": NUM, "receive": NUM}, f"{w}.timings", errs)
        if all(isinstance(t.get(k), NUM) for k in ("send", "wait", "receive")):
            if min(t["send"], t["wait"], t["receive"]) < 0:
                errs.append(f"{w}.timings: negative send/wait/receive")
            if abs(t["send"] + t["wait"] + t["receive"] - e["time"]) > 0.01:
                errs.append(f"{w}.time {e['time']} is not the sum of its timings")
        if len(errs) > 20:
            break
    return errs


def node_har_validator():
    """A command that validates a HAR file with node-har-validator (JSON
    schema of HAR 1.2), or None if it is not installed."""
    if not shutil.which("node") or not os.path.isdir(f"{NODE_PATH}/har-validator"):
        return None
    script = ("const v=require('har-validator/lib/promise');"
              "const h=JSON.parse(require('fs').readFileSync(process.argv[1],'utf8'));"
              "v.har(h).then(()=>{console.log('valid');})"
              ".catch(e=>{console.log(JSON.stringify(e.errors||String(e)).slice(0,3000));process.exit(1);});")
    return lambda path: subprocess.run(["node", "-e", script, str(path)], capture_output=True, text=True,
                                       timeout=120, env=dict(os.environ, NODE_PATH=NODE_PATH))


class DissectSnapshot(unittest.TestCase):
    maxDiff = None

    def compare(self, what, want, got, got_name):
        d = ref.diff_multisets([ref.full_key(c) for c in want], [ref.full_key(c) for c in got], "live", got_name,
                               limit=12)
        return f"{what}:\n{d}" if d else ""

    def test_snapshot_equals_live_and_exports(self):
        with lab.Lab() as L:
            data = L.dir / "data"
            # small segments: flows and calls cross segment boundaries
            s = L.start_sensor(data, extra=["--dissection", "--dissection-stop-after", "0",
                                            "--metrics-address", "", "--segment-size", "4MiB"])
            live_db = data / "dissection.db"
            deadline = time.monotonic() + 15
            while ref.db_count(live_db) < 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            self.assertGreaterEqual(ref.db_count(live_db), 0, "the live dissector did not create DATA_DIR/dissection.db")
            did = ref.make_traffic(L, wrk_seconds=1, wrk_delay_ms=1)
            lab.log(f"traffic: {dict((k, v) for k, v in did.items() if k != 'truth')}")
            n = wait_stable(live_db)
            lab.log(f"live DB holds {n} calls; stopping the sensor")
            self.assertEqual(s.stop(), 0, "sensor exit status")
            live = ref.db_calls(live_db)
            self.assertGreater(len(live), 100, "the live DB has too few calls")
            self.assertTrue(any(c["protocol"] == "dns" for c in live), "no DNS call in the live DB")

            # The snapshot of the whole window the ring holds.
            segs = sorted((data / "segments").glob("*.twseg"))
            self.assertGreaterEqual(len(segs), 2, "want several segments")
            r = tapwire(["snapshot", "create", "--name", "live", "--data-dir", data])
            self.assertEqual(r.returncode, 0, f"tapwire snapshot create: {r.stderr[-2000:]}")
            snap = data / "snapshots" / "live"
            self.assertEqual(len(list((snap / "segments").glob("*.twseg"))), len(segs))

            problems = []
            dbs = {}
            for jobs in (1, 2):
                db = L.dir / f"snap-j{jobs}.db"
                r = tapwire(["dissect", "--snapshot", snap, "--db", db, "--jobs", jobs])
                self.assertEqual(r.returncode, 0, f"tapwire dissect --jobs {jobs}: {r.stderr[-2000:]}")
                self.assertIn("dissected", r.stderr)
                self.assertEqual(leftovers(L.dir, f"snap-j{jobs}.db"), [f"snap-j{jobs}.db"],
                                 "temporary files left beside the DB")
                lab.log(f"--jobs {jobs}: {r.stderr.strip().splitlines()[-1]}")
                got = ref.db_calls(db)
                dbs[jobs] = (db, got)
                d = self.compare(f"tapwire dissect --jobs {jobs} differs from live dissection", live, got,
                                 f"dissect-j{jobs}")
                if d:
                    problems.append(d)
            # Packed, unpacked into another data dir (another machine), dissected: the same calls.
            pack = L.dir / "live.tar.zst"
            r = tapwire(["snapshot", "pack", "live", "--data-dir", data, "-o", pack])
            self.assertEqual(r.returncode, 0, f"tapwire snapshot pack: {r.stderr[-2000:]}")
            other = L.dir / "elsewhere"
            r = tapwire(["snapshot", "unpack", pack, "--data-dir", other])
            self.assertEqual(r.returncode, 0, f"tapwire snapshot unpack: {r.stderr[-2000:]}")
            db = L.dir / "unpacked.db"
            r = tapwire(["dissect", "--snapshot", "live", "--data-dir", other, "--db", db, "--jobs", 1])
            self.assertEqual(r.returncode, 0, f"tapwire dissect (unpacked): {r.stderr[-2000:]}")
            d = self.compare("the unpacked snapshot dissects differently", live, ref.db_calls(db), "unpacked")
            if d:
                problems.append(d)
            if problems:
                self.fail(f"snapshot {snap} (TW_LAB_KEEP=1 keeps it):\n" + "\n".join(problems))
            # ordered by request time
            ts = [c["ts"] for c in dbs[2][1]]
            self.assertEqual(ts, sorted(ts), "--jobs 2 rows are not in time order")

            db, calls = dbs[2]
            # JSON lines: the same records as `tapwire calls --json`.
            out = L.dir / "calls.jsonl"
            r = tapwire(["export", "jsonl", "--db", db, "-o", out])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(collections.Counter(json.dumps(c, sort_keys=True) for c in ref.read_jsonl(out)),
                             collections.Counter(json.dumps(c, sort_keys=True) for c in calls))
            r = tapwire(["export", "jsonl", "--db", db])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(r.stdout.splitlines()), len(calls))

            # HAR
            har_path = L.dir / "calls.har"
            r = tapwire(["export", "har", "--db", db, "-o", har_path])
            self.assertEqual(r.returncode, 0, r.stderr)
            har = json.loads(har_path.read_text())
            errs = har_errors(har)
            self.assertEqual(errs, [], "not valid HAR 1.2:\n" + "\n".join(errs))
            validate = node_har_validator()
            if validate:
                v = validate(har_path)
                self.assertEqual(v.returncode, 0, f"node-har-validator rejects the HAR: {v.stdout}{v.stderr}")
                lab.log("node-har-validator: " + v.stdout.strip())
            elif lab.in_ci():
                self.fail("node-har-validator is not installed (scripts/install-deps.sh installs it)")
            else:
                lab.log("node-har-validator not installed: the HAR was checked against the spec here only")
            want = collections.Counter(
                (c["request"]["method"], c["request"]["path"], c["response"]["status"] if c["response"] else 0)
                for c in calls if c["protocol"] == "http" and c["request"])
            got = collections.Counter()
            for e in har["log"]["entries"]:
                u = urllib.parse.urlsplit(e["request"]["url"])
                path = u.path + ("?" + u.query if u.query else "")
                got[(e["request"]["method"], path, e["response"]["status"])] += 1
            d = ref.diff_multisets(list(want.elements()), list(got.elements()), "db", "har")
            self.assertEqual(d, "", d)
            self.assertTrue(any(k[2] == 404 for k in got), "no 404 in the HAR")
            post = [e for e in har["log"]["entries"] if e["request"]["method"] == "POST"]
            self.assertTrue(post and all(e["request"]["bodySize"] > 0 for e in post), "POST bodies not sized")
            q = [e for e in har["log"]["entries"] if e["request"]["queryString"]]
            self.assertTrue(any({"name": "q", "value": "1"} in e["request"]["queryString"] for e in q),
                            "the query string of /missing.html?q=1 is not in the HAR")
            print(f"snapshot: {len(live)} calls, identical to live with --jobs 1 and 2; "
                  f"HAR with {len(har['log']['entries'])} entries valid")

            # export pcap --snapshot DIR: the same packets as from the data dir
            p1, p2 = L.dir / "data.pcapng", L.dir / "snap.pcapng"
            lab.export_pcap(data, p1)
            r = tapwire(["export", "pcap", "--snapshot", snap, "-o", p2])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(p1.read_bytes(), p2.read_bytes(), "export pcap --snapshot differs from --data-dir")

            # A damaged record in a copy of one segment: one line, non-zero, no DB.
            bad = L.dir / "bad-snap"
            bad.mkdir()
            big = max(segs, key=lambda f: f.stat().st_size)
            for f in segs:
                if f == big:
                    shutil.copy(f, bad / f.name)
                else:
                    os.link(f, bad / f.name)
            with open(bad / big.name, "r+b") as fh:
                hdr = fh.read(4096)
                version, header_size = struct.unpack_from("<II", hdr, 8)
                committed = struct.unpack_from("<Q", hdr, 56)[0]
                self.assertGreater(committed, 4096, "segment too small to damage")
                at = header_size + committed // 2  # inside the published records
                if version == 2:  # per-CPU regions (shm/FORMAT.md): the middle of the fullest one
                    regions = struct.unpack_from("<I", hdr, 104)[0]
                    table = [struct.unpack_from("<QQQQQ", hdr, 128 + 64 * i) for i in range(regions)]
                    file_off, _, _, start, used = max(table, key=lambda e: e[4] - e[3])
                    at = file_off + (start + used) // 2
                fh.seek(at)
                chunk = fh.read(64)
                fh.seek(at)
                fh.write(bytes(b ^ 0xFF for b in chunk))
            for jobs in (1, 2):
                out_db = L.dir / f"bad-j{jobs}.db"
                r = tapwire(["dissect", "--snapshot", bad, "--db", out_db, "--jobs", jobs])
                lines = [x for x in r.stderr.splitlines() if x.strip()]
                self.assertNotEqual(r.returncode, 0, f"damaged segment accepted (--jobs {jobs}): {r.stderr}")
                self.assertEqual(len(lines), 1, f"--jobs {jobs}: want one line:\n{r.stderr}")
                self.assertIn("tapwire: ", lines[0])
                self.assertEqual(leftovers(L.dir, out_db.name), [], f"--jobs {jobs} left files behind")

    def test_bad_snapshots(self):
        with tempfile.TemporaryDirectory(prefix="tw-dissect-bad-") as tmp:
            tmp = Path(tmp)
            cases = {}
            cases["missing dir"] = (["--snapshot", tmp / "no-such-dir"], "no such snapshot")
            cases["missing name"] = (["--snapshot", "nosuchsnap", "--data-dir", tmp], "no such snapshot")
            junk = tmp / "junk"
            (junk / "segments").mkdir(parents=True)
            (junk / "segments" / "0000000000000000.twseg").write_bytes(os.urandom(8192))
            cases["junk segment"] = (["--snapshot", junk], "corrupt snapshot")
            short = tmp / "short"
            short.mkdir()
            (short / "0000000000000003.twseg").write_bytes(b"TWSEG")
            cases["truncated segment"] = (["--snapshot", short], "corrupt snapshot")
            empty = tmp / "empty"
            empty.mkdir()
            cases["no segments"] = (["--snapshot", empty], "no segments")
            for name, (args, words) in cases.items():
                for jobs in (1, 2):
                    with self.subTest(case=name, jobs=jobs):
                        db = tmp / "out.db"
                        r = tapwire(["dissect"] + args + ["--db", db, "--jobs", jobs], timeout=60)
                        lines = [x for x in r.stderr.splitlines() if x.strip()]
                        self.assertNotEqual(r.returncode, 0, r.stderr)
                        self.assertEqual(len(lines), 1, f"want one line:\n{r.stderr}")
                        self.assertIn(words, lines[0])
                        self.assertEqual(leftovers(tmp, "out.db"), [], "files left behind")
            r = tapwire(["export", "har", "--db", tmp / "no.db", "-o", tmp / "x.har"])
            self.assertNotEqual(r.returncode, 0)
            self.assertFalse((tmp / "x.har").exists())


if __name__ == "__main__":
    if not os.access(lab.cli_bin(), os.X_OK):
        msg = f"cannot run: missing binary {lab.cli_bin()} (build first)"
        if lab.in_ci():
            sys.exit(f"FAIL (CI=true): {msg}")
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)
    ref.require()
    unittest.main()
