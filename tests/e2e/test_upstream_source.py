"""`--upstream-source pod` (the default): destination pods see the client pod's own address.

The proxy's upstream socket binds the client pod's address (IP_TRANSPARENT); the tc program on
the destination pod's veth (local pods) or on the node's uplink (pods on other nodes, see
test_two_nodes.py) hands the replies back to that socket. Destinations that are not pods (the
world here) keep the node's address. Checked with the servers'
own view of their peer: nginx answers `$remote_addr` on /peer and writes it in its access log,
python's http.server, the gRPC server, the raw TCP and splice servers and the world's HTTPS
server log each peer. Real clients (curl, grpcio, python sockets) in shop/client
(198.18.0.10, 2001:db8:18::a).
"""
import re
import signal
import time
from pathlib import Path

from conftest import flows, in_pod, status
from test_tls import wait_for_server

CLIENT4, CLIENT6 = "198.18.0.10", "2001:db8:18::a"  # shop/client
NODE4, NODE6 = "198.18.0.1", "2001:db8:18::1"        # the lab node's addresses
WEB4, WEB6 = "198.18.0.11", "2001:db8:18::b"         # backend/web: nginx
ECHO = "198.18.0.13"                                  # backend/echo: raw TCP echo :7000
BULK = "198.18.0.20"                                  # backend/bulk: splice_server.py :7100
GREETER = "198.18.0.19:50051"                         # backend/greeter: grpcio
WORLD_API, WORLD_SECURE = "198.19.0.11", "198.19.0.12"
LOGS = Path("/run/loupe/lab/logs")
TRUST = "/run/loupe/lab/ca/trust.pem"   # system roots + the lab's node CA (HTTPS interception)

RAW_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
if sys.argv[3] == "greeting":
    assert s.recv(6) == b"ready\n"
s.sendall(b"ping\n")
got = b""
while len(got) < 5:
    got += s.recv(5 - len(got))
print(got.decode().strip())
"""


def curl(*args):
    out = in_pod("shop/client", "curl", "-sS", "-m", "10", *args, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def log_shows(log, pattern, since, timeout=5):
    """`pattern` appears in the pod's log after byte offset `since` (servers flush per line)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = (LOGS / log).read_text(errors="replace")[since:]
        if re.search(pattern, text):
            return True
        time.sleep(0.1)
    return False


def mark(log):
    return (LOGS / log).stat().st_size


def reply_assigned():
    return status()["datapath"]["reply_assigned"]


