"""`loupe agent --lab --kubernetes --kubeconfig F`: the agent's pods, namespaces and
CiliumNetworkPolicies come from a Kubernetes API server, the pods' interfaces from rtnetlink —
never from the lab's inventory file.

No kube-apiserver can be installed here, so the API server is ours
(servers/kube_apiserver.py: HTTPS, tokens, discovery, list with limit/continue, watch with
bookmarks and 410, compaction), started inside the lab's node netns; changes are made with the
real kubectl (run in the node netns too). Pods are created with their status (podIP), standing
in for the kubelet, with the addresses the lab gave them.
"""
import base64
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import LOUPE, REPO, AgentProcess, flows, in_pod, loupe, run, status

NODE_NETNS = "loupe-node"
API = "198.18.0.1:6443"
WEB = "198.18.0.11"
RESOLVED = "/run/loupe/lab/inventory.yaml"


def in_node(*cmd, check=True, timeout=60, input=None):
    return run("ip", "netns", "exec", NODE_NETNS, *cmd, check=check, timeout=timeout, input=input)


class KubeAPI:
    """The test API server, in the node netns, started and stopped by PID."""

    def __init__(self, d):
        self.dir = d
        self.proc = None

    def start(self, crds=True, outage=0):
        self.log = open(self.dir / "apiserver.log", "a")
        args = ["ip", "netns", "exec", NODE_NETNS, sys.executable, str(REPO / "tests/e2e/servers/kube_apiserver.py"),
                "--listen", API, "--dir", str(self.dir), "--bookmark-interval", "1"]
        if crds:
            args.append("--crds")
        if outage:
            args += ["--outage", str(outage)]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            if (self.dir / "kubeconfig").exists() and self.control("requests", check=False) is not None:
                return
            time.sleep(0.1)
        raise AssertionError("test API server did not come up: " + (self.dir / "apiserver.log").read_text())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def control(self, what, body=None, check=True):
        p = in_node("curl", "-sk", "-X", "POST", "-d", json.dumps(body or {}), f"https://{API}/_test/{what}", check=False, timeout=120)
        if p.returncode != 0:
            if check:
                raise AssertionError(p.stderr)
            return None
        return json.loads(p.stdout)

    @property
    def kubeconfig(self):
        return str(self.dir / "kubeconfig")


def kubectl(api, *args, input=None, check=True):
    return in_node("kubectl", "--kubeconfig", api.kubeconfig, *args, input=input, check=check)


def lab_objects():
    """The lab's namespaces and pods as API objects: metadata, spec.nodeName, status.podIPs —
    without the lab's hostInterface, so the agent must find interfaces itself."""
    docs = [d for d in yaml.safe_load_all(Path(RESOLVED).read_text()) if d]
    out = []
    for d in docs:
        if d["kind"] == "Namespace":
            out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": d["metadata"]})
        elif d["kind"] == "Pod":
            st = d.get("status", {})
            out.append({"apiVersion": "v1", "kind": "Pod", "metadata": d["metadata"],
                        "spec": {"nodeName": "loupe-node", "containers": [{"name": "c", "image": "lab"}]},
                        "status": {"phase": "Running", "podIP": st.get("podIP"), "podIPs": st.get("podIPs", [])}})
    return out


def pod_ip(ns, name):
    for d in yaml.safe_load_all(Path(RESOLVED).read_text()):
        if d and d["kind"] == "Pod" and d["metadata"]["name"] == name and d["metadata"].get("namespace") == ns:
            return d["status"]["podIP"]
    raise KeyError(f"{ns}/{name}")


@pytest.fixture(scope="module")
def kube(lab, agent, tmp_path_factory):
    agent.stop()  # the file-inventory agent; `running_agent` restarts it for later modules
    d = tmp_path_factory.mktemp("kube")
    api = KubeAPI(d)
    api.start()
    kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": lab_objects()}))
    a = AgentProcess(str(d / "agent.log"))
    a.start("--kubernetes", "--kubeconfig", api.kubeconfig, "--kubernetes-watch-timeout", "5")
    yield {"api": api, "agent": a, "dir": d}
    a.stop()
    api.stop()


def curl(pod, url, timeout=3):
    p = in_pod(pod, "curl", "-s", "-m", str(timeout), "-o", "/dev/null", "-w", "%{http_code}", url, check=False, timeout=timeout + 5)
    return int(p.stdout or 0)


