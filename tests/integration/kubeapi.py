"""A test Kubernetes API server: enough of the real one for kubectl and for
tapwire-kube-watch, with faults on demand.

Python 3.11 standard library only, plus the `openssl` CLI for a CA and a
server certificate. It serves Pods, Services, EndpointSlices, Nodes,
ReplicaSets and Jobs as the real API server does on the wire: Bearer token
(or client certificate) authentication with 401 Status objects otherwise,
discovery (/version, /api, /apis, the group versions; aggregated-discovery
Accept headers get the plain form), get / list / watch with resourceVersion
semantics (a list returns the current version, a watch streams what came
after it, 410 Gone below the compacted version), `limit` + `continue` pages
that are consistent snapshots, chunked watches with BOOKMARK events and
`timeoutSeconds`, label and field selectors, server-side Tables for
`kubectl get`, HTTP/1.1 keep-alive. Every connection has a socket timeout and
the number of connections is capped; stop() ends every thread.

    with KubeApiServer(workdir) as api:
        kc = api.write_kubeconfig(workdir / "kubeconfig")
        api.apply(replicaset("shop", "web-5d8f7", deployment="web"))
        api.apply(pod("shop", "web-5d8f7-x2x", ip="10.244.1.7", node="node-1",
                      owner=("ReplicaSet", "web-5d8f7", rs_uid)))
        api.fault("401", kinds=["Pod"]); ...; api.fault(None)
        api.requests   # what clients asked, in order

Run it by hand: python3 tests/integration/kubeapi.py DIR (serves sample
objects until Ctrl-C; prints the kubeconfig path).
"""

from __future__ import annotations

import base64
import bisect
import copy
import ctypes
import datetime
import gc
import ipaddress
import json
import os
import re
import secrets
import select
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# --------------------------------------------------------------------------
# Kinds served


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    short: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


KINDS: dict[str, Kind] = {k.kind: k for k in (
    Kind("Pod", "pods", "", "v1", True, ("po",)),
    Kind("Service", "services", "", "v1", True, ("svc",)),
    Kind("Node", "nodes", "", "v1", False, ("no",)),
    Kind("EndpointSlice", "endpointslices", "discovery.k8s.io", "v1", True),
    Kind("ReplicaSet", "replicasets", "apps", "v1", True, ("rs",)),
    Kind("Job", "jobs", "batch", "v1", True),
)}
_BY_PATH = {(k.prefix, k.plural): k for k in KINDS.values()}
GROUPS = {}  # group -> [Kind]
for _k in KINDS.values():
    GROUPS.setdefault(_k.group, []).append(_k)

SERVER_VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitCommit": "0" * 40,
                  "gitTreeState": "clean", "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2",
                  "compiler": "gc", "platform": "linux/amd64"}

MAX_CONNECTIONS = 256  # beyond this, new connections are closed at once
SOCKET_TIMEOUT = 60.0  # idle keep-alive connections and stalled clients
MAX_HISTORY = 200_000  # watch events kept for resuming; older ones are compacted
MAX_WATCH_QUEUE = 500_000  # events queued for one slow watcher before it gets 410
MAX_WATCH_SECONDS = 1800  # a watch without timeoutSeconds ends after this

FAULTS = ("unreachable", "401", "403", "410", "garbage", "truncated", "hang")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def status_obj(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if details:
        s["details"] = details
    return s


# --------------------------------------------------------------------------
# Object builders: dicts shaped like the real API's JSON.

def _meta(namespace, name, uid, labels, owner=None, extra_annotations=None) -> dict:
    m = {"name": name, "labels": dict(labels or {})}
    if uid:  # else the server assigns one (and keeps it when the object is replaced)
        m["uid"] = uid
    if namespace is not None:
        m["namespace"] = namespace
    if owner:
        okind, oname, ouid = owner
        api = {"ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
               "Deployment": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1"}.get(okind, "v1")
        m["ownerReferences"] = [{"apiVersion": api, "kind": okind, "name": oname, "uid": ouid or str(uuid.uuid4()),
                                 "controller": True, "blockOwnerDeletion": True}]
    # What real objects carry and a watcher must not keep.
    m["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}", **(extra_annotations or {})}
    m["managedFields"] = [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                           "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
    return m


def pod(namespace, name, *, ip, node, uid=None, host_network=False, labels=None, owner=None,
        containers=(("main", None),), phase="Running", ip6=None) -> dict:
    """owner: (kind, name, uid), e.g. ("ReplicaSet", "web-5d8f7", rs_uid). A
    container id None is generated ("containerd://<64 hex>")."""
    labels = dict(labels or {})
    if owner and owner[0] == "ReplicaSet" and "-" in owner[1]:
        labels.setdefault("pod-template-hash", owner[1].rsplit("-", 1)[1])
    statuses, specs = [], []
    for cname, cid in containers:
        if cid is None:
            cid = "containerd://" + secrets.token_hex(32)
        specs.append({"name": cname, "image": f"registry.example/{cname}:1.0", "imagePullPolicy": "IfNotPresent",
                      "resources": {}, "terminationMessagePath": "/dev/termination-log"})
        st = {"name": cname, "image": f"registry.example/{cname}:1.0", "imageID": "", "ready": phase == "Running",
              "restartCount": 0, "started": phase == "Running",
              "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}} if phase == "Running"
              else {"waiting": {"reason": "ContainerCreating"}}}
        if cid:
            st["containerID"] = cid
        statuses.append(st)
    ips = [a for a in (ip, ip6) if a]
    status = {"phase": phase, "hostIP": "10.0.0.1", "startTime": "2024-01-01T00:00:00Z",
              "conditions": [{"type": "Ready", "status": "True" if phase == "Running" else "False"}],
              "containerStatuses": statuses, "qosClass": "BestEffort"}
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": a} for a in ips]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _meta(namespace, name, uid, labels, owner),
            "spec": {"nodeName": node, "hostNetwork": bool(host_network), "containers": specs,
                     "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
                     "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                      "effect": "NoExecute", "tolerationSeconds": 300}],
                     "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}]},
            "status": status}


def service(namespace, name, *, cluster_ip, ports=(("http", 80, "TCP"),), selector=None) -> dict:
    ips = [cluster_ip] if isinstance(cluster_ip, str) else list(cluster_ip)
    fams = ["IPv6" if ":" in a else "IPv4" for a in ips if a != "None"]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(namespace, name, None, {"app": name}),
            "spec": {"type": "ClusterIP", "clusterIP": ips[0], "clusterIPs": ips, "ipFamilies": fams or ["IPv4"],
                     "ports": [{"name": n, "port": p, "protocol": proto, "targetPort": p} for n, p, proto in ports],
                     "selector": dict(selector or {"app": name}), "sessionAffinity": "None"},
            "status": {"loadBalancer": {}}}


def endpointslice(namespace, name, *, service, addresses, ports=(("http", 80, "TCP"),)) -> dict:
    v6 = bool(addresses) and all(":" in a for a in addresses)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": _meta(namespace, name, None, {"kubernetes.io/service-name": service,
                                                      "endpointslice.kubernetes.io/managed-by":
                                                      "endpointslice-controller.k8s.io"}),
            "addressType": "IPv6" if v6 else "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": True, "serving": True, "terminating": False},
                           "nodeName": "node-1"} for a in addresses],
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}


