"""The spine, end to end in the netns lab: curl/wrk/python clients in pods, nginx and python
servers in pods, the tc redirect, the Swift proxy, and `loupe observe`."""
import hashlib
import os
import re
import signal
import threading
import time

import pytest

from conftest import REPO, agent_argv, between, flows, in_pod, loupe, render_inventory, run, status

WEB = "198.18.0.11"      # backend/web (nginx) — the lab allocates in inventory order from .10
FILES = "198.18.0.12"    # backend/files (python bodies server)
ECHO = "198.18.0.13"     # backend/echo (raw TCP)
API = "198.18.0.14"      # backend/api (python http.server, Ingress-annotated)
WEB6 = "2001:db8:18::b"


def curl(pod, url, *extra, timeout=10):
    p = in_pod(pod, "curl", "-sS", "-m", str(timeout), "-w", "\n%{http_code}", *extra, url, check=False, timeout=timeout + 5)
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), body, p


def wait_for(pod, url, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, _, _ = curl(pod, url, timeout=2)
        if code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} not answering from {pod}")


@pytest.fixture(scope="module", autouse=True)
def servers_ready(lab):
    for url in (f"http://{WEB}/", f"http://{FILES}:8000/", f"http://{API}:8080/"):
        wait_for("plain/client", url)


def test_opted_in_curl_gets_real_body_and_request_response_flows(running_agent):
    code, body, _ = curl("shop/client", f"http://{WEB}/t1/hello")
    assert (code, body) == (200, "hello from web\n")
    fl = flows("--http-path", "^/t1/hello$")
    assert [f["l7"]["type"] for f in fl] == ["REQUEST", "RESPONSE"]
    req, resp = fl
    assert req["l7"]["http"]["method"] == "GET"
    assert req["l7"]["http"]["url"] == f"http://{WEB}/t1/hello"
    assert req["source"]["namespace"] == "shop" and req["source"]["pod_name"] == "client"
    assert "k8s:app=client" in req["source"]["labels"]
    assert req["destination"]["namespace"] == "backend" and req["destination"]["pod_name"] == "web"
    assert "k8s:tier=api" in req["destination"]["labels"]
    assert req["traffic_direction"] == "EGRESS" and req["is_reply"] is False and req["verdict"] == "FORWARDED"
    assert resp["l7"]["http"]["code"] == 200 and resp["is_reply"] is True
    assert int(resp["l7"]["latency_ns"]) > 0
    assert resp["source"]["pod_name"] == "web" and resp["destination"]["pod_name"] == "client"
    assert resp["Summary"].startswith("HTTP/1.1 200 ")
    # compact output, as hubble prints it
    compact = loupe("observe", "--last", "2", "--http-path", "^/t1/hello$").stdout
    assert re.search(r"shop/client:\d+ \(ID:\d+\) -> backend/web:80 \(ID:\d+\) http-request FORWARDED \(HTTP/1.1 GET http://198.18.0.11/t1/hello\)", compact), compact


def test_ipv6_is_redirected_too(running_agent):
    code, body, _ = curl("shop/client", f"http://[{WEB6}]/t1/v6")
    assert (code, body) == (200, "hello from web\n")
    fl = flows("--http-path", "^/t1/v6$")
    assert len(fl) == 2 and fl[0]["IP"]["ipVersion"] == "IPv6"


def test_pod_not_opted_in_works_without_l7_flows(running_agent):
    code, body, _ = curl("plain/client", f"http://{WEB}/t2/plain")
    assert (code, body) == (200, "hello from web\n")
    assert flows("--http-path", "^/t2/plain$") == []


def test_ingress_annotation_redirects_at_the_client_veth(running_agent):
    code, _, _ = curl("plain/client", f"http://{API}:8080/")
    assert code == 200
    fl = between("plain/client", "backend/api", last=2)
    assert [f["l7"]["type"] for f in fl] == ["REQUEST", "RESPONSE"]
    assert all(f["traffic_direction"] == "INGRESS" for f in fl)


