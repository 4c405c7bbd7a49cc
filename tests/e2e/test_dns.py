"""Transparent DNS end to end: kdig in an opted-in pod, a real dnsmasq in the world netns."""
import time

import pytest

from conftest import flows, in_pod, loupe, status

RESOLVER = "198.19.0.10"


def kdig(*args, pod="shop/client", timeout=10):
    return in_pod(pod, "kdig", "+time=3", "+retry=0", f"@{RESOLVER}", *args, check=False, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def resolver_ready(lab):
    for _ in range(50):
        if in_pod("plain/client", "kdig", "+short", "+time=1", "+retry=0", f"@{RESOLVER}", "api.example.test",
                  check=False).stdout.strip() == "198.19.0.11":
            return
        time.sleep(0.2)
    raise AssertionError("dnsmasq in the world netns does not answer")


def dns_flows(query, last=2):
    return [f for f in flows("--protocol", "dns", last=200) if f["l7"]["dns"].get("query") == query][-last:]


def test_a_aaaa_cname_and_nxdomain_get_the_resolvers_answers_and_flows(running_agent):
    assert kdig("+short", "api.example.test").stdout.split() == ["198.19.0.11"]
    req, resp = dns_flows("api.example.test.")
    assert req["l7"]["type"] == "REQUEST" and req["l7"]["dns"]["qtypes"] == ["A"]
    assert req["l4"]["UDP"]["destination_port"] == 53 and req["source"]["pod_name"] == "client"
    assert req["Summary"] == "DNS Query api.example.test. A"
    d = resp["l7"]["dns"]
    assert (d["ips"], d["ttl"], d["rrtypes"], d["observation_source"]) == (["198.19.0.11"], 300, ["A"], "proxy")
    assert d.get("rcode", 0) == 0 and resp["is_reply"] and int(resp["l7"]["latency_ns"]) > 0
    assert resp["Summary"] == 'DNS Answer "198.19.0.11" TTL: 300 (Proxy api.example.test. A)'

    assert kdig("+short", "api.example.test", "AAAA").stdout.split() == ["2001:db8:19::b"]
    assert dns_flows("api.example.test.")[-1]["l7"]["dns"]["ips"] == ["2001:db8:19::b"]

    out = kdig("+short", "edge.example.test").stdout.split()
    assert out == ["www.example.test.", "api.example.test.", "198.19.0.11"]
    d = dns_flows("edge.example.test.")[-1]["l7"]["dns"]
    assert d["cnames"] == ["www.example.test.", "api.example.test."] and d["rrtypes"] == ["CNAME", "CNAME", "A"]

    nx = kdig("nx.example.test")
    assert "status: NXDOMAIN" in nx.stdout
    resp = dns_flows("nx.example.test.")[-1]
    assert resp["l7"]["dns"]["rcode"] == 3
    assert resp["Summary"].startswith("DNS Answer RCode: Non-Existent Domain")
    assert any(f["l7"]["dns"]["query"] == "nx.example.test." for f in flows("--dns-rcode", "NXDOMAIN", last=5))


def test_a_tcp_query_gets_the_answer_and_flows(running_agent):
    out = kdig("+tcp", "+short", "www.example.test", "AAAA")
    assert out.stdout.split() == ["api.example.test.", "2001:db8:19::b"]
    req, resp = dns_flows("www.example.test.")
    assert "TCP" in req["l4"] and req["l4"]["TCP"]["destination_port"] == 53
    assert resp["l7"]["dns"]["ips"] == ["2001:db8:19::b"] and resp["l7"]["dns"]["cnames"] == ["api.example.test."]
    # Several queries on one connection (kdig sends them one after the other with +keepopen).
    out = kdig("+tcp", "+keepopen", "+short", "api.example.test", "A", "api.example.test", "AAAA")
    assert out.stdout.split() == ["198.19.0.11", "2001:db8:19::b"]


def test_ipv6_resolver_is_proxied_too(running_agent):
    out = in_pod("shop/client", "kdig", "+short", "+time=3", "+retry=0", "@2001:db8:19::a", "api.example.test", check=False)
    assert out.stdout.split() == ["198.19.0.11"]
    assert dns_flows("api.example.test.")[-1]["IP"]["ipVersion"] == "IPv6"


def test_a_pod_without_the_annotation_resolves_without_dns_flows(running_agent):
    before = len(flows("--protocol", "dns", "--from-pod", "plain/client", last=1000))
    out = kdig("+short", "www.example.test", pod="plain/client")
    assert out.stdout.split()[-1] == "198.19.0.11"
    assert len(flows("--protocol", "dns", "--from-pod", "plain/client", last=1000)) == before


MALFORMED = """
import socket, sys
cases = {
    "pointer-loop": bytes([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1]),
    "truncated-header": bytes([0, 2, 1, 0, 0, 1]),
    "label-over-63": bytes([0, 3, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64]) + b"a" * 64 + bytes([0, 0, 1, 0, 1]),
    "1000-questions": bytes([0, 4, 1, 0, 0x03, 0xE8, 0, 0, 0, 0, 0, 0]),
}
for name, packet in cases.items():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.sendto(packet, ("%s", 53))
    try:
        data, _ = s.recvfrom(4096)
        print(name, "rcode", data[3] & 0x0F)
    except socket.timeout:
        print(name, "dropped")
""" % RESOLVER


def test_malformed_queries_get_formerr_or_are_dropped_and_counted(running_agent):
    before = status()["proxy"].get("dns_malformed_queries", 0)
    out = in_pod("shop/client", "python3", "-c", MALFORMED, timeout=20).stdout.splitlines()
    assert out == ["pointer-loop rcode 1", "truncated-header dropped", "label-over-63 rcode 1", "1000-questions rcode 1"], out
    assert status()["proxy"]["dns_malformed_queries"] == before + 4
    errors = [f for f in flows("--protocol", "dns", "--verdict", "ERROR", last=10) if "malformed" in f["Summary"]][-4:]
    assert "does not point backwards" in errors[0]["Summary"] and "dropped" in errors[1]["Summary"]
    assert kdig("+short", "api.example.test").stdout.split() == ["198.19.0.11"], "good queries still work"


def test_an_upstream_that_does_not_answer_gets_servfail_and_an_error_flow(running_agent):
    out = in_pod("shop/client", "kdig", "+time=5", "+retry=0", "@198.19.0.99", "api.example.test", check=False, timeout=15)
    assert "status: SERVFAIL" in out.stdout, out.stdout
    f = dns_flows("api.example.test.")[-1]
    assert f["verdict"] == "ERROR" and f["l7"]["dns"]["rcode"] == 2 and "did not answer within 1500 ms" in f["Summary"]


def test_http_to_a_name_resolved_through_the_proxy_carries_destination_names(running_agent):
    ip = kdig("+short", "edge.example.test").stdout.split()[-1]
    # The world's HTTP server may still be starting when this module runs first: wait for it
    # from a pod that is not opted in (no flows).
    for _ in range(100):
        if in_pod("plain/client", "curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip}/",
                  check=False).stdout not in ("", "000"):
            break
        time.sleep(0.2)
    p = in_pod("shop/client", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip}/t13/named", check=False)
    assert p.stdout == "404"  # python's http.server has no such file: a real answer all the same
    req = flows("--http-path", "^/t13/named$", last=2)[0]
    assert req["destination_names"] == ["edge.example.test", "www.example.test", "api.example.test"]
    assert req["destination"]["labels"] == ["reserved:world"]


DNS_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns-only-example, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns:
        - matchPattern: "*.example.test"
"""


def test_dns_policy_refuses_names_it_does_not_allow(running_agent, tmp_path):
    f = tmp_path / "dns-only-example.yaml"
    f.write_text(DNS_POLICY)
    loupe("policy", "apply", "-f", str(f))
    try:
        time.sleep(1.0)
        assert kdig("+short", "api.example.test").stdout.split() == ["198.19.0.11"]
        denied = kdig("resolver.other.test")
        assert "status: REFUSED" in denied.stdout, denied.stdout
        req, resp = dns_flows("resolver.other.test.")
        assert (req["verdict"], req["drop_reason_desc"]) == ("DROPPED", "POLICY_DENIED")
        assert resp["l7"]["dns"]["rcode"] == 5 and resp["verdict"] == "DROPPED"
    finally:
        loupe("policy", "delete", "dns-only-example.yaml")
        time.sleep(1.0)
    kdig("resolver.other.test")  # now the resolver answers (dnsmasq refuses names it has no upstream for)
    assert dns_flows("resolver.other.test.")[-1]["verdict"] == "FORWARDED"


def test_dnsperf_through_the_proxy_loses_no_queries(running_agent):
    queries = "api.example.test A\nwww.example.test AAAA\nnx.example.test A\n"
    p = in_pod("shop/client", "sh", "-c",
               f"printf '{queries}' > /tmp/loupe-dnsperf.txt; "
               f"dnsperf -s {RESOLVER} -d /tmp/loupe-dnsperf.txt -l 3 -Q 300 -c 4 -t 2; rm -f /tmp/loupe-dnsperf.txt",
               timeout=30)
    sent = int(p.stdout.split("Queries sent:")[1].split()[0])
    lost = int(p.stdout.split("Queries lost:")[1].split()[0])
    print(f"dnsperf through Loupe: {sent} sent, {lost} lost")
    assert sent > 500 and lost == 0, p.stdout