def replicaset(namespace, name, *, deployment=None, uid=None) -> dict:
    labels = {"pod-template-hash": name.rsplit("-", 1)[1]} if "-" in name else {}
    owner = ("Deployment", deployment, None) if deployment else None
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": _meta(namespace, name, uid, labels, owner),
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "main", "image": "registry.example/main:1.0"}]}}},
            "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}}


def job(namespace, name, *, cronjob=None, uid=None) -> dict:
    owner = ("CronJob", cronjob, None) if cronjob else None
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _meta(namespace, name, uid, {"job-name": name}, owner),
            "spec": {"completions": 1, "parallelism": 1, "backoffLimit": 6,
                     "template": {"spec": {"containers": [{"name": "main", "image": "registry.example/job:1.0"}],
                                           "restartPolicy": "Never"}}},
            "status": {"active": 1, "startTime": "2024-01-01T00:00:00Z"}}


def node(name, *, addresses) -> dict:
    """addresses: IPs (InternalIP) or (type, address) pairs."""
    addrs = [a if isinstance(a, (tuple, list)) else ("InternalIP", a) for a in addresses]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": _meta(None, name, None, {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}),
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addrs] + [{"type": "Hostname",
                                                                                      "address": name}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                       "nodeInfo": {"kubeletVersion": "v1.30.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                    "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.0"},
                       "images": [{"names": [f"registry.example/img{i}:1.0"], "sizeBytes": 1000000 + i}
                                  for i in range(5)],
                       "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"}}}


# --------------------------------------------------------------------------
# Selectors

_SET_RE = re.compile(r"^\s*(!?)([A-Za-z0-9._/-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


class SelectorError(ValueError):
    pass


def _split_terms(s: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur)
    return [t for t in terms if t.strip()]


def parse_label_selector(s: str):
    """Returns a predicate over a labels dict (equality and set-based forms)."""
    preds = []
    for term in _split_terms(s or ""):
        m = _EQ_RE.match(term)
        if m:
            k, op, v = m.groups()
            preds.append((lambda L, k=k, v=v: L.get(k) == v) if op != "!=" else (lambda L, k=k, v=v: L.get(k) != v))
            continue
        m = _SET_RE.match(term)
        if not m:
            raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
        neg, k, op, vals = m.groups()
        if op:
            if neg:
                raise SelectorError(f"unable to parse requirement: {term.strip()!r}")
            vs = {v.strip() for v in vals.split(",")}
            preds.append((lambda L, k=k, vs=vs: L.get(k) in vs) if op == "in"
                         else (lambda L, k=k, vs=vs: L.get(k) not in vs))
        else:
            preds.append((lambda L, k=k: k not in L) if neg else (lambda L, k=k: k in L))
    return lambda labels: all(p(labels) for p in preds)


_FIELDS = {
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", "") or "",
    "status.phase": lambda o: (o.get("status") or {}).get("phase", "") or "",
}


def parse_field_selector(s: str):
    preds = []
    for term in _split_terms(s or ""):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise SelectorError(f"invalid selector: {term.strip()!r}")
        f, op, v = m.groups()
        if f not in _FIELDS:
            raise SelectorError(f'field label not supported: {f}')
        get = _FIELDS[f]
        preds.append((lambda o, g=get, v=v: g(o) == v) if op != "!=" else (lambda o, g=get, v=v: g(o) != v))
    return lambda obj: all(p(obj) for p in preds)


# --------------------------------------------------------------------------
# Server-side Tables (what `kubectl get` asks for)

def _age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    try:
        t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<unknown>"
    s = max(0, int((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _col(name, typ="string", priority=0, fmt="", desc=""):
    return {"name": name, "type": typ, "format": fmt, "description": desc or name, "priority": priority}


def _table_columns(kind: str) -> list[dict]:
    name = _col("Name", fmt="name", desc="Name must be unique within a namespace.")
    age = _col("Age", desc="CreationTimestamp is a timestamp representing the server time when this object "
                           "was created.")
    if kind == "Pod":
        return [name, _col("Ready"), _col("Status"), _col("Restarts"), age, _col("IP", priority=1),
                _col("Node", priority=1), _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)]
    if kind == "Service":
        return [name, _col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"), age,
                _col("Selector", priority=1)]
    if kind == "EndpointSlice":
        return [name, _col("AddressType"), _col("Ports"), _col("Endpoints"), age]
    if kind == "Node":
        return [name, _col("Status"), _col("Roles"), age, _col("Version"), _col("Internal-IP", priority=1),
                _col("External-IP", priority=1), _col("OS-Image", priority=1), _col("Kernel-Version", priority=1),
                _col("Container-Runtime", priority=1)]
    return [name, age]


def _table_cells(o: dict) -> list:
    kind, meta = o.get("kind"), o["metadata"]
    spec, st = o.get("spec") or {}, o.get("status") or {}
    name, age = meta.get("name", ""), _age(meta.get("creationTimestamp"))
    if kind == "Pod":
        cs = st.get("containerStatuses") or []
        ready = sum(1 for c in cs if c.get("ready"))
        restarts = sum(int(c.get("restartCount", 0)) for c in cs)
        phase = "Terminating" if meta.get("deletionTimestamp") else st.get("phase", "Unknown")
        return [name, f"{ready}/{len(spec.get('containers') or cs)}", phase, restarts, age,
                st.get("podIP") or "<none>", spec.get("nodeName") or "<none>", "<none>", "<none>"]
    if kind == "Service":
        ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or "<none>"
        sel = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
        return [name, spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), "<none>", ports, age, sel]
    if kind == "EndpointSlice":
        ports = ",".join(str(p.get("port")) for p in o.get("ports") or []) or "<unset>"
        addrs = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
        eps = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "") or "<unset>"
        return [name, o.get("addressType", ""), ports, eps, age]
    if kind == "Node":
        addrs = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        info = st.get("nodeInfo") or {}
        return [name, "Ready" if ready else "NotReady", "<none>", age, info.get("kubeletVersion", ""),
                addrs.get("InternalIP", "<none>"), addrs.get("ExternalIP", "<none>"), info.get("osImage", ""),
                info.get("kernelVersion", ""), info.get("containerRuntimeVersion", "")]
    return [name, age]


def _table_row(o: dict, include: str) -> dict:
    row = {"cells": _table_cells(o)}
    if include == "Object":
        row["object"] = o
    elif include != "None":
        row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
    return row


def _wants_table(accept: str) -> bool:
    for part in (accept or "").split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in part.split(";")[1:] if "=" in p}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return True
    return False


