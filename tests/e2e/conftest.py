"""End-to-end fixtures: the netns lab and the agent, with real clients and servers.

Needs root and a BPF-capable kernel (CI has both); skipped with a reason otherwise.
Every run first removes leftovers of a crashed run (`loupe lab down`), and removes
everything it created at the end.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOUPE = str(REPO / ".build" / "debug" / "loupe")
PIN_DIR = "/sys/fs/bpf/loupe"
SERVER_CERT = "/tmp/loupe-e2e-tls/cert.pem"   # the lab HTTPS server's own certificate (tls_server.py)
# The lab's CNI shape: routed (a veth + host route per pod) or bridged (veths on cni0, as
# flannel). `make test` runs the spine, policy and DNS modules on both.
CNI = os.environ.get("LOUPE_LAB_CNI", "routed")
# The image's content (`make image-rootfs`): when set, the agent runs from it — chroot in the
# lab's node netns — instead of .build/debug/loupe. `make test` runs the spine that way.
ROOTFS = os.path.abspath(os.environ["LOUPE_AGENT_ROOTFS"]) if os.environ.get("LOUPE_AGENT_ROOTFS") else None


def agent_argv(*flags):
    """`loupe agent` on the lab with `flags`: the build's binary with --lab, or the image's from
    ROOTFS with the same settings spelled out (in the chroot there is no lab to look up). Its
    own mount namespace gets the host's /sys (with the bpffs the pins live in), /proc, /dev,
    /run/loupe (lab state, the Hubble socket) and the test certificate; the DaemonSet gives the
    container the same through hostPath volumes."""
    if ROOTFS is None:
        return [LOUPE, "agent", "--lab", *flags]
    binds = ["/run/loupe", "/tmp/loupe-e2e-tls"]
    script = (f'mount --rbind /sys "$0/sys" && mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && '
              + " && ".join(f'mkdir -p "$0{b}" && mount --bind {b} "$0{b}"' for b in binds)
              + ' && exec chroot "$0" /usr/local/bin/loupe agent "$@"')
    lab_flags = ["--inventory", "/run/loupe/lab/inventory.yaml", "--hubble-socket", "/run/loupe/hubble.sock",
                 "--ca-dir", "/run/loupe/lab/ca", "--policy-dir", "/run/loupe/lab/policies", "--node-name", "loupe-node"]
    return ["nsenter", "--net=/var/run/netns/loupe-node", "--", "unshare", "-m", "--propagation", "private",
            "sh", "-c", script, ROOTFS, *lab_flags, *flags]


def run(*args, check=True, timeout=60, input=None):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def loupe(*args, **kw):
    return run(LOUPE, *args, **kw)


def in_pod(pod, *cmd, **kw):
    return loupe("lab", "exec", pod, "--", *cmd, **kw)


def flows(*filters, last=100000):
    out = loupe("observe", "--last", str(last), "-o", "json", *filters).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if line.strip()]


def between(client, server, *filters, last=100000):
    """The flows of connections from pod `client` to pod `server` (`ns/name`), both directions:
    `--from-pod`/`--to-pod` name a flow's source and destination, as in `hubble observe`, so a
    response (server → client) is picked out of `--pod client` here."""
    def pod(e):
        return f"{e.get('namespace', '')}/{e.get('pod_name', '')}"
    fl = [f for f in flows("--pod", client, *filters) if {pod(f["source"]), pod(f["destination"])} == {client, server}]
    return fl[-last:]


def status():
    return json.loads(loupe("status", "-o", "json").stdout)


def render_inventory(tmp_path, annotate_shop=True):
    """The test inventory, or a copy without the shop namespace's annotation (written next to
    the original so LOUPE_INVENTORY_DIR stays the same)."""
    original = REPO / "tests/e2e/inventory.yaml"
    if annotate_shop:
        return original
    text = original.read_text()
    # The first annotation in the file is the shop namespace's.
    start = text.index("  annotations:\n    loupe.io/proxy-visibility:")
    end = text.index("\n", text.index("proxy-visibility:", start)) + 1
    text = text[:start] + text[end:]
    path = REPO / "tests/e2e/.inventory-no-annotation.yaml"
    path.write_text(text)
    return path


class AgentProcess:
    """`loupe agent --lab`, started and stopped by PID."""

    def __init__(self, log_path):
        self.log_path = log_path
        self.proc = None

    def start(self, *extra, trust_lab_servers=True, wait_for_inventory=True):
        """Starts the agent and waits until `loupe status` answers — and, unless told otherwise
        (an agent whose API server is unreachable applies nothing), its inventory is applied."""
        self.log = open(self.log_path, "a")
        mark = Path(self.log_path).stat().st_size if Path(self.log_path).exists() else 0
        # A short DNS timeout keeps the upstream-down test quick.
        # HTTPS interception uses the lab's node CA (made by `lab up`); destinations are trusted
        # through the lab HTTPS servers' own certificate.
        bundle = ["--upstream-ca-bundle", SERVER_CERT] if trust_lab_servers else []
        self.proc = subprocess.Popen(agent_argv("--dns-timeout-ms", "1500", *bundle, *extra),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {Path(self.log_path).read_text()}")
            if (not wait_for_inventory or "inventory applied" in Path(self.log_path).read_text()[mark:]) and \
                    run(LOUPE, "status", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("agent did not come up: " + Path(self.log_path).read_text())

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
            if sig == signal.SIGTERM:
                assert self.proc.returncode == 0, f"agent exited {self.proc.returncode} on SIGTERM"
        self.proc = None
        self.log.close()

    def rss_kib(self):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def lab_leftovers():
    netns = [n.split()[0] for n in run("ip", "netns", "list").stdout.splitlines() if n.startswith("loupe-")]
    pins = os.listdir(PIN_DIR) if os.path.isdir(PIN_DIR) else []
    return netns, pins


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, BPF)")
    if not Path(LOUPE).exists():
        pytest.fail(f"{LOUPE} missing: run `make build` first")
    tmp = tmp_path_factory.mktemp("lab")
    loupe("lab", "down")  # a crashed run's leftovers
    # The lab's HTTPS servers' certificate (tls_server.py in the world, nginx :8443 in backend/web).
    shutil.rmtree("/tmp/loupe-e2e-tls", ignore_errors=True)
    run(sys.executable, str(REPO / "tests/e2e/servers/tls_server.py"), "--make-certificate-only")
    inv = render_inventory(tmp)
    loupe("lab", "up", "-f", str(inv), "--cni", CNI)
    yield {"inventory": inv, "tmp": tmp, "cni": CNI}
    loupe("lab", "down")
    shutil.rmtree("/tmp/loupe-e2e-tls", ignore_errors=True)  # tls_server.py's test certificate
    netns, pins = lab_leftovers()
    assert netns == [] and pins == [], f"left behind: netns {netns}, pins {pins}"


@pytest.fixture(scope="session")
def agent(lab):
    a = AgentProcess(str(lab["tmp"] / "agent.log"))
    a.start()
    yield a
    a.stop()


@pytest.fixture()
def running_agent(agent):
    """The agent, restarted if an earlier test stopped it on purpose; an agent that died by
    itself fails the test (the agent must never crash on traffic)."""
    if agent.proc is None:
        agent.start()
    elif agent.proc.poll() is not None:
        code, log = agent.proc.returncode, Path(agent.log_path).read_text()[-4000:]
        agent.proc = None
        pytest.fail(f"the agent died (exit {code}):\n{log}")
    yield agent
    if agent.proc is not None and agent.proc.poll() is not None:
        log = Path(agent.log_path).read_text()[-4000:]
        agent.proc = None
        pytest.fail(f"the agent died during the test:\n{log}")
