#!/usr/bin/env python3
"""Done means (AMQP 0-9-1 dissection): a real RabbitMQ broker in the lab
(amqpref.start_rabbit), the amqp-tools clients (librabbitmq) in the client
namespace, tcpdump on the server veth, and `tapwire-dissector --pcap` on that
file gives the `amqp` records that tshark's AMQP frames of the same file
give, method for method.

Traffic: amqp-declare-queue (durable); amqp-publish of several messages on
one connection (-l) with content-type, persistent delivery mode and a
header, to the default exchange; one to a named exchange (amq.direct);
amqp-get (get-ok with content) and amqp-get of an empty queue (get-empty);
amqp-consume -c 3 (qos, consume, deliveries with content, acks); an
amqp-publish to a missing exchange (the server's channel.close 404
NOT_FOUND crossing the client's own close); a login to a missing vhost
(connection.close 530 NOT_ALLOWED). Every connection opens and closes with
the connection.* and channel.* handshakes.

tshark is the reference for every method frame: connection (client port),
direction, channel, method (class and method ids → name), exchange,
routing key, queue, reply code and text, delivery tag, message and consumer
counts, and for content the body bytes (body frames joined), body size,
content-type and delivery-mode. From tapwire each method appears in exactly
one record, as the request or the response (a channel.close that answers a
waiting request appears there too, as its response); pairs are on one
channel, the -ok after its request; the summary columns (method, path,
status) follow docs/CALL_RECORD.md; no record is flagged.

Needs root, netns, tcpdump, tshark, rabbitmq-server, amqp-tools and the
built dissector; skips with 77 otherwise (fails under CI=true). TW_LAB_KEEP=1
keeps the capture and outputs.
"""

import base64
import collections
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import amqpref  # noqa: E402
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

QUEUE = "tw-jobs"
PUBLISHED = ["first message", "second: Grüße ✓", "third " + "x" * 300]

NAMES = {}  # (class, method) -> name, from the dissector's own table as docs list it
for cls, cname, methods in (
        (10, "connection", {10: "start", 11: "start-ok", 20: "secure", 21: "secure-ok", 30: "tune", 31: "tune-ok",
                            40: "open", 41: "open-ok", 50: "close", 51: "close-ok", 60: "blocked", 61: "unblocked"}),
        (20, "channel", {10: "open", 11: "open-ok", 20: "flow", 21: "flow-ok", 40: "close", 41: "close-ok"}),
        (40, "exchange", {10: "declare", 11: "declare-ok", 20: "delete", 21: "delete-ok", 30: "bind", 31: "bind-ok",
                          40: "unbind", 51: "unbind-ok"}),
        (50, "queue", {10: "declare", 11: "declare-ok", 20: "bind", 21: "bind-ok", 30: "purge", 31: "purge-ok",
                       40: "delete", 41: "delete-ok", 50: "unbind", 51: "unbind-ok"}),
        (60, "basic", {10: "qos", 11: "qos-ok", 20: "consume", 21: "consume-ok", 30: "cancel", 31: "cancel-ok",
                       40: "publish", 50: "return", 60: "deliver", 70: "get", 71: "get-ok", 72: "get-empty",
                       80: "ack", 90: "reject", 100: "recover-async", 110: "recover", 111: "recover-ok",
                       120: "nack"}),
        (85, "confirm", {10: "select", 11: "select-ok"}),
        (90, "tx", {10: "select", 11: "select-ok", 20: "commit", 21: "commit-ok", 30: "rollback",
                    31: "rollback-ok"})):
    for mid, mname in methods.items():
        NAMES[(cls, mid)] = f"{cname}.{mname}"

# tshark argument name → tapwire field name (the same but for these)
COMPARED_ARGS = ("exchange", "routing_key", "queue", "reply_code", "reply_text", "delivery_tag", "message_count",
                 "consumer_count", "consumer_tag", "channel_max", "frame_max", "heartbeat")


def require() -> None:
    lab.require(binaries=False, tools=("ip", "tcpdump", "tshark"))
    amqpref.require_tools()
    if not os.access(ref.dissector_bin(), os.X_OK):
        msg = f"cannot run: missing binary {ref.dissector_bin()} (build first)"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def body_of(msg: dict) -> bytes | None:
    if "body" not in msg:
        return b"" if "body_size" in msg else None
    if msg.get("body_encoding") == "base64":
        return base64.b64decode(msg["body"])
    return msg["body"].encode()


