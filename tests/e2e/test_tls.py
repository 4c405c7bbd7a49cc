"""TLS in the lab, against real HTTPS servers (tests/e2e/servers/tls_server.py in the world
netns, nginx with ALPN h2 in backend/web):
- visibility without decryption (`<Egress/443/TCP/TLS>` on the shop namespace): the proxy reads
  the ClientHello, records SNI and ALPN, relays the connection unchanged;
- interception (`<Egress/8443/TCP/HTTPS>`): TLS terminated with a leaf the node CA minted,
  HTTP/1.1 or HTTP/2 inside with https:// flows and policy, the destination verified."""
import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import LOUPE, REPO, flows, in_pod, status
from test_http2 import big_file  # noqa: F401 (fixture: a 32 MiB file nginx serves under /files/)
from test_policy import apply, policies  # noqa: F401 (fixture)

SECURE = "198.19.0.12"               # lab host `secure`: HTTPS for secure.example.test
CERT = "/tmp/loupe-e2e-tls/cert.pem"  # its self-signed certificate (made by the server)
FIXTURES = REPO / "Tests/LoupeProtocolsTests/Fixtures"


def tls_flows(text, last=200):
    """Flows whose Summary contains TEXT (they arrive when the hello or the close is seen)."""
    deadline = time.time() + 5
    while True:
        found = [f for f in flows("--protocol", "tcp", last=last) if text in f["Summary"]]
        if found or time.time() > deadline:
            return found
        time.sleep(0.2)