def exhaust_port(ds):
    """The tiefighter's PUT /v1/exhaust-port: the Death Star's 503 (it explodes), or the
    proxy's 403 under rule1."""
    return int(in_pod("default/tiefighter", "curl", "-s", "-m", "3", "-X", "PUT", "-o", "/dev/null", "-w", "%{http_code}",
                      f"http://{ds}/v1/exhaust-port", check=False, timeout=8).stdout or 0)


def wait(predicate, timeout, step=0.05):
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return time.time() - start
        time.sleep(step)
    return None


def test_pods_from_the_api_interfaces_from_netlink(kube):
    st = status()
    assert st["source"].startswith("kubernetes https://198.18.0.1:6443"), st["source"]
    for r in ("namespaces", "pods"):
        assert st["kubernetes"][r]["synced"], st["kubernetes"]
    eps = {e["pod"]: e for e in st["endpoints"]}
    assert eps["shop/client"]["shape"] == "routed" and eps["shop/client"]["interface"].startswith("lxc"), eps
    assert curl("shop/client", f"http://{WEB}/k8s/one") == 200
    fl = flows("--http-path", "^/k8s/one$")
    assert [f["l7"]["type"] for f in fl] == ["REQUEST", "RESPONSE"]
    assert fl[0]["source"]["namespace"] == "shop" and fl[0]["destination"]["pod_name"] == "web"


def test_annotation_through_kubectl_redirects_within_a_second(kube):
    api = kube["api"]
    key = "loupe.io/proxy-visibility"
    latencies, off = [], []
    for i in range(5):
        kubectl(api, "annotate", "namespace", "plain", f"{key}=<Egress/80/TCP/HTTP>", "--overwrite")
        t = wait(lambda: curl("plain/client", f"http://{WEB}/k8s/flip{i}") == 200 and flows("--http-path", f"^/k8s/flip{i}$"), 1.0)
        assert t is not None, f"flip {i}: no flow within 1 s of the annotation"
        latencies.append(t)
        kubectl(api, "annotate", "namespace", "plain", f"{key}-")
        attempt = iter(range(1000))

        def unrecorded():
            path = f"/k8s/off{i}-{next(attempt)}"
            return curl("plain/client", f"http://{WEB}{path}") == 200 and flows("--http-path", f"^{path}$") == []
        t = wait(unrecorded, 1.0)
        assert t is not None, f"flip {i}: still redirected 1 s after the annotation was removed"
        off.append(t)
    print(f"annotation → first flow: p50 {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
          f"removed → unrecorded: p50 {statistics.median(off) * 1000:.0f} ms, max {max(off) * 1000:.0f} ms")


def test_cnp_through_the_api_is_enforced_and_deleting_it_allows_again(kube):
    api = kube["api"]
    ds = pod_ip("default", "deathstar")

    def exhaust():
        return exhaust_port(ds)

    assert exhaust() == 503
    kubectl(api, "create", "-f", str(REPO / "examples/starwars/rule1.yaml"), "--validate=false")
    try:
        assert wait(lambda: exhaust() == 403, 1.5) is not None, "rule1 not enforced within 1 s"
        assert status()["kubernetes"]["ciliumnetworkpolicies"]["objects"] == 1
    finally:
        kubectl(api, "delete", "ciliumnetworkpolicy", "rule1", "-n", "default")
    assert wait(lambda: exhaust() == 503, 1.5) is not None, "still enforced after the CNP was deleted"


def test_a_rejected_cnp_is_reported_and_the_others_apply(kube):
    api = kube["api"]
    bad = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "typo", "namespace": "default"},
           "spec": {"endpointSelectr": {"matchLabels": {"app": "x"}}}}
    kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps(bad))
    kubectl(api, "create", "-f", str(REPO / "examples/starwars/rule1.yaml"), "--validate=false")
    try:
        ds = pod_ip("default", "deathstar")
        assert wait(lambda: exhaust_port(ds) == 403, 2) is not None, "the valid policy did not apply beside the rejected one"
        rejected = status()["rejected_policies"]
        assert any("CiliumNetworkPolicy default/typo" in r and "spec.endpointSelectr" in r for r in rejected), rejected
        assert "default/typo" in Path(kube["agent"].log_path).read_text()
    finally:
        kubectl(api, "delete", "ciliumnetworkpolicy", "typo", "rule1", "-n", "default")
    assert wait(lambda: status()["rejected_policies"] == [], 2) is not None