class AmqpEquivalence(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.L = lab.Lab(nginx=False, dnsmasq=False).__enter__()
        try:
            L = cls.L
            t0 = time.monotonic()
            cls.port = amqpref.start_rabbit(L)
            lab.log(f"broker up in {time.monotonic() - t0:.1f}s")
            cls.pcap = L.dir / "amqp.pcap"
            tcpd = L.start_tcpdump(L.srv_veth, cls.pcap)
            u = amqpref.url(L, cls.port)
            run = lambda cmd, **kw: amqpref.amqp(L, cmd, **kw)  # noqa: E731
            run(["amqp-declare-queue", "-u", u, "-d", "-q", QUEUE])
            run(["amqp-publish", "-u", u, "-r", QUEUE, "-l", "-p", "-C", "text/plain", "-H", "trace: abc"],
                stdin="".join(m + "\n" for m in PUBLISHED))
            run(["amqp-publish", "-u", u, "-e", "amq.direct", "-r", "nowhere", "-b", "to a named exchange"])
            cls.got1 = run(["amqp-get", "-u", u, "-q", QUEUE]).stdout
            cls.consumed = run(["amqp-consume", "-u", u, "-q", QUEUE, "-c", "2", "cat"], timeout=30).stdout
            cls.empty = run(["amqp-get", "-u", u, "-q", QUEUE], check=False)
            cls.missing = run(["amqp-publish", "-u", u, "-e", "tw-missing", "-r", "x", "-b", "lost"], check=False)
            cls.badvhost = run(["amqp-get", "-u", u + "/tw-no-vhost", "-q", QUEUE], check=False)
            cls.cap = ref.stop_capture(tcpd)
            cls.jsonl = L.dir / "amqp.jsonl"
            cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl], timeout=120)
            cls.calls = [c for c in ref.read_jsonl(cls.jsonl) if c.get("protocol") == "amqp"] \
                if cls.jsonl.exists() else []
            cls.ref = amqpref.tshark_methods(cls.pcap, cls.port)
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def where(self) -> str:
        return f"\n(pcap {self.pcap}; TW_LAB_KEEP=1 keeps it)"

    def test_00_traffic(self):
        self.assertTrue(ref.capture_complete(self.cap), f"capture incomplete: {self.cap}")
        self.assertEqual(self.dis["rc"], 0, self.dis["stderr"][-2000:])
        self.assertGreater(len(self.ref), 100, "tshark's AMQP methods")
        # the bodies as sent: amqp-publish -l takes each line with its newline
        self.assertEqual(self.got1, PUBLISHED[0] + "\n")
        self.assertEqual(self.consumed, PUBLISHED[1] + "\n" + PUBLISHED[2] + "\n")
        self.assertNotEqual(self.empty.returncode, 0)
        self.assertNotEqual(self.missing.returncode, 0)
        self.assertIn("404", self.missing.stderr)
        self.assertIn("530", self.badvhost.stderr)
        names = collections.Counter(NAMES.get((m["class"], m["method"]), "?") for m in self.ref)
        for n in ("queue.declare", "basic.publish", "basic.get-ok", "basic.get-empty", "basic.deliver", "basic.ack",
                  "basic.qos", "basic.consume", "channel.close", "connection.close"):
            self.assertIn(n, names, f"tshark saw no {n}{self.where()}")

    def test_methods_match_tshark(self):
        """Every method tshark sees is in one record (request or response), with the same fields."""
        # tapwire's messages: (conn, sender is client, channel, method) in record order, each once.
        got = collections.defaultdict(list)
        for c in self.calls:
            conn = c["src"]["port"]
            for side in ("request", "response"):
                msg = c.get(side)
                if not msg:
                    continue
                # A close that answers a waiting request is also a call of its own: count it there.
                if side == "response" and msg["method"].endswith(".close") and c["request"] and \
                        not c["request"]["method"].endswith(".close"):
                    continue
                got[(conn, msg["sender"] == "client", msg["channel"], msg["method"])].append(msg)
        problems = []
        for m in self.ref:
            name = NAMES.get((m["class"], m["method"]), f"{m['class']}.{m['method']}")
            key = (m["conn"], m["client"], m["channel"], name)
            if not got.get(key):
                problems.append(f"tshark {key}: no tapwire record")
                continue
            msg = got[key].pop(0)
            for a in COMPARED_ARGS:
                if a in m["args"] and str(msg.get(a)) != str(m["args"][a]):
                    problems.append(f"{key} {a}: tshark {m['args'][a]!r}, tapwire {msg.get(a)!r}")
            if m["body"] is not None:
                if body_of(msg) != m["body"]:
                    problems.append(f"{key} body: tshark {m['body'][:80]!r}, tapwire {body_of(msg)!r}")
                if msg.get("body_size") != m["body_size"]:
                    problems.append(f"{key} body_size: tshark {m['body_size']}, tapwire {msg.get('body_size')}")
                props = msg.get("properties", {})
                for p in ("content_type", "delivery_mode"):
                    if p in (m["props"] or {}) and str(props.get(p)) != str(m["props"][p]):
                        problems.append(f"{key} {p}: tshark {m['props'][p]!r}, tapwire {props.get(p)!r}")
        left = {k: v for k, v in got.items() if v}
        for k, v in left.items():
            problems.append(f"tapwire {k}: {len(v)} more than tshark")
        self.assertEqual(problems, [], "\n".join(problems[:40]) + self.where())

    def test_pairs_and_summary(self):
        problems = []
        by_method = collections.Counter()
        for c in self.calls:
            rq, rs = c.get("request"), c.get("response")
            main = rq or rs
            by_method[main["method"]] += 1
            # librabbitmq leaves without the close-ok of the server's connection.close 530: that call
            # is closed by the connection, flagged so
            unanswered = main["method"] == "connection.close" and main["sender"] == "server" and not rs
            if c["flags"] != (["closed"] if unanswered else []):
                problems.append(f"{main['method']} flagged {c['flags']}")
            if rq and rs:
                if rq["channel"] != rs["channel"] and not rs["method"].startswith("connection."):
                    problems.append(f"{rq['method']} paired across channels")
                if not (rs["method"].startswith(rq["method"]) or rs["method"].endswith(".close")):
                    problems.append(f"{rq['method']} paired with {rs['method']}")
            if main["method"] == "basic.publish":
                self.assertIsNone(rs)
                if main["exchange"] == "amq.direct":
                    self.assertEqual(c["request"]["routing_key"], "nowhere")
            if main["method"] in ("basic.deliver",):
                self.assertIsNone(rq)
        for m in ("connection.start", "connection.tune", "connection.open", "channel.open", "queue.declare",
                  "basic.publish", "basic.get", "basic.consume", "basic.deliver", "basic.ack", "channel.close",
                  "connection.close"):
            self.assertIn(m, by_method, f"no {m} call")
        self.assertEqual(by_method["basic.publish"], len(PUBLISHED) + 2)
        self.assertEqual(by_method["basic.deliver"], 2)
        self.assertEqual(problems, [], "\n".join(problems[:30]) + self.where())

    def test_errors_and_status(self):
        closes = [c for c in self.calls if (c["request"] or c["response"])["method"] == "channel.close"]
        codes = sorted({(c["request"] or c["response"])["reply_code"] for c in closes})
        self.assertEqual(codes, [200, 404], self.where())
        err = [c for c in closes if (c["request"] or c["response"])["reply_code"] == 404]
        self.assertEqual(len(err), 1)
        self.assertIn("NOT_FOUND", (err[0]["request"] or err[0]["response"])["reply_text"])
        conn_err = [c for c in self.calls if c["request"] and c["request"]["method"] == "connection.open"
                    and c["response"] and c["response"]["method"] == "connection.close"]
        self.assertEqual(len(conn_err), 1, "connection.open answered by connection.close 530")
        self.assertEqual(conn_err[0]["response"]["reply_code"], 530)
        gets = [c for c in self.calls if c["request"] and c["request"]["method"] == "basic.get"]
        self.assertEqual(sorted(c["response"]["method"] for c in gets), ["basic.get-empty", "basic.get-ok"])
        declare = [c for c in self.calls if c["request"] and c["request"]["method"] == "queue.declare"]
        self.assertEqual(declare[0]["response"]["queue"], QUEUE)
        self.assertEqual(declare[0]["request"]["durable"], True)
        # Credentials never in a record.
        for c in self.calls:
            self.assertNotIn("guest\\u0000", str(c))
            if c["response"] and c["response"]["method"] == "connection.start-ok":
                self.assertNotIn("response", c["response"])
                self.assertGreater(c["response"]["response_size"], 0)


if __name__ == "__main__":
    require()
    unittest.main()