KEEPALIVE = """
import http.client, sys
c = http.client.HTTPConnection("%s", 80, timeout=10)
ok = 0
for i in range(1000):
    c.request("GET", "/t3/ka?i=%%d" %% i)
    r = c.getresponse()
    if r.status == 200 and r.read() == b"hello from web\\n":
        ok += 1
print(ok)
""" % WEB


def test_keepalive_1000_requests_on_one_connection(running_agent):
    p = in_pod("shop/client", "python3", "-c", KEEPALIVE, timeout=120)
    assert p.stdout.strip() == "1000"
    fl = flows("--http-path", "^/t3/ka")
    assert sum(f["l7"]["type"] == "REQUEST" for f in fl) == 1000
    assert sum(f["l7"]["type"] == "RESPONSE" and f["l7"]["http"]["code"] == 200 for f in fl) == 1000
    assert len({f["l4"]["TCP"]["source_port"] for f in fl if not f["is_reply"]}) == 1, "not one connection"


def test_20000_http1_requests_through_the_proxy_zero_errors_and_a_flow_pair_for_each(running_agent):
    # An exact request count (h2load --h1 -n): a run for a time (wrk -d) lets a fast agent
    # outrun the flow ring (65,536 flows), and leaves the last requests' flows uncertain.
    out = in_pod("shop/client", "h2load", "--h1", "-n", "20000", "-c", "8", f"http://{WEB}/t4/load", timeout=240).stdout
    assert "requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored" in out, out
    time.sleep(0.5)
    fl = flows("--http-path", "^/t4/load$")
    assert sum(not f["is_reply"] for f in fl) == 20000
    assert sum(f["is_reply"] and f["l7"]["http"]["code"] == 200 for f in fl) == 20000


BODIES = """
import hashlib, http.client
N = 50 * 1024 * 1024
block = hashlib.sha256(b"loupe").digest()
chunk = (block * ((1 << 20) // 32 + 1))[: 1 << 20]
expected = hashlib.sha256()
for _ in range(N >> 20):
    expected.update(chunk)
expected = expected.hexdigest()
def body():
    for _ in range(N >> 20):
        yield chunk
c = http.client.HTTPConnection("%s", 8000, timeout=60)
c.request("POST", "/upload", body=body(), headers={"Content-Length": str(N)})
r = c.getresponse()
up = r.read().decode()
c.request("GET", "/bytes/%%d" %% N)
r = c.getresponse()
h = hashlib.sha256(); n = 0
while True:
    d = r.read(1 << 20)
    if not d: break
    h.update(d); n += len(d)
print(expected, up, h.hexdigest(), n)
""" % FILES


def test_50mib_request_and_response_bodies_stream_with_bounded_memory(running_agent):
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(running_agent.rss_kib())
            time.sleep(0.02)

    before = running_agent.rss_kib()
    t = threading.Thread(target=sample)
    t.start()
    try:
        p = in_pod("shop/client", "python3", "-c", BODIES, timeout=180)
    finally:
        stop.set()
        t.join()
    expected, uploaded, downloaded, n = p.stdout.split()
    assert uploaded == expected, "request body checksum differs"
    assert downloaded == expected and int(n) == 50 * 1024 * 1024, "response body checksum differs"
    peak = max(samples)
    print(f"agent RSS: before {before} KiB, peak during 2x50 MiB {peak} KiB, growth {peak - before} KiB")
    assert peak - before < 24 * 1024, "the proxy buffered a body instead of streaming it"


BAD = """
import socket, sys
payload = sys.argv[1].encode().decode("unicode_escape").encode("latin-1")
s = socket.create_connection(("%s", 80), timeout=5)
s.sendall(payload)
data = b""
try:
    while True:
        d = s.recv(65536)
        if not d: break
        data += d
except socket.timeout:
    pass
print(data.split(b"\\r\\n")[0].decode())
""" % WEB