def test_a_pod_on_another_node_is_a_flow_peer(kube):
    api = kube["api"]
    remote = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "api-0", "namespace": "remote", "labels": {"app": "remote-api"}},
              "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "x"}]},
              "status": {"phase": "Running", "podIP": "198.19.0.11", "podIPs": [{"ip": "198.19.0.11"}]}}
    kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "remote"}}))
    kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps(remote))
    try:
        time.sleep(0.5)
        assert curl("shop/client", "http://198.19.0.11/k8s/remote") in (200, 404)
        fl = flows("--http-path", "^/k8s/remote$")
        assert fl and fl[0]["destination"]["namespace"] == "remote" and fl[0]["destination"]["pod_name"] == "api-0"
        assert "k8s:app=remote-api" in fl[0]["destination"]["labels"]
        assert "remote/api-0" not in {e["pod"] for e in status()["endpoints"]}, "a remote pod was attached"
    finally:
        kubectl(api, "delete", "pod", "api-0", "-n", "remote")
        kubectl(api, "delete", "namespace", "remote")


def test_nodes_from_the_api_are_the_hubble_peers(kube):
    """Relay finds every node through one agent's Peer/Notify: the Nodes the API lists, at
    their InternalIP and the Hubble port; a Node deleted → PEER_DELETED."""
    import grpc
    from test_hubble_api import peer_pb2, peer_pb2_grpc
    api = kube["api"]
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"},
            "status": {"addresses": [{"type": "Hostname", "address": "node-b"}, {"type": "InternalIP", "address": "198.19.0.20"}]}}
    kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps(node))
    try:
        def peers(timeout=1.5):
            got = []
            ch = grpc.insecure_channel("unix:///run/loupe/hubble.sock")
            try:
                for p in peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest(), timeout=timeout):
                    got.append((p.name, p.address, p.type))
            except grpc.RpcError:
                pass
            ch.close()
            return got
        assert wait(lambda: ("node-b", "198.19.0.20:4244", peer_pb2.PEER_ADDED) in peers(), 10) is not None, peers()
        assert peers()[0][:2] == ("loupe-node", "198.18.0.1:4244")
        changes = []
        ch = grpc.insecure_channel("unix:///run/loupe/hubble.sock")
        stream = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest(), timeout=8)
        kubectl(api, "delete", "node", "node-b")
        try:
            for p in stream:
                changes.append((p.name, p.type))
                if (p.name, p.type) == ("node-b", peer_pb2.PEER_DELETED):
                    break
        except grpc.RpcError:
            pass
        ch.close()
        assert ("node-b", peer_pb2.PEER_DELETED) in changes, changes
    finally:
        kubectl(api, "delete", "node", "node-b", check=False)


def test_a_recreated_pod_gets_its_new_veth_and_the_old_attachment_goes(kube, lab, tmp_path):
    api = kube["api"]
    before = {e["pod"]: e for e in status()["endpoints"]}["backend/bulk"]
    ifindex_before = int(in_node("cat", f"/sys/class/net/{before['interface']}/ifindex").stdout)
    # The lab re-creates a pod whose containers changed: a new netns and a new veth.
    inv = Path(lab["inventory"]).read_text().replace('servers/splice_server.py\\"', 'servers/splice_server.py\\" ')
    changed = REPO / "tests/e2e/.inventory-recreate.yaml"
    changed.write_text(inv)
    kubectl(api, "delete", "pod", "bulk", "-n", "backend")
    try:
        loupe("lab", "up", "-f", str(changed), "--cni", lab["cni"])
        new = [o for o in lab_objects() if o["metadata"]["name"] == "bulk" and o["kind"] == "Pod"][0]
        kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps(new))

        def attached():
            e = {e["pod"]: e for e in status()["endpoints"]}.get("backend/bulk")
            if not e or "interface" not in e:
                return False
            idx = int(in_node("cat", f"/sys/class/net/{e['interface']}/ifindex", check=False).stdout or 0)
            return idx and idx != ifindex_before and "loupe_from_pod" in in_node("tc", "filter", "show", "dev", e["interface"], "ingress").stdout
        assert wait(attached, 1.0) is not None, "the re-created pod's veth was not attached within a second"
        assert not Path(f"/sys/class/net/{before['interface']}").exists() or \
            int(in_node("cat", f"/sys/class/net/{before['interface']}/ifindex", check=False).stdout or 0) != ifindex_before
    finally:
        changed.unlink(missing_ok=True)
        loupe("lab", "up", "-f", str(lab["inventory"]), "--cni", lab["cni"])
        kubectl(api, "delete", "pod", "bulk", "-n", "backend", check=False)
        new = [o for o in lab_objects() if o["metadata"]["name"] == "bulk" and o["kind"] == "Pod"][0]
        kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps(new))


