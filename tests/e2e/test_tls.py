"""TLS visibility without decryption (`<Egress/443/TCP/TLS>` on the shop namespace): the proxy
reads the ClientHello, records its SNI and ALPN, and relays the connection unchanged to a real
HTTPS server in the world netns (tests/e2e/servers/tls_server.py)."""
import json
import time
from pathlib import Path

from conftest import REPO, flows, in_pod, status

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


def wait_for_server():
    """The lab's TLS server makes its certificate when it starts: wait until it answers (from a
    pod that is not opted in)."""
    deadline = time.time() + 20
    while time.time() < deadline:
        if Path(CERT).exists() and in_pod("plain/client", "curl", "-s", "-m", "2", "--cacert", CERT, "--resolve",
                                          f"secure.example.test:443:{SECURE}", "https://secure.example.test/ready",
                                          check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("the lab's TLS server did not come up")


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
