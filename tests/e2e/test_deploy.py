"""deploy/kubernetes: rendered by `kubectl kustomize`, every object accepted by PyPI's
kubernetes-validate (strict, against the Kubernetes schemas it ships), RBAC that only reads
what the agent reads, and a DaemonSet that agrees with `loupe agent`'s flags: every flag it
passes is parsed by the agent, the ports, probes, mounts and environment match what those flags
make the agent do. No cluster runs here: what a cluster would do with these objects beyond
their schemas is not shown by this test."""
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import LOUPE, REPO, in_pod, loupe, run

DEPLOY = REPO / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def rendered():
    if not shutil.which("kubectl"):
        pytest.fail("kubectl is needed (scripts/install-deps.sh installs Debian's kubernetes-client)")
    out = run("kubectl", "kustomize", str(DEPLOY)).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    return out, {(o["kind"], o["metadata"]["name"]): o for o in objects}


def validate(path):
    p = subprocess.run(["kubernetes-validate", "--strict", "-k", "1.32.0", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def test_the_manifests_render_and_every_object_validates(rendered, tmp_path):
    out, objects = rendered
    assert set(objects) == {("Namespace", "loupe"), ("ServiceAccount", "loupe"), ("ClusterRole", "loupe"),
                            ("ClusterRoleBinding", "loupe"), ("ConfigMap", "loupe-config"), ("DaemonSet", "loupe"),
                            ("Service", "loupe-peer")}
    f = tmp_path / "rendered.yaml"
    f.write_text(out)
    report = validate(f)
    assert report.count("passed") == len(objects), report
    example = validate(DEPLOY / "examples" / "hubble-relay-ui.yaml")
    assert "failed" not in example


def test_rbac_only_reads_what_the_agent_reads(rendered):
    _, objects = rendered
    rules = objects[("ClusterRole", "loupe")]["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    reads = {("", "namespaces"), ("", "pods"), ("", "nodes"), ("cilium.io", "ciliumnetworkpolicies"),
             ("cilium.io", "ciliumclusterwidenetworkpolicies")}
    assert granted == {(g, r, v) for g, r in reads for v in ("get", "list", "watch")}
    assert not any(k[0] in ("Role", "RoleBinding") for k in objects)
    binding = objects[("ClusterRoleBinding", "loupe")]
    assert binding["roleRef"]["name"] == "loupe"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "loupe", "namespace": "loupe"}]
    ds = objects[("DaemonSet", "loupe")]["spec"]["template"]["spec"]
    assert ds["serviceAccountName"] == "loupe"


def agent_flags():
    text = run(LOUPE, "agent", "--help").stdout
    return set(re.findall(r"(--[a-z0-9-]+)", text))


def test_the_daemonset_and_the_agent_flags_agree(rendered, tmp_path):
    _, objects = rendered
    config = objects[("ConfigMap", "loupe-config")]["data"]
    pod = objects[("DaemonSet", "loupe")]["spec"]["template"]
    spec = pod["spec"]
    (agent,) = spec["containers"]
    env = {e["name"]: e for e in agent.get("env", [])}
    assert [r["configMapRef"]["name"] for r in agent["envFrom"]] == ["loupe-config"]

    # Every $(VAR) is defined (ConfigMap or env), as Kubernetes expands it; then the flags.
    def expand(arg):
        def sub(m):
            name = m.group(1)
            assert name in config or name in env, f"{arg}: $({name}) is not defined"
            return config.get(name) or env[name].get("value", "")
        return re.sub(r"\$\(([A-Z_]+)\)", sub, arg)
    args = [expand(a) for a in agent["args"]]
    assert args[:2] == ["agent", "--kubernetes"]
    flags = {a.split("=", 1)[0]: (a.split("=", 1)[1] if "=" in a else None) for a in args[1:]}
    known = agent_flags()
    assert set(flags) <= known, f"flags the agent does not have: {set(flags) - known}"

    # The agent parses exactly this command line: with a kubeconfig that does not exist it
    # stops at the kubeconfig (exit 2, naming it) — past every other flag's validation.
    p = run(LOUPE, *args, "--kubeconfig", str(tmp_path / "missing-kubeconfig"), check=False, timeout=30)
    assert p.returncode == 2 and "kubeconfig" in p.stderr and "Unknown option" not in p.stderr, p.stderr

    # NODE_NAME from the downward API: which pods are this node's.
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert objects[("DaemonSet", "loupe")]["spec"]["updateStrategy"]["type"] == "RollingUpdate"

    # Ports: the Hubble listener and the metrics address the flags set, probed and scraped there.
    hubble_port = int(flags["--hubble-listen-address"].rsplit(":", 1)[1])
    metrics_port = int(flags["--metrics-address"].rsplit(":", 1)[1])
    assert not flags["--metrics-address"].startswith("127."), "metrics on loopback cannot be scraped"
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"hubble-grpc": hubble_port, "metrics": metrics_port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert agent[probe]["grpc"] == {"port": hubble_port, "service": "hubble.server.Observer"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    peer = objects[("Service", "loupe-peer")]["spec"]
    assert peer["internalTrafficPolicy"] == "Local" and peer["ports"][0]["targetPort"] == hubble_port
    assert peer["ports"][0]["port"] == 80  # Relay's default peer service port, as Cilium's hubble-peer
    assert peer["selector"].items() <= pod["metadata"]["labels"].items()

    # Mounts: the socket's directory, the CA directory, bpffs for the pinned maps.
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert str(Path(flags["--hubble-socket"]).parent) in mounts
    assert flags["--ca-dir"] in mounts and mounts[flags["--ca-dir"]]["readOnly"] is True
    assert "/sys/fs/bpf" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/sys/fs/bpf"]["name"]]["hostPath"]["path"] == "/sys/fs/bpf"
    assert volumes[mounts[flags["--ca-dir"]]["name"]]["secret"]["optional"] is True
    assert flags["--bpf-object"].endswith("/tc_from_pod.bpf.o")

    # Privileges: no privileged container; every capability added is one the agent needs,
    # each written down with its reason in daemonset.yaml.
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"NET_ADMIN", "BPF", "PERFMON", "NET_BIND_SERVICE"}
    source = (DEPLOY / "daemonset.yaml").read_text()
    for cap in sc["capabilities"]["add"]:
        line = source.index(f"- {cap}\n")
        assert source[:line].rstrip().splitlines()[-1].strip().startswith("#"), f"{cap} has no reason written above it"
    assert "limits" in agent["resources"] and "requests" in agent["resources"]


