#!/usr/bin/env python3
"""Done means: hostile traffic neither blinds nor bloats the dissector.
tapwire-dissector --pcap runs on captures crafted by scripts/craft_captures.py,
each attack followed by canary calls (ordinary keep-alive requests and
responses) that the script records:
- stray segments (2^31-1 ahead, 1 MiB ahead, just beyond the window, 1 MiB
  behind, and 2^31-1 ahead of the responses) on live keep-alive connections:
  every request on them, before and after, is dissected and paired, unflagged
  (before the window, the 100 requests after each stray went orphan or
  unanswered once the 2 s hole wait gave the hole up);
- 10k connections x 256 one-byte out-of-order segments, never filled;
- 5k connections whose request header block never ends (58 KB).
The two floods are run with no memory limit (to show the capture needs more
than the limit: the test would pass vacuously otherwise), with the default
limit (256Mi) and with a small one (32Mi): peak RSS (the child's ru_maxrss)
stays under the limit plus BASE_MB, shedding is counted in the metrics, and
every canary after the attack is dissected, paired and unflagged.

BASE_MB is the dissector's memory besides the state the limit covers: the
binary and its libraries, mimalloc's free pages, libpcap's buffer, the
output buffer (about 7 MB on a small capture; documented in
configs/README.md with tap.dissection.memoryLimit).

No root, no network namespaces: only the built tapwire-dissector (exit 77
without it, 1 under CI=true). Under 1 minute on 2 cores. TW_LAB_KEEP=1
keeps the captures and outputs.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import craft_captures as craft  # noqa: E402
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

BASE_MB = 32
DEFAULT_LIMIT_MB = 256  # DissectorOptions::memory_limit, tap.dissection.memoryLimit
SMALL_LIMIT_MB = 32
OOO_FLOWS = 10000  # 2.6M packets, 148 MB of pcap; without a limit about 350 MB resident
HEADER_FLOWS = 5000  # 297 MB of headers; without a limit about 330 MB resident


def require() -> None:
    if not os.access(ref.dissector_bin(), os.X_OK):
        msg = f"cannot run: missing binary {ref.dissector_bin()} (build first)"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def key(c: dict) -> tuple:
    """A call record as craft_captures.py lists its canaries."""
    req, resp = c.get("request") or {}, c.get("response")
    return (c["src"]["ip"], c["src"]["port"], c["dst"]["ip"], c["dst"]["port"], req.get("method"), req.get("path"),
            resp.get("status") if resp else None)


class Hostile(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.keep = os.environ.get("TW_LAB_KEEP") == "1"
        cls.dir = Path(tempfile.mkdtemp(prefix="tw-hostile-"))
        try:
            cls.caps = {}
            for name, kw in (("stray", {}), ("ooo", {"flows": OOO_FLOWS}), ("headers", {"flows": HEADER_FLOWS})):
                out = cls.dir / f"{name}.pcap"
                m = craft.craft(name, out, **kw)
                lab.log(f"crafted {out.name}: {m['packets']} packets, {m['pcap_bytes'] / 1e6:.0f} MB, "
                        f"{len(m['canaries'])} canary calls")
                cls.caps[name] = (out, m)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.keep:
            lab.log(f"kept {cls.dir}")
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def dissect(self, name: str, limit_mb) -> tuple[dict, list, dict]:
        """Runs the dissector on capture `name` with --memory-limit (None: the default)."""
        pcap, _ = self.caps[name]
        tag = f"{name}-{'default' if limit_mb is None else limit_mb}"
        jsonl, stats = self.dir / f"{tag}.jsonl", self.dir / f"{tag}.stats.json"
        args = ["--pcap", pcap, "--jsonl", jsonl, "--stats", stats]
        if limit_mb is not None:
            args += ["--memory-limit", f"{limit_mb}Mi"]
        r = ref.run_dissector(args, timeout=120)
        self.assertFalse(r["timed_out"], f"{tag}: hung")
        self.assertEqual(r["rc"], 0, f"{tag}: exit {r['rc']}:\n{r['stderr'][-2000:]}")
        st = json.loads(stats.read_text())
        lab.log(f"{tag}: peak RSS {r['maxrss_kb'] / 1024:.0f} MB, {r['wall']:.1f} s; "
                f"state peak {st['memory']['peak_bytes'] / 2**20:.0f} MiB of {st['memory']['limit'] / 2**20:.0f}; "
                f"shed {st['shed']}; {r['stderr'].strip()}")
        return r, ref.read_jsonl(jsonl), st

    def check_canaries(self, name: str, calls: list, what: str):
        _, m = self.caps[name]
        want = {tuple(c) for c in m["canaries"]}
        self.assertEqual(len(want), len(m["canaries"]), "canaries are distinct")
        got = {key(c): c for c in calls if key(c) in want}
        missing = sorted(want - set(got))
        self.assertEqual(missing[:5], [], f"{what}: {len(missing)} of {len(want)} canary calls missing or unpaired")
        flagged = [(k[5], c["flags"]) for k, c in got.items() if c["flags"]]
        self.assertEqual(flagged[:5], [], f"{what}: {len(flagged)} canary calls flagged")
        # nothing else claims to be a canary (an orphan response, a request left unanswered)
        paths = {k[5] for k in want}
        extra = [key(c) for c in calls if (c.get("request") or {}).get("path") in paths and key(c) not in want]
        self.assertEqual(extra[:5], [], f"{what}: canary requests dissected wrong")

    def test_stray_segments(self):
        for limit in (None, SMALL_LIMIT_MB):
            with self.subTest(limit=limit):
                r, calls, st = self.dissect("stray", limit)
                self.check_canaries("stray", calls, f"stray segments, limit {limit}")
                # 2^31-1, 1 MiB, the window's edge, and 2^31-1 on the response side; 1 MiB behind is a
                # retransmission
                self.assertEqual(st["reassembly_out_of_window"], 4)
                self.assertEqual(st["reassembly_gaps"], 0)

    def flood(self, name: str):
        r, _, st = self.dissect(name, 0)
        self.assertGreater(r["maxrss_kb"] / 1024, DEFAULT_LIMIT_MB + BASE_MB,
                           "the attack no longer needs more than the default limit: make it bigger")
        self.assertEqual(sum(st["shed"].values()), 0, "no limit, no shedding")
        for limit in (None, SMALL_LIMIT_MB):
            with self.subTest(limit=limit):
                r, calls, st = self.dissect(name, limit)
                mb = DEFAULT_LIMIT_MB if limit is None else limit
                self.assertEqual(st["memory"]["limit"], mb << 20)
                self.assertLess(r["maxrss_kb"] / 1024, mb + BASE_MB, f"{name}: peak RSS over the limit + base")
                self.assertGreater(sum(st["shed"].values()), 0, f"{name}: nothing shed: {st['shed']}")
                self.check_canaries(name, calls, f"{name}, limit {mb} MiB")
        return calls, st

    def test_out_of_order_flood(self):
        _, st = self.flood("ooo")
        self.assertGreater(st["shed"]["out_of_order"], 0)

    def test_endless_headers(self):
        calls, st = self.flood("headers")
        self.assertGreater(st["shed"]["buffer"], 0)
        # every endless header is reported, as an incomplete request without a response
        attack = [c for c in calls if (c.get("request") or {}).get("path", "").startswith("/h/")]
        self.assertEqual(len(attack), HEADER_FLOWS)
        for c in attack[:50]:
            self.assertIn("incomplete", c["flags"])
            self.assertIsNone(c["response"])
        self.assertTrue(any("memory_shed" in c["flags"] for c in attack), "no header block was shed")


if __name__ == "__main__":
    require()
    unittest.main()
