#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets, tests/fuzz/corpus/NAME/, from
real bytes: the HTTP and DNS fixtures (tests/fixtures), configs/tapwire.yaml,
the workload objects of docs/IDENTITY.md, Kubernetes API answers shaped like
the real API's, and segment files captured by tapwire-sensor
(tests/fuzz/corpus/segment_reader/sensor-*.twseg, kept as they are; --capture
makes them again, as root, with build/tapwire-sensor in two network
namespaces). Identity segments are written here byte by byte as
shm/FORMAT.md describes them.

Usage: make_seeds.py [--capture]     (rewrites every generated seed; deterministic)
Each target's input layout is described at the top of tests/fuzz/NAME_fuzz.cpp.
"""
import glob
import json
import os
import shutil
import struct
import zlib
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def out_dir(name, keep=()):
    """The corpus folder of a target, emptied but for the files named in keep."""
    d = os.path.join(CORPUS, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if not any(f.startswith(k) for k in keep):
            os.remove(os.path.join(d, f))
    return d


def write(d, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ----------------------------------------------------------------- CRC-32C --

def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


CRC_TABLE = _crc_table()


def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = CRC_TABLE[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # shm/FORMAT.md

# ---------------------------------------------------------------- segments --

SEG_MAGIC = b"TWSEG\r\n\x1a"
REC_PACKET, REC_IFACE, REC_LOSS, REC_SOCKET, REC_PROCESS, REC_CGROUP, REC_WORKLOAD, REC_DUMP = range(1, 9)
T0 = 1_764_513_000_000_000_000  # a CLOCK_REALTIME in ns


def record(rtype, body):
    pad = (-len(body)) % 8
    return struct.pack("<IHHII", len(body), rtype, 0, crc32c(body), 0) + body + b"\0" * pad


def segment(records, seq=0, sealed=True, capacity=None, committed=None):
    area = b"".join(records)
    capacity = capacity if capacity is not None else len(area)
    committed = committed if committed is not None else len(area)
    hdr = struct.pack("<8sIIQQQQIIQQQQII", SEG_MAGIC, 1, 4096, capacity, seq, T0, T0 + 10**9 if sealed else 0,
                      2 if sealed else 1, 4242, committed, len(records), T0, T0 + 10**9, 1, 0)
    return hdr + b"\0" * (4096 - len(hdr)) + area


def rec8(rtype, body, skip=False):
    """A version-2 record (tw_seg_rec8): the capture rings' format."""
    pad = (-len(body)) % 8
    if skip:
        return struct.pack("<IHH", len(body) | 0x80000000, 0, 0) + body
    return struct.pack("<IHH", len(body), rtype, 0) + body + b"\0" * pad


def pkt(ts, ifindex, payload, seq=0):
    """A TW_REC_PACKET body: struct tw_pkt (80 bytes) and the payload."""
    return struct.pack("<QIIIIII16s16sHHHHHBBBBBB", ts, ifindex, len(payload), 0, len(payload), seq, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 40000, 80, 512, 0, 0, 1, 4, 6, 0x18, 64,
                       0xff) + payload


