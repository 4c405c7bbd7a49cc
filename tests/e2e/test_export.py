"""Flow export (JSON lines, size rotation, allow/deny filters), `loupe observe --file`, and lost
events announced per consumer: a stalled `loupe observe -f` loses flows for itself only while
the export file and the metrics stay complete."""
import json
import os
import re
import subprocess
import time

from conftest import LOUPE, in_pod, loupe, status

WEB = "198.18.0.11"
RESOLVER = "198.19.0.10"


def restart(agent, *extra):
    agent.stop()
    agent.start(*extra)


def metrics_flows_processed():
    text = loupe("lab", "exec", "node", "--", "curl", "-s", "http://127.0.0.1:9965/metrics").stdout
    return sum(float(v) for v in re.findall(r"^hubble_flows_processed_total\{[^}]*\} (\S+)$", text, re.M))


def test_export_rotates_filters_and_reads_back_with_observe_file(running_agent, tmp_path):
    path = tmp_path / "flows.json"
    restart(running_agent, f"--export-file={path}", "--export-file-max-size-mb=1", "--export-file-max-backups=2",
            "--export-deny=--protocol dns")
    try:
        in_pod("shop/client", "wrk", "-t1", "-c4", "-d3s", f"http://{WEB}/e/export", timeout=30)
        in_pod("shop/client", "kdig", "+time=3", "+retry=0", f"@{RESOLVER}", "api.example.test", "A")
        time.sleep(0.5)
    finally:
        restart(running_agent)  # SIGTERM: the exporter writes what it has queued, then stops
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("flows.json"))
    assert files == ["flows.json", "flows.json.1", "flows.json.2"], files  # rotated, two backups kept
    lines = []
    for name in files:
        size = (tmp_path / name).stat().st_size
        assert size <= (1 << 20), (name, size)
        lines += (tmp_path / name).read_text().splitlines()
    for line in lines:
        rec = json.loads(line)
        assert set(rec) == {"flow", "node_name", "time"}
        assert "dns" not in (rec["flow"].get("l7") or {}), "a DNS flow passed the deny filter"
    assert len(lines) > 1000
    out = loupe("observe", "--file", str(path) + ".1", "--http-status", "200", "-o", "json").stdout.splitlines()
    assert out and all(json.loads(line)["flow"]["l7"]["http"]["code"] == 200 for line in out)
    assert loupe("observe", "--file", str(path) + ".1", "--protocol", "dns").stdout.strip() == ""
    compact = loupe("observe", "--file", str(path) + ".1", "--last", "1").stdout
    assert "/e/export" in compact


