#!/usr/bin/env python3
"""Done means (Kafka dissection): `tapwire-dissector --pcap` on captures of
real Kafka clients and brokers (tests/fixtures/kafka: Produce v2 and v9,
Fetch v12, JoinGroup v7, ApiVersions v3, from the DeepFlow project's test
data) gives the calls tshark finds, call for call: API name, version,
correlation id, client id, topics and partitions where tshark decodes them
(tshark 4.0 does not decode Produce v9 or Fetch v12 bodies), and the error
code of the response; the same on a synthetic capture of 400 calls over four
connections built from those messages (kafkaref.synth_bench_pcap); and
`--dissectors http` gives no kafka record.

Needs no namespaces; needs tshark and the built dissector: skips with 77
otherwise (fails under CI=true).
"""

import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kafkaref  # noqa: E402


class KafkaDissection(unittest.TestCase):
    def test_fixtures_equal_tshark(self):
        """Each real capture: tapwire's calls equal tshark's Kafka PDUs."""
        for name, port in kafkaref.FIXTURES.items():
            with self.subTest(capture=name):
                pcap = kafkaref.FIXTURE_DIR / name
                calls = kafkaref.tapwire_calls(pcap)
                n, bad = kafkaref.compare(pcap, port, calls)
                self.assertEqual(bad, [], f"{name}: {len(bad)} differences")
                self.assertEqual(n, 1, f"{name}: tshark found {n} requests")
                self.assertEqual(len(calls), 1)
                c = calls[0]
                self.assertIsNotNone(c.get("response"), f"{name}: no response")
                self.assertEqual(c.get("flags", []), [], f"{name}: flagged")

    def test_record_fields(self):
        """The fields tshark cannot give for flexible versions, read from the bytes by hand."""
        calls = kafkaref.tapwire_calls(kafkaref.FIXTURE_DIR / "00-produce-v9.pcap")
        q = calls[0]["request"]
        self.assertEqual(q["topics"], [{"name": "zqy-test", "partitions": [0]}])
        self.assertEqual(calls[0]["response"]["error_code"], "NONE")
        calls = kafkaref.tapwire_calls(kafkaref.FIXTURE_DIR / "11-join-group-v7.pcap")
        self.assertEqual(calls[0]["request"]["group_id"], "zzzz12")
        self.assertEqual(calls[0]["response"]["error_code"], "UNKNOWN_SERVER_ERROR")

    def test_synthetic_bench_capture(self):
        """400 calls over four connections: every one paired and equal to tshark's."""
        with tempfile.TemporaryDirectory(prefix="tw-kafka-") as d:
            pcap = Path(d) / "bench.pcap"
            port = int(kafkaref.synth_bench_pcap(pcap, 400))
            calls = kafkaref.tapwire_calls(pcap)
            self.assertEqual(len(calls), 400)
            self.assertTrue(all(c.get("response") for c in calls), "unpaired calls")
            self.assertEqual([c for c in calls if c.get("flags")], [])
            n, bad = kafkaref.compare(pcap, port, calls)
            self.assertEqual(n, 400)
            self.assertEqual(bad[:20], [], f"{len(bad)} differences")
            other = kafkaref.tapwire_calls(pcap, ["--dissectors", "http"])
            self.assertEqual(other, [], "--dissectors http gave kafka records")


if __name__ == "__main__":
    kafkaref.require()
    unittest.main()
