"""L7 policy end to end: Cilium's rule1 and friends, enforced by the proxy in the lab."""
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import LOUPE, REPO, flows, in_pod, loupe, run

DS = "198.18.0.16"       # default/deathstar (examples/starwars/deathstar.py)
WEB = "198.18.0.11"      # backend/web, visibility only
RULE1 = REPO / "examples/starwars/rule1.yaml"
POLICY_DIR = Path("/run/loupe/lab/policies")


def ship(pod, method, path, *extra, timeout=5):
    """(http code, body, curl exit) for a call from default/POD to the Death Star."""
    p = in_pod(f"default/{pod}", "curl", "-s", "-m", str(timeout), "-X", method, "-w", "\n%{http_code}", *extra,
               f"http://{DS}{path}", check=False, timeout=timeout + 5)
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), body, p.returncode


def apply(path_or_text, name=None):
    if name is not None:
        f = Path("/tmp") / name
        f.write_text(path_or_text)
        path_or_text = f
    loupe("policy", "apply", "-f", str(path_or_text))
    time.sleep(1.0)  # the agent re-reads the directory every 250 ms


@pytest.fixture()
def policies(running_agent):
    """Starts and ends with an empty policy directory."""
    def clear():
        if POLICY_DIR.exists():
            for f in POLICY_DIR.iterdir():
                f.unlink()
        time.sleep(0.8)
    clear()
    for _ in range(50):
        if ship("tiefighter", "GET", "/v1/healthz", timeout=2)[0] == 200:
            break
        time.sleep(0.2)
    yield
    clear()


def test_star_wars_rule1(policies):
    assert ship("tiefighter", "POST", "/v1/request-landing")[:2] == (200, "Ship landed\n")
    assert ship("xwing", "POST", "/v1/request-landing")[:2] == (200, "Ship landed\n")
    apply(RULE1)
    assert ship("tiefighter", "POST", "/v1/request-landing")[:2] == (200, "Ship landed\n")
    code, body, rc = ship("xwing", "POST", "/v1/request-landing")
    assert code == 0 and body == "" and rc != 0, "the x-wing must not connect at all"
    # (text mode turns the body's \r\n into \n; the exact bytes are checked in the keep-alive test)
    assert ship("tiefighter", "PUT", "/v1/exhaust-port")[:2] == (403, "Access denied\n")
    put = flows("--http-method", "PUT", "--pod", "default/tiefighter", last=2)
    assert [(f["l7"]["type"], f["verdict"], f.get("drop_reason_desc")) for f in put] == \
        [("REQUEST", "DROPPED", "POLICY_DENIED"), ("RESPONSE", "DROPPED", "POLICY_DENIED")]
    assert put[1]["l7"]["http"]["code"] == 403
    denied = flows("--from-pod", "default/xwing", "--verdict", "DROPPED", last=1)
    assert denied and denied[0]["Type"] == "L3_L4" and denied[0]["drop_reason_desc"] == "POLICY_DENIED"
    # A drop event with the reason as sub-type: Hubble's printer shows "Policy denied DROPPED".
    assert (denied[0]["event_type"], denied[0]["drop_reason"]) == ({"type": 1, "sub_type": 133}, 133)
    compact = loupe("observe", "--pod", "default/tiefighter", "--verdict", "DROPPED", "--last", "1").stdout
    assert "default/tiefighter" in compact and "DROPPED (HTTP/1.1 403" in compact, compact


KEEPALIVE_AFTER_403 = """
import http.client
c = http.client.HTTPConnection("%s", 80, timeout=5)
c.request("PUT", "/v1/exhaust-port"); r = c.getresponse(); a = (r.status, r.read())
c.request("POST", "/v1/request-landing"); r = c.getresponse(); b = (r.status, r.read())
print(a, b)
""" % DS


def test_a_denied_request_leaves_the_connection_usable(policies):
    apply(RULE1)
    p = in_pod("default/tiefighter", "python3", "-c", KEEPALIVE_AFTER_403, timeout=20)
    assert p.stdout.strip() == "(403, b'Access denied\\r\\n') (200, b'Ship landed\\n')"


def test_rules_match_whole_values_case_sensitively(policies):
    apply(RULE1)
    assert ship("tiefighter", "POST", "/v1/request-landing/extra")[0] == 403
    assert ship("tiefighter", "POST", "/v1/request-landingX")[0] == 403
    # Methods are case-sensitive tokens (RFC 9110): `post` is parsed as HTTP, recorded as
    # spelled, and rule1's `method: "POST"` does not match it (as in Cilium).
    assert ship("tiefighter", "post", "/v1/request-landing")[:2] == (403, "Access denied\n")
    req, resp = flows("--pod", "default/tiefighter", "--verdict", "DROPPED", last=2)
    assert (req["l7"]["http"]["method"], req["drop_reason_desc"]) == ("post", "POLICY_DENIED")
    assert resp["l7"]["http"]["code"] == 403 and resp["Summary"].endswith("(post http://198.18.0.16/v1/request-landing)")
    assert ship("tiefighter", "POST", "/v1/request-landing")[0] == 200