def test_a_stalled_observer_loses_flows_for_itself_only(running_agent, tmp_path):
    path = tmp_path / "all.json"
    restart(running_agent, f"--export-file={path}", "--export-file-max-size-mb=100")
    try:
        flows_before = status()["flows"]["total"]
        metric_before = metrics_flows_processed()
        # Nobody reads this follower's output: its pipe, then its socket, then its queue fill up.
        stalled = subprocess.Popen([LOUPE, "observe", "-f", "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        # Until more flows came than its pipe, socket, NIO buffers and queue (16,384) hold: how
        # many seconds that takes depends on the machine (a busy CI runner records fewer).
        for _ in range(8):
            in_pod("shop/client", "wrk", "-t1", "-c8", "-d4s", f"http://{WEB}/e/stall", timeout=30)
            time.sleep(1)
            if status()["lost_events"].get("observer", 0) > 0:
                break
        recorded = status()["flows"]["total"] - flows_before
        lost = status()["lost_events"].get("observer", 0)
        assert lost > 0, status()
        assert "exporter" not in status()["lost_events"]
        assert metrics_flows_processed() - metric_before == recorded  # metrics saw every flow
        # Reading the stalled stream now: it says where it lost flows — after the flows queued
        # before the loss (16,384 and what the pipes held), which a debug build's client decodes
        # and prints at ~1,300 lines/s: allow for that.
        announced = 0
        deadline = time.time() + 120
        fd = stalled.stdout.fileno()
        os.set_blocking(fd, False)
        buf = b""
        while time.time() < deadline and announced == 0:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                time.sleep(0.05)
                continue
            buf += chunk
            for line in buf.split(b"\n"):
                if line.startswith(b'{"lost_events"'):
                    announced += int(json.loads(line)["lost_events"]["num_events_lost"])
            buf = buf[buf.rfind(b"\n") + 1:]
        stalled.kill()
        stalled.wait()
        assert announced > 0
    finally:
        restart(running_agent)
    exported = len(path.read_text().splitlines())
    assert exported >= recorded  # the export is complete (plus flows after the count)


def test_credentials_and_opted_in_query_values_are_redacted_in_flows_and_export(running_agent, tmp_path):
    path = tmp_path / "redacted.json"
    restart(running_agent, f"--export-file={path}", "--redact-http-urlquery", "--redact-http-headers-deny=x-api-key")
    try:
        code = in_pod("shop/client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                      "-H", "Authorization: Bearer s3cr3t", "-H", "Cookie: session=abc123", "-H", "X-Api-Key: k3y",
                      f"http://user:pw@{WEB}/e/redact?token=t0ken&x=1").stdout
        assert code == "200"
        time.sleep(0.5)
        live = [json.loads(line)["flow"] for line in
                loupe("observe", "--http-path", "^/e/redact", "-o", "json", "--last", "2").stdout.splitlines()]
    finally:
        restart(running_agent)
    exported = [json.loads(line)["flow"] for line in path.read_text().splitlines()
                if "/e/redact" in line]
    for flows_seen in (live, exported):
        req = next(f for f in flows_seen if f["l7"]["type"] == "REQUEST")
        headers = {h["key"].lower(): h["value"] for h in req["l7"]["http"]["headers"]}
        assert headers["authorization"] == headers["cookie"] == headers["x-api-key"] == "HUBBLE_REDACTED"
        assert req["l7"]["http"]["url"] == f"http://{WEB}/e/redact?token=HUBBLE_REDACTED&x=HUBBLE_REDACTED"
        text = json.dumps(flows_seen)
        for secret in ("s3cr3t", "abc123", "k3y", "t0ken", "user:pw"):
            assert secret not in text


def test_synthetic_flows_reach_a_follower_or_are_counted_lost_and_the_export_gets_them_all(running_agent, tmp_path):
    """The benchmark's flow-pipeline switch: `--synthetic-flows N` records N flows once a
    follower is attached, as fast as the pipeline takes them. Whatever the follower could not
    take is counted in its stream and in `loupe status`; the export (its own queue) and the
    metrics see every flow. The in-memory buffer keeps `--event-buffer-capacity` of them."""
    n = 50000
    path = tmp_path / "synthetic.json"
    restart(running_agent, f"--synthetic-flows={n}", f"--export-file={path}", "--export-file-max-size-mb=200",
            "--event-buffer-capacity=1000")
    stream = tmp_path / "follower.json"
    follower = subprocess.Popen([LOUPE, "observe", "-f", "-o", "json", "--last", "0"],
                                stdout=open(stream, "w"), stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and "synthetic flows:" not in open(running_agent.log_path).read():
            time.sleep(0.2)
        assert "synthetic flows:" in open(running_agent.log_path).read(), "the synthetic source never ran"
        # The follower drains what was queued for it: wait until its output has not grown for 3 s
        # in a row (one quiet second was not enough on a loaded machine: the follower was stopped
        # with flows still queued for it, counted neither delivered nor lost).
        size, quiet = -1, 0
        while quiet < 3:
            now = stream.stat().st_size
            quiet = quiet + 1 if now == size else 0
            size = now
            time.sleep(1)
        lost_status = status()["lost_events"].get("observer", 0)
        assert status()["flows"]["total"] >= n
        assert status()["flows"]["capacity"] == 1000
        assert len(loupe("observe", "--last", "5000", "-o", "json").stdout.splitlines()) == 1000
        assert metrics_flows_processed() >= n
    finally:
        follower.terminate()
        follower.wait(timeout=20)
        restart(running_agent)  # the exporter writes what it has queued
    out = stream.read_text()
    delivered = sum(1 for line in out.splitlines() if line.startswith('{"flow"'))
    lost_stream = sum(int(json.loads(line)["lost_events"]["num_events_lost"])
                      for line in out.splitlines() if line.startswith('{"lost_events"'))
    assert delivered + lost_stream == n, (delivered, lost_stream)
    assert lost_stream == lost_status
    # The export's queue (65,536) holds them all: nothing may be lost there.
    exported = [line for line in path.read_text().splitlines() if "/synthetic" in line]
    assert len(exported) == n
    rec = json.loads(exported[-1])
    assert rec["flow"]["l7"]["http"]["url"].endswith("/synthetic") and rec["flow"]["Type"] == "L7"