# --------------------------------------------------------------------------
# The store

class _Entry:
    """One stored object: its JSON without kind/apiVersion (list items omit
    them), and the parsed object unless it was bulk-loaded (then it is parsed
    again when a selector or a Table needs it; 100k dicts would cost more
    than they save)."""

    __slots__ = ("kind", "body", "_obj")

    def __init__(self, obj: dict, keep_obj: bool = True):
        self.kind = obj["kind"]
        self.body = _dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
        self._obj = obj if keep_obj else None

    @property
    def obj(self) -> dict:
        return self._obj if self._obj is not None else json.loads(self.full)

    @property
    def full(self) -> bytes:
        k = KINDS[self.kind]
        return b'{"kind":"%s","apiVersion":"%s",' % (k.kind.encode(), k.api_version.encode()) + self.body[1:]


def _entry(obj: dict, keep_obj: bool = True) -> _Entry:
    return _Entry(obj, keep_obj)


@dataclass
class _Event:
    rv: int
    kind: str
    type: str
    key: tuple
    entry: _Entry
    prev: _Entry | None


@dataclass
class _Watcher:
    kind: Kind
    namespace: str | None
    labels: object
    fields: object
    queue: deque = field(default_factory=deque)
    overflow: bool = False
    injected: str | None = None  # a fault delivered to this watch (garbage, truncated, 410)

    def matches(self, e: _Entry | None) -> bool:
        if e is None:
            return False
        o = e.obj
        m = o["metadata"]
        if self.namespace is not None and m.get("namespace") != self.namespace:
            return False
        return self.labels(m.get("labels") or {}) and self.fields(o)


class _Conn:
    def __init__(self, sock):
        self.sock = sock


