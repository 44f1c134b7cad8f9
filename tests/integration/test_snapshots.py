#!/usr/bin/env python3
"""Done means (issue 5, snapshots): a snapshot taken while the sensor runs
survives the live ring's retention wrapping around it (verify passes, its
pcap export is unchanged), `snapshot verify` catches a flipped byte and names
the file, and a packed snapshot unpacked into another data directory verifies.
Bad input gets a one-line error and changes nothing."""

import os
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
import pcapcmp  # noqa: E402

SMALL_RING = ["--storage-size", "4MiB", "--segment-size", "1MiB", "--segment-max-age", "1"]


def tapwire(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    return lab.run([str(lab.cli_bin())] + [str(a) for a in args], timeout=timeout, check=check)


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


class Snapshots(unittest.TestCase):
    maxDiff = None

    def assert_cli_error(self, r: subprocess.CompletedProcess, needle: str):
        self.assertNotEqual(r.returncode, 0, f"expected an error containing {needle!r}; got success: {r.stdout}")
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, f"not a one-line error: {r.stderr!r}")
        self.assertTrue(lines[0].startswith("tapwire: "), lines[0])
        self.assertIn(needle, lines[0])

    def test_snapshot_survives_retention_verify_pack_unpack(self):
        with lab.Lab(dnsmasq=False) as L:
            data = L.dir / "data"
            segs = data / "segments"
            sensor = L.start_sensor(data, extra=SMALL_RING)

            # Traffic to freeze: a few small keep-alive fetches.
            r = L.curl(*[L.url("/f/10k.bin")] * 5, L.url("/f/100b.bin"))
            self.assertEqual(r.stdout.split()[0::2], ["200"] * 6, r.stdout)
            time.sleep(1.5)  # let the sensor drain and publish

            # Create: the open segment overlaps the window, so the sensor is asked to rotate.
            r = tapwire("snapshot", "create", "--name", "frozen", "--data-dir", data)
            lab.log(r.stdout.strip())
            snap = data / "snapshots" / "frozen"
            manifest = __import__("json").loads((snap / "manifest.json").read_text())
            self.assertEqual(manifest["format"], "tapwire-snapshot/1")
            self.assertEqual(manifest["name"], "frozen")
            self.assertIn(L.srv_veth, manifest["interfaces"])
            self.assertLess(manifest["from_ns"], manifest["to_ns"])
            files = [f["name"] for f in manifest["files"]]
            self.assertTrue(files, manifest)
            # The packet segments and the identity stream that covers them (docs/IDENTITY.md).
            on_disk = ["segments/" + n for n in listing(snap / "segments")]
            if (snap / "identity").exists():
                on_disk += ["identity/" + n for n in listing(snap / "identity")]
            # And the flow stream's segments of the window (docs/FLOWS.md).
            if (snap / "flows").exists():
                on_disk += ["flows/" + n for n in listing(snap / "flows")]
            self.assertEqual(sorted(on_disk), sorted(files))
            self.assertTrue(any(f.startswith("identity/") for f in files),
                            f"the sensor records identity: the snapshot should carry it: {files}")
            self.assertTrue(any(f.startswith("flows/") for f in files),
                            f"the sensor accounts flows: the snapshot should carry them: {files}")
            for f in files:
                self.assertEqual(os.stat(snap / f).st_mode & 0o777, 0o440, f)
            self.assertEqual(os.stat(snap).st_mode & 0o777, 0o550)
            self.assertTrue(all((data / Path(f).parent / Path(f).name).exists() for f in files),
                            "snapshot files left the ring early")

            before = L.dir / "before.pcapng"
            lab.export_pcap(snap, before)
            want = pcapcmp.read_capture(before)
            self.assertTrue(any(L.file_bytes["10k.bin"] in pcapcmp.stream_bytes(want, k) for k in want.tcp),
                            "the 10k responses are not in the snapshot")

            # An existing name: one-line error, nothing changed.
            r = tapwire("snapshot", "create", "--name", "frozen", "--data-dir", data, check=False)
            self.assert_cli_error(r, "already exists")
            r = tapwire("snapshot", "create", "--name", "w", "--from", "-1m", "--to", "-2m", "--data-dir", data,
                        check=False)
            self.assert_cli_error(r, "empty time window")
            r = tapwire("snapshot", "create", "--name", "old", "--from", "2001-01-01T00:00:00Z",
                        "--to", "2001-01-02T00:00:00Z", "--data-dir", data, check=False)
            self.assert_cli_error(r, "no captured data")
            self.assertEqual(listing(data / "snapshots"), ["frozen"])

            # More traffic until retention has deleted every segment of the snapshot from the ring.
            deadline = time.monotonic() + 120
            while any((segs / Path(f).name).exists() for f in files):
                self.assertLess(time.monotonic(), deadline, f"retention did not wrap: ring has {listing(segs)}")
                L.curl(*[L.url("/f/1m.bin")] * 3)
                time.sleep(1.2)
            lab.log(f"ring wrapped: now {listing(segs)}; snapshot had {files}")
            self.assertTrue(sensor.alive(), sensor.output()[-2000:])

            r = tapwire("snapshot", "verify", "frozen", "--data-dir", data)
            self.assertIn("every sha256 matches", r.stdout)
            after = L.dir / "after.pcapng"
            lab.export_pcap(snap, after)
            self.assertEqual(pcapcmp.digest(pcapcmp.read_capture(after)), pcapcmp.digest(want),
                             "the snapshot's packets changed after the ring wrapped")
            r = tapwire("snapshot", "list", "--data-dir", data)
            self.assertIn("frozen", r.stdout)

            # Pack -> unpack into another data dir -> verify.
            pack = L.dir / "frozen.tar.zst"
            tapwire("snapshot", "pack", "frozen", "-o", pack, "--data-dir", data)
            self.assertEqual(pack.read_bytes()[:4], b"\x28\xb5\x2f\xfd", "not zstd")
            other = L.dir / "other"
            tapwire("snapshot", "unpack", pack, "--data-dir", other)
            tapwire("snapshot", "verify", "frozen", "--data-dir", other)
            moved = L.dir / "moved.pcapng"
            lab.export_pcap(other / "snapshots" / "frozen", moved)
            self.assertEqual(pcapcmp.digest(pcapcmp.read_capture(moved)), pcapcmp.digest(want))
            # Unpacking again onto the same name: error, nothing changed.
            r = tapwire("snapshot", "unpack", pack, "--data-dir", other, check=False)
            self.assert_cli_error(r, "already exists")
            self.assertEqual(listing(other / "snapshots"), ["frozen"])
            # A file that is not a pack; a truncated pack.
            junk = L.dir / "junk.tar.zst"
            junk.write_bytes(b"GIF89a not a tar at all" * 100)
            r = tapwire("snapshot", "unpack", junk, "--data-dir", other, "--name", "j", check=False)
            self.assert_cli_error(r, "not a snapshot pack")
            cut = L.dir / "cut.tar.zst"
            cut.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
            r = tapwire("snapshot", "unpack", cut, "--data-dir", other, "--name", "c", check=False)
            self.assert_cli_error(r, "snapshot pack")
            self.assertEqual(listing(other / "snapshots"), ["frozen"])

            # A flipped byte: verify fails and names the file.
            victim = snap / files[0]
            os.chmod(victim, 0o640)
            with open(victim, "r+b") as fh:
                fh.seek(4096 + 100)
                b = fh.read(1)
                fh.seek(4096 + 100)
                fh.write(bytes([b[0] ^ 0x20]))
            r = tapwire("snapshot", "verify", "frozen", "--data-dir", data, check=False)
            self.assertNotEqual(r.returncode, 0, r.stdout)
            self.assertIn(files[0], r.stderr)
            self.assertIn("sha256 mismatch", r.stderr)
            r = tapwire("snapshot", "pack", "frozen", "-o", L.dir / "bad.tar.zst", "--data-dir", data, check=False)
            self.assert_cli_error(r, "corrupt")
            self.assertFalse((L.dir / "bad.tar.zst").exists())

            tapwire("snapshot", "delete", "frozen", "--data-dir", data)
            self.assertEqual(listing(data / "snapshots"), [])

            rc = sensor.stop()
            self.assertEqual(rc, 0, sensor.output()[-3000:])
            print(f"snapshots: {len(files)} segment files survived the ring wrapping; verify, pack/unpack, "
                  f"flipped byte and bad inputs checked")

    def test_open_segment_is_sealed_by_the_running_sensor(self):
        """With no rotation by age, the data is in the sensor's open segment:
        create asks the sensor (control socket) to rotate it."""
        with lab.Lab(dnsmasq=False) as L:
            data = L.dir / "data"
            sensor = L.start_sensor(data, extra=["--segment-max-age", "3600"])
            r = L.curl(*[L.url("/f/10k.bin")] * 3)
            self.assertEqual(r.stdout.split()[0::2], ["200"] * 3, r.stdout)
            time.sleep(1.5)
            ring = sorted((data / "segments").glob("*.twseg"))
            self.assertTrue(ring)
            state = lambda p: int.from_bytes(p.read_bytes()[48:52], "little")  # noqa: E731 (FORMAT.md: 1 open, 2 sealed)
            self.assertEqual(state(ring[-1]), 1, "expected the sensor's segment to be open")
            r = tapwire("snapshot", "create", "--name", "live", "--data-dir", data)
            lab.log(r.stdout.strip())
            self.assertEqual(state(ring[-1]), 2, "the open segment was not sealed")
            tapwire("snapshot", "verify", "live", "--data-dir", data)
            out = L.dir / "live.pcapng"
            lab.export_pcap(data / "snapshots" / "live", out)
            got = pcapcmp.read_capture(out)
            self.assertTrue(any(L.file_bytes["10k.bin"] in pcapcmp.stream_bytes(got, k) for k in got.tcp))
            # The sensor goes on capturing into a new segment.
            L.curl(L.url("/f/100b.bin"))
            time.sleep(1.5)
            self.assertTrue(sensor.alive(), sensor.output()[-2000:])
            self.assertGreater(len(list((data / "segments").glob("*.twseg"))), len(ring))
            self.assertEqual(sensor.stop(), 0, sensor.output()[-3000:])


if __name__ == "__main__":
    lab.require()
    unittest.main()