def test_api_outage_keeps_the_last_state_and_changes_apply_after(kube):
    """10 s without the API: 5 s with the server process stopped, then 5 s in which it is up
    for kubectl (which deletes rule1 and annotates a namespace) but unreachable to the agent."""
    api = kube["api"]
    ds = pod_ip("default", "deathstar")
    put = lambda: exhaust_port(ds)
    kubectl(api, "create", "-f", str(REPO / "examples/starwars/rule1.yaml"), "--validate=false")
    try:
        assert wait(lambda: put() == 403, 2) is not None
        errors_before = status()["kubernetes"]["pods"]["watch_errors"]
        api.stop()
        t0 = time.time()
        time.sleep(2)
        # The API is gone: enforcement and visibility continue on the last good state.
        assert put() == 403
        assert curl("shop/client", f"http://{WEB}/k8s/outage") == 200 and flows("--http-path", "^/k8s/outage$")
        st = status()
        assert not st["kubernetes"]["pods"]["synced"] and st["kubernetes"]["pods"]["watch_errors"] > errors_before, st["kubernetes"]
        assert "cannot reach the API server" in st["kubernetes"]["pods"]["last_error"]
        metrics = in_node("curl", "-s", "http://127.0.0.1:9965/metrics").stdout
        assert 'loupe_kubernetes_synced{resource="pods"} 0' in metrics
        assert 'loupe_kubernetes_watch_errors_total{resource="pods"}' in metrics
        time.sleep(max(0, 5 - (time.time() - t0)))
    finally:
        api.start(outage=max(1, 10 - (time.time() - t0)))
    kubectl(api, "delete", "ciliumnetworkpolicy", "rule1", "-n", "default")
    kubectl(api, "annotate", "namespace", "plain", "loupe.io/proxy-visibility=<Egress/80/TCP/HTTP>", "--overwrite")
    try:
        time.sleep(1)
        assert put() == 403, "a change made during the outage reached the agent"
        assert wait(lambda: put() == 503, 15, step=0.3) is not None, "rule1 still enforced after the outage"
        assert wait(lambda: curl("plain/client", f"http://{WEB}/k8s/after") == 200 and flows("--http-path", "^/k8s/after$"), 5) is not None
        # Each informer comes back after its own jittered backoff (at most 30 s).
        assert wait(lambda: all(r["synced"] for r in status()["kubernetes"].values()), 35, step=0.5) is not None, status()["kubernetes"]
        print(f"API back after {time.time() - t0:.1f} s")
    finally:
        kubectl(api, "annotate", "namespace", "plain", "loupe.io/proxy-visibility-")


def test_410_gone_relists_and_bookmarks_advance_the_version(kube):
    api = kube["api"]
    time.sleep(1.5)
    rv1 = int(status()["kubernetes"]["pods"]["resource_version"])
    kubectl(api, "annotate", "namespace", "shop", "loupe.io/test=1", "--overwrite")  # only namespaces change
    assert wait(lambda: int(status()["kubernetes"]["pods"]["resource_version"]) > rv1, 3) is not None, "no bookmark advanced the pods' version"
    relists = status()["kubernetes"]["pods"]["relists"]
    api.control("compact")
    assert wait(lambda: status()["kubernetes"]["pods"]["relists"] > relists, 5) is not None, "no relist after 410 Gone"
    assert "410" in Path(kube["agent"].log_path).read_text()
    assert curl("shop/client", f"http://{WEB}/k8s/after-410") == 200 and flows("--http-path", "^/k8s/after-410$")
    kubectl(api, "annotate", "namespace", "shop", "loupe.io/test-")


def test_5000_pods_listed_in_pages_are_complete(kube):
    api = kube["api"]
    local = status()["kubernetes"]["pods"]["objects"]
    lists_before = api.control("requests")["requests"].get("/api/v1/pods", 0)
    api.control("pods", {"count": 5000, "namespace": "bulk", "node": "node-b"})
    api.control("compact")

    # The open watch may hand the agent some or all of the 5,000 before the compaction ends it;
    # the 410 that follows makes it list again, in pages (5,000+ pods at 500 a page): complete
    # once that list is done, whichever way the pods first came.
    def relisted_complete():
        lists = api.control("requests")["requests"].get("/api/v1/pods", 0) - lists_before
        return lists >= 10 and status()["kubernetes"]["pods"]["objects"] == local + 5000

    assert wait(relisted_complete, 30, step=0.2) is not None, (status()["kubernetes"]["pods"], api.control("requests")["requests"])
    rss = kube["agent"].rss_kib()
    print(f"agent RSS with {local + 5000} pods known: {rss // 1024} MiB")
    assert curl("shop/client", f"http://{WEB}/k8s/bulk") == 200 and flows("--http-path", "^/k8s/bulk$")