class KubeApiServer:
    def __init__(self, workdir: Path, *, tls: bool = True, token: str = "tapwire-test-token",
                 host: str = "127.0.0.1", port: int = 0, bookmark_interval: float = 1.0,
                 netns: str | None = None):
        self.workdir = Path(workdir)
        self.tls = tls
        self.token = token
        self.also_accept: set[str] = set()  # more valid tokens (a rotated-out one, until it expires)
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.netns = netns
        self.ca_file = self.workdir / "kubeapi-ca.crt"
        self.requests: list[dict] = []  # {ts, method, path, query, status, watch, agent (User-Agent)}
        self.errors: list[str] = []  # unexpected exceptions in connection threads
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._store: dict[str, dict[tuple, _Entry]] = {k: {} for k in KINDS}
        self._sorted: dict[str, list | None] = {k: None for k in KINDS}
        self._rv = 1
        self._compacted = 1  # watches from below this get 410
        self._history: deque[_Event] = deque()
        self._watchers: list[_Watcher] = []
        self._fault: tuple[str, set | None, dict] | None = None
        self._listener: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._started = False
        self._ssl: ssl.SSLContext | None = None
        self._accept_thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------
    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{h}:{self.port}"

    def start(self) -> "KubeApiServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self._make_certs()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.workdir / "kubeapi-server.crt", self.workdir / "kubeapi-server.key")
            ctx.load_verify_locations(self.ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL  # client certificates authenticate too
            self._ssl = ctx
        self._listener = self._listen()
        self.port = self._listener.getsockname()[1]
        self._started = True
        self._accept_thread = threading.Thread(target=self._accept_loop, name="kubeapi-accept", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            if self._stopping:
                return
            self._stopping = True
            self._cv.notify_all()
            lst, self._listener = self._listener, None
            conns = list(self._conns)
        if lst:
            _close_listener(lst)
        for c in conns:
            _shutdown(c.sock)
        if self._accept_thread:
            self._accept_thread.join(5)
        deadline = time.monotonic() + 10
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "KubeApiServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- credentials -----------------------------------------------------
    def _make_certs(self) -> None:
        d = self.workdir
        ca_key, srv_key, cli_key = d / "kubeapi-ca.key", d / "kubeapi-server.key", d / "kubeapi-client.key"

        def ossl(*args):
            r = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"openssl {' '.join(map(str, args[:2]))} failed: {r.stderr.strip()[-500:]}")

        if not self.ca_file.exists():
            ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", ca_key, "-out", self.ca_file, "-days", "3", "-subj", "/CN=tapwire-test-ca")
        sans = ["DNS:localhost", "DNS:kubernetes.default.svc", "IP:127.0.0.1", "IP:::1"]
        try:
            ipaddress.ip_address(self.host)
            sans.append(f"IP:{self.host}")
        except ValueError:
            sans.append(f"DNS:{self.host}")
        ext = d / "kubeapi-server.ext"
        ext.write_text(f"subjectAltName={','.join(dict.fromkeys(sans))}\nextendedKeyUsage=serverAuth\n")
        for key, crt, subj, extfile in ((srv_key, d / "kubeapi-server.crt", "/CN=kube-apiserver", ext),
                                        (cli_key, d / "kubeapi-client.crt", "/O=tapwire/CN=tapwire-kube-watch",
                                         None)):
            csr = crt.with_suffix(".csr")
            ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                 "-out", csr, "-subj", subj)
            args = ["x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", crt, "-days", "2"]
            if extfile:
                args += ["-extfile", extfile]
            ossl(*args)
        for f in d.glob("kubeapi-*"):
            os.chmod(f, 0o644)  # an unprivileged watcher reads them in tests

    def write_kubeconfig(self, path: Path, *, token: str | None = None, client_cert: bool = False,
                         ca: bool = True) -> Path:
        """A kubeconfig for this server: certificate-authority-data and a Bearer
        token (this server's unless given), or the client certificate."""
        user: dict = {}
        if client_cert:
            for key, f in (("client-certificate-data", "kubeapi-client.crt"),
                           ("client-key-data", "kubeapi-client.key")):
                user[key] = base64.b64encode((self.workdir / f).read_bytes()).decode()
        else:
            user["token"] = token if token is not None else self.token
        cluster: dict = {"server": self.url}
        if self.tls and ca:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_file.read_bytes()).decode()
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
               "clusters": [{"name": "test", "cluster": cluster}],
               "users": [{"name": "test", "user": user}],
               "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
               "preferences": {}}
        path = Path(path)
        path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is YAML
        os.chmod(path, 0o644)
        return path

    # ---- the store --------------------------------------------------------
    def _key(self, k: Kind, namespace, name) -> tuple:
        return ((namespace or "default") if k.namespaced else "", name)

    def _prepare(self, obj: dict, old: _Entry | None, copy_obj: bool = True) -> tuple[Kind, tuple, dict]:
        if obj.get("kind") not in KINDS:
            raise ValueError(f"kind {obj.get('kind')!r} is not served (one of {', '.join(KINDS)})")
        k = KINDS[obj["kind"]]
        o = copy.deepcopy(obj) if copy_obj else obj
        o["apiVersion"] = k.api_version
        m = o.setdefault("metadata", {})
        if not m.get("name"):
            raise ValueError("metadata.name is required")
        if k.namespaced:
            m["namespace"] = m.get("namespace") or "default"
        else:
            m.pop("namespace", None)
        if old is not None:
            m["uid"] = m.get("uid") or old.obj["metadata"]["uid"]
            m["creationTimestamp"] = old.obj["metadata"].get("creationTimestamp") or _now_iso()
        else:
            m["uid"] = m.get("uid") or str(uuid.uuid4())
            m["creationTimestamp"] = m.get("creationTimestamp") or _now_iso()
        return k, self._key(k, m.get("namespace"), m["name"]), o

    def apply(self, obj: dict) -> dict:
        """Creates or replaces (by kind/namespace/name); emits ADDED or
        MODIFIED. The uid is assigned when absent and kept on replace; a
        different uid on replace is a new object: DELETED, then ADDED."""
        k = KINDS.get(obj.get("kind"))
        if k is None:
            raise ValueError(f"kind {obj.get('kind')!r} is not served (one of {', '.join(KINDS)})")
        with self._cv:
            m = obj.get("metadata") or {}
            key = self._key(k, m.get("namespace"), m.get("name"))
            old = self._store[k.kind].get(key)
            if old is not None and m.get("uid") and m["uid"] != old.obj["metadata"]["uid"]:
                self.delete(k.kind, m.get("namespace"), m["name"])
                old = None
            k, key, o = self._prepare(obj, old)
            self._rv += 1
            o["metadata"]["resourceVersion"] = str(self._rv)
            e = _entry(o)
            if old is None:
                self._sorted[k.kind] = None
            self._store[k.kind][key] = e
            self._record(_Event(self._rv, k.kind, "MODIFIED" if old else "ADDED", key, e, old))
            return json.loads(e.full)

    def load(self, objs) -> int:
        """Puts many objects into the store at once without watch events, as
        if they had been there before anyone watched (older history is
        compacted, running watches are closed: a watcher must list again).
        For large lists (100k pods): the dicts are taken over, not copied."""
        n = 0
        gc_was = gc.isenabled()
        gc.disable()  # millions of new containers: the cyclic collector would rescan them over and over
        try:
            n = self._load(objs)
        finally:
            if gc_was:
                gc.enable()
        return n

    def _load(self, objs) -> int:
        n = 0
        with self._cv:
            for obj in objs:
                k = KINDS[obj["kind"]]
                m = obj.get("metadata") or {}
                key = self._key(k, m.get("namespace"), m.get("name"))
                old = self._store[k.kind].get(key)
                k, key, o = self._prepare(obj, old, copy_obj=False)
                self._rv += 1
                o["metadata"]["resourceVersion"] = str(self._rv)
                self._store[k.kind][key] = _entry(o, keep_obj=False)
                self._sorted[k.kind] = None
                n += 1
            self._history.clear()
            self._compacted = self._rv
            # Running watches end in the same step: one left running could
            # send a bookmark of the new resourceVersion before it is told to
            # close, and its watcher would then resume past the compaction
            # without ever listing what was loaded.
            for w in self._watchers:
                w.injected = "close"
            self._cv.notify_all()
        return n

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        """Deletes an object (KeyError if absent); emits DELETED."""
        k = KINDS[kind]
        with self._cv:
            key = self._key(k, namespace, name)
            old = self._store[kind].pop(key)
            self._sorted[kind] = None
            self._rv += 1
            o = copy.deepcopy(old.obj)
            o["metadata"]["resourceVersion"] = str(self._rv)
            self._record(_Event(self._rv, kind, "DELETED", key, _entry(o), old))

    def get(self, kind, namespace, name) -> dict | None:
        k = KINDS[kind]
        with self._lock:
            e = self._store[kind].get(self._key(k, namespace, name))
            return json.loads(e.full) if e else None

    def list(self, kind) -> list[dict]:
        with self._lock:
            return [json.loads(e.full) for e in self._store[kind].values()]

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def compact(self) -> None:
        """Forgets history: a watch (or a continue token) from an older
        resourceVersion gets 410 Gone. Running watches go on."""
        with self._cv:
            self._history.clear()
            self._compacted = self._rv

    def close_watches(self, kinds: list[str] | None = None) -> None:
        """Ends running watches cleanly, as a server-side timeout does."""
        with self._cv:
            for w in self._watchers:
                if kinds is None or w.kind.kind in kinds:
                    w.injected = "close"
            self._cv.notify_all()

    def watch_count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for w in self._watchers if kind is None or w.kind.kind == kind)

    def fault(self, mode: str | None, kinds: list[str] | None = None, **kw) -> None:
        """Injects a fault (None clears it). kinds limits it to those kinds'
        requests (all by default; "unreachable" is always the whole server).
        "unreachable": running connections are closed and new ones refused;
        "401"/"403": Status errors; "410": watches get 410 Gone (an ERROR event,
        or with http=True an HTTP 410); "garbage": bodies and watch lines that
        are not JSON; "truncated": JSON cut mid-object, then the connection is
        closed; "hang": requests are read and never answered, running watches
        go silent (no events, no bookmarks). Options: watch_only=True leaves
        lists alone; for "garbage", line_bytes=N sends one line of N bytes."""
        if mode is not None and mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r} (one of {', '.join(FAULTS)})")
        relisten = False
        with self._cv:
            prev = self._fault
            self._fault = (mode, set(kinds) if kinds else None, dict(kw)) if mode else None
            if mode in ("garbage", "truncated", "410"):
                for w in self._watchers:
                    if kinds is None or w.kind.kind in kinds:
                        w.injected = mode
            conns = list(self._conns) if mode == "unreachable" else []
            lst = None
            if mode == "unreachable":
                lst, self._listener = self._listener, None
            elif prev and prev[0] == "unreachable" and self._listener is None and not self._stopping:
                relisten = True
            self._cv.notify_all()
        if lst:
            _close_listener(lst)
        for c in conns:
            _shutdown(c.sock)
        if relisten:
            sock = self._listen()
            with self._cv:
                self._listener = sock
                self._cv.notify_all()

    def _fault_for(self, kind: Kind | None) -> tuple[str, dict] | None:
        f = self._fault
        if not f:
            return None
        mode, kinds, kw = f
        if mode == "unreachable" or kind is None or kinds is None or kind.kind in kinds:
            return mode, kw
        return None

    def _record(self, ev: _Event) -> None:
        self._history.append(ev)
        if len(self._history) > MAX_HISTORY:
            drop = MAX_HISTORY // 10
            for _ in range(drop):
                self._compacted = self._history.popleft().rv
        for w in self._watchers:
            if w.kind.kind != ev.kind or w.overflow:
                continue
            new_ok = ev.type != "DELETED" and w.matches(ev.entry)
            old_ok = ev.prev is not None and w.matches(ev.prev)
            if ev.type == "DELETED":
                typ = "DELETED" if old_ok else None
            elif new_ok:
                typ = "MODIFIED" if old_ok else "ADDED"
            else:
                typ = "DELETED" if old_ok else None  # no longer selected
            if typ:
                w.queue.append((typ, ev.entry))
                if len(w.queue) > MAX_WATCH_QUEUE:
                    w.overflow = True
                    w.queue.clear()
        self._cv.notify_all()

    def _sorted_keys(self, kind: str) -> list:
        s = self._sorted[kind]
        if s is None:
            s = self._sorted[kind] = sorted(self._store[kind])
        return s

    def _page(self, k: Kind, snap_rv: int, start, limit: int, pred) -> tuple[list[_Entry], tuple | None]:
        """Items of a list at snap_rv after key start (exclusive), at most limit;
        returns (items, last key if more remain). Called with the lock held."""
        store = self._store[k.kind]
        at_snap: dict[tuple, _Entry | None] = {}
        for ev in self._history:  # undo what changed after the snapshot
            if ev.rv > snap_rv and ev.kind == k.kind and ev.key not in at_snap:
                at_snap[ev.key] = ev.prev
        keys = self._sorted_keys(k.kind)
        if at_snap:
            keys = sorted(set(keys) | set(at_snap))
        i = bisect.bisect_right(keys, start) if start is not None else 0
        out: list[_Entry] = []
        while i < len(keys):
            key = keys[i]
            i += 1
            e = at_snap[key] if key in at_snap else store.get(key)
            if e is None or not pred(e):
                continue
            out.append(e)
            if limit and len(out) >= limit:
                return out, (key if i < len(keys) else None)
        return out, None

    # ---- networking ---------------------------------------------------------
    def _listen(self) -> socket.socket:
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        def make():
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, self.port))
            s.listen(128)
            return s

        if not self.netns:
            return make()
        return _in_netns(self.netns, make)

    def _accept_loop(self) -> None:
        while True:
            with self._cv:
                if self._stopping:
                    return
                lst = self._listener
                if lst is None:
                    self._cv.wait(0.2)
                    continue
            try:
                r, _, _ = select.select([lst], [], [], 0.2)
                if not r:
                    continue
                sock, addr = lst.accept()
            except (OSError, ValueError):
                continue  # closed under us (unreachable, stop)
            with self._cv:
                self._threads = [t for t in self._threads if t.is_alive()]
                if self._stopping or len(self._conns) >= MAX_CONNECTIONS or self._listener is None:
                    sock.close()
                    continue
                conn = _Conn(sock)
                self._conns.add(conn)
                t = threading.Thread(target=self._serve_conn, args=(conn, addr), name="kubeapi-conn", daemon=True)
                self._threads.append(t)
            t.start()

    def _serve_conn(self, conn: _Conn, addr) -> None:
        try:
            conn.sock.settimeout(10)
            if self._ssl:
                conn.sock = self._ssl.wrap_socket(conn.sock, server_side=True)
            conn.sock.settimeout(SOCKET_TIMEOUT)
            _Handler(conn.sock, addr, self)
        except (OSError, ssl.SSLError, ValueError):
            pass  # the client went away, or stop()/unreachable closed it
        except Exception as e:  # a bug here: kept for the test to show, not printed per thread
            with self._lock:
                self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            _shutdown(conn.sock)
            try:
                conn.sock.close()
            except OSError:
                pass
            with self._cv:
                self._conns.discard(conn)


