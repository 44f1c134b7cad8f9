#!/usr/bin/env python3
"""Compares `tapwire flows --pcap FILE --json` with tshark on the same file.

tshark's side: per TCP stream (tcp.stream) and UDP conversation, per direction,
frames and bytes (frame.len: what `tshark -z conv,tcp/udp` counts) and the
frames marked tcp.analysis.retransmission, .fast_retransmission,
.spurious_retransmission, .out_of_order, .duplicate_ack, .lost_segment,
.zero_window, .keep_alive; tcp.analysis.initial_rtt and tcp.completeness.

usage: flows-vs-tshark.py TAPWIRE PCAP   (exit 1 on any difference)
"""
import collections
import json
import subprocess
import sys

FIELDS = ["frame.time_epoch", "frame.len", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "tcp.stream", "udp.stream",
          "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "tcp.len", "udp.length",
          "tcp.analysis.retransmission", "tcp.analysis.fast_retransmission", "tcp.analysis.spurious_retransmission",
          "tcp.analysis.out_of_order", "tcp.analysis.duplicate_ack", "tcp.analysis.lost_segment",
          "tcp.analysis.zero_window", "tcp.analysis.keep_alive", "tcp.analysis.initial_rtt", "tcp.completeness",
          "tcp.flags.reset", "icmp.type", "icmpv6.type"]
COUNTS = {"retransmissions": "tcp.analysis.retransmission", "fast_retransmissions": "tcp.analysis.fast_retransmission",
          "spurious_retransmissions": "tcp.analysis.spurious_retransmission", "out_of_order": "tcp.analysis.out_of_order",
          "dup_acks": "tcp.analysis.duplicate_ack", "lost_segments": "tcp.analysis.lost_segment",
          "zero_windows": "tcp.analysis.zero_window", "keep_alives": "tcp.analysis.keep_alive"}


def tshark(pcap):
    cmd = ["tshark", "-2", "-r", pcap, "-T", "fields", "-E", "occurrence=f", "-E", "separator=\t"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    streams = collections.OrderedDict()
    for line in out.splitlines():
        v = dict(zip(FIELDS, line.split("\t")))
        if v.get("icmp.type") or v.get("icmpv6.type"):
            continue  # an ICMP error quoting a TCP/UDP header
        src, dst = v["ip.src"] or v["ipv6.src"], v["ip.dst"] or v["ipv6.dst"]
        if v["tcp.stream"]:
            key = ("tcp", int(v["tcp.stream"]))
            sp, dp = int(v["tcp.srcport"]), int(v["tcp.dstport"])
        elif v["udp.stream"]:
            key = ("udp", int(v["udp.stream"]))
            sp, dp = int(v["udp.srcport"]), int(v["udp.dstport"])
        else:
            continue
        s = streams.setdefault(key, {"proto": key[0], "dirs": {}, "rtt": None, "completeness": 0,
                                     "first": float(v["frame.time_epoch"])})
        d = s["dirs"].setdefault((src, sp), collections.Counter())
        d["packets"] += 1
        d["bytes"] += int(v["frame.len"])
        if key[0] == "tcp":
            d["payload_bytes"] += int(v["tcp.len"] or 0)
            for name, field in COUNTS.items():
                if v[field]:
                    d[name] += 1
            if v["tcp.flags.reset"] in ("1", "True"):
                d["resets"] += 1
            if v["tcp.analysis.initial_rtt"]:
                s["rtt"] = float(v["tcp.analysis.initial_rtt"])
            if v["tcp.completeness"]:
                s["completeness"] = int(v["tcp.completeness"], 0)
        else:
            d["payload_bytes"] += max(int(v["udp.length"] or 8) - 8, 0)
        s["ends"] = s.get("ends") or ((src, sp), (dst, dp))
    return list(streams.values())


def main():
    tapwire, pcap = sys.argv[1], sys.argv[2]
    out = subprocess.run([tapwire, "flows", "--pcap", pcap, "--json"], capture_output=True, text=True, check=True).stdout
    flows = [json.loads(l) for l in out.splitlines() if l.strip()]
    by_ends = collections.defaultdict(list)
    for f in flows:
        ends = frozenset([(f["client"]["ip"], f["client"]["port"]), (f["server"]["ip"], f["server"]["port"])])
        by_ends[(f["protocol"], ends)].append(f)
    for v in by_ends.values():
        v.sort(key=lambda f: f["first_seen"])
    diffs, n = 0, collections.Counter()
    for s in tshark(pcap):
        ends = frozenset(s["dirs"].keys()) | frozenset(s["ends"])
        cand = by_ends.get((s["proto"], ends))
        if not cand:
            print(f"missing flow for tshark {s['proto']} stream {s['ends']}")
            diffs += 1
            continue
        f = cand.pop(0)
        n[s["proto"]] += 1
        for side, dname in ((f["client"], "client_to_server"), (f["server"], "server_to_client")):
            t = s["dirs"].get((side["ip"], side["port"]), collections.Counter())
            for k in ["packets", "bytes", "payload_bytes"] + (list(COUNTS) + ["resets"] if s["proto"] == "tcp" else []):
                n["values"] += 1
                if f[dname].get(k, 0) != t.get(k, 0):
                    print(f"{f['id']} {s['ends']} {dname}.{k}: tapwire {f[dname].get(k, 0)} tshark {t.get(k, 0)}")
                    diffs += 1
        if s["proto"] == "tcp":
            rtt = f.get("handshake_rtt_us")
            trtt = None if s["rtt"] is None else s["rtt"] * 1e6
            if (rtt is None) != (trtt is None) or (rtt is not None and abs(rtt - trtt) > 1.0):
                print(f"{f['id']} {s['ends']} handshake_rtt_us: tapwire {rtt} tshark {trtt}")
                diffs += 1
            if f["completeness"] != s["completeness"]:
                print(f"{f['id']} {s['ends']} completeness: tapwire {f['completeness']} tshark {s['completeness']}")
                diffs += 1
    extra = sum(len(v) for v in by_ends.values())
    if extra:
        print(f"{extra} tapwire flows without a tshark stream")
        diffs += extra
    print(f"{pcap}: {n['tcp']} tcp streams, {n['udp']} udp conversations, {n['values']} counters compared, "
          f"{diffs} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
