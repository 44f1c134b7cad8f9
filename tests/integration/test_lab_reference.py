#!/usr/bin/env python3
"""The lab checks itself: tcpdump on the server end and on the client end of
the veth must see byte-identical TCP streams per flow and direction and the
same UDP datagrams, for the same traffic the equivalence test makes. If this
fails, the lab or the comparison is broken, not the sensor. Needs root and
netns, not the tapwire binaries."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
import pcapcmp  # noqa: E402


class LabReference(unittest.TestCase):
    def test_both_veth_ends_agree(self):
        with lab.Lab() as L:
            a = L.start_tcpdump(L.srv_veth, L.dir / "srv.pcap")
            b = L.start_tcpdump(L.cli_veth, L.dir / "cli.pcap")
            did = L.mixed_traffic(wrk_seconds=2, wrk_delay_ms=1)
            time.sleep(1)
            a.stop()
            b.stop()
            self.assertEqual((a.kernel_drops, b.kernel_drops), (0, 0), "tcpdump dropped packets")
            ca, cb = pcapcmp.read_capture(a.out), pcapcmp.read_capture(b.out)
            cmp = pcapcmp.compare(ca, cb)
            print(f"lab reference: {cmp.summary()}")
            self.assertEqual(cmp.problems, [], "\n".join(cmp.problems))
            self.assertEqual(cmp.tcp_flows_ref, did["tcp_v4"] + did["tcp_v6"], did)
            self.assertEqual(cmp.udp_datagrams, 2 * (did["udp_v4"] + did["udp_v6"]))
            blob = b"".join(pcapcmp.stream_bytes(ca, k) for k in ca.tcp if k[1] == 80)
            for name, data in L.file_bytes.items():
                self.assertIn(data, blob, f"{name} not in the server's responses")
            # the comparison does catch a difference: drop one payload chunk
            k = max(cb.tcp, key=lambda k: len(cb.tcp[k].chunks))
            del cb.tcp[k].chunks[len(cb.tcp[k].chunks) // 2]
            self.assertTrue(pcapcmp.compare(ca, cb).problems, "a missing segment went unnoticed")


if __name__ == "__main__":
    lab.require(binaries=False)
    unittest.main()