def _truncated_event(k: Kind) -> bytes:
    return b'{"type":"MODIFIED","object":{"kind":"' + k.kind.encode() + b'","metadata":{"name":"cut-'


def _garbage_line(kw: dict) -> bytes:
    n = int(kw.get("line_bytes") or 0)
    return b"x" * n + b"\n" if n else b"<html><body>502 Bad Gateway</body></html>\n"


def _close_listener(sock) -> None:
    # shutdown() takes a listening socket out of LISTEN at once; close()
    # alone leaves it accepting while the accept thread still polls it.
    _shutdown(sock)
    sock.close()


def _everything(_e) -> bool:
    return True


def _shutdown(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


CLONE_NEWNET = 0x40000000


def _in_netns(netns: str, fn):
    """Runs fn on a short-lived thread that has entered the network namespace
    (a name under /run/netns or a path); the socket it makes stays there."""
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    result: dict = {}

    def run():
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {path}: {os.strerror(err)}")
            try:
                result["value"] = fn()
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:
                    result["fatal"] = "could not return to the original network namespace"
        except BaseException as e:  # handed to the caller
            result["error"] = e
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=run, name="kubeapi-netns")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


# --------------------------------------------------------------------------
# HTTP

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kubeapi-test"
    sys_version = ""

    def __init__(self, sock, addr, api: KubeApiServer):
        self.api = api
        super().__init__(sock, addr, None)

    def setup(self):
        self.connection = self.request
        self.rfile = self.connection.makefile("rb", -1)
        self.wfile = _SockWriter(self.connection)

    def log_message(self, fmt, *args):
        pass

    # ---- helpers ------------------------------------------------------
    def _log(self, status: int, watch: bool = False) -> None:
        with self.api._lock:
            self.api.requests.append({"ts": time.time(), "method": self.command, "path": self._path,
                                      "query": self._query, "status": status, "watch": watch,
                                      "agent": self.headers.get("User-Agent", "")})
            if len(self.api.requests) > 1_000_000:
                del self.api.requests[:100_000]

    def _send(self, status: int, body: bytes, ctype="application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _status(self, code: int, reason: str, message: str, watch=False, details=None) -> None:
        self._log(code, watch)
        self._send(code, _dumps(status_obj(code, reason, message, details)))

    def _authenticated(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:].strip()
            if any(secrets.compare_digest(given, t) for t in (self.api.token, *self.api.also_accept)):
                return True
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                return bool(self.connection.getpeercert())
            except (ValueError, OSError):
                return False
        return False

    # ---- dispatch -----------------------------------------------------------
    def do_GET(self):
        u = urlsplit(self.path)
        self._path = unquote(u.path).rstrip("/") or "/"
        self._query = {k: v[0] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        self._is_watch = self._query.get("watch", "").lower() in ("1", "true")
        p = self._path
        if p in ("/version", "/healthz", "/livez", "/readyz"):
            self._log(200)
            return self._send(200, _dumps(SERVER_VERSION) if p == "/version" else b"ok",
                              "application/json" if p == "/version" else "text/plain")
        if not self._authenticated():
            return self._status(401, "Unauthorized", "Unauthorized", self._is_watch)
        disc = self._discovery(p)
        if disc is not None:
            self._log(200)
            return self._send(200, _dumps(disc))
        route = self._route(p)
        if route is None:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        k, ns, name = route
        watch = self._is_watch
        f = self.api._fault_for(k)
        if f and self._apply_fault(f, k, watch):
            return
        try:
            lsel = parse_label_selector(self._query.get("labelSelector", ""))
            fsel = parse_field_selector(self._query.get("fieldSelector", ""))
        except SelectorError as e:
            return self._status(400, "BadRequest", str(e))
        if name is not None:
            if watch:  # a watch of one object: a field selector on its name
                fsel = parse_field_selector(f"metadata.name={name}")
            else:
                return self._get_one(k, ns, name)
        if watch:
            return self._watch(k, ns, lsel, fsel)
        return self._list(k, ns, lsel, fsel)

    do_HEAD = do_GET

    def _refuse(self):
        self._path = urlsplit(self.path).path
        self._query = {}
        self._status(405, "MethodNotAllowed", f"{self.command} is not supported by this test server")

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def _discovery(self, p: str):
        if p == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": f"{self.api.host}:{self.api.port}"}]}
        if p == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in GROUPS if g]}
        for g, kinds in GROUPS.items():
            prefix = kinds[0].prefix
            if p == prefix:
                return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": kinds[0].api_version,
                        "resources": [{"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                                       "kind": k.kind, "verbs": ["get", "list", "watch"],
                                       **({"shortNames": list(k.short)} if k.short else {}),
                                       **({"categories": ["all"]} if k.kind in ("Pod", "Service", "ReplicaSet", "Job")
                                          else {})} for k in kinds]}
            if g and p == f"/apis/{g}":
                gv = {"groupVersion": f"{g}/v1", "version": "v1"}
                return {"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": [gv], "preferredVersion": gv}
        return None

    def _route(self, p: str):
        """(Kind, namespace or None, name or None) for a resource path."""
        parts = p.split("/")
        if len(parts) >= 3 and parts[1] == "api":
            prefix, rest = "/".join(parts[:3]), parts[3:]
        elif len(parts) >= 4 and parts[1] == "apis":
            prefix, rest = "/".join(parts[:4]), parts[4:]
        else:
            return None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2:
            return None
        k = _BY_PATH.get((prefix, rest[0]))
        if k is None or (ns is not None and not k.namespaced):
            return None
        return k, ns, (rest[1] if len(rest) == 2 else None)

    # ---- faults ---------------------------------------------------------------
    def _apply_fault(self, f, k: Kind, watch: bool) -> bool:
        mode, kw = f
        if kw.get("watch_only") and not watch and mode != "unreachable":
            return False
        if mode == "unreachable":
            self.close_connection = True
            return True
        if mode == "401":
            self._status(401, "Unauthorized", "Unauthorized", watch)
            return True
        if mode == "403":
            verb = "watch" if watch else "list"
            grp = k.group or '""'
            self._status(403, "Forbidden", f'{k.plural} is forbidden: User "system:serviceaccount:tapwire:'
                         f'tapwire-kube-watch" cannot {verb} resource "{k.plural}" in API group {grp} at the '
                         f'cluster scope', watch, {"group": k.group, "kind": k.plural})
            return True
        if mode == "410":
            if not watch:
                return False
            if kw.get("http"):
                self._status(410, "Expired", "too old resource version", True)
            else:
                self._log(200, True)
                self._start_chunked()
                self._chunk(_dumps({"type": "ERROR", "object": status_obj(410, "Expired",
                                                                          "too old resource version")}) + b"\n")
                self._end_chunked()
            return True
        if mode == "garbage":
            self._log(200, watch)
            if watch:
                self._start_chunked()
                self._chunk(_garbage_line(kw))
                self._end_chunked()
            else:
                self._send(200, b"<html><body>502 Bad Gateway: upstream sent garbage {]</body></html>")
            return True
        if mode == "truncated":
            self._log(200, watch)
            part = _truncated_event(k)
            if watch:
                self._start_chunked()
                self._chunk(part)
            else:
                body = b'{"kind":"' + k.kind.encode() + b'List","apiVersion":"v1","metadata":{"resourceVersion":"1"},' \
                       b'"items":[{"metadata":{"name":"cut-here","namespace":"default","uid":"0000"}},' + part
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) * 2))
                self.end_headers()
                self.wfile.write(body)
            self.close_connection = True
            _shutdown(self.connection)
            return True
        if mode == "hang":
            # Read, then nothing until the fault clears; then an answer, late.
            with self.api._cv:
                deadline = time.monotonic() + 600
                while True:
                    if self.api._stopping or time.monotonic() >= deadline or _peer_closed(self.connection):
                        self.close_connection = True
                        return True
                    cur = self.api._fault_for(k)
                    if not cur or cur[0] != "hang":
                        return False
                    self.api._cv.wait(0.5)
        return False

    # ---- get / list --------------------------------------------------------------
    def _get_one(self, k: Kind, ns, name):
        with self.api._lock:
            e = self.api._store[k.kind].get(self.api._key(k, ns, name))
            body = e.full if e else None
            obj = e.obj if e else None
        if body is None:
            return self._status(404, "NotFound", f'{k.plural} "{name}" not found',
                                details={"name": name, "group": k.group, "kind": k.plural})
        self._log(200)
        if _wants_table(self.headers.get("Accept", "")):
            return self._send(200, _dumps({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                                           "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                           "columnDefinitions": _table_columns(k.kind),
                                           "rows": [_table_row(obj, self._query.get("includeObject", "Metadata"))]}))
        self._send(200, body)

    def _list(self, k: Kind, ns, lsel, fsel):
        q = self._query
        try:
            limit = int(q.get("limit") or 0)
            if limit < 0:
                raise ValueError
        except ValueError:
            return self._status(400, "BadRequest", f"invalid limit: {q.get('limit')!r}")
        start = None
        api = self.api
        with api._lock:
            snap = api._rv
            if q.get("continue"):
                try:
                    tok = json.loads(base64.urlsafe_b64decode(q["continue"] + "=="))
                    snap, start = int(tok["rv"]), tuple(tok["start"])
                except (ValueError, KeyError, TypeError):
                    return self._status(400, "BadRequest", "continue key is not valid: incorrect encoded start "
                                        "resourceVersion (version meta.k8s.io/v1)")
                if snap < api._compacted:
                    return self._status(410, "Expired", "The provided continue parameter is too old to display a "
                                        "consistent list result. You can start a new list without the continue "
                                        "parameter.")
            if ns is None and not q.get("labelSelector") and not q.get("fieldSelector"):
                pred = _everything
            else:
                def pred(e):
                    o = e.obj
                    return ((ns is None or o["metadata"].get("namespace") == ns)
                            and lsel(o["metadata"].get("labels") or {}) and fsel(o))
            items, more = api._page(k, snap, start, limit, pred)
        meta = {"resourceVersion": str(snap)}
        if more is not None:
            meta["continue"] = base64.urlsafe_b64encode(_dumps({"rv": snap, "start": list(more)})).decode().rstrip("=")
        self._log(200)
        if _wants_table(self.headers.get("Accept", "")):
            inc = q.get("includeObject", "Metadata")
            return self._send(200, _dumps({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                                           "columnDefinitions": _table_columns(k.kind),
                                           "rows": [_table_row(e.obj, inc) for e in items]}))
        head = _dumps({"kind": f"{k.kind}List", "apiVersion": k.api_version, "metadata": meta})
        body = head[:-1] + b',"items":[' + b",".join(e.body for e in items) + b"]}"
        self._send(200, body)

    # ---- watch ---------------------------------------------------------------------
    def _start_chunked(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def _chunk(self, data: bytes):
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")

    def _watch(self, k: Kind, ns, lsel, fsel):
        api, q = self.api, self._query
        table = _wants_table(self.headers.get("Accept", ""))
        include = q.get("includeObject", "Metadata")
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("1", "true")
        initial_events = q.get("sendInitialEvents", "").lower() in ("1", "true")
        try:
            timeout = min(float(q.get("timeoutSeconds") or MAX_WATCH_SECONDS), MAX_WATCH_SECONDS)
        except ValueError:
            return self._status(400, "BadRequest", f"invalid timeoutSeconds: {q.get('timeoutSeconds')!r}", True)
        rv_param = q.get("resourceVersion", "")
        w = _Watcher(k, ns, lsel, fsel)
        gone = False
        with api._cv:
            if rv_param in ("", "0") or initial_events:
                # "any"/"most recent": the current objects as ADDED, then changes
                for key in api._sorted_keys(k.kind):
                    e = api._store[k.kind][key]
                    if w.matches(e):
                        w.queue.append(("ADDED", e))
                if initial_events and bookmarks:
                    w.queue.append(("INITIAL_END", None))
            else:
                try:
                    since = int(rv_param)
                except ValueError:
                    return self._status(400, "BadRequest", f"invalid resourceVersion: {rv_param!r}", True)
                if since < api._compacted:
                    gone = True
                else:
                    for ev in api._history:
                        if ev.rv > since and ev.kind == k.kind:
                            new_ok = ev.type != "DELETED" and w.matches(ev.entry)
                            old_ok = ev.prev is not None and w.matches(ev.prev)
                            if ev.type == "DELETED" or not new_ok:
                                typ = "DELETED" if old_ok else None
                            else:
                                typ = "MODIFIED" if old_ok else "ADDED"
                            if typ:
                                w.queue.append((typ, ev.entry))
            if not gone:
                api._watchers.append(w)
        self._log(200, True)
        self._start_chunked()
        if gone:
            self._chunk(_dumps({"type": "ERROR", "object": status_obj(
                410, "Expired", f"too old resource version: {rv_param} ({api._compacted})")}) + b"\n")
            self._end_chunked()
            return
        sent_columns = False

        def encode(typ: str, e: _Entry) -> bytes:
            nonlocal sent_columns
            if not table:
                return b'{"type":"' + typ.encode() + b'","object":' + e.full + b"}\n"
            t = {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                 "metadata": {"resourceVersion": e.obj["metadata"]["resourceVersion"]},
                 "columnDefinitions": [] if sent_columns else _table_columns(k.kind),
                 "rows": [_table_row(e.obj, include)]}
            sent_columns = True
            return _dumps({"type": typ, "object": t}) + b"\n"

        def bookmark(rv: int, initial_end=False) -> bytes:
            meta = {"resourceVersion": str(rv), "creationTimestamp": None}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            obj = {"kind": "Table" if table else k.kind,
                   "apiVersion": "meta.k8s.io/v1" if table else k.api_version, "metadata": meta}
            return _dumps({"type": "BOOKMARK", "object": obj}) + b"\n"

        end = time.monotonic() + timeout
        next_bm = time.monotonic() + self.bookmark_interval()
        try:
            while True:
                out: list[bytes] = []
                close_abruptly = False
                with api._cv:
                    while True:
                        now = time.monotonic()
                        if api._stopping or now >= end:
                            break
                        f = api._fault_for(k)
                        hanging = f is not None and f[0] == "hang"
                        if w.injected or w.overflow or (w.queue and not hanging):
                            break
                        if bookmarks and not hanging and now >= next_bm:
                            break
                        api._cv.wait(min(end - now, max(0.01, next_bm - now) if bookmarks else 1.0, 1.0))
                        if _peer_closed(self.connection):
                            return
                    if api._stopping:
                        return
                    inj, w.injected = w.injected, None
                    if inj == "close" or time.monotonic() >= end:
                        break
                    if inj == "garbage":
                        out.append(_garbage_line(api._fault[2] if api._fault else {}))
                    elif inj == "truncated":
                        out.append(_truncated_event(k))
                        close_abruptly = True
                    elif inj == "410" or w.overflow:
                        out.append(_dumps({"type": "ERROR", "object": status_obj(410, "Expired",
                                                                                 "too old resource version")}) + b"\n")
                    else:
                        while w.queue:
                            typ, e = w.queue.popleft()
                            out.append(bookmark(api._rv, True) if typ == "INITIAL_END" else encode(typ, e))
                        if bookmarks and time.monotonic() >= next_bm:
                            out.append(bookmark(api._rv))
                            next_bm = time.monotonic() + self.bookmark_interval()
                if out:
                    self._chunk(b"".join(out))
                if close_abruptly:
                    self.close_connection = True
                    _shutdown(self.connection)
                    return
                if inj in ("garbage", "410") or w.overflow:
                    break
            self._end_chunked()
        finally:
            with api._cv:
                if w in api._watchers:
                    api._watchers.remove(w)

    def bookmark_interval(self) -> float:
        return max(0.05, float(self.api.bookmark_interval))


class _SockWriter:
    """Unbuffered writes that send everything (ssl sockets send in pieces)."""

    closed = False

    def __init__(self, sock):
        self.sock = sock

    def write(self, data: bytes) -> int:
        self.sock.sendall(data)
        return len(data)

    def flush(self):
        pass

    def close(self):
        pass


def _peer_closed(sock) -> bool:
    """True when the client went away (readable, and reading gives EOF)."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        sock.settimeout(0)
        try:
            data = sock.recv(1) if isinstance(sock, ssl.SSLSocket) else sock.recv(1, socket.MSG_PEEK)
        finally:
            sock.settimeout(SOCKET_TIMEOUT)
        return not data
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ValueError):
        return True


# --------------------------------------------------------------------------

def _sample(api: KubeApiServer) -> None:
    rs = api.apply(replicaset("shop", "web-5d8f7", deployment="web"))
    jb = api.apply(job("batch", "report-28450", cronjob="report"))
    api.apply(node("node-1", addresses=["10.0.0.5", ("ExternalIP", "203.0.113.5")]))
    api.apply(pod("shop", "web-5d8f7-x2x4q", ip="10.244.1.7", node="node-1",
                  owner=("ReplicaSet", "web-5d8f7", rs["metadata"]["uid"]), labels={"app": "web"}))
    api.apply(pod("batch", "report-28450-abcde", ip="10.244.1.8", node="node-1",
                  owner=("Job", "report-28450", jb["metadata"]["uid"])))
    api.apply(service("shop", "web", cluster_ip="10.96.0.12"))
    api.apply(endpointslice("shop", "web-abcde", service="web", addresses=["10.244.1.7"]))


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 2:
        print("usage: kubeapi.py WORKDIR", file=sys.stderr)
        sys.exit(2)
    with KubeApiServer(Path(sys.argv[1])) as srv:
        _sample(srv)
        kc = srv.write_kubeconfig(Path(sys.argv[1]) / "kubeconfig")
        print(f"serving {srv.url}; kubectl --kubeconfig {kc} get pods -A", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
