"""Packets the tc program must parse past their first header: IPv6 with Hop-by-Hop or
Destination Options headers and IPv4 with options, sent by a lab pod's own TCP socket (the
IPV6_HOPOPTS / IPV6_DSTOPTS / IP_OPTIONS socket options put them on every segment, SYN
included). To a port with an HTTP rule they must be steered (flows, 403 for a denied request)
or dropped — never answered by the server unseen; to a visibility-only port the connection
works and is recorded."""
import pytest

from conftest import flows, in_pod, status
from test_policy import RULE1, apply, policies  # noqa: F401 (fixture)

DS4, DS6 = "198.18.0.16", "2001:db8:18::10"    # default/deathstar: rule1 on :80 (enforced)
WEB4, WEB6 = "198.18.0.11", "2001:db8:18::b"   # backend/web nginx :80, visibility only

CLIENT = r"""
import socket, sys
kind, host, method, path = sys.argv[1:5]
v6 = ":" in host
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
pad = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # next header (kernel-filled), length 0, PadN of 4
if kind == "hop":
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, pad)
elif kind == "dst":
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, pad)
elif kind == "ipopt":
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 1, 1, 0]))  # NOP NOP NOP EOL: IHL 6
s.settimeout(5)
try:
    s.connect((host, 80))
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    print(data.split(b"\r\n")[0].decode(), "|", data.rpartition(b"\r\n\r\n")[2].decode().strip())
except OSError as e:
    print("ERROR", type(e).__name__)
"""

KINDS = [("hop", DS6, WEB6), ("dst", DS6, WEB6), ("ipopt", DS4, WEB4)]


def send(pod, kind, host, method, path):
    return in_pod(pod, "python3", "-c", CLIENT, kind, host, method, path, timeout=20).stdout.strip()


@pytest.mark.parametrize("kind,ds,_web", KINDS)
def test_options_and_extension_headers_to_an_enforced_port_are_steered(policies, kind, ds, _web):
    apply(RULE1)
    before = status()["datapath"]
    assert send("default/tiefighter", kind, ds, "PUT", "/v1/exhaust-port") == "HTTP/1.1 403 Forbidden | Access denied"
    put = flows("--pod", "default/tiefighter", "--http-method", "PUT", last=2)
    assert [(f["l7"]["type"], f["verdict"]) for f in put] == [("REQUEST", "DROPPED"), ("RESPONSE", "DROPPED")]
    assert put[0]["IP"]["ipVersion"] == ("IPv6" if ":" in ds else "IPv4")
    assert send("default/tiefighter", kind, ds, "POST", "/v1/request-landing") == "HTTP/1.1 200 OK | Ship landed"
    after = status()["datapath"]
    assert after["assigned_listener"] >= before["assigned_listener"] + 2
    assert after.get("unparseable_drop", 0) == before.get("unparseable_drop", 0)


@pytest.mark.parametrize("kind,_ds,web", KINDS)
def test_options_and_extension_headers_to_a_visibility_port_work_and_are_recorded(running_agent, kind, _ds, web):
    path = f"/t-headers/{kind}"
    assert send("shop/client", kind, web, "GET", path) == "HTTP/1.1 200 OK | hello from web"
    fl = flows("--http-path", f"^{path}$")
    assert [(f["l7"]["type"], f["verdict"]) for f in fl] == [("REQUEST", "FORWARDED"), ("RESPONSE", "FORWARDED")]


# A TCP SYN split into two IPv4 fragments, crafted on a raw socket (the pod is root in the lab):
# the first fragment holds the whole TCP header (24 bytes with an MSS option), the second 8
# bytes of data. Prints whether a SYN-ACK came back from the server within a second.
FRAGMENTED_SYN = r"""
import random, socket, struct, sys, time
src, dst, dport = sys.argv[1], sys.argv[2], int(sys.argv[3])
sport = random.randint(20000, 60000)
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
data = b"fragment"
tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 6 << 4, 0x02, 64240, 0, 0) + struct.pack("!BBH", 2, 4, 1460)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp) + len(data))
tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp + data)) + tcp[18:]
payload = tcp + data
ident = random.randint(1, 65535)
def ip(frag, part):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), ident, frag, 64, 6, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + part
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
rx.settimeout(0.2)
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
tx.sendto(ip(0x2000, payload[:24]), (dst, 0))          # more fragments, offset 0
tx.sendto(ip(24 // 8, payload[24:]), (dst, 0))         # offset 3 (× 8 bytes), last
deadline = time.time() + 1.0
answered = False
while time.time() < deadline and not answered:
    try:
        pkt = rx.recv(65535)
    except socket.timeout:
        continue
    ihl = (pkt[0] & 0xf) * 4
    s_port, d_port, _, _, _, flags = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
    answered = s_port == dport and d_port == sport and flags & 0x12 == 0x12
print("SYN-ACK" if answered else "silence")
"""

TIEFIGHTER4 = "198.18.0.17"
CLIENT4 = "198.18.0.10"   # shop/client


def test_a_fragmented_syn_to_an_enforced_port_is_dropped_and_counted(policies):
    apply(RULE1)
    before = status()["datapath"]
    out = in_pod("default/tiefighter", "python3", "-c", FRAGMENTED_SYN, TIEFIGHTER4, DS4, "80", timeout=15).stdout.strip()
    after = status()["datapath"]
    assert out == "silence", "the server answered a fragmented SYN the proxy never saw"
    assert after["fragment_drop"] == before["fragment_drop"] + 1
    assert after["later_fragment_pass"] == before["later_fragment_pass"] + 1


def test_a_fragmented_syn_to_a_visibility_port_passes_and_is_counted(running_agent):
    before = status()["datapath"]
    out = in_pod("shop/client", "python3", "-c", FRAGMENTED_SYN, CLIENT4, WEB4, "80", timeout=15).stdout.strip()
    after = status()["datapath"]
    assert out == "SYN-ACK", "fail open: the datagram reaches the server unrecorded"
    assert after["fragment_pass"] == before["fragment_pass"] + 1