def agent_once(*args, until=lambda st: True, timeout=15):
    """An agent that should start, report its problem in `loupe status`, and keep serving:
    returns (status JSON once `until` holds, or the last one; log)."""
    log = Path("/tmp/loupe-e2e-k8s-bad.log")
    log.write_text("")
    a = AgentProcess(str(log))
    try:
        a.start(*args, wait_for_inventory=False)
        deadline = time.time() + timeout
        st = status()
        while not until(st) and time.time() < deadline:
            time.sleep(0.3)
            st = status()
        return st, log.read_text()
    finally:
        a.stop()


def pods_error(st):
    return st["kubernetes"]["pods"]["last_error"]


def test_bad_kubeconfigs_and_servers_are_clear_errors(kube, tmp_path):
    api = kube["api"]
    kube["agent"].stop()
    try:
        bad = tmp_path / "bad.yaml"
        bad.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\ncontexts: []\n")
        p = run(LOUPE, "agent", "--lab", "--kubernetes", "--kubeconfig", str(bad), check=False)
        assert p.returncode == 2 and "contexts" in p.stderr and "nowhere" in p.stderr, p.stderr
        p = run(LOUPE, "agent", "--lab", "--kubernetes", "--kubeconfig", str(tmp_path / "missing.yaml"), check=False)
        assert p.returncode == 2 and "cannot read" in p.stderr, p.stderr

        cfg = yaml.safe_load(Path(api.kubeconfig).read_text())
        # Unreachable server.
        cfg["clusters"][0]["cluster"]["server"] = "https://198.18.0.1:6444"
        f = tmp_path / "unreachable.yaml"
        f.write_text(yaml.safe_dump(cfg))
        st, log = agent_once("--kubernetes", "--kubeconfig", str(f), until=pods_error)
        assert not st["kubernetes"]["pods"]["synced"] and "cannot reach the API server https://198.18.0.1:6444" in st["kubernetes"]["pods"]["last_error"]
        # Wrong CA.
        cfg = yaml.safe_load(Path(api.kubeconfig).read_text())
        cfg["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(Path("/tmp/loupe-e2e-tls/cert.pem").read_bytes()).decode()
        f = tmp_path / "wrongca.yaml"
        f.write_text(yaml.safe_dump(cfg))
        st, log = agent_once("--kubernetes", "--kubeconfig", str(f), until=pods_error)
        err = st["kubernetes"]["pods"]["last_error"]
        assert "cannot reach" in err and ("certificate" in err.lower() or "handshake" in err.lower() or "verify" in err.lower()), err
        # An expired (refused) token.
        tok = tmp_path / "expired-token"
        tok.write_text("expired")
        cfg = yaml.safe_load(Path(api.kubeconfig).read_text())
        cfg["users"][0]["user"] = {"tokenFile": str(tok)}
        f = tmp_path / "expired.yaml"
        f.write_text(yaml.safe_dump(cfg))
        st, log = agent_once("--kubernetes", "--kubeconfig", str(f), until=pods_error)
        assert "401 Unauthorized" in st["kubernetes"]["pods"]["last_error"], st["kubernetes"]["pods"]
        # Pods without IPs, and a hostNetwork pod: skipped, noted, the agent keeps serving.
        kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending", "namespace": "shop"},
             "spec": {"nodeName": "loupe-node", "containers": [{"name": "c", "image": "x"}]}, "status": {"phase": "Pending"}}))
        kubectl(api, "create", "-f", "-", "--validate=false", input=json.dumps(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostnet", "namespace": "shop"},
             "spec": {"nodeName": "loupe-node", "hostNetwork": True, "containers": [{"name": "c", "image": "x"}]},
             "status": {"phase": "Running", "podIP": "198.18.0.1", "podIPs": [{"ip": "198.18.0.1"}]}}))
        try:
            st, log = agent_once("--kubernetes", "--kubeconfig", api.kubeconfig,
                                 until=lambda st: any(e["pod"] == "shop/hostnet" for e in st["endpoints"]))
            eps = {e["pod"]: e for e in st["endpoints"]}
            assert eps["shop/hostnet"]["shape"] == "hostNetwork", eps.get("shop/hostnet")
            assert "shop/pending" not in eps
            assert eps["shop/client"]["shape"] == "routed"
        finally:
            kubectl(api, "delete", "pod", "pending", "hostnet", "-n", "shop")
    finally:
        kube["agent"].start("--kubernetes", "--kubeconfig", api.kubeconfig, "--kubernetes-watch-timeout", "5")
