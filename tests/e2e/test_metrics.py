"""Prometheus metrics: a real Prometheus (Debian's package) in the lab's node netns scrapes
the agent's /metrics (127.0.0.1:9965 there, Hubble's port); PromQL answers must match the
traffic the test sends."""
import json
import subprocess
import time
import urllib.parse

import pytest

from conftest import LOUPE, in_pod, loupe

WEB = "198.18.0.11"       # backend/web (nginx): 200
API = "198.19.0.11"       # world host api.example.test (python http.server): 404 for unknown paths
RESOLVER = "198.19.0.10"
PROM = "127.0.0.1:19090"  # not 9090: a packaged Prometheus may run there


def node(*cmd, **kw):
    return loupe("lab", "exec", "node", "--", *cmd, **kw)


@pytest.fixture(scope="module")
def prometheus(lab, tmp_path_factory):
    d = tmp_path_factory.mktemp("prometheus")
    (d / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n- job_name: loupe\n  static_configs: [{targets: ['127.0.0.1:9965']}]\n")
    log = open(d / "prometheus.log", "w")
    proc = subprocess.Popen([LOUPE, "lab", "exec", "node", "--", "prometheus", f"--config.file={d}/prometheus.yml",
                             f"--storage.tsdb.path={d}/data", f"--web.listen-address={PROM}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(150):
            if node("curl", "-s", "-m", "1", f"http://{PROM}/-/ready", check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("prometheus did not come up: " + (d / "prometheus.log").read_text()[-2000:])
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def promql(query):
    out = node("curl", "-s", "-m", "5", f"http://{PROM}/api/v1/query?query=" + urllib.parse.quote(query)).stdout
    reply = json.loads(out)
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def by(query, label):
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in promql(query)}


def wait_for_delta(query, label, before, expected, timeout=15):
    deadline = time.time() + timeout
    while True:
        now = by(query, label)
        delta = {k: now.get(k, 0) - before.get(k, 0) for k in expected}
        if delta == expected or time.time() > deadline:
            return delta
        time.sleep(0.5)


def nonempty(expr, timeout=10):
    deadline = time.time() + timeout
    while True:
        result = promql(expr)
        if result or time.time() > deadline:
            return result
        time.sleep(0.5)


def scraped(running_agent):
    for _ in range(60):
        if promql('up{job="loupe"} == 1'):
            return
        time.sleep(0.5)
    raise AssertionError("prometheus never scraped the agent")


def test_promql_http_requests_by_status_match_the_traffic(running_agent, prometheus):
    scraped(running_agent)
    q = 'sum by (status) (hubble_http_requests_total{source_namespace="shop",source_workload="client",reporter="client"})'
    before = by(q, "status")
    for i in range(5):
        assert in_pod("shop/client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{WEB}/m/ok{i}").stdout == "200"
    for i in range(3):
        assert in_pod("shop/client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                      f"http://{API}/m/missing{i}").stdout == "404"
    assert wait_for_delta(q, "status", before, {"200": 5.0, "404": 3.0}) == {"200": 5.0, "404": 3.0}
    # The dashboard's latency query has data, by workload (rate() needs two scrapes of a series).
    lat = nonempty('histogram_quantile(0.5, sum by (le, destination_workload) '
                   '(rate(hubble_http_request_duration_seconds_bucket{source_workload="client"}[1m])))')
    assert any(r["metric"].get("destination_workload") == "web" for r in lat), lat


def test_promql_dns_responses_by_rcode_match_the_queries(running_agent, prometheus):
    scraped(running_agent)
    q = 'sum by (rcode) (hubble_dns_responses_total{source_namespace="shop",source_workload="client"})'
    before = by(q, "rcode")
    for name in ["api.example.test"] * 3 + ["nx.example.test"] * 2:
        in_pod("shop/client", "kdig", "+time=3", "+retry=0", f"@{RESOLVER}", name, "A")
    expected = {"No Error": 3.0, "Non-Existent Domain": 2.0}
    assert wait_for_delta(q, "rcode", before, expected) == expected
    assert by('sum(hubble_dns_queries_total{source_namespace="shop"})', "")[""] >= 5


def test_metrics_labels_carry_no_urls_or_header_values_and_operational_series_exist(running_agent, prometheus):
    in_pod("shop/client", "curl", "-s", "-o", "/dev/null", "-H", "Authorization: Bearer s3cr3t-token",
           f"http://{WEB}/m/private-path?user=alice")
    time.sleep(0.5)
    text = node("curl", "-s", "-m", "5", "http://127.0.0.1:9965/metrics").stdout
    for secret in ("private-path", "alice", "s3cr3t-token", "Bearer"):
        assert secret not in text
    for family in ("hubble_flows_processed_total", "hubble_http_requests_total", "hubble_http_request_duration_seconds_bucket",
                   "hubble_policy_verdicts_total", "hubble_lost_events_total", "loupe_datapath_packets_total",
                   "loupe_proxy_events_total", "loupe_flows_recorded_total"):
        assert f"\n{family}" in text, family
    assert node("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9965/other").stdout == "404"


def test_the_grafana_dashboard_loads_and_every_query_in_it_returns_data(running_agent, prometheus):
    from conftest import REPO
    dash = json.loads((REPO / "examples/grafana/loupe-dashboard.json").read_text())
    # The shape Grafana imports: a titled dashboard with a uid, panels with a type, a title, a
    # grid position and Prometheus targets.
    assert isinstance(dash["title"], str) and dash["uid"] and isinstance(dash["schemaVersion"], int)
    assert dash["templating"]["list"][0]["type"] == "datasource"
    exprs = []
    for p in dash["panels"]:
        assert p["type"] in ("timeseries", "stat") and p["title"] and set(p["gridPos"]) == {"h", "w", "x", "y"}
        assert p["datasource"]["type"] == "prometheus" and p["targets"]
        exprs += [t["expr"] for t in p["targets"]]
    assert len(exprs) >= 8
    # Traffic every panel needs: requests with 200 and 404, DNS with NXDOMAIN.
    scraped(running_agent)
    for _ in range(3):
        in_pod("shop/client", "curl", "-s", "-o", "/dev/null", f"http://{WEB}/m/dash")
        in_pod("shop/client", "curl", "-s", "-o", "/dev/null", f"http://{API}/m/dash-missing")
        in_pod("shop/client", "kdig", "+time=3", "+retry=0", f"@{RESOLVER}", "nx.example.test", "A")
    time.sleep(3)
    empty = [expr for expr in exprs if not nonempty(expr)]
    assert empty == [], f"queries without data: {empty}"