def test_servers_local_and_remote_see_the_client_pod(running_agent):
    wait_for_server(8443)  # the world's HTTPS server starts with the lab
    before = reply_assigned()
    nginx, api, greeter, echo, bulk, secure = (mark(n) for n in (
        "backend_web_nginx.log", "world_api.log", "backend_greeter_grpc.log", "backend_echo_tcp.log",
        "backend_bulk_tcp.log", "world_secure.log"))

    # HTTP/1 to a local pod, IPv4 and IPv6: the answer and the access log name the client.
    assert curl(f"http://{WEB4}/peer") == CLIENT4
    assert curl(f"http://[{WEB6}]/peer") == CLIENT6
    assert log_shows("backend_web_nginx.log", rf'(?m)^{re.escape(CLIENT4)} - - .*"GET /peer HTTP/1.1" 200', nginx)
    assert log_shows("backend_web_nginx.log", rf'(?m)^{re.escape(CLIENT6)} - - .*"GET /peer HTTP/1.1" 200', nginx)
    # HTTP/2 (h2c, terminated per stream by the proxy) and gRPC.
    assert curl("--http2-prior-knowledge", f"http://{WEB4}:8080/peer") == CLIENT4
    assert log_shows("backend_web_nginx.log", rf'(?m)^{re.escape(CLIENT4)} - - .*"GET /peer HTTP/2.0" 200', nginx)
    out = in_pod("shop/client", "python3", "tests/e2e/grpc_client.py", GREETER, "unary", "peer", timeout=30).stdout
    assert '"reply": "hello peer"' in out
    assert log_shows("backend_greeter_grpc.log", rf"ipv4:{re.escape(CLIENT4)}:\d+ SayHello", greeter)
    # HTTPS interception (the proxy terminates the client's TLS and opens its own upstream).
    assert curl("--cacert", TRUST, "--resolve", f"web.backend.test:8443:{WEB4}", "https://web.backend.test:8443/peer") == CLIENT4
    https = [f for f in flows("--pod", "shop/client", "--protocol", "http", last=50)
             if f.get("l7", {}).get("http", {}).get("url", "").startswith("https://web.backend.test:8443/peer")]
    assert https, "the HTTPS exchange was intercepted and recorded"
    # Opaque TCP (relayed, then spliced) to local pods.
    assert in_pod("shop/client", "python3", "-c", RAW_CLIENT, ECHO, "7000", "plain").stdout.strip() == "ping"
    assert log_shows("backend_echo_tcp.log", rf"(?m)^{re.escape(CLIENT4)} connected$", echo)
    spliced = status()["splice"]["started"]
    assert in_pod("shop/client", "python3", "-c", RAW_CLIENT, BULK, "7100", "greeting").stdout.strip() == "ping"
    assert log_shows("backend_bulk_tcp.log", rf"(?m)^{re.escape(CLIENT4)} connected to 7100$", bulk)
    assert status()["splice"]["started"] > spliced, "the 7100 connection was spliced"
    # The world is not a pod: a real node masquerades traffic leaving for it (NAT the datapath
    # cannot see past), so it keeps the node's address; pods on other nodes: test_two_nodes.py.
    assert curl(f"http://{WORLD_API}/peer-world") != ""
    assert log_shows("world_api.log", rf'(?m)^{re.escape(NODE4)} - - .*"GET /peer-world HTTP/1.1"', api)
    assert curl("--cacert", TRUST, "--resolve", f"secure.example.test:8443:{WORLD_SECURE}",
                "https://secure.example.test:8443/peer-secure") == "hello over tls"
    assert log_shows("world_secure.log", rf'(?m)^{re.escape(NODE4)} "GET /peer-secure HTTP/1.1" 200', secure)
    # The replies came back through the datapath's steering, on the pods' veths.
    assert reply_assigned() > before
    endpoints = status()["endpoints"]
    assert any(e.get("shape") == "uplink" and e.get("interface") == "lxcworld" for e in endpoints), endpoints


def test_node_source_keeps_the_node_address(running_agent):
    running_agent.stop()
    running_agent.start("--upstream-source", "node")
    try:
        api = mark("world_api.log")
        assert curl(f"http://{WEB4}/peer") == NODE4
        assert curl(f"http://[{WEB6}]/peer") == NODE6
        assert curl(f"http://{WORLD_API}/peer-node") != ""
        assert log_shows("world_api.log", rf'(?m)^{re.escape(NODE4)} - - .*"GET /peer-node HTTP/1.1"', api)
    finally:
        running_agent.stop()
        running_agent.start()


def test_bad_upstream_source_is_refused_by_name(running_agent):
    from conftest import loupe
    out = loupe("agent", "--lab", "--upstream-source", "client", check=False)
    assert out.returncode == 2
    assert '--upstream-source "client": expected pod or node' in out.stderr


def test_fail_open_with_the_proxy_killed(running_agent):
    assert curl(f"http://{WEB4}/peer") == CLIENT4
    running_agent.stop(signal.SIGKILL)  # the tc programs and pinned maps stay; no proxy socket
    # Visibility-only ports pass straight through: the pod reaches the server itself.
    assert curl(f"http://{WEB4}/peer") == CLIENT4
    assert curl(f"http://{WORLD_API}/peer-fail-open") != ""
    assert curl("--http2-prior-knowledge", f"http://{WEB4}:8080/peer") == CLIENT4
