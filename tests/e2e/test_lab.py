"""The lab's own processes: started with a clean signal state (no blocked signals inherited
from the CLI's threads), so a lab dnsmasq keeps reaping its DNS-over-TCP children, and
removing a pod stops it with SIGTERM rather than SIGKILL."""
import time
from pathlib import Path

from conftest import REPO, in_pod, loupe

RESOLVER = "198.19.0.10"   # world/resolver (dnsmasq)
PIDS = Path("/run/loupe/lab/pids")
PROBE_MARK = Path("/tmp/loupe-e2e-sigterm-probe")


def status_field(pid, name):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split()[1]
    return None


def test_lab_processes_start_with_no_blocked_signals(lab):
    checked = []
    for f in sorted(PIDS.glob("*.pid")):
        pid = int(f.read_text())
        if not Path(f"/proc/{pid}").exists():
            continue
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        if comm in ("nginx", "bash", "pyenv-exec"):
            # nginx's master blocks its own signals between sigsuspend calls; bash/pyenv-exec is
            # python's pyenv shim still on its way to exec python (it blocks SIGINT briefly).
            continue
        checked.append((f.stem, comm, status_field(pid, "SigBlk")))
    assert checked and all(blk == "0000000000000000" for _, _, blk in checked), checked
    assert any(comm == "dnsmasq" for _, comm, _ in checked), checked
    # A command run with `lab exec` too.
    out = in_pod("plain/client", "grep", "SigBlk", "/proc/self/status").stdout
    assert out.split() == ["SigBlk:", "0000000000000000"], out


def fifty_tcp_queries(pod):
    answers = []
    for _ in range(50):
        p = in_pod(pod, "kdig", "+tcp", "+short", "+time=2", "+retry=0", f"@{RESOLVER}", "api.example.test",
                   check=False, timeout=10)
        answers.append(p.stdout.strip())
    return answers


def test_fifty_sequential_dns_over_tcp_queries_all_succeed_directly_and_through_loupe(running_agent):
    # plain/client is not opted in (straight to dnsmasq); shop/client's port 53 goes through Loupe.
    assert fifty_tcp_queries("plain/client") == ["198.19.0.11"] * 50
    assert fifty_tcp_queries("shop/client") == ["198.19.0.11"] * 50


PROBE = """
---
apiVersion: v1
kind: Pod
metadata:
  name: sigterm-probe
  namespace: plain
spec:
  containers:
  - name: probe
    command: ["python3", "-c", "import signal, sys, time\\nmark = sys.argv[1]\\ndef term(*_):\\n    open(mark, 'w').write('SIGTERM')\\n    sys.exit(0)\\nsignal.signal(signal.SIGTERM, term)\\nopen(mark, 'w').write('ready')\\nwhile True:\\n    time.sleep(1)\\n", "%s"]
""" % PROBE_MARK


def test_removing_a_pod_stops_its_processes_with_sigterm(lab):
    PROBE_MARK.unlink(missing_ok=True)
    with_probe = REPO / "tests/e2e/.inventory-probe.yaml"
    with_probe.write_text(Path(lab["inventory"]).read_text() + PROBE)
    try:
        loupe("lab", "up", "-f", str(with_probe))
        deadline = time.time() + 10
        while time.time() < deadline and not (PROBE_MARK.exists() and PROBE_MARK.read_text() == "ready"):
            time.sleep(0.1)
        assert PROBE_MARK.read_text() == "ready", "the probe pod did not start"
    finally:
        out = loupe("lab", "up", "-f", str(lab["inventory"]))
        with_probe.unlink(missing_ok=True)
    assert "pod plain/sigterm-probe: removed" in out.stdout, out.stdout
    assert "SIGKILL" not in out.stdout, out.stdout
    assert PROBE_MARK.read_text() == "SIGTERM"
    PROBE_MARK.unlink()