SPLICE_CLIENT = r"""
import socket, time
s = socket.create_connection(("198.18.0.20", 7100), timeout=10)
assert s.recv(6) == b"ready\n"
time.sleep(0.3)  # let the proxy hand the connection to the kernel before the bulk of it
s.sendall(b"x" * 100000)
s.shutdown(socket.SHUT_WR)
n = 0
while True:
    d = s.recv(65536)
    if not d:
        break
    n += len(d)
print(n)
"""


def test_the_agent_works_with_only_the_daemonsets_capabilities(rendered, running_agent, lab):
    """The DaemonSet's capability list, proven: the agent runs in the lab's node netns as root
    with every other capability dropped from its bounding set (bpffs is mounted first, as the
    DaemonSet's hostPath provides it), and HTTP, DNS and a kernel-spliced connection work and
    are recorded."""
    if not shutil.which("capsh"):
        pytest.fail("capsh is needed (libcap2-bin)")
    _, objects = rendered
    (agent,) = objects[("DaemonSet", "loupe")]["spec"]["template"]["spec"]["containers"]
    keep = {"cap_" + c.lower() for c in agent["securityContext"]["capabilities"]["add"]}
    bounding = run("capsh", "--print").stdout.split("Bounding set =", 1)[1].splitlines()[0].split(",")
    drop = [c for c in bounding if c and c not in keep]
    running_agent.stop()  # one agent per node: the session's comes back with the next test that needs it
    log = open(lab["tmp"] / "capped-agent.log", "w")
    command = (f"exec {LOUPE} agent --inventory /run/loupe/lab/inventory.yaml --hubble-socket /run/loupe/hubble.sock "
               f"--ca-dir /run/loupe/lab/ca --policy-dir /run/loupe/lab/policies --node-name loupe-node "
               f"--upstream-ca-bundle /tmp/loupe-e2e-tls/cert.pem")
    proc = subprocess.Popen(["ip", "netns", "exec", "loupe-node", "sh", "-c",
                             f"mount -t bpf bpf /sys/fs/bpf && exec capsh --drop={','.join(drop)} -- -c '{command}'"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            assert proc.poll() is None, (lab["tmp"] / "capped-agent.log").read_text()
            if "inventory applied" in (lab["tmp"] / "capped-agent.log").read_text() and \
                    run(LOUPE, "status", check=False).returncode == 0:
                break
            time.sleep(0.2)
        # `ip netns exec` → sh → capsh each exec the next: the agent is proc itself.
        effective = int(re.search(r"CapEff:\s+([0-9a-f]+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1), 16)
        assert set(run("capsh", f"--decode={effective:x}").stdout.strip().split("=", 1)[1].split(",")) == keep
        for _ in range(50):
            if in_pod("shop/client", "curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}",
                      "http://198.18.0.11/users/7", check=False).stdout == "200":
                break
            time.sleep(0.2)
        answer = in_pod("shop/client", "kdig", "+short", "+time=2", "+retry=1", "@198.19.0.10", "api.example.test", "A").stdout
        assert answer.strip() == "198.19.0.11"
        assert in_pod("shop/client", "python3", "-c", SPLICE_CLIENT, timeout=30).stdout.strip() == "100000"
        time.sleep(0.5)
        recorded = [json.loads(l)["flow"] for l in loupe("observe", "--last", "50", "-o", "json").stdout.splitlines()]
        assert any(f.get("l7", {}).get("http", {}).get("url", "").endswith("/users/7") for f in recorded)
        assert any(f.get("l7", {}).get("dns", {}).get("query") == "api.example.test." for f in recorded)
        splice = json.loads(loupe("status", "-o", "json").stdout)["splice"]
        assert splice["started"] >= 1, ({k: v for k, v in splice.items() if v}, loupe("observe", "--last", "3").stdout)
        errors = [l for l in (lab["tmp"] / "capped-agent.log").read_text().splitlines() if " error " in l]
        assert errors == []
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()