def wait_for_server(port=443):
    """Wait until the lab's TLS server answers (from a pod that is not opted in)."""
    deadline = time.time() + 20
    while time.time() < deadline:
        if Path(CERT).exists() and in_pod("plain/client", "curl", "-s", "-m", "2", "--cacert", CERT, "--resolve",
                                          f"secure.example.test:{port}:{SECURE}", f"https://secure.example.test:{port}/ready",
                                          check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("the lab's TLS server did not come up")


@pytest.fixture(autouse=True)
def tls_servers_up(lab):
    """The lab's HTTPS server starts with the lab; every test here needs it answering."""
    wait_for_server(443)
    wait_for_server(8443)


VERIFYING_CLIENT = """
import json, socket, ssl
ctx = ssl.create_default_context(cafile="%s")
ctx.set_alpn_protocols(["h2", "http/1.1"])
with socket.create_connection(("%s", 443), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname="secure.example.test") as s:
        cn = dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
        alpn = s.selected_alpn_protocol()
        s.sendall(b"GET /passthrough HTTP/1.1\\r\\nHost: secure.example.test\\r\\nConnection: close\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        print(json.dumps({"cn": cn, "alpn": alpn, "status": data.split(b"\\r\\n")[0].decode(),
                          "body": data.split(b"\\r\\n\\r\\n", 1)[1].decode()}))
""" % (CERT, SECURE)


def test_sni_and_alpn_are_recorded_and_the_client_verifies_the_servers_own_certificate(running_agent):
    wait_for_server()
    out = json.loads(in_pod("shop/client", "python3", "-c", VERIFYING_CLIENT, timeout=20).stdout)
    # Verification against the server's own certificate succeeded: the proxy did not touch TLS.
    assert out == {"cn": "secure.example.test", "alpn": "http/1.1", "status": "HTTP/1.1 200 OK", "body": "hello over tls\n"}
    hello = tls_flows("TLS ClientHello SNI=secure.example.test ALPN=h2,http/1.1")
    assert hello and hello[-1]["destination_names"] == ["secure.example.test"]
    assert hello[-1]["Type"] == "L3_L4" and hello[-1]["verdict"] == "FORWARDED"
    assert hello[-1]["IP"]["destination"] == SECURE and hello[-1]["l4"]["TCP"]["destination_port"] == 443
    closed = tls_flows("TLS connection to secure.example.test closed: ")
    assert closed and closed[-1]["destination_names"] == ["secure.example.test"]


def test_curl_through_the_tls_port(running_agent):
    wait_for_server()
    p = in_pod("shop/client", "curl", "-sS", "-m", "5", "--cacert", CERT, "--resolve", f"secure.example.test:443:{SECURE}",
               "https://secure.example.test/curl")
    assert p.stdout == "hello over tls\n"
    assert tls_flows("TLS ClientHello SNI=secure.example.test ALPN=h2,http/1.1")


SEND = """
import socket, sys, time
data = bytes.fromhex(open(sys.argv[1]).read() if sys.argv[1] != "-" else sys.argv[3])
step = int(sys.argv[2])
s = socket.create_connection(("%s", 443), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(0, len(data), step):
    s.sendall(data[i:i + step])
    time.sleep(0.005)
s.settimeout(2)
try:
    s.recv(100)
except OSError:
    pass
s.close()
""" % SECURE


def send(fixture, step, data=b""):
    """Sends a captured hello (Fixtures/FIXTURE.hex) or DATA to the TLS server, STEP bytes per segment."""
    in_pod("shop/client", "python3", "-c", SEND, str(FIXTURES / f"{fixture}.hex") if fixture else "-", str(step),
           data.hex(), timeout=30)


def test_a_client_hello_split_across_many_segments_is_read_whole(running_agent):
    send("curl", 20)  # curl's hello (SNI api.example.test), 20 bytes per TCP segment
    assert tls_flows("TLS ClientHello SNI=api.example.test ALPN=h2,http/1.1")


def test_a_client_hello_without_sni_says_so(running_agent):
    send("openssl-no-sni", 4096)
    assert tls_flows("TLS ClientHello without SNI")
    assert tls_flows("TLS connection without SNI closed: ")


def test_garbage_and_broken_hellos_on_the_tls_port_are_relayed_and_said(running_agent):
    before = status()["proxy"]
    send(None, 4096, b"this is not TLS at all\r\n")
    assert tls_flows("not TLS on a TLS visibility port (first bytes: opaque): relayed opaque")
    send(None, 4096, bytes([22, 3, 1, 0, 5, 2, 0, 0, 1, 0]))  # a handshake record, but a ServerHello
    broken = tls_flows("TLS ClientHello unreadable (handshake type 2 is not ClientHello (1)): relayed opaque")
    assert broken
    after = status()["proxy"]
    assert after.get("tls_port_not_tls", 0) == before.get("tls_port_not_tls", 0) + 1
    assert after.get("tls_client_hellos_unreadable", 0) == before.get("tls_client_hellos_unreadable", 0) + 1
    assert running_agent.proc.poll() is None


# ---- HTTPS interception (<Egress/8443/TCP/HTTPS>) ----

NODE_CA = "/run/loupe/lab/ca/ca.pem"  # the lab's node CA (`loupe lab up` makes it)
WEB = "198.18.0.11"  # backend/web: nginx `listen 8443 ssl http2`


def curl_https(host, ip, path, *extra, ca=NODE_CA, check=True):
    return in_pod("shop/client", "curl", "-sS", "-m", "5", *(["--cacert", ca] if ca else []), "--resolve",
                  f"{host}:8443:{ip}", *extra, f"https://{host}:8443{path}", check=check, timeout=20)


def test_intercepted_https_gives_https_flows_for_http1(running_agent):
    wait_for_server(8443)
    assert curl_https("secure.example.test", SECURE, "/intercepted").stdout == "hello over tls\n"
    req, resp = flows("--http-path", "^/intercepted$", last=2)
    assert req["l7"]["http"]["url"] == "https://secure.example.test:8443/intercepted"
    assert req["l7"]["http"]["protocol"] == "HTTP/1.1" and resp["l7"]["http"]["code"] == 200
    assert req["destination_names"] == ["secure.example.test"]


def test_intercepted_https_with_alpn_h2_gives_http2_flows(running_agent):
    out = curl_https("web.backend.test", WEB, "/h2tls", "--http2", "-w", " %{http_version}").stdout
    assert out == "hello over h2 and tls\n 2"
    req, resp = flows("--http-path", "^/h2tls$", last=2)
    assert req["l7"]["http"]["protocol"] == "HTTP/2" and req["l7"]["http"]["url"] == "https://web.backend.test:8443/h2tls"
    assert resp["l7"]["http"]["code"] == 200


def shared_upstream_serials(n):
    """N client connections in turn, each its own TLS connection with ALPN h2: the destination's
    connection serial each request came on, and each client connection's local port."""
    outs = [curl_https("web.backend.test", WEB, "/connection", "--http2", "-w", " %{http_version} %{local_port}").stdout.split()
            for _ in range(n)]
    assert all(o[1] == "2" for o in outs), outs
    return [o[0] for o in outs], [o[2] for o in outs]


def test_https_h2_client_connections_share_one_connection_to_the_destination(running_agent):
    # Shared per event loop (a connection and its upstream use the same one): the lab's agent
    # has one per core, so six client connections share at most that many.
    before = status()["proxy"].get("https_upstream_shared", 0)
    serials, ports = shared_upstream_serials(6)
    assert len(set(ports)) == 6, "six client connections"
    assert len(set(serials)) < 6, f"the destination saw fewer connections than the clients made: {serials}"
    assert status()["proxy"]["https_upstream_shared"] >= before + 6 - len(set(serials))
    # Flows stay per client connection and per request.
    fl = flows("--http-path", "^/connection$", last=12)
    assert [f["l7"]["type"] for f in fl] == ["REQUEST", "RESPONSE"] * 6
    assert {str(f["l4"]["TCP"]["source_port"]) for f in fl if not f["is_reply"]} == set(ports)
    assert all(f["l7"]["http"]["code"] == 200 for f in fl if f["is_reply"])


def test_many_concurrent_https_h2_client_connections_over_shared_upstream_connections(running_agent):
    before = status()["proxy"]
    out = in_pod("shop/client", "h2load", "-n", "400", "-c", "40", "-m", "4", f"--connect-to={WEB}:8443",
                 "https://web.backend.test:8443/connection", timeout=60).stdout
    assert "400 succeeded, 0 failed, 0 errored" in out, out
    after = status()["proxy"]
    assert after.get("https_upstream_shared", 0) - before.get("https_upstream_shared", 0) >= 20, (before, after)
    assert after.get("http2_protocol_errors", 0) == before.get("http2_protocol_errors", 0)


def test_a_client_that_goes_mid_download_leaves_the_shared_connection_to_the_others(running_agent, big_file):
    running_agent.stop()
    try:
        running_agent.start("--threads", "1")
        before = status()["proxy"]
        # A slow download cut short (curl gives up after 2 s): its client connection goes with
        # its stream on the shared connection still open.
        slow = subprocess.Popen([LOUPE, "lab", "exec", "shop/client", "--", "curl", "-sS", "--http2", "--cacert", NODE_CA,
                                 "--limit-rate", "200k", "-m", "2", "-o", "/dev/null", "--resolve", f"web.backend.test:8443:{WEB}",
                                 "https://web.backend.test:8443/files/big.bin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        during, _ = shared_upstream_serials(2)
        assert slow.wait(timeout=20) == 28, "curl timed out mid-download"
        after, _ = shared_upstream_serials(2)
        assert len(set(during + after)) == 1, f"one connection to the destination throughout: {during + after}"
        big = flows("--http-path", "^/files/big.bin$", last=2)
        assert [f["l7"]["type"] for f in big] == ["REQUEST", "RESPONSE"] and big[1]["l7"]["http"]["code"] == 200
        now = status()["proxy"]
        assert now.get("http2_protocol_errors", 0) == before.get("http2_protocol_errors", 0)
        assert now["https_upstream_shared"] - before.get("https_upstream_shared", 0) >= 4
    finally:
        running_agent.stop()
        running_agent.start()


def test_one_event_loop_shares_one_connection_and_upstream_sharing_1_none(running_agent):
    running_agent.stop()
    try:
        running_agent.start("--threads", "1")
        serials, _ = shared_upstream_serials(3)
        assert len(set(serials)) == 1, serials
        # Once the destination has a shared connection, a new client connection connects a socket
        # of its own only if its ClientHello cannot share (here: HTTP/1.1 only). nginx numbers
        # every connection it accepts: the two that shared made none.
        shared_upstream_serials(2)
        h1 = curl_https("web.backend.test", WEB, "/connection", "--http1.1").stdout.strip()
        assert int(h1) == int(serials[0]) + 1, f"shared on {serials[0]}, then an HTTP/1.1 connection got {h1}"
        running_agent.stop()
        running_agent.start("--threads", "1", "--upstream-sharing", "1")
        serials, _ = shared_upstream_serials(3)
        assert len(set(serials)) == 3, serials
        assert status()["proxy"].get("https_upstream_shared", 0) == 0
    finally:
        running_agent.stop()
        running_agent.start()


WEB_TLS_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-tls, namespace: backend}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "8443", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/h2tls"}
"""


def test_a_policy_denies_get_secret_inside_tls(policies):
    apply(WEB_TLS_POLICY, "web-tls.yaml")
    assert curl_https("web.backend.test", WEB, "/h2tls", "--http2").stdout == "hello over h2 and tls\n"
    p = curl_https("web.backend.test", WEB, "/secret", "--http2", "-w", "%{http_code}")
    assert p.stdout == "Access denied\n403"  # (text mode reads \r\n as \n)
    denied = flows("--http-path", "^/secret$", "--verdict", "DROPPED", last=2)
    assert [f["l7"]["type"] for f in denied] == ["REQUEST", "RESPONSE"]
    assert denied[0]["l7"]["http"]["url"] == "https://web.backend.test:8443/secret"


def test_a_destination_with_the_wrong_name_gets_502_and_an_error_flow(running_agent):
    p = curl_https("other.example.test", SECURE, "/wrong", "-w", "%{http_code}")
    assert p.stdout.startswith("Bad Gateway: ") and p.stdout.endswith("502"), p.stdout
    assert "other.example.test" in p.stdout
    refused = tls_flows("HTTPS destination other.example.test refused: ")
    assert refused and refused[-1]["verdict"] == "ERROR" and "Hostname" in refused[-1]["Summary"]


def test_a_destination_with_an_untrusted_issuer_gets_502_and_an_error_flow(running_agent):
    wait_for_server(8443)
    running_agent.stop()
    running_agent.start(trust_lab_servers=False)  # the lab server's self-signed cert: not in the system roots
    try:
        p = curl_https("secure.example.test", SECURE, "/untrusted-issuer", "-w", "%{http_code}")
        assert p.stdout.startswith("Bad Gateway: ") and p.stdout.endswith("502"), p.stdout
        refused = tls_flows("HTTPS destination secure.example.test refused: ")
        assert refused and refused[-1]["verdict"] == "ERROR"
    finally:
        running_agent.stop()
        running_agent.start()


LEAF = """
import hashlib, json, socket, ssl
ctx = ssl.create_default_context(cafile="%s")
with socket.create_connection(("%s", 8443), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname="secure.example.test") as s:
        cert = s.getpeercert()
        print(json.dumps({"issuer": dict(x[0] for x in cert["issuer"])["commonName"],
                          "san": cert["subjectAltName"],
                          "sha256": hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()}))
""" % (NODE_CA, SECURE)


def test_the_pod_sees_a_minted_leaf_that_chains_to_the_node_ca_and_is_reused(running_agent):
    first = json.loads(in_pod("shop/client", "python3", "-c", LEAF, timeout=20).stdout)
    second = json.loads(in_pod("shop/client", "python3", "-c", LEAF, timeout=20).stdout)
    # Verified against the node CA only (create_default_context(cafile=…)), for the SNI.
    assert first["issuer"] == "Loupe node CA loupe-node"
    assert first["san"] == [["DNS", "secure.example.test"]]
    assert first["sha256"] == second["sha256"]  # from the cache


def test_the_lab_installs_the_node_ca_into_pods_that_opt_into_interception(running_agent):
    # No --cacert: shop/client opts into <Egress/8443/TCP/HTTPS>, so the lab gives its processes
    # a trust bundle with the node CA (SSL_CERT_FILE, CURL_CA_BUNDLE, …).
    wait_for_server(8443)
    assert curl_https("secure.example.test", SECURE, "/trusted-by-the-lab", ca=None).stdout == "hello over tls\n"
    env = in_pod("shop/client", "env").stdout
    assert "CURL_CA_BUNDLE=/run/loupe/lab/ca/trust.pem" in env
    assert "/run/loupe/lab/ca/trust.pem" not in in_pod("plain/client", "env").stdout


def test_a_pod_that_does_not_trust_the_node_ca_fails_its_handshake_and_a_flow_says_so(running_agent):
    # Trusting only the destination's own certificate, not the node CA.
    p = curl_https("secure.example.test", SECURE, "/untrusted", ca=CERT, check=False)
    assert p.returncode == 60, p.stderr  # curl: peer certificate cannot be authenticated
    assert tls_flows("HTTPS handshake with the pod for secure.example.test failed: ")