ALLOW_GET = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-get}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/v1/.*"}
"""


@pytest.mark.parametrize("method", ["get", "Get", "BREW", "M-SEARCH"])
def test_a_method_token_the_rule_does_not_name_gets_403_and_a_dropped_flow_naming_it(policies, method):
    apply(ALLOW_GET, "allow-get.yaml")
    assert ship("tiefighter", "GET", "/v1/healthz")[0] == 200
    assert ship("tiefighter", method, "/v1/healthz")[:2] == (403, "Access denied\n")
    req, resp = flows("--pod", "default/tiefighter", "--verdict", "DROPPED", last=2)
    assert [f["l7"]["http"]["method"] for f in (req, resp)] == [method, method]
    assert req["Summary"] == f"HTTP/1.1 {method} http://198.18.0.16/v1/healthz"
    assert resp["l7"]["http"]["code"] == 403


HEADERS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: force}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /v1/, headers: ["X-Has-Force"]}
"""


def test_a_headers_rule_allows_only_with_the_header(policies):
    apply(HEADERS, "force.yaml")
    assert ship("xwing", "GET", "/v1/")[0] == 403
    assert ship("xwing", "GET", "/v1/", "-H", "X-Has-Force: true")[0] == 200


RULE2 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule2}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /v1/}]}
"""

ELSEWHERE = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: elsewhere, namespace: shop}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - toPorts:
    - ports: [{port: "80"}]
      rules: {http: [{}]}
"""


def test_two_policies_add_up_and_another_namespaces_policy_does_not_apply(policies):
    apply(RULE1)
    apply(RULE2, "rule2.yaml")
    apply(ELSEWHERE, "elsewhere.yaml")
    assert ship("tiefighter", "POST", "/v1/request-landing")[0] == 200
    assert ship("tiefighter", "GET", "/v1/")[0] == 200
    assert ship("tiefighter", "PUT", "/v1/exhaust-port")[0] == 403


LOOP = """
import http.client, time, sys
c = http.client.HTTPConnection("%s", 80, timeout=5)
ok = bad = 0
end = time.time() + float(sys.argv[1])
while time.time() < end:
    c.request("POST", "/v1/request-landing"); r = c.getresponse(); r.read()
    if r.status == 200: ok += 1
    else: bad += 1
print(ok, bad)
""" % DS


def test_reload_under_load_applies_edits_and_keeps_the_last_good_set(policies):
    apply(RULE1)
    loop = subprocess.Popen([LOUPE, "lab", "exec", "default/tiefighter", "--", "python3", "-c", LOOP, "4"],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert ship("tiefighter", "GET", "/v1/")[0] == 403
        apply(RULE2, "rule2.yaml")                       # adds GET /v1/
        assert ship("tiefighter", "GET", "/v1/")[0] == 200
        apply_broken = Path("/tmp/rule2.yaml")
        apply_broken.write_text(RULE2.replace("endpointSelector", "endpointSelectr"))
        (POLICY_DIR / "rule2.yaml").write_text(apply_broken.read_text())  # bypasses `apply`'s validation
        time.sleep(1.0)
        assert ship("tiefighter", "GET", "/v1/")[0] == 200, "the last good set must stay in force"
        assert ship("tiefighter", "PUT", "/v1/exhaust-port")[0] == 403
    finally:
        out, _ = loop.communicate(timeout=30)
    ok, bad = map(int, out.split())
    print(f"allowed requests during the reloads: {ok} ok, {bad} failed")
    assert ok > 0 and bad == 0


def test_policy_ports_fail_closed_without_the_proxy_visibility_ports_fail_open(policies, running_agent):
    apply(RULE1)
    running_agent.stop(signal.SIGKILL)
    code, _, rc = ship("tiefighter", "POST", "/v1/request-landing", timeout=2)
    assert code == 0 and rc != 0, "an enforced port must not pass traffic without the proxy"
    p = in_pod("shop/client", "curl", "-s", "-m", "3", f"http://{WEB}/t12/visibility-only", check=False, timeout=8)
    assert p.stdout == "hello from web\n"
    running_agent.start()
    assert ship("tiefighter", "POST", "/v1/request-landing")[0] == 200
    drops = run(LOUPE, "status", "-o", "json").stdout
    assert '"proxy_absent_drop"' in drops


def test_policy_validate_names_file_line_and_field(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text(RULE2.replace("endpointSelector", "endpointSelectr").lstrip())
    fqdn = tmp_path / "fqdn.yaml"
    fqdn.write_text("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: api.example.test}]
""")
    p = loupe("policy", "validate", str(typo), str(fqdn), check=False)
    assert p.returncode == 1
    assert f"{typo}:5: spec.endpointSelectr: unsupported field" in p.stderr, p.stderr
    assert f"{fqdn}:7: spec.egress[0].toFQDNs: unsupported field" in p.stderr, p.stderr
    ok = loupe("policy", "validate", str(RULE1))
    assert ok.stdout.startswith("default/rule1 (CiliumNetworkPolicy): selects {class=deathstar,org=empire}")