def stream_segment(regions, seq=0, sealed=True, watermark=None, block=4096):
    """A version-2 segment: `regions` is a list of (stream id, capacity, record bytes); each
    region's records start at its offset 0, with block checksums over what is committed."""
    table_off = 128 + 64 * len(regions)
    crc_offs, off = [], table_off
    for _, cap, _ in regions:
        crc_offs.append(off)
        off += cap // block * 8
    header_size = (off + block - 1) // block * block
    file_offs, end = [], header_size
    for _, cap, _ in regions:
        file_offs.append(end)
        end += cap
    total = sum(len(r) for _, _, r in regions)
    n = sum(1 for _ in regions)
    hdr = struct.pack("<8sIIQQQQIIQQQQII", SEG_MAGIC, 2, header_size, end - header_size, seq, T0,
                      T0 + 10**9 if sealed else 0, 2 if sealed else 1, 4242, total, 0, T0, T0 + 10**9, 1, 0)
    hdr += struct.pack("<QII16s", watermark if watermark is not None else T0 + 10**9, n, block, b"")
    head = bytearray(header_size)
    head[:len(hdr)] = hdr
    body = bytearray()
    for i, (stream, cap, recs) in enumerate(regions):
        struct.pack_into("<QQQQQQIIQ", head, 128 + 64 * i, file_offs[i], cap, crc_offs[i], 0, len(recs), 0,
                         stream, 0, 0)
        for b in range(0, len(recs), block):
            chunk = recs[b:b + block]
            struct.pack_into("<II", head, crc_offs[i] + b // block * 8, crc32c(chunk), len(chunk))
        body += recs + b"\0" * (cap - len(recs))
    return bytes(head) + bytes(body)


def sock_event(ts, cookie, cgroup, tgid, typ, l4, laddr, lport, raddr, rport, comm, flags=0):
    def a(ip):
        return bytes(ip) + b"\0" * (16 - len(ip))
    return struct.pack("<QQQQIIBBBBHH16s16s16s", ts, cookie, cgroup, 0xfeed, tgid, tgid, typ, l4, 4, flags,
                       lport, rport, a(laddr), a(raddr), comm.encode())


def process(ts, cgroup, tgid, ppid, typ, comm, exe, flags=0):
    exe = exe.encode()
    return struct.pack("<QQIIBBHI16s", ts, cgroup, tgid, ppid, typ, flags, len(exe), 0, comm.encode()) + exe


def cgroup(ts, cid, path, flags=0):
    path = path.encode()
    return struct.pack("<QQHB5s", ts, cid, len(path), flags, b"") + path


def workload(ts, obj, flags=0):
    return struct.pack("<QB7s", ts, flags, b"") + json.dumps(obj, separators=(",", ":")).encode()


def dump(ts, phase, n=0):
    return struct.pack("<QIIQ", ts, phase, 0, n)


POD_UID = "5b9c3e2a-6f1d-4c2b-9a7e-0d1f2e3c4b5a"
CID = "3f2a" * 16
POD = {"v": 1, "kind": "Pod", "op": "upsert", "uid": POD_UID, "namespace": "shop", "name": "api-7d9c-x2x",
       "node": "node-1", "hostNetwork": False, "ips": ["10.244.1.7"], "phase": "Running",
       "labels": {"app": "api", "pod-template-hash": "7d9c"}, "owner": {"kind": "Deployment", "name": "api"},
       "containers": [{"name": "api", "id": CID, "runtime": "containerd"}]}
WORKLOADS = [
    {"v": 1, "kind": "Self", "node": "node-1", "addresses": ["10.0.0.5", "fd00::5"]},
    POD,
    {"v": 1, "kind": "Pod", "op": "delete", "uid": POD_UID, "namespace": "shop", "name": "api-7d9c-x2x"},
    {"v": 1, "kind": "Service", "op": "upsert", "uid": "0e5b1c2d-1111-4222-8333-944455566677", "namespace": "shop",
     "name": "api", "type": "ClusterIP", "clusterIPs": ["10.96.0.12"],
     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    {"v": 1, "kind": "EndpointSlice", "op": "upsert", "uid": "7a7a7a7a-2222-4333-8444-955566677788",
     "namespace": "shop", "name": "api-abcde", "service": "api", "addresses": ["10.244.1.7"],
     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
    {"v": 1, "kind": "Node", "op": "upsert", "uid": "9c9c9c9c-3333-4444-8555-a66677788899", "name": "node-1",
     "addresses": ["10.0.0.5"]},
    {"v": 1, "kind": "Sync", "resource": "pods", "state": "synced"},
    {"v": 1, "kind": "Sync", "resource": "pods", "state": "lost",
     "error": "401 Unauthorized: check the service account token"},
    {"v": 1, "kind": "Stats", "requests": {"pods/list": 1, "pods/watch": 3}, "events": 120, "relists": 0},
]
CGROUP_PATH = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope"

# (type, body) of an identity stream: a state dump, then events.
IDENTITY = [
    (REC_DUMP, dump(T0, 1)),
    (REC_WORKLOAD, workload(T0, WORKLOADS[0], 1)),
    (REC_CGROUP, cgroup(T0, 4242, CGROUP_PATH, 1)),
    (REC_CGROUP, cgroup(T0, 7, "/system.slice/sshd.service", 1)),
    (REC_PROCESS, process(T0, 4242, 1234, 1, 5, "api", "/usr/local/bin/api", 1)),
    (REC_SOCKET, sock_event(T0, 99, 4242, 1234, 1, 6, [10, 244, 1, 7], 8080, [0, 0, 0, 0], 0, "api", 0x4 | 0x8)),
] + [(REC_WORKLOAD, workload(T0, w, 1)) for w in WORKLOADS[1:2] + WORKLOADS[3:6]] + [
    (REC_DUMP, dump(T0, 2, 9)),
    (REC_PROCESS, process(T0 + 10**9, 4242, 1300, 1234, 3, "curl", "/usr/bin/curl")),
    (REC_SOCKET, sock_event(T0 + 2 * 10**9, 100, 4242, 1300, 1, 6, [10, 244, 1, 7], 41000, [10, 96, 0, 12], 80,
                            "curl")),
    (REC_SOCKET, sock_event(T0 + 3 * 10**9, 100, 4242, 1300, 2, 6, [10, 244, 1, 7], 41000, [10, 96, 0, 12], 80,
                            "curl")),
    (REC_PROCESS, process(T0 + 4 * 10**9, 4242, 1300, 1234, 4, "curl", "")),
    (REC_WORKLOAD, workload(T0 + 5 * 10**9, WORKLOADS[6])),
    (REC_WORKLOAD, workload(T0 + 6 * 10**9, WORKLOADS[2])),
    (REC_WORKLOAD, workload(T0 + 7 * 10**9, WORKLOADS[8])),
]

# ------------------------------------------------------------ the targets --


def http1():
    d = out_dir("http1")
    for f in sorted(glob.glob(os.path.join(FIXTURES, "http1", "*.req"))):
        base = os.path.basename(f)[:-4]
        req = open(f, "rb").read()
        resp = open(f[:-4] + ".resp", "rb").read()
        head = 0x20 if base == "head" else 0
        # [flags][limits][seed u32][cut u16][stream]
        write(d, base + ".req", bytes([0, 0]) + struct.pack("<IH", 0x12345678, 0) + req)
        write(d, base + ".resp", bytes([1 | head | 16, 0]) + struct.pack("<IH", 0x12345678, 0) + resp)
        write(d, base + ".conv", bytes([2 | 16, 0]) + struct.pack("<IH", 0x9abcdef0, len(req)) + req + resp)
    # small limits, and a lossy stream
    req = open(os.path.join(FIXTURES, "http1", "pipelined.req"), "rb").read()
    write(d, "pipelined.small", bytes([4, 0x55]) + struct.pack("<IH", 7, 0) + req)
    resp = open(os.path.join(FIXTURES, "http1", "gzip_chunked.resp"), "rb").read()
    write(d, "gzip_chunked.gaps", bytes([1 | 8 | 16, 0]) + struct.pack("<IH", 11, 0) + resp)


def dns_messages():
    """(transport, payload) of every DNS message in the fixture, in order."""
    out = []
    for block in open(os.path.join(FIXTURES, "dns", "dig_dnsmasq.txt")).read().split("\n\n"):
        lines = block.strip().split("\n")
        p = [l.split("\t")[1] for l in lines if l.startswith("payload")]
        t = [l.split("\t")[1] for l in lines if l.startswith("transport")]
        if p:
            out.append((t[0], bytes.fromhex(p[0])))
    return out


def dns():
    d = out_dir("dns")
    seen = set()
    tcp = []
    for i, (t, payload) in enumerate(dns_messages()):
        if payload in seen:
            continue
        seen.add(payload)
        # [mode][limits][seed u32][bytes]
        write(d, f"{t}-{i:02d}", bytes([1 if t == "tcp" else 0, 0]) + struct.pack("<I", i * 7919) + payload)
        if t == "tcp":
            tcp.append(payload)
    write(d, "tcp-stream", bytes([1, 0]) + struct.pack("<I", 42) + b"".join(tcp))
    for i, l in enumerate(x for x in open(os.path.join(FIXTURES, "dns", "non_dns.txt")) if not x.startswith("#")):
        if i < 2:
            write(d, f"not-dns-{i}", bytes([i & 1, 0]) + struct.pack("<I", i) + bytes.fromhex(l.split("\t")[-1].strip()))


def tcp_reassembly():
    d = out_dir("tcp_reassembly")
    SYN, FIN, RST, ACK = 2, 1, 4, 16

    def seg(flags=ACK, mode=0, delta=0, ln=100, extra=0, step=1):
        return struct.pack("<BBhHBB", flags, mode, delta, ln, extra, step)

    hdr = lambda l=0, hw=0, isn=1000: struct.pack("<BBI", l, hw, isn)  # noqa: E731
    write(d, "in-order", hdr() + seg(SYN, ln=0) + b"".join(seg(ln=100) for _ in range(5)) + seg(FIN | ACK, ln=0))
    write(d, "out-of-order", hdr() + seg(SYN, ln=0) + seg(delta=200) + seg(delta=-300) + seg(delta=-200) + seg())
    write(d, "retransmit", hdr() + seg(ln=300) + seg(delta=-300, ln=300) + seg(delta=-150, ln=300) + seg(delta=0))
    write(d, "no-syn-keepalive", hdr(isn=0xfffffff0) + seg(ln=0, delta=-1) + seg(ln=40) + seg(ln=40) + seg(ln=40))
    write(d, "truncated-tail", hdr() + seg(mode=16, ln=100, extra=20) + seg(mode=8, ln=60, extra=6) + seg(ln=50))
    write(d, "caps", hdr(l=0x21, hw=3) + seg(delta=500) + seg(delta=500) + seg(delta=500) + seg(step=250) + seg())
    write(d, "rst", hdr() + seg(SYN, ln=0) + seg(ln=10) + seg(RST, ln=0) + seg(delta=5000, ln=10))


def dissector():
    d = out_dir("dissector")
    SYN, FIN, ACK, PSH = 2, 1, 16, 8

    def pkt(flow, payload=b"", tcp_flags=ACK | PSH, delta=0, pflags=0, extra=0, step=1):
        return struct.pack("<BBBhHBB", flow, pflags, tcp_flags, delta, len(payload), extra, step) + payload

    for name in ("get_keepalive", "pipelined", "put_chunked", "head", "websocket", "expect_continue"):
        req = open(os.path.join(FIXTURES, "http1", name + ".req"), "rb").read()
        resp = open(os.path.join(FIXTURES, "http1", name + ".resp"), "rb").read()
        c, s = 0x00, 0x04  # pair 0, port 80; 0x04: server to client
        stream = (pkt(c, tcp_flags=SYN) + pkt(s, tcp_flags=SYN | ACK) + pkt(c, tcp_flags=ACK) +
                  pkt(c, req[:len(req) // 2]) + pkt(c, req[len(req) // 2:]) + pkt(s, resp) +
                  pkt(c, tcp_flags=FIN | ACK) + pkt(s, tcp_flags=FIN | ACK))
        write(d, "http-" + name, bytes([0]) + stream)
    # No handshake, the response first (capture started late), on port 8080.
    req = open(os.path.join(FIXTURES, "http1", "not_found.req"), "rb").read()
    resp = open(os.path.join(FIXTURES, "http1", "not_found.resp"), "rb").read()
    write(d, "http-late", bytes([1]) + pkt(0x45, resp) + pkt(0x41, req) + pkt(0x45, resp, step=0x85))
    udp = [p for t, p in dns_messages() if t == "udp"][:12]
    stream = b"".join(pkt(0x28 | (4 if (p[2] & 0x80) else 0) | (i // 2 % 4), p, tcp_flags=0) for i, p in enumerate(udp))
    write(d, "dns-udp", bytes([0]) + stream)
    tcp = [p for t, p in dns_messages() if t == "tcp"][:4]
    stream = pkt(0x21, tcp_flags=SYN) + pkt(0x25, tcp_flags=SYN | ACK) + b"".join(
        pkt(0x21 | (4 if (p[4] & 0x80) else 0), p) for p in tcp)
    write(d, "dns-tcp", bytes([0]) + stream)


def pcap_source():
    d = out_dir("pcap_source")
    for f in ("capture.pcap", "non_dns.pcap"):
        src = os.path.join(FIXTURES, "dns", f)
        write(d, f, open(src, "rb").read()[:12288])
        if shutil.which("editcap"):  # the same packets as pcapng
            ng = os.path.join(d, f[:-5] + ".pcapng")
            subprocess.run(["editcap", "-F", "pcapng", "-r", src, ng, "1-12"], check=True)
    # Linux cooked v2 and raw IPv6 link types, one UDP DNS query each.
    q = [p for t, p in dns_messages() if t == "udp"][0]
    udp = struct.pack(">HHHH", 40000, 53, 8 + len(q), 0) + q
    ip4 = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([10, 0, 0, 1]),
                      bytes([10, 0, 0, 2])) + udp
    ip6 = struct.pack(">IHBB16s16s", 6 << 28, len(udp), 17, 64, b"\xfd" + b"\0" * 14 + b"\1",
                      b"\xfd" + b"\0" * 14 + b"\2") + udp

    def pcap(linktype, frames):
        b = struct.pack("<IHHiIII", 0xa1b23c4d, 2, 4, 0, 0, 65535, linktype)  # nanosecond pcap
        for i, fr in enumerate(frames):
            b += struct.pack("<IIII", 1764513000 + i, 0, len(fr), len(fr)) + fr
        return b
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 4, 6, b"\x02" * 6 + b"\0\0") + ip4
    write(d, "sll2.pcap", pcap(276, [sll2]))
    write(d, "raw-ipv6.pcap", pcap(101, [ip6]))
    write(d, "vlan.pcap", pcap(1, [b"\x02" * 6 + b"\x04" * 6 + b"\x81\x00\x00\x05\x08\x00" + ip4]))


def segment_reader():
    d = out_dir("segment_reader", keep=("sensor-",))
    recs = [record(t, b) for t, b in IDENTITY]
    write(d, "identity-sealed.twseg", segment(recs))
    # Open, left by a writer that died: capacity beyond the records, CRC fixing on (reserved0 bit 0).
    seg = bytearray(segment(recs[:8], sealed=False, capacity=len(b"".join(recs[:8])) + 4096))
    seg[92] = 1
    write(d, "identity-open.twseg", bytes(seg) + b"\0" * 512)
    # A truncated copy: committed says more than the file holds.
    write(d, "identity-truncated.twseg", segment(recs)[:4096 + 300])
    # Version 2 (per-CPU streams): two CPUs' regions with interleaved packet times, a skip record
    # (the end of a ring), the control region with an interface and a loss record; sealed and open.
    http = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    cpu0 = rec8(1, pkt(T0 + 10, 2, http, 1)) + rec8(0, b"\0" * 40, skip=True) + rec8(1, pkt(T0 + 30, 2, b"", 2))
    cpu1 = rec8(1, pkt(T0 + 20, 2, resp, 9)) + rec8(1, pkt(T0 + 25, 2, b"x" * 300, 10))
    iface = struct.pack("<II16sQ", 2, 0, b"veth0", T0)
    loss = struct.pack("<QIIQ", T0 + 40, 1, 0, 3)
    ctl = rec8(2, iface) + rec8(3, loss)
    regions = [(0, 16384, cpu0), (1, 16384, cpu1), (0xffffffff, 16384, ctl)]
    write(d, "streams-sealed.twseg", stream_segment(regions))
    write(d, "streams-open.twseg", stream_segment(regions, sealed=False, watermark=T0 + 22))


def config():
    d = out_dir("config")
    base = open(os.path.join(ROOT, "configs", "tapwire.yaml")).read()
    write(d, "tapwire.yaml", base)
    write(d, "empty.yaml", "")
    write(d, "filters.yaml", """tap:
  dataDir: /srv/tapwire
  interfaces: [eth0, 'veth.*', '^cali[0-9a-f]+$']
  snaplen: 4Ki
  filters:
    cidrs: {allow: [10.0.0.0/8, "fd00::/8"], deny: [10.1.2.3]}
    ports: {allow: [80, 443, 8080], deny: [22]}
  capture:
    stopped: false
    raw: {storageSize: 4GiB, segmentSize: 64Mi, segmentMaxAge: 30s, ringSize: 16Mi}
    dissection: {stopAfter: 1h30m}
  enabledDissectors: [http]
  dissection: {maxBody: 0, maxHeader: 16Ki}
  metrics: {address: "[::1]:9100"}
  regex: "^api-"
  namespaces: [shop, default]
  excludedNamespaces: [kube-system]
  kubernetes: {enabled: true, kubeconfig: /root/.kube/config}
  identity: {enabled: false, storageSize: 64Mi}
""")
    write(d, "bad-key.yaml", "tap:\n  capture:\n    raw:\n      storagesize: 1Gi\n  pods: [x]\n")
    write(d, "bad-values.yaml", "tap:\n  snaplen: -1\n  filters:\n    ports:\n      allow: [0, 70000]\n")
    write(d, "anchors.yaml", "x: &a {dataDir: /a}\ntap: *a\n")


def control_request():
    d = out_dir("control_request")
    lines = [
        {"cmd": "status"}, {"cmd": "dissection", "action": "enable"}, {"cmd": "dissection", "action": "status"},
        {"cmd": "activity"}, {"cmd": "config", "action": "reload"}, {"cmd": "segment", "action": "rotate"},
        {"cmd": "targets", "action": "get"},
        {"cmd": "targets", "action": "set", "regex": "^api-", "namespaces": ["shop"], "excludedNamespaces": []},
        {"cmd": "identity"}, {"cmd": "throw", "action": "x"}, {"cmd": "status", "action": 1},
    ]
    write(d, "requests", "".join(json.dumps(l) + "\n" for l in lines))
    write(d, "malformed", '\n\r\n{"cmd":1}\n[]\n{"action":"x"}\nnot json\n{"cmd":"status"')
    write(d, "targets-bad", '{"cmd":"targets","action":"set","namespaces":[1,2]}\r\n')


def identity_records():
    d = out_dir("identity_records")

    def entries(items):
        return b"".join(bytes([t]) + struct.pack("<H", len(b)) + b for t, b in items)

    def resolve(l4, a, b, port, peer_port, ts):
        return bytes([0xF0, l4, 0]) + bytes(a) + bytes(b) + struct.pack("<HHQ", port, peer_port, ts)

    pod, svc, node = [10, 244, 1, 7], [10, 96, 0, 12], [10, 0, 0, 5]
    write(d, "stream", bytes([0]) + entries(IDENTITY) + resolve(0, pod, svc, 8080, 0, T0 + 10**9) +
          resolve(0, pod, svc, 41000, 80, T0 + 2 * 10**9) + resolve(0, svc, pod, 80, 41000, T0 + 2 * 10**9) +
          resolve(1, node, pod, 53, 0, T0))
    write(d, "stream-small", bytes([3]) + entries(IDENTITY) + bytes([0xF1]) + struct.pack("<Q", T0 + 10**12) +
          resolve(0, pod, svc, 8080, 0, T0 + 10**12))
    write(d, "bad", bytes([0]) + entries([(4, b"\0" * 10), (5, process(T0, 1, 2, 3, 3, "x", "")[:-1] + b"\xff"),
                                          (9, b"")]))


def workload_object():
    d = out_dir("workload_object")
    for i, w in enumerate(WORKLOADS):
        write(d, f"{i}-{w['kind'].lower()}.json", json.dumps(w, separators=(",", ":")))
    write(d, "pod-lenient.json", '{"v":1,"kind":"Pod","uid":"u","namespace":"n","name":"p","ips":null,"extra":[1,2]}')


def kube_api():
    d = out_dir("kube_api")
    RES = {"pods": 0, "services": 1, "endpointslices": 2, "nodes": 3, "replicasets": 4, "jobs": 5}

    def meta(name, ns, uid, rv, **kw):
        m = {"name": name, "uid": uid, "resourceVersion": rv, "creationTimestamp": "2025-11-30T12:00:00Z",
             "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1"}],
             "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}
        if ns:
            m["namespace"] = ns
        m.update(kw)
        return m

    pod = {"kind": "Pod", "apiVersion": "v1",
           "metadata": meta("api-7d9c5b6f4-x2x9q", "shop", POD_UID, "1201", labels={"app": "api",
                            "pod-template-hash": "7d9c5b6f4"},
                            ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9c5b6f4",
                                              "uid": "aaaaaaaa-1111-4222-8333-444455556666", "controller": True,
                                              "blockOwnerDeletion": True}]),
           "spec": {"nodeName": "node-1", "hostNetwork": False, "containers": [{"name": "api", "image": "api:1"}]},
           "status": {"phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}],
                      "conditions": [{"type": "Ready", "status": "True"}],
                      "containerStatuses": [{"name": "api", "containerID": "containerd://" + CID, "ready": True}],
                      "initContainerStatuses": [{"name": "init", "containerID": "cri-o://" + "ab" * 32}]}}
    svc = {"kind": "Service", "metadata": meta("api", "shop", "0e5b1c2d-1111-4222-8333-944455566677", "1100"),
           "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}
    headless = {"kind": "Service", "metadata": meta("db", "shop", "0e5b1c2d-2222-4222-8333-944455566677", "1101"),
                "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}
    slice_ = {"kind": "EndpointSlice", "addressType": "IPv4",
              "metadata": meta("api-abcde", "shop", "7a7a7a7a-2222-4333-8444-955566677788", "1300",
                               labels={"kubernetes.io/service-name": "api"}),
              "endpoints": [{"addresses": ["10.244.1.7"], "conditions": {"ready": True}, "nodeName": "node-1"}],
              "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
    node = {"kind": "Node", "metadata": meta("node-1", None, "9c9c9c9c-3333-4444-8555-a66677788899", "900"),
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"},
                                     {"type": "Hostname", "address": "node-1"}], "images": [{"names": ["x"]}]}}
    rs = {"kind": "ReplicaSet", "metadata": meta("api-7d9c5b6f4", "shop", "aaaaaaaa-1111-4222-8333-444455556666",
                                                 "800", ownerReferences=[{"kind": "Deployment", "name": "api",
                                                                          "uid": "d", "controller": True}])}
    job = {"kind": "Job", "metadata": meta("backup-28912345", "ops", "bbbbbbbb-1111-4222-8333-444455556666", "801",
                                           ownerReferences=[{"kind": "CronJob", "name": "backup", "uid": "c",
                                                             "controller": True}])}

    def page(kind, items, rv="5000", cont=""):
        m = {"resourceVersion": rv}
        if cont:
            m["continue"] = cont
        return json.dumps({"kind": kind + "List", "apiVersion": "v1", "metadata": m, "items": items})

    def seed(name, mode, res, code, body):
        write(d, name, bytes([mode, RES[res]]) + struct.pack("<H", code) + body.encode())

    seed("list-pods", 0, "pods", 200, page("Pod", [pod], cont="eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"))
    seed("list-services", 0, "services", 200, page("Service", [svc, headless]))
    seed("list-endpointslices", 0, "endpointslices", 200, page("EndpointSlice", [slice_]))
    seed("list-nodes", 0, "nodes", 200, page("Node", [node]))
    seed("list-replicasets", 0, "replicasets", 200, page("ReplicaSet", [rs]))
    seed("list-jobs", 0, "jobs", 200, page("Job", [job]))
    seed("list-empty", 0, "nodes", 200, '{"kind":"NodeList","metadata":{"resourceVersion":"9"},"items":null}')

    def ev(t, o):
        return json.dumps({"type": t, "object": o}) + "\n"
    moved = json.loads(json.dumps(pod))
    moved["status"]["podIPs"] = [{"ip": "10.244.1.8"}]
    bookmark = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "1250", "annotations": {
        "k8s.io/initial-events-end": "true"}}}
    gone = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 1201 (1250)", "reason": "Expired", "code": 410}
    seed("watch-pods", 1, "pods", 200, ev("ADDED", pod) + ev("MODIFIED", moved) + ev("BOOKMARK", bookmark) +
         ev("DELETED", {"kind": "Pod", "metadata": {"uid": POD_UID, "name": "api-7d9c5b6f4-x2x9q",
                                                    "namespace": "shop"}}) + ev("ERROR", gone))
    seed("watch-services", 1, "services", 200, ev("ADDED", svc) + "\n" + ev("DELETED", svc))
    seed("watch-owners", 1, "replicasets", 200, ev("ADDED", rs) + ev("MODIFIED", rs) + ev("DELETED", rs))
    seed("watch-error", 1, "nodes", 200, ev("ADDED", node) + ev("ERROR", dict(gone, code=500, reason="InternalError")))
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": "pods is forbidden: User \"system:serviceaccount:tapwire:tapwire\" cannot list resource "
                         "\"pods\" in API group \"\" at the cluster scope", "reason": "Forbidden", "code": 403}
    seed("error-403", 2, "pods", 403, json.dumps(status))
    seed("error-401", 2, "pods", 401, json.dumps(dict(status, message="Unauthorized", reason="Unauthorized", code=401)))
    seed("error-410", 2, "pods", 410, json.dumps(gone))
    seed("error-502-html", 2, "nodes", 502, "<html><body>502 Bad Gateway</body></html>")


def cgroup_path():
    d = out_dir("cgroup_path")
    uid_ = POD_UID.replace("-", "_")
    paths = [
        CGROUP_PATH,
        f"/kubepods.slice/kubepods-pod{uid_}.slice/crio-{CID}.scope",
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{CID}.scope",
        f"/kubepods/burstable/pod{POD_UID}/{CID}",
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{uid_}.slice/cri-containerd-{CID}.scope/sub",
        f"/kubepods.slice/kubepods-pod{uid_}.slice",
        "/system.slice/containerd.service",
        "/user.slice/user-0.slice/session-1.scope",
        "/",
    ]
    for i, p in enumerate(paths):
        write(d, f"path-{i}", p)


def kube_frame():
    d = out_dir("kube_frame")

    def frame(o):
        b = json.dumps(o, separators=(",", ":")).encode()
        return struct.pack("<I", len(b)) + b
    write(d, "objects", struct.pack("<I", 1) + b"".join(frame(w) for w in WORKLOADS))
    write(d, "split", struct.pack("<I", 99) + frame(WORKLOADS[1]) + frame(WORKLOADS[3])[:20])
    write(d, "bad-length", struct.pack("<I", 5) + frame(WORKLOADS[0]) + struct.pack("<I", 0) + b"{}")


def websocket():
    """Input: [flags u8][limits u8][seed u32 LE][stream] (websocket_fuzz.cpp)."""
    d = out_dir("websocket")

    def frame(op, payload, fin=True, mask=None, rsv=0, form=None):
        b = bytes([(0x80 if fin else 0) | rsv | op])
        n = len(payload)
        m = 0x80 if mask is not None else 0
        f = form or (0 if n < 126 else 126 if n <= 0xffff else 127)
        if f == 0:
            b += bytes([m | n])
        elif f == 126:
            b += bytes([m | 126]) + struct.pack(">H", n)
        else:
            b += bytes([m | 127]) + struct.pack(">Q", n)
        if mask is None:
            return b + payload
        k = struct.pack(">I", mask)
        return b + k + bytes(c ^ k[i % 4] for i, c in enumerate(payload))

    def seed(name, flags, stream, lim=0, s=7):
        write(d, name, bytes([flags, lim]) + struct.pack("<I", s) + stream)

    def defl(msgs, reset=False):
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        out = []
        for m in msgs:
            if reset:
                z = zlib.compressobj(6, zlib.DEFLATED, -15)
            c = z.compress(m) + z.flush(zlib.Z_SYNC_FLUSH)
            out.append(c[:-4])  # RFC 7692: without the 00 00 ff ff tail
        return out

    seed("rfc6455-server", 64, b"\x81\x05Hello" + b"\x01\x03Hel\x80\x02lo" + b"\x89\x05Hello" +
         b"\x82\x7e\x01\x00" + bytes(range(256)) + frame(8, b"\x03\xe8bye"))
    seed("rfc6455-client", 65, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58" +
         b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58" + frame(8, b"\x03\xe9", mask=0x01020304))
    seed("fragmented-ping", 65, frame(1, b"Hel", fin=False, mask=1) + frame(9, b"p", mask=2) +
         frame(0, b"lo", mask=3) + frame(8, b"", mask=4))
    seed("rfc7692", 66, b"\xc1\x07\xf2\x48\xcd\xc9\xc9\x07\x00" + b"\xc1\x05\xf2\x00\x11\x00\x00" +
         b"\x41\x03\xf2\x48\xcd\x80\x04\xc9\xc9\x07\x00" + b"\xc1\x08\xf3\x48\xcd\xc9\xc9\x07\x00\x00")
    ms = defl([b'{"op":"update","v":%d}' % i for i in range(4)])
    seed("deflate-takeover-client", 67,
         b"".join(frame(1, c, mask=0x11223344 * (i + 1) & 0xffffffff, rsv=0x40) for i, c in enumerate(ms)))
    ms = defl([b"no context takeover message %d" % i for i in range(3)], reset=True)
    seed("deflate-no-takeover-server", 70, b"".join(frame(1, c, rsv=0x40) for c in ms))
    big = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = big.compress(bytes(1 << 20)) + big.flush(zlib.Z_SYNC_FLUSH)
    seed("deflate-bomb", 66 | 16, frame(2, bomb[:-4], rsv=0x40) + frame(1, b"after"), lim=0x25)
    seed("small-limits", 64 | 16, frame(1, b"x" * 200) + frame(9, b"y" * 130) + frame(1, b"z", form=126), lim=0x13)
    seed("hostile-length", 64, frame(1, b"ok") + b"\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00" + b"junk")
    seed("close-codes", 64, frame(8, b"\x03\xed") + frame(8, b"\x03") + frame(8, b"\x0f\xa0ok") + frame(8, b""))
    seed("gaps", 64 | 32 | 1, frame(2, b"0123456789" * 10, mask=5) + frame(1, b"tail", mask=6))
    seed("extensions", 128, b"permessage-deflate; client_max_window_bits, permessage-deflate\0"
         b"permessage-deflate; server_no_context_takeover; client_max_window_bits=10", s=0)
    seed("extensions-quoted", 128, b'foo; a="x,y", permessage-deflate\0'
         b'permessage-deflate; server_max_window_bits="9"; mystery', s=0)


def http2():
    """Input: [flags u8][limits u8][seed u32 LE][cut u16 LE][client bytes][server bytes] (http2_fuzz.cpp)."""
    d = out_dir("http2")

    def frame(t, f, sid, p): return struct.pack(">I", len(p))[1:] + bytes([t, f]) + struct.pack(">I", sid) + p
    def lit(n, v, idx=True): # literal with incremental indexing, new name, no huffman
        return bytes([0x40 if idx else 0x00, len(n)]) + n + bytes([len(v)]) + v
    def grpc(m, c=0): return bytes([c]) + struct.pack(">I", len(m)) + m
    def seed(name, flags, limits, client, server, rs=1):
        inp = bytes([flags, limits]) + struct.pack("<I", rs) + struct.pack("<H", len(client)) + client + server
        write(d, name, inp)
    req = b"\x83\x86" + lit(b":path", b"/helloworld.Greeter/SayHello", False) + lit(b"content-type", b"application/grpc") + lit(b"te", b"trailers")
    client = frame(4,0,0,b"\x00\x03\x00\x00\x00\x64") + frame(4,1,0,b"") + frame(1,4,1,req) + frame(0,0,1,grpc(b"\x0a\x05world")[:3]) + frame(0,1,1,grpc(b"\x0a\x05world")[3:])
    server = frame(4,0,0,b"") + frame(4,1,0,b"") + frame(1,4,1,b"\x88" + lit(b"content-type", b"application/grpc")) + frame(0,0,1,grpc(b"\x0a\x0bHello world")) + frame(1,5,1,lit(b"grpc-status", b"0") + lit(b"grpc-message", b"ok%20"))
    for fl in (0x01, 0x05, 0x15, 0x25, 0x27, 0x0d):
        seed("grpc_%02x" % fl, fl, 0x5a, client, server)
    # plain GET, push, goaway, rst, continuation, padding
    get1 = b"\x82\x87" + lit(b":authority", b"example.com") + b"\x84"
    c2 = frame(4,0,0,b"") + frame(1,0x2d,1, b"\x03" + b"\x80\x00\x00\x00\x0f" + get1[:5] + b"\0\0\0") + frame(9,4,1,get1[5:]) + frame(1,5,3,b"\x82\x87\xbe\x84") + frame(3,0,3,b"\0\0\0\x08")
    s2 = frame(4,0,0,b"\x00\x05\x00\x01\x00\x00") + frame(5,4,1,b"\0\0\0\x02" + b"\x82\x87\x85") + frame(1,4,1,b"\x88") + frame(1,4,2,b"\x88") + frame(0,9,2,b"\x02css\0\0") + frame(0,1,1,b"html") + frame(6,0,0,b"12345678") + frame(7,0,0,b"\0\0\0\x01\0\0\0\x02bye") + frame(0x42,0,0,b"ext")
    for fl in (0x01, 0x21, 0x23, 0x31):
        seed("misc_%02x" % fl, fl, 0xa7, c2, s2, rs=7)
    # mid-connection join
    seed("midjoin", 0x20, 0, b"AAAA" + c2[20:], b"\xff\xff" + s2[15:], rs=3)


# ----------------------------------------------------------------- mongodb --

def pcap_tcp_streams(path):
    """The TCP payload of each direction of a classic pcap (Ethernet, IPv4), in
    sequence order, retransmissions dropped: {(src port, dst port): bytes}."""
    data = open(path, "rb").read()
    off, segs = 24, {}
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from("<IIII", data, off)
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ihl = (frame[14] & 15) * 4
        tcp = frame[14 + ihl:]
        sport, dport, seq = struct.unpack_from(">HHI", tcp)
        payload = tcp[(tcp[12] >> 4) * 4:]
        total = struct.unpack_from(">H", frame, 16)[0]
        payload = payload[:max(0, total - ihl - (tcp[12] >> 4) * 4)]
        if payload:
            segs.setdefault((sport, dport), {})[seq] = payload
    return {k: b"".join(v[q] for q in sorted(v)) for k, v in segs.items()}


def mongodb():
    """Input: [flags u8][seed u32 LE][client length u16 LE][client bytes][server bytes] (mongodb_fuzz.cpp)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import mongodbref as m
    d = out_dir("mongodb")

    def seed(name, flags, client, server, rs=1):
        client = client[:65535]
        write(d, name, bytes([flags]) + struct.pack("<I", rs) + struct.pack("<H", len(client)) + client + server)
    streams = pcap_tcp_streams(os.path.join(FIXTURES, "mongodb", "mongo.pcap"))
    cli = streams[(43250, 27017)]
    srv = streams[(27017, 43250)]
    for fl in (0, 1, 2, 4, 8):
        seed("fixture_%02x" % fl, fl, cli, srv, rs=fl + 1)
    seed("fixture-midjoin", 0, cli[700:], srv[900:], rs=9)
    find = m.bson({"find": "users", "filter": {"x": 1}, "$db": "test"})
    ok = m.bson({"cursor": {"firstBatch": [{"x": 1}], "id": m.Int64(0), "ns": "test.users"}, "ok": 1.0})
    err = m.bson({"ok": 0.0, "errmsg": "boom", "code": 11000, "codeName": "DuplicateKey"})

    def compressed(msg, codec, payload):
        hdr = struct.unpack_from("<iiii", msg)
        body = struct.pack("<iiB", hdr[3], len(msg) - 16, codec) + payload
        return struct.pack("<iiii", 16 + len(body), hdr[1], hdr[2], 2012) + body
    req = m.op_msg(1, 0, find, flags=1) + m.op_msg(2, 0, m.bson({"insert": "c", "$db": "t"}), [("documents", [m.bson({"a": 1})] * 3)])
    rsp = m.op_msg(10, 1, ok, flags=1) + m.op_msg(11, 2, err)
    seed("msg-seq-checksum", 0, req, rsp)
    z = m.op_msg(3, 0, find)
    seed("compressed-zlib-noop", 0, compressed(z, 2, zlib.compress(z[16:])) + compressed(z, 0, z[16:]),
         compressed(m.op_msg(12, 3, ok), 2, zlib.compress(m.op_msg(12, 3, ok)[16:])))
    exhaust = m.op_msg(4, 0, m.bson({"getMore": m.Int64(5), "collection": "c", "$db": "t"}), flags=1 << 16)
    seed("exhaust-moretocome", 0, exhaust + m.op_msg(5, 0, find, flags=2),
         m.op_msg(20, 4, ok, flags=2) + m.op_msg(21, 20, ok, flags=2) + m.op_msg(22, 21, ok))
    ins = struct.pack("<i", 0) + b"db.c\0" + m.bson({"a": 1})
    legacy = struct.pack("<iiii", 16 + len(ins), 6, 0, 2002) + ins
    q = struct.pack("<i", 0) + b"db.c\0" + struct.pack("<ii", 0, 1) + m.bson({"a": {"$gt": 1}})
    query = struct.pack("<iiii", 16 + len(q), 7, 0, 2004) + q
    reply_body = struct.pack("<iqii", 2, 0, 0, 1) + m.bson({"$err": "bad", "code": 2})
    reply = struct.pack("<iiii", 16 + len(reply_body), 30, 7, 1) + reply_body
    seed("legacy", 1, legacy + query, reply)
    deep = {"a": 1}
    for _ in range(60):
        deep = {"a": deep}
    seed("deep-and-bad", 1, m.op_msg(8, 0, m.bson({"find": "c", "f": deep, "$db": "t"})) + b"\xff" * 40 + m.op_msg(9, 0, find),
         struct.pack("<iiii", 0x7fffffff, 1, 8, 2013) + m.op_msg(23, 9, ok), rs=5)


# ------------------------------------------------------- sensor segments --

def capture():
    """Real segments: tapwire-sensor on one end of a veth pair between two
    network namespaces, while curl and dig talk across it (root, BPF)."""
    sensor = os.path.join(ROOT, "build", "tapwire-sensor")
    work = "/tmp/tapwire-fuzz-capture"
    run = lambda *a, **kw: subprocess.run(list(a), check=kw.pop("check", True), **kw)  # noqa: E731
    s, c = "twfz-s", "twfz-c"
    for ns in (s, c):
        run("ip", "netns", "del", ns, check=False, stderr=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work + "/www")
    open(work + "/www/a.json", "w").write('{"hello":"tapwire"}\n')
    open(work + "/www/big.txt", "w").write("tapwire " * 500)
    procs = []
    try:
        run("ip", "netns", "add", s)
        run("ip", "netns", "add", c)
        run("ip", "link", "add", "twfzs", "netns", s, "type", "veth", "peer", "name", "twfzc", "netns", c)
        for ns, dev, a in ((s, "twfzs", "10.231.0.1/24"), (c, "twfzc", "10.231.0.2/24")):
            run("ip", "-n", ns, "addr", "add", a, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        x = ["ip", "netns", "exec", s]
        procs.append(subprocess.Popen(x + ["python3", "-m", "http.server", "8080", "--bind", "10.231.0.1",
                                           "--directory", work + "/www"], stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(x + ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null",
                                           "--no-resolv", "--no-hosts", "--bind-interfaces",
                                           "--listen-address=10.231.0.1", "--port=53", f"--pid-file={work}/dns.pid",
                                           "--local=/fz.test/", "--host-record=www.fz.test,10.231.0.1,fd00::1",
                                           "--cname=alias.fz.test,www.fz.test", "--txt-record=fz.test,tapwire seed",
                                           "--mx-host=fz.test,mail.fz.test,10"], stderr=subprocess.DEVNULL))
        sensor_p = subprocess.Popen(x + [sensor, "--data-dir", work + "/data", "--interface", "twfzs",
                                         "--storage-size", "1MiB", "--segment-size", "64KiB", "--segment-max-age",
                                         "2", "--metrics-address", ""], stderr=subprocess.DEVNULL)
        procs.append(sensor_p)
        time.sleep(4)
        cx = ["ip", "netns", "exec", c]
        u = "http://10.231.0.1:8080/"
        for args in (["-o", "/dev/null", u + "a.json"], ["-o", "/dev/null", u + "missing"],
                     ["-I", u + "big.txt"], ["-o", "/dev/null", "--data-binary", "x=1", u + "a.json"],
                     ["-o", "/dev/null", "-o", "/dev/null", u + "big.txt", u + "a.json"]):
            run(*cx, "curl", "-s", *args, stdout=subprocess.DEVNULL)
        for q in (["www.fz.test"], ["alias.fz.test", "AAAA"], ["+tcp", "fz.test", "TXT"], ["fz.test", "MX"],
                  ["nx.fz.test"]):
            run(*cx, "dig", "+short", "@10.231.0.1", *q, stdout=subprocess.DEVNULL)
        time.sleep(3)
        sensor_p.terminate()
        sensor_p.wait(10)
        d = out_dir("segment_reader", keep=("identity-",))
        for i, f in enumerate(sorted(glob.glob(work + "/data/segments/*.twseg"))):
            shutil.copy(f, os.path.join(d, f"sensor-{i}.twseg"))
        for i, f in enumerate(sorted(glob.glob(work + "/data/identity/*.twseg"))):
            shutil.copy(f, os.path.join(d, f"sensor-identity-{i}.twseg"))
    finally:
        for p in procs:
            p.terminate()
        for ns in (s, c):
            run("ip", "netns", "del", ns, check=False)


def amqp():
    """AMQP 0-9-1: the real-* seeds are connections of amqp-tools with RabbitMQ
    3.10 (both directions as captured, kept as they are); these are made here:
    interleaved channels, mid-connection, hostile lengths and nesting.
    Layout: [flags u8][seed u32][cut u16][client bytes][server bytes]."""
    d = out_dir("amqp", keep=("real-",))
    be16, be32, be64 = (lambda v: struct.pack(">H", v)), (lambda v: struct.pack(">I", v)), (lambda v: struct.pack(">Q", v))
    sstr = lambda b: bytes([len(b)]) + b  # noqa: E731
    lstr = lambda b: be32(len(b)) + b  # noqa: E731
    frame = lambda t, ch, p: bytes([t]) + be16(ch) + be32(len(p)) + p + b"\xce"  # noqa: E731
    method = lambda ch, c, m, a=b"": frame(1, ch, be16(c) + be16(m) + a)  # noqa: E731
    header = lambda ch, n: frame(2, ch, be16(60) + be16(0) + be64(n) + be16(0x9000) + sstr(b"text/plain") + b"\x02")  # noqa: E731
    hdr = b"AMQP\x00\x00\x09\x01"

    def seed(name, flags, client, server):
        write(d, name, bytes([flags]) + struct.pack("<IH", 7, len(client) & 0xFFFF) + client + server)

    pub = lambda ch, rk, body: (method(ch, 60, 40, be16(0) + sstr(b"") + sstr(rk) + b"\x00") + header(ch, len(body))  # noqa: E731
                                + frame(3, ch, body))
    seed("interleaved", 0, hdr + method(1, 60, 40, be16(0) + sstr(b"x") + sstr(b"a") + b"\x00")
         + method(3, 60, 40, be16(0) + sstr(b"x") + sstr(b"b") + b"\x00") + header(3, 2) + header(1, 2)
         + frame(3, 1, b"1a") + frame(3, 3, b"3b") + method(1, 50, 10, be16(0) + sstr(b"q") + b"\x00" + lstr(b"")),
         method(1, 50, 11, sstr(b"q") + be32(1) + be32(0)))
    seed("midstream", 0, frame(3, 1, b"tail") + pub(1, b"q", b"body") + method(1, 60, 70, be16(0) + sstr(b"q") + b"\x01"),
         method(1, 60, 71, be64(1) + b"\x00" + sstr(b"") + sstr(b"q") + be32(0)) + header(1, 3) + frame(3, 1, b"abc"))
    seed("huge-length", 0, hdr + b"\x01\x00\x01\x80\x00\x00\x00" + pub(1, b"q", b"x"), b"")
    nested = b""
    for _ in range(40):
        nested = sstr(b"k") + b"F" + lstr(nested)
    seed("nested-tables", 1, hdr + method(1, 50, 10, be16(0) + sstr(b"deep") + b"\x00" + lstr(nested)),
         method(1, 50, 11, sstr(b"deep") + be32(0) + be32(0)))
    seed("close-404-gaps", 2, hdr + method(2, 50, 10, be16(0) + sstr(b"nope") + b"\x01" + lstr(b"")) + method(2, 20, 41),
         method(2, 20, 40, be16(404) + sstr(b"NOT_FOUND") + be16(50) + be16(10)))
def postgres():
    """[flags][seed u32] then chunks [h][len u16 LE][bytes]: h bit 0 the server's."""
    d = out_dir("postgres")

    def m(t, body=b""):
        return t + struct.pack("!I", len(body) + 4) + body

    def cs(s):
        return s.encode() + b"\0"

    def ch(server, b, h=0):
        return bytes([h | (1 if server else 0)]) + struct.pack("<H", len(b)) + b

    st = b"".join([cs("user"), cs("alice"), cs("database"), cs("shop"), b"\0"])
    startup = struct.pack("!II", len(st) + 8, 196608) + st
    ssl = struct.pack("!II", 8, 80877103)
    ready = m(b"Z", b"I")
    login = [ch(0, ssl), ch(1, b"N"), ch(0, startup),
             ch(1, m(b"R", struct.pack("!I", 10) + cs("SCRAM-SHA-256") + b"\0")), ch(0, m(b"p", b"secret")),
             ch(1, m(b"R", struct.pack("!I", 0)) + m(b"S", cs("server_version") + cs("15")) +
                m(b"K", struct.pack("!II", 7, 8)) + ready)]
    rowd = m(b"T", struct.pack("!H", 1) + cs("id") + b"\0" * 18)
    simple = [ch(0, m(b"Q", cs("SELECT id FROM t"))),
              ch(1, rowd + m(b"D", struct.pack("!HI", 1, 1) + b"1") + m(b"C", cs("SELECT 1")) + ready),
              ch(0, m(b"Q", cs("BEGIN; COMMIT"))), ch(1, m(b"C", cs("BEGIN")) + m(b"C", cs("COMMIT")) + ready),
              ch(0, m(b"Q", cs("SELEC"))),
              ch(1, m(b"E", b"SERROR\0VERROR\0C42601\0Msyntax error\0\0") + ready)]
    bind = m(b"B", cs("") + cs("s1") + struct.pack("!HH", 0, 2) + struct.pack("!I", 1) + b"5" +
             struct.pack("!i", -1) + struct.pack("!H", 0))
    ext = [ch(0, m(b"P", cs("s1") + cs("UPDATE t SET a = $1 WHERE b = $2") + struct.pack("!H", 0)) + m(b"S")),
           ch(1, m(b"1") + ready),
           ch(0, bind + m(b"D", b"P\0") + m(b"E", cs("") + struct.pack("!I", 0)) + m(b"S")),
           ch(1, m(b"2") + m(b"n") + m(b"C", cs("UPDATE 1")) + ready),
           ch(0, m(b"P", cs("") + cs("SELEKT") + struct.pack("!H", 0)) + m(b"B", b"\0\0" + b"\0" * 6) +
              m(b"E", b"\0" + b"\0" * 4) + m(b"S")),
           ch(1, m(b"E", b"SERROR\0C42601\0Mbad\0\0") + ready)]
    copy = [ch(0, m(b"Q", cs("COPY t FROM STDIN"))), ch(1, m(b"G", b"\0" + struct.pack("!HH", 1, 0))),
            ch(0, m(b"d", b"1\n") + m(b"d", b"2\n") + m(b"c")), ch(1, m(b"C", cs("COPY 2")) + ready),
            ch(0, m(b"Q", cs("COPY t TO STDOUT"))),
            ch(1, m(b"H", b"\0" + struct.pack("!HH", 1, 0)) + m(b"d", b"1\n") + m(b"c") + m(b"C", cs("COPY 1")) +
               m(b"N", b"SNOTICE\0Mhi\0\0") + m(b"A", struct.pack("!I", 1) + cs("c") + cs("p")) + ready)]
    head = bytes([2]) + struct.pack("<I", 12345)
    write(d, "session", head + b"".join(login + simple + ext + copy))
    write(d, "simple_small_limits", bytes([3]) + struct.pack("<I", 7) + b"".join(login + simple))
    write(d, "extended", head + b"".join(ext))
    write(d, "copy", head + b"".join(copy))
    write(d, "cancel", head + ch(0, struct.pack("!IIII", 16, 80877102, 42, 43)))
    write(d, "ssl_accepted", head + ch(0, ssl) + ch(1, b"S") + ch(0, b"\x16\x03\x01\x00\x05hello"))
    write(d, "joined", head + ch(0, m(b"Q", cs("SELECT 1"))[3:] + m(b"Q", cs("SELECT 2"))) +
          ch(1, m(b"C", cs("SELECT 0")) + ready + m(b"C", cs("SELECT 1")) + ready))
    write(d, "gap", head + b"".join(simple[:1]) + ch(1, m(b"C", cs("SELECT 1")), 2) + ch(1, ready, 4))
def mysql():
    """Conversations captured in the MySQL lab (tests/fixtures/mysql): plain,
    compressed, prepared statements, mysqlslap; whole, with small limits,
    joined after the handshake, and with a gap in the server's direction."""
    d = out_dir("mysql")
    with open(os.path.join(FIXTURES, "mysql", "lab-conversations.json")) as f:
        convs = json.load(f)["conversations"]

    def ops(msgs):
        b = b""
        for who, hexdata in msgs:
            data = bytes.fromhex(hexdata)
            for i in range(0, len(data), 65535):
                part = data[i:i + 65535]
                b += struct.pack("<BH", 0 if who == "c" else 1, len(part)) + part
        return b

    for i, conv in enumerate(convs):
        write(d, f"lab-{i}", struct.pack("<BI", 0, 7 + i) + ops(conv))
        write(d, f"lab-{i}-small", struct.pack("<BI", 1, 11 + i) + ops(conv))
        write(d, f"lab-{i}-joined", struct.pack("<BI", 2, 13 + i) + ops(conv[3:]))
        gap = struct.pack("<BH", 1 | 2, 40)
        write(d, f"lab-{i}-gap", struct.pack("<BI", 0, 17 + i) + ops(conv[:5]) + gap + ops(conv[6:]))
def kafka_messages():
    """(from client, payload) of each TCP payload of the Kafka fixtures, per capture."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import kafkaref
    return {os.path.basename(f): kafkaref._pcap_packets(kafkaref.Path(f))
            for f in sorted(glob.glob(os.path.join(FIXTURES, "kafka", "*.pcap")))}


def kafka():
    d = out_dir("kafka")
    # [mode][seed u32] then a request body, [key i8][version u8] + a response body, or a conversation
    keys = {"00-produce-v2.pcap": (0, 2), "00-produce-v9.pcap": (0, 9), "01-fetch-v12-ok.pcap": (1, 12),
            "11-join-group-v7.pcap": (11, 7), "18-api-versions-v3.pcap": (18, 3)}
    conv_all = b""
    for name, msgs in kafka_messages().items():
        base = name[:-5]
        req = b"".join(p for c, p in msgs if c)
        resp = b"".join(p for c, p in msgs if not c)
        write(d, base + ".req", bytes([0]) + struct.pack("<I", 1) + req[4:])
        k, v = keys[name]
        write(d, base + ".resp", bytes([1]) + struct.pack("<I", 1) + bytes([k, v]) + resp[4:])
        conv = b""
        for c, p in msgs:
            conv += bytes([0 if c else 1]) + struct.pack("<H", len(p)) + p
        write(d, base + ".conv", bytes([2]) + struct.pack("<I", 0x5eed) + conv + bytes([4, 0, 0, 5, 0, 0]))
        conv_all += conv
    write(d, "all.conv", bytes([2]) + struct.pack("<I", 7) + conv_all)
    write(d, "all.small", bytes([6]) + struct.pack("<I", 9) + conv_all)
    # a gap inside the conversation, and an expiry
    write(d, "all.gaps", bytes([2]) + struct.pack("<I", 3) + conv_all[:200] + bytes([2]) + struct.pack("<H", 30)
          + conv_all[200:] + bytes([6]) + struct.pack("<H", 120))
def redis():
    """Input: [flags u8][limits u8][seed u32 LE][stream] (redis_fuzz.cpp)."""
    d = out_dir("redis")

    def cmd(*args):
        b = b"*%d\r\n" % len(args)
        for a in args:
            b += b"$%d\r\n%s\r\n" % (len(a), a)
        return b

    def seed(name, flags, stream, lim=0, s=7):
        write(d, name, bytes([flags, lim]) + struct.pack("<I", s) + stream)

    commands = (cmd(b"SET", b"foo", b"bar") + cmd(b"GET", b"foo") + b"PING\r\n" + b"set \"a b\" 'c'\n" +
                cmd(b"MULTI") + cmd(b"INCR", b"n") + cmd(b"EXEC") + cmd(b"SUBSCRIBE", b"ch1", b"ch2") +
                cmd(b"HELLO", b"3"))
    replies = (b"+OK\r\n$3\r\nbar\r\n+PONG\r\n-ERR unknown command\r\n:1\r\n$-1\r\n*-1\r\n+QUEUED\r\n"
               b"*2\r\n+OK\r\n:2\r\n*3\r\n$9\r\nsubscribe\r\n$3\r\nch1\r\n:1\r\n"
               b"*3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$5\r\nhello\r\n")
    resp3 = (b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n_\r\n#t\r\n,3.14\r\n(12345678901234567890\r\n"
             b"!21\r\nSYNTAX invalid syntax\r\n=15\r\ntxt:Some string\r\n~2\r\n+a\r\n+b\r\n"
             b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n|1\r\n+ttl\r\n:5\r\n:7\r\n")
    seed("commands", 1 | 8, commands)
    seed("replies", 8, replies)
    seed("resp3", 8, resp3)
    seed("small_limits", 2 | 8, replies + resp3, lim=0x53)
    seed("gaps", 4 | 8, replies + resp3)
    seed("nested", 0, b"*1\r\n" * 40 + b":1\r\n")
    seed("big_length", 0, b"+OK\r\n$2147483648\r\n:1\r\n")
    seed("session", 16, b"".join(commands[i:i + 16] + replies[i:i + 16] for i in range(0, len(replies), 16)))
    seed("session_resp3", 16 | 2, commands + resp3, lim=0x21)


def main():
    if "--capture" in sys.argv:
        capture()
    for f in (http1, dns, tcp_reassembly, dissector, pcap_source, segment_reader, config, control_request,
              identity_records, workload_object, kube_api, cgroup_path, kube_frame, websocket, http2, amqp, postgres, mysql,
              mongodb, kafka, redis):
        f()
    total = sum(os.path.getsize(f) for f in glob.glob(os.path.join(CORPUS, "*", "*")))
    print(f"corpus: {total} bytes")


if __name__ == "__main__":
    main()
