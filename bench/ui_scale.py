#!/usr/bin/env python3
"""`loupe ui` at scale: the agent's synthetic flow source (`--synthetic-workloads`) records flows
between 1,000 made-up workloads over 5,000 client → server pairs at 50k flows/s; `loupe ui`
follows them. Measures loupe ui's CPU (utime+stime from /proc) and RSS, how many flows/s it
took in, /api/graph's answer time (drawn and full size), and in headless Chromium: first
contentful paint, the time to a complete (bounded) map, and frame times while updates arrive.

    LOUPE=.build/release/loupe python3 bench/ui_scale.py [--rate 50000] [--workloads 1000] [--edges 5000]

Needs root (the netns lab), chromium + chromium-driver and selenium (scripts/install-deps.sh).
Reports figures; asserts nothing about speed."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOUPE = os.environ.get("LOUPE", str(REPO / ".build" / "release" / "loupe"))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def get(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t, body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--workloads", type=int, default=1_000)
    ap.add_argument("--edges", type=int, default=5_000)
    ap.add_argument("--seconds", type=int, default=40, help="how long the synthetic source runs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (the netns lab)")
    procs = []
    subprocess.run([LOUPE, "lab", "down"], capture_output=True)
    subprocess.run([LOUPE, "lab", "up", "-f", str(REPO / "examples/starwars/inventory.yaml")], check=True, capture_output=True)
    try:
        log = open("/tmp/loupe-ui-bench-agent.log", "w")
        agent = subprocess.Popen([LOUPE, "agent", "--lab", "--synthetic-flows", str(args.rate * args.seconds),
                                  "--synthetic-flow-rate", str(args.rate), "--synthetic-workloads", str(args.workloads),
                                  "--synthetic-edges", str(args.edges)], stdout=log, stderr=subprocess.STDOUT)
        procs.append(agent)
        for _ in range(100):
            if subprocess.run([LOUPE, "status"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        ui = subprocess.Popen([LOUPE, "ui", "--server", "unix:///run/loupe/hubble.sock", "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(ui)
        url = ui.stdout.readline().split()[2]
        base = url.rstrip("/")
        time.sleep(5)  # the source starts with the UI's follow; let it reach its rate

        status0 = json.loads(get(base + "/api/status")[1])
        cpu0, t0 = cpu_seconds(ui.pid), time.perf_counter()
        time.sleep(10)
        cpu1, t1 = cpu_seconds(ui.pid), time.perf_counter()
        status1 = json.loads(get(base + "/api/status")[1])
        rate_in = (status1["flows_seen"] - status0["flows_seen"]) / (t1 - t0)
        print(f"loupe ui: {100 * (cpu1 - cpu0) / (t1 - t0):.0f}% of a core, RSS {rss_mib(ui.pid):.0f} MiB, "
              f"took in {rate_in:,.0f} flows/s (offered {args.rate:,}), lost by the server {status1['lost_events']}")
        for q in ["", "?max-nodes=2000&max-edges=10000"]:
            dt, body = get(base + "/api/graph" + q)
            g = json.loads(body)
            print(f"/api/graph{q}: {dt * 1000:.0f} ms, {len(body) / 1024:.0f} KiB, {len(g['nodes'])} nodes, {len(g['edges'])} edges "
                  f"(not drawn: {g['hidden']['nodes']} nodes, {g['hidden']['edges']} edges)")

        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
        o = Options()
        for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,768"]:
            o.add_argument(a)
        o.binary_location = shutil.which("chromium")
        d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
        try:
            d.get(url)
            deadline = time.time() + 30
            while time.time() < deadline and not d.execute_script("return document.body.dataset.graphVersion"):
                time.sleep(0.05)
            timing = d.execute_script("""
                const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                const map = performance.getEntriesByName('loupe-map-drawn')[0];
                return {fcp: fcp ? fcp.startTime : null, map: map ? map.startTime : null,
                        cards: document.querySelectorAll('g.card').length, edges: document.querySelectorAll('g.edge').length};""")
            print(f"page: first contentful paint {timing['fcp']:.0f} ms, complete map {timing['map']:.0f} ms after navigation "
                  f"({timing['cards']} cards, {timing['edges']} arrows drawn)")
            frames = d.execute_async_script("""
                const done = arguments[arguments.length - 1], deltas = [];
                let last = performance.now(); const end = last + 10000;
                function tick(now) { deltas.push(now - last); last = now; if (now < end) requestAnimationFrame(tick); else done(deltas); }
                requestAnimationFrame(tick);""")
            frames.sort()
            print(f"frames over 10 s of live updates: {len(frames)}, p50 {frames[len(frames) // 2]:.1f} ms, "
                  f"p95 {frames[int(len(frames) * 0.95)]:.1f} ms, max {frames[-1]:.1f} ms")
        finally:
            d.quit()
        print(f"loupe ui after the page: RSS {rss_mib(ui.pid):.0f} MiB")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run([LOUPE, "lab", "down"], capture_output=True)


if __name__ == "__main__":
    main()
