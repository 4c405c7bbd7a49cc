#!/usr/bin/env python3
"""A test Kubernetes API server: no kube-apiserver can be installed on this machine, so the
Kubernetes e2e suite runs the agent (and kubectl) against this one. It implements the parts of
the real protocol the agent and kubectl use, faithfully:

- HTTPS with its own CA; bearer-token authentication (401 Status otherwise).
- Discovery: /api, /api/v1, /apis, /apis/cilium.io/v2 (404 while the Cilium CRDs are not
  installed, as on a cluster without Cilium).
- Objects: v1 Namespaces, v1 Pods, cilium.io/v2 CiliumNetworkPolicies and
  CiliumClusterwideNetworkPolicies; GET, POST, PUT, PATCH (merge and strategic-merge patches
  as a JSON merge patch), DELETE; metadata.resourceVersion from one cluster-wide counter.
- Lists with limit/continue (the continue token carries the list's resourceVersion and the
  last key; a token older than the compaction point is 410 Gone), metadata.resourceVersion.
- Watches (?watch=1) from a resourceVersion: chunked JSON lines, ADDED/MODIFIED/DELETED,
  BOOKMARK events when allowWatchBookmarks (every --bookmark-interval seconds), ended after
  timeoutSeconds; a resourceVersion older than the compaction point gets an ERROR event with
  a 410 Status, as the real server sends.
- State survives a restart (saved to DIR/state.json on SIGTERM, loaded on start), as etcd
  keeps it behind a real API server: resourceVersions stay monotonic.
- Test controls under /_test/ (no auth): compact the event history, install/remove the CRDs,
  create many pods at once, drop every open watch, count requests, and an outage: for N
  seconds every request from Loupe (User-Agent loupe/…) has its connection closed unanswered
  while kubectl still makes changes.

Usage: kube_apiserver.py --listen HOST:PORT --dir DIR   (DIR gets ca.pem, cert.pem, key.pem,
token, kubeconfig)
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import threading
import time
import signal
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

RESOURCES = {
    # name: (groupVersion, kind, namespaced)
    "namespaces": ("v1", "Namespace", False),
    "pods": ("v1", "Pod", True),
    "nodes": ("v1", "Node", False),
    "ciliumnetworkpolicies": ("cilium.io/v2", "CiliumNetworkPolicy", True),
    "ciliumclusterwidenetworkpolicies": ("cilium.io/v2", "CiliumClusterwideNetworkPolicy", False),
}


class Store:
    def __init__(self):
        self.lock = threading.Condition()
        self.rv = 100
        self.objects = {r: {} for r in RESOURCES}   # resource -> key -> object
        self.events = []                            # (rv, resource, type, object)
        self.compacted = 0                          # events at or below this rv are gone
        self.crds = False
        self.generation = 0                         # bumped to end every open watch
        self.requests = {}
        self.outage_until = 0.0

    def save(self, path):
        with self.lock:
            state = {"rv": self.rv, "compacted": self.compacted, "crds": self.crds,
                     "objects": self.objects, "events": self.events}
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.rename(path + ".tmp", path)

    def load(self, path):
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            self.rv, self.compacted, self.crds = state["rv"], state["compacted"], state["crds"]
            self.objects = state["objects"]
            self.events = [tuple(e) for e in state["events"]]

    def key(self, resource, ns, name):
        return f"{ns}/{name}" if RESOURCES[resource][2] else name

    def write(self, resource, typ, obj):
        """Under the lock: stamps a new resourceVersion and records the event."""
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        k = self.key(resource, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if typ == "DELETED":
            self.objects[resource].pop(k, None)
        else:
            self.objects[resource][k] = obj
        self.events.append((self.rv, resource, typ, json.loads(json.dumps(obj))))
        self.lock.notify_all()


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = merge_patch(target.get(k), v)
    return target


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: Store = None
    token = ""
    bookmark_interval = 1.0

    def log_message(self, fmt, *args):
        sys.stderr.write("%.3f %s %s\n" % (time.time(), self.command, self.path))

    # ---- plumbing

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}") if n else {}

    def unreachable(self):
        """During an outage, a request from Loupe gets its connection closed, unanswered."""
        if time.time() < self.store.outage_until and self.headers.get("User-Agent", "").startswith("loupe/"):
            self.close_connection = True
            return True
        return False

    def authorized(self):
        if self.unreachable():
            return False
        if self.headers.get("Authorization", "") == f"Bearer {self.token}":
            return True
        if self.command in ("POST", "PUT"):
            self.body()  # an unread request body must not be taken for the next request
        self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
        return False

    def route(self):
        """(resource, namespace, name) of an object path, or None."""
        parts = [p for p in urlparse(self.path).path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            rest = parts[2:]
        elif parts[:3] == ["apis", "cilium.io", "v2"]:
            if not self.store.crds:
                return "404"
            rest = parts[3:]
        else:
            return None
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in RESOURCES:
            ns, rest = rest[1], rest[2:]
        if not rest or rest[0] not in RESOURCES:
            return None
        resource = rest[0]
        if RESOURCES[resource][0] != ("v1" if parts[0] == "api" else "cilium.io/v2"):
            return None
        name = rest[1] if len(rest) > 1 else None
        return resource, ns, name

    # ---- discovery

    def discovery(self, path):
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.headers.get("Host", "")}]}
        if path == "/api/v1":
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": r, "singularName": k.lower(), "namespaced": nsd, "kind": k,
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                for r, (gv, k, nsd) in RESOURCES.items() if gv == "v1"]}
        if path == "/apis":
            groups = []
            if self.store.crds:
                groups.append({"name": "cilium.io", "versions": [{"groupVersion": "cilium.io/v2", "version": "v2"}],
                               "preferredVersion": {"groupVersion": "cilium.io/v2", "version": "v2"}})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        if path == "/apis/cilium.io/v2" and self.store.crds:
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "cilium.io/v2", "resources": [
                {"name": r, "singularName": k.lower(), "namespaced": nsd, "kind": k,
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                for r, (gv, k, nsd) in RESOURCES.items() if gv == "cilium.io/v2"]}
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-loupe-test"}
        return None

    # ---- verbs

    def do_GET(self):
        u = urlparse(self.path)
        self.store.requests[u.path] = self.store.requests.get(u.path, 0) + 1
        if u.path.startswith("/_test/"):
            return self.test_control(u.path, {})
        if not self.authorized():
            return
        d = self.discovery(u.path.rstrip("/"))
        if d is not None:
            return self.send_json(200, d)
        r = self.route()
        if r == "404" or r is None:
            return self.send_json(404, status(404, "NotFound", f"the server could not find the requested resource ({u.path})"))
        resource, ns, name = r
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if name:
            with self.store.lock:
                obj = self.store.objects[resource].get(self.store.key(resource, ns or "", name))
            if obj is None:
                return self.send_json(404, status(404, "NotFound", f'{resource} "{name}" not found'))
            return self.send_json(200, obj)
        if q.get("watch") in ("1", "true"):
            return self.watch(resource, ns, q)
        return self.list(resource, ns, q)

    def list(self, resource, ns, q):
        gv, kind, _ = RESOURCES[resource]
        limit = int(q.get("limit") or 0)
        with self.store.lock:
            if q.get("continue"):
                try:
                    token = json.loads(base64.urlsafe_b64decode(q["continue"]))
                except Exception:
                    return self.send_json(400, status(400, "BadRequest", "invalid continue token"))
                if token["rv"] < self.store.compacted:
                    return self.send_json(410, status(410, "Expired", "The provided continue parameter is too old to display a consistent list result."))
                list_rv, after = token["rv"], token["after"]
            else:
                list_rv, after = self.store.rv, ""
            items = [o for k, o in sorted(self.store.objects[resource].items())
                     if k > after and (ns is None or o["metadata"].get("namespace") == ns)]
        meta = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            items = items[:limit]
            last = self.store.key(resource, items[-1]["metadata"].get("namespace", ""), items[-1]["metadata"]["name"])
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"rv": list_rv, "after": last}).encode()).decode()
            meta["remainingItemCount"] = 1
        self.send_json(200, {"kind": kind + "List", "apiVersion": gv, "metadata": meta, "items": items})

    def watch(self, resource, ns, q):
        since = int(q.get("resourceVersion") or 0)
        timeout = float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def emit(typ, obj):
            line = (json.dumps({"type": typ, "object": obj}) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        deadline = time.time() + timeout
        next_bookmark = time.time() + self.bookmark_interval
        with self.store.lock:
            generation = self.store.generation
            if since and since < self.store.compacted:
                emit("ERROR", status(410, "Expired", f"too old resource version: {since} ({self.store.compacted})"))
                self.wfile.write(b"0\r\n\r\n")
                return
        try:
            while time.time() < deadline:
                with self.store.lock:
                    if self.store.generation != generation or time.time() < self.store.outage_until:
                        self.close_connection = True
                        return  # dropped: no terminating chunk, as a broken connection
                    # Everything up to `current` is either in `pending` or not this watch's:
                    # a bookmark may then say `current` without skipping an event.
                    current = self.store.rv
                    pending = [(rv, t, o) for rv, r, t, o in self.store.events
                               if rv > since and r == resource and (ns is None or o["metadata"].get("namespace") == ns)]
                    if not pending:
                        self.store.lock.wait(timeout=0.05)
                for rv, t, o in pending:
                    emit(t, o)
                    since = rv
                if bookmarks and time.time() >= next_bookmark:
                    gv, kind, _ = RESOURCES[resource]
                    emit("BOOKMARK", {"kind": kind, "apiVersion": gv, "metadata": {"resourceVersion": str(max(since, current))}})
                    since = max(since, current)
                    next_bookmark = time.time() + self.bookmark_interval
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    def write_object(self, create):
        r = self.route()
        if r == "404" or r is None:
            return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
        resource, ns, name = r
        obj = self.body()
        gv, kind, namespaced = RESOURCES[resource]
        obj.setdefault("apiVersion", gv)
        obj.setdefault("kind", kind)
        meta = obj.setdefault("metadata", {})
        if namespaced:
            meta["namespace"] = ns or meta.get("namespace") or "default"
        if not meta.get("name"):
            return self.send_json(422, status(422, "Invalid", "metadata.name: Required value"))
        with self.store.lock:
            k = self.store.key(resource, meta.get("namespace", ""), meta["name"])
            exists = k in self.store.objects[resource]
            if create and exists:
                return self.send_json(409, status(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists'))
            if not create and not exists:
                return self.send_json(404, status(404, "NotFound", f'{resource} "{meta["name"]}" not found'))
            meta.setdefault("uid", f"uid-{self.store.rv + 1}")
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self.store.write(resource, "ADDED" if create else "MODIFIED", obj)
        self.send_json(201 if create else 200, obj)

    def do_POST(self):
        u = urlparse(self.path)
        if u.path.startswith("/_test/"):
            return self.test_control(u.path, self.body())
        if self.authorized():
            self.write_object(create=True)

    def do_PUT(self):
        if self.authorized():
            self.write_object(create=False)

    def change_object(self, typ, change):
        """PATCH/DELETE of one named object: `change(copy of the object, request body)` gives
        what is stored and returned."""
        body = self.body()  # read first (DELETE's DeleteOptions too), so the connection stays in step
        if not self.authorized():
            return
        r = self.route()
        if r == "404" or r is None or r[2] is None:
            return self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
        resource, ns, name = r
        with self.store.lock:
            obj = self.store.objects[resource].get(self.store.key(resource, ns or "", name))
            if obj is None:
                return self.send_json(404, status(404, "NotFound", f'{resource} "{name}" not found'))
            obj = change(json.loads(json.dumps(obj)), body)
            self.store.write(resource, typ, obj)
        self.send_json(200, obj)

    def do_PATCH(self):
        self.change_object("MODIFIED", merge_patch)

    def do_DELETE(self):
        self.change_object("DELETED", lambda obj, _options: obj)

    def test_control(self, path, body):
        s = self.store
        with s.lock:
            if path == "/_test/compact":
                # As etcd compaction after more writes: every version a client holds is now
                # older than the compaction point (410 on watch and continue), open watches end.
                s.rv += 1
                s.compacted = s.rv
                s.events = []
                s.generation += 1
                s.lock.notify_all()
            elif path == "/_test/crds":
                s.crds = bool(body.get("installed"))
            elif path == "/_test/drop-watches":
                s.generation += 1
                s.lock.notify_all()
            elif path == "/_test/outage":
                s.outage_until = time.time() + float(body.get("seconds", 10))
                s.lock.notify_all()
            elif path == "/_test/pods":
                # {"count": N, "namespace": NS, "node": NODE, "prefix": P}: N pods, one event each.
                for i in range(int(body["count"])):
                    s.write("pods", "ADDED", {
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": f"{body.get('prefix', 'bulk')}-{i}", "namespace": body.get("namespace", "bulk"),
                                     "labels": {"app": body.get("prefix", "bulk")}, "uid": f"uid-bulk-{i}"},
                        "spec": {"nodeName": body.get("node", "other-node")},
                        "status": {"phase": "Running", "podIP": f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                                   "podIPs": [{"ip": f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"}]}})
            elif path == "/_test/requests":
                pass
            else:
                return self.send_json(404, {"error": path})
            reply = {"rv": s.rv, "compacted": s.compacted, "crds": s.crds, "requests": s.requests}
        self.send_json(200, reply)


def make_credentials(d, host):
    os.makedirs(d, exist_ok=True)
    if not os.path.exists(f"{d}/ca.pem"):
        run = lambda *a: subprocess.run(list(a), check=True, capture_output=True)
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2", "-subj", "/CN=loupe-test-kube-ca")
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{d}/key.pem", "-out", f"{d}/server.csr", "-subj", "/CN=kube-apiserver")
        with open(f"{d}/ext.cnf", "w") as f:
            f.write(f"subjectAltName=IP:{host},IP:127.0.0.1,DNS:kubernetes.default.svc\n")
        run("openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-out", f"{d}/cert.pem", "-days", "2", "-extfile", f"{d}/ext.cnf")
        with open(f"{d}/token", "w") as f:
            f.write(base64.b32encode(os.urandom(20)).decode().lower())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:6443")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--bookmark-interval", type=float, default=1.0)
    ap.add_argument("--crds", action="store_true", help="serve the Cilium CRDs from the start")
    ap.add_argument("--outage", type=float, default=0, help="start unreachable to Loupe for this many seconds")
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    make_credentials(a.dir, host)
    Handler.store = Store()
    Handler.store.crds = a.crds
    state_path = f"{a.dir}/state.json"
    Handler.store.load(state_path)
    Handler.store.outage_until = time.time() + a.outage

    def stop(*_):
        Handler.store.save(state_path)
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    Handler.token = open(f"{a.dir}/token").read().strip()
    Handler.bookmark_interval = a.bookmark_interval
    with open(f"{a.dir}/kubeconfig", "w") as f:
        ca = base64.b64encode(open(f"{a.dir}/ca.pem", "rb").read()).decode()
        f.write(f"""apiVersion: v1
kind: Config
current-context: lab
clusters:
- name: lab
  cluster:
    server: https://{host}:{port}
    certificate-authority-data: {ca}
contexts:
- name: lab
  context: {{cluster: lab, user: loupe}}
users:
- name: loupe
  user:
    tokenFile: {a.dir}/token
""")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{a.dir}/cert.pem", f"{a.dir}/key.pem")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"listening on https://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