@pytest.mark.parametrize("name,payload,reason", [
    ("request-line", r"GET /bad path HTTP/1.1\r\nHost: web\r\n\r\n", "malformed"),
    ("header-over-limit", r"GET /t5 HTTP/1.1\r\nHost: web\r\nX-Big: " + "a" * 70000 + r"\r\n\r\n", "header block exceeds"),
    ("cl-and-te", r"POST /t5 HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "Transfer-Encoding with Content-Length"),
])
def test_bad_input_gets_400_and_an_error_flow_and_the_agent_keeps_serving(running_agent, name, payload, reason):
    before = len(flows("--verdict", "ERROR"))
    p = in_pod("shop/client", "python3", "-c", BAD, payload, timeout=20)
    assert p.stdout.strip() == "HTTP/1.1 400 Bad Request", p.stdout
    errors = flows("--verdict", "ERROR")
    assert len(errors) == before + 1
    assert reason in errors[-1]["Summary"], errors[-1]["Summary"]
    assert errors[-1]["l7"]["http"]["code"] == 400
    compact = loupe("observe", "--verdict", "ERROR", "--last", "1").stdout
    assert "http-response ERROR (HTTP/1.1 400 malformed request rejected: " in compact, compact
    code, body, _ = curl("shop/client", f"http://{WEB}/t5/after-{name}")
    assert (code, body) == (200, "hello from web\n")


ECHO_CLIENT = """
import socket
s = socket.create_connection(("%s", 7000), timeout=5)
msg = bytes(range(256)) * 4096
s.sendall(msg)
got = b""
while len(got) < len(msg):
    got += s.recv(65536)
s.close()
print(got == msg, len(got))
""" % ECHO


def test_non_http_bytes_are_relayed_opaque_with_an_l3l4_flow(running_agent):
    p = in_pod("shop/client", "python3", "-c", ECHO_CLIENT, timeout=20)
    assert p.stdout.split() == ["True", str(256 * 4096)]
    time.sleep(0.3)
    fl = [f for f in flows("--to-pod", "backend/echo") if f["Type"] == "L3_L4"]
    assert fl, "no L3_L4 flow for the opaque connection"
    assert f"{256 * 4096} bytes from client, {256 * 4096} bytes from server" in fl[-1]["Summary"]


def test_removing_the_annotation_stops_redirection_without_restart(lab, running_agent, tmp_path):
    pid = running_agent.pid
    loupe("lab", "up", "-f", str(render_inventory(tmp_path, annotate_shop=False)), "--cni", lab["cni"])
    try:
        time.sleep(1.2)
        code, _, _ = curl("shop/client", f"http://{WEB}/t6/unannotated")
        assert code == 200
        assert flows("--http-path", "^/t6/unannotated$") == []
    finally:
        loupe("lab", "up", "-f", str(lab["inventory"]), "--cni", lab["cni"])
    time.sleep(1.2)
    code, _, _ = curl("shop/client", f"http://{WEB}/t6/annotated-again")
    assert code == 200
    assert len(flows("--http-path", "^/t6/annotated-again$")) == 2
    assert running_agent.pid == pid and running_agent.proc.poll() is None, "the agent restarted"


def test_the_agent_allocates_with_jemalloc_and_purges_in_the_background(running_agent):
    # Package.swift links jemalloc into `loupe` (the image's binary too: this file runs again
    # against the rootfs); the agent turns on jemalloc's background purging thread.
    proc = f"/proc/{running_agent.pid}"
    with open(f"{proc}/maps") as f:
        assert "libjemalloc.so" in f.read(), "the agent does not map jemalloc"
    threads = []
    for task in os.listdir(f"{proc}/task"):
        with open(f"{proc}/task/{task}/comm") as f:
            threads.append(f.read().strip())
    assert "jemalloc_bg_thd" in threads, threads


def test_datapath_counters_show_assignments(running_agent):
    s = status()
    assert s["datapath"]["assigned_listener"] > 0
    assert s["datapath"]["assigned_established"] > 0
    assert s["proxy"]["connections_http1"] > 0


def test_fail_open_when_the_proxy_is_gone_but_the_datapath_stays(running_agent):
    running_agent.stop(signal.SIGKILL)  # a crash: tc filters and pinned maps stay behind
    code, body, _ = curl("shop/client", f"http://{WEB}/t7/fail-open")
    assert (code, body) == (200, "hello from web\n")
    # The next agent reuses the pins and redirects again.
    running_agent.start()
    code, _, _ = curl("shop/client", f"http://{WEB}/t7/back")
    assert code == 200
    assert len(flows("--http-path", "^/t7/back$")) == 2


def test_a_second_agent_is_refused_and_leaves_the_running_one_alone(running_agent):
    # Run twice by mistake, `loupe agent` used to load the datapath over the running agent's,
    # fail to bind the proxy's ports, and detach the datapath on its way out.
    p = run(*agent_argv(), check=False, timeout=60)
    assert p.returncode == 1
    said = p.stdout + p.stderr
    assert "another loupe agent" in said and f"pid {running_agent.pid}" in said, said
    assert running_agent.proc.poll() is None
    code, body, _ = curl("shop/client", f"http://{WEB}/t7/second-agent")
    assert (code, body) == (200, "hello from web\n")
    assert len(flows("--http-path", "^/t7/second-agent$")) == 2


def test_observe_without_agent_says_so(tmp_path):
    p = loupe("observe", "--server", str(tmp_path / "nothing.sock"), check=False)
    assert p.returncode == 1
    assert "cannot reach the Loupe agent" in p.stderr


def test_expect_100_continue_is_relayed(running_agent):
    # curl sends `Expect: 100-continue` and waits for the server's interim response before the body.
    p = in_pod("shop/client", "sh", "-c",
               f"head -c 2000000 /dev/zero > /tmp/loupe-100.bin; curl -sv -H 'Expect: 100-continue' "
               f"--data-binary @/tmp/loupe-100.bin http://{FILES}:8000/upload; rm -f /tmp/loupe-100.bin", timeout=30)
    assert "< HTTP/1.1 100 Continue" in p.stderr, p.stderr
    assert p.stdout.strip() == hashlib.sha256(b"\0" * 2000000).hexdigest()
    fl = flows("--pod", "backend/files", "--http-method", "POST", last=2)
    assert [f["l7"]["type"] for f in fl] == ["REQUEST", "RESPONSE"] and fl[1]["l7"]["http"]["code"] == 200


PIPELINE = """
import socket
s = socket.create_connection(("%s", 80), timeout=5)
s.sendall(b"".join(b"GET /t8/pipe/%%d HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n" %% i for i in range(3)))
data = b""
while data.count(b"hello from web") < 3:
    d = s.recv(65536)
    if not d: break
    data += d
print(data.count(b"HTTP/1.1 200 OK"))
""" % WEB


def test_pipelined_requests_pair_with_their_responses(running_agent):
    p = in_pod("shop/client", "python3", "-c", PIPELINE, timeout=20)
    assert p.stdout.strip() == "3"
    fl = flows("--http-path", "^/t8/pipe/")
    assert [(f["l7"]["type"], f["l7"]["http"]["url"]) for f in fl if f["is_reply"]] == \
        [("RESPONSE", f"http://web/t8/pipe/{i}") for i in range(3)]
    assert sum(not f["is_reply"] for f in fl) == 3


# An HTTP/1.1 Upgrade to PROTOCOL (the files server answers 101 for `echo` and `h2c`), then
# 16 KiB of bytes that must come back through the tunnel.
UPGRADE = """
import socket, sys
s = socket.create_connection(("%s", 8000), timeout=5)
s.sendall(b"GET /upgrade HTTP/1.1\\r\\nHost: files\\r\\nUpgrade: " + sys.argv[1].encode() + b"\\r\\nConnection: Upgrade\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += s.recv(1)
msg = bytes(range(256)) * 64
s.sendall(msg)
got = b""
while len(got) < len(msg):
    got += s.recv(65536)
print(head.split(b"\\r\\n")[0].decode(), got == msg)
""" % FILES


def test_upgrade_switches_to_an_opaque_tunnel_after_101(running_agent):
    p = in_pod("shop/client", "python3", "-c", UPGRADE, "echo", timeout=20)
    assert p.stdout.strip() == "HTTP/1.1 101 Switching Protocols True", p.stdout
    fl = flows("--pod", "backend/files", "--http-path", "^/upgrade$", last=2)
    assert [f["l7"]["type"] for f in fl] == ["REQUEST", "RESPONSE"] and fl[1]["l7"]["http"]["code"] == 101


# Two requests on one connection: the first answered by RAW_RESPONSE (bodies.py), which must
# arrive byte for byte; the second must still pair with its own response.
RAW = r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
from bodies import RAW_RESPONSE
s = socket.create_connection((sys.argv[2], 8000), timeout=5)
s.sendall(b"GET /raw-response HTTP/1.1\r\nHost: files\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHost: files\r\n\r\n")
got = b""
def done():
    rest = got[len(RAW_RESPONSE):]
    return b"\r\n\r\n" in rest and len(rest.split(b"\r\n\r\n", 1)[1]) >= 3
while not done():
    more = s.recv(65536)
    if not more:
        break
    got += more
print(got[:len(RAW_RESPONSE)] == RAW_RESPONSE, got[len(RAW_RESPONSE):].split(b"\r\n")[0].decode())
"""


def test_responses_are_relayed_byte_for_byte(running_agent):
    p = in_pod("shop/client", "python3", "-c", RAW, str(REPO / "tests/e2e/servers"), FILES, timeout=20)
    assert p.stdout.strip() == "True HTTP/1.1 200 OK", p.stdout + p.stderr
    fl = flows("--pod", "backend/files", "--http-path", "^/(raw-response|bytes/3)$", last=4)
    assert [(f["l7"]["type"], f["l7"]["http"]["url"].rsplit("/", 1)[-1], f["l7"]["http"].get("code", 0)) for f in fl] == [
        ("REQUEST", "raw-response", 0), ("REQUEST", "3", 0), ("RESPONSE", "raw-response", 200), ("RESPONSE", "3", 200)]


def test_a_response_framed_two_ways_gets_502_and_an_error_flow(running_agent):
    code, body, _ = curl("shop/client", f"http://{FILES}:8000/bad-response")
    assert code == 502 and "Transfer-Encoding with Content-Length in a response" in body, (code, body)
    fl = flows("--pod", "backend/files", "--verdict", "ERROR", last=1)
    assert fl and fl[0]["l7"]["http"]["code"] == 502 and fl[0]["l7"]["http"]["url"] == "http://198.18.0.12:8000/bad-response"
    assert "malformed response from the destination" in fl[0]["Summary"]


def test_heads_larger_than_a_read_are_parsed_and_relayed_whole(running_agent):
    # 40,000-byte header values each way: the proxy reads them in several pieces (its reads
    # start at 512 bytes), keeps the partial head and parses it once complete.
    code, body, p = curl("shop/client", f"http://{FILES}:8000/big-head/40000", "-H", "X-Big: " + "a" * 40000, "-D", "/dev/stderr")
    assert (code, body) == (200, "40000"), (code, body)
    assert re.search(r"(?im)^x-big: b{40000}\r?$", p.stderr), "the response's big header did not arrive whole"
    fl = flows("--pod", "backend/files", "--http-path", "^/big-head/40000$", last=2)
    assert [f["l7"]["type"] for f in fl] == ["REQUEST", "RESPONSE"]
    sent = {h["key"].lower(): h["value"] for h in fl[0]["l7"]["http"]["headers"]}
    got = {h["key"].lower(): h["value"] for h in fl[1]["l7"]["http"]["headers"]}
    assert len(sent["x-big"]) == 40000 and len(got["x-big"]) == 40000


def test_connections_do_not_leak_file_descriptors(running_agent):
    import os

    def fds():
        return len(os.listdir(f"/proc/{running_agent.pid}/fd"))

    curl("shop/client", f"http://{WEB}/t9/warm")
    time.sleep(0.3)
    baseline = fds()
    in_pod("shop/client", "wrk", "-t1", "-c50", "-d1s", f"http://{WEB}/t9/wrk", timeout=20)
    in_pod("shop/client", "python3", "-c", ECHO_CLIENT, timeout=20)
    in_pod("shop/client", "python3", "-c", BAD, r"GET /bad path HTTP/1.1\r\n\r\n", timeout=20)
    deadline = time.time() + 5
    while fds() > baseline and time.time() < deadline:
        time.sleep(0.1)
    assert fds() <= baseline, f"{fds()} fds open after the connections closed, {baseline} before"


HALF_CLOSE_HTTP = """
import socket
s = socket.create_connection(("%s", 80), timeout=5)
s.sendall(b"GET /t10/half-close HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n")
s.shutdown(socket.SHUT_WR)          # as `nc -N` does: the request is all we will send
data = b""
while True:
    d = s.recv(65536)
    if not d: break
    data += d
print(data.split(b"\\r\\n")[0].decode(), data.endswith(b"hello from web\\n"))
""" % WEB

HALF_CLOSE_TCP = """
import socket
s = socket.create_connection(("%s", 7000), timeout=5)
s.sendall(b"x" * 300000)
s.shutdown(socket.SHUT_WR)          # the echo server still sends everything back, then closes
got = b""
while True:
    d = s.recv(65536)
    if not d: break
    got += d
print(len(got))
""" % ECHO


def test_half_close_is_passed_on_for_http_and_opaque_connections(running_agent):
    p = in_pod("shop/client", "python3", "-c", HALF_CLOSE_HTTP, timeout=20)
    assert p.stdout.strip() == "HTTP/1.1 200 OK True", p.stdout
    p = in_pod("shop/client", "python3", "-c", HALF_CLOSE_TCP, timeout=20)
    assert p.stdout.strip() == "300000", p.stdout


def test_observe_follow_streams_new_flows(running_agent):
    import json
    import subprocess
    from conftest import LOUPE
    follower = subprocess.Popen([LOUPE, "observe", "-f", "-o", "json", "--http-path", "^/t11/"],
                                stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(10, follower.kill)  # never hang the suite on a missing flow
    watchdog.start()
    try:
        time.sleep(0.3)
        curl("shop/client", f"http://{WEB}/t11/followed")
        lines = [follower.stdout.readline(), follower.stdout.readline()]
    finally:
        watchdog.cancel()
        follower.kill()
        follower.wait()
    assert all(lines), "the follower printed nothing within 10 s"
    got = [json.loads(l)["flow"]["l7"]["type"] for l in lines]
    assert got == ["REQUEST", "RESPONSE"]


@pytest.mark.parametrize("method", ["PURGE", "get", "M-SEARCH", "BREW"])
def test_any_method_token_on_a_port_without_http_rules_is_forwarded_and_recorded(running_agent, method):
    path = f"/t-method/{method.lower()}"
    code, _, p = curl("shop/client", f"http://{WEB}{path}", "-X", method)
    assert code != 0 and p.returncode == 0, p.stderr      # nginx answered (whatever it thinks of the method)
    fl = flows("--http-path", f"^{path}$")
    assert [(f["l7"]["type"], f["verdict"], f["l7"]["http"]["method"]) for f in fl] == \
        [("REQUEST", "FORWARDED", method), ("RESPONSE", "FORWARDED", method)]
    assert fl[1]["l7"]["http"]["code"] == code
