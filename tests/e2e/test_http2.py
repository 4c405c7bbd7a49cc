"""HTTP/2 (h2c prior knowledge) and gRPC through the proxy: per-stream flows and policy, the
destination's GOAWAY drained, a slow reader, and abuse crafted with python `h2`/`hyperframe`."""
import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import LOUPE, flows, in_pod, loupe, status
from test_policy import apply, policies  # noqa: F401 (fixture)
from test_spine import UPGRADE

WEB = "198.18.0.11"
FILES = "198.18.0.12"             # backend/files: servers/bodies.py, h2_responses.py on 8001
H2 = f"http://{WEB}:8080"        # backend/web: nginx `listen 8080 http2`
DRAIN_PORT = 8081                # nginx h2c with keepalive_requests 20: GOAWAY after 20 streams
GREETER = "198.18.0.19:50051"    # backend/greeter: python grpcio
WWW = Path("/tmp/loupe-e2e-www")  # nginx serves /files/ from here


def h2(*args, timeout=60, port=8080, pod="shop/client"):
    p = in_pod(pod, "python3", "tests/e2e/h2_client.py", WEB, str(port), *args, timeout=timeout)
    return json.loads(p.stdout)


def grpc(*args):
    return json.loads(in_pod("shop/client", "python3", "tests/e2e/grpc_client.py", GREETER, *args, timeout=30).stdout)


def proxy_counters():
    return status()["proxy"]


def test_curl_prior_knowledge_gives_a_request_and_a_response_flow(running_agent):
    p = in_pod("shop/client", "curl", "-sS", "-m", "5", "--http2-prior-knowledge", f"{H2}/h2/one")
    assert p.stdout == "hello over h2\n"
    req, resp = flows("--http-path", "^/h2/one$", last=2)
    assert req["l7"]["type"] == "REQUEST" and req["l7"]["http"]["protocol"] == "HTTP/2"
    assert req["l7"]["http"]["url"] == f"{H2}/h2/one" and req["l7"]["http"]["method"] == "GET"
    assert resp["l7"]["http"]["code"] == 200 and resp["is_reply"]
    assert re.fullmatch(r"HTTP/2 200 \d+ms \(GET http://198\.18\.0\.11:8080/h2/one\)", resp["Summary"]), resp["Summary"]


def test_h2load_20000_requests_without_errors_and_a_flow_pair_for_each(running_agent):
    out = in_pod("shop/client", "h2load", "-n", "20000", "-c", "8", "-m", "32", f"{H2}/h2/load", timeout=240).stdout
    assert "requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored" in out, out
    fl = flows("--http-path", "^/h2/load$")
    assert sum(not f["is_reply"] for f in fl) == 20000
    assert sum(f["is_reply"] and f["l7"]["http"]["code"] == 200 for f in fl) == 20000


def test_grpc_unary_not_found_and_server_streaming_with_grpc_status_in_flows(running_agent):
    assert grpc("unary", "loupe") == {"code": "OK", "reply": "hello loupe"}
    assert grpc("find") == {"code": "NOT_FOUND", "details": "no such greeting"}
    assert grpc("count", "1000") == {"code": "OK", "messages": 1000, "last": "n=999"}
    responses = flows("--protocol", "grpc", "--pod", "backend/greeter", "--verdict", "FORWARDED", last=6)
    replies = [f for f in responses if f["is_reply"]]
    by_path = {f["l7"]["http"]["url"].rsplit("/", 1)[1]: f for f in replies}
    assert set(by_path) == {"SayHello", "Find", "Count"}, [f["Summary"] for f in responses]
    for name, status_name, code in (("SayHello", "OK", "0"), ("Find", "NOT_FOUND", "5"), ("Count", "OK", "0")):
        f = by_path[name]
        headers = {h["key"]: h["value"] for h in f["l7"]["http"]["headers"]}
        assert headers["grpc-status"] == code and f["l7"]["http"]["code"] == 200
        assert f["Summary"].endswith(f"(POST http://{GREETER}/helloworld.Greeter/{name}) grpc-status={code} {status_name}")
    assert headers_of(by_path["Find"])["grpc-message"] == "no such greeting"
    not_found = flows("--grpc-status", "NOT_FOUND", last=1)
    assert not_found and not_found[0]["l7"]["http"]["url"].endswith("/Find")


def headers_of(flow):
    return {h["key"]: h["value"] for h in flow["l7"]["http"]["headers"]}


GREETER_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: greeter-public, namespace: backend}
spec:
  endpointSelector: {matchLabels: {app: greeter}}
  ingress:
  - toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: "/helloworld.Greeter/(SayHello|Find|Count)"}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-h2-public, namespace: backend}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/h2/public/.*"}
"""


def test_a_denied_stream_gets_403_while_a_concurrent_allowed_stream_gets_200(policies):
    apply(GREETER_POLICY, "h2-policies.yaml")
    out = h2("concurrent", "/h2/public/a", "/h2/private/b", "/h2/public/c")
    got = [(s["path"], s["status"], s["body"]) for s in out["streams"]]
    assert got == [("/h2/public/a", 200, "hello over h2\n"), ("/h2/private/b", 403, "Access denied\r\n"),
                   ("/h2/public/c", 200, "hello over h2\n")], got
    denied = flows("--http-path", "^/h2/private/b$", last=2)
    assert [f["verdict"] for f in denied] == ["DROPPED", "DROPPED"]
    assert denied[1]["l7"]["http"]["code"] == 403 and denied[0]["drop_reason_desc"] == "POLICY_DENIED"
    # gRPC clients see the 403 as PERMISSION_DENIED; allowed methods still work.
    assert grpc("secret")["code"] == "PERMISSION_DENIED"
    assert grpc("unary", "again") == {"code": "OK", "reply": "hello again"}


@pytest.fixture()
def big_file():
    path = WWW / "files/big.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = hashlib.sha256(b"loupe-h2").digest() * (32 * 1024 * 1024 // 32)
    path.write_bytes(data)
    yield hashlib.sha256(data).hexdigest(), len(data)
    path.unlink()
    for d in (path.parent, WWW):
        d.rmdir()


def test_a_slow_reader_stalls_only_its_own_stream_and_memory_stays_bounded(running_agent, big_file):
    sha, size = big_file
    before = running_agent.rss_kib()
    p = subprocess.Popen([LOUPE, "lab", "exec", "shop/client", "--", "python3", "tests/e2e/h2_client.py", WEB, "8080",
                          "slowreader", "/files/big.bin", "/h2/small"], stdout=subprocess.PIPE, text=True)
    peak = before
    while p.poll() is None:
        peak = max(peak, running_agent.rss_kib())
        time.sleep(0.1)
    out = json.loads(p.stdout.read())
    # The small stream completed while the big one's reader had stopped at its 64 KiB window.
    assert out["small_status"] == 200 and out["small_body"] == "hello over h2\n" and out["small_seconds"] < 5
    assert out["big_bytes_while_stalled"] <= 65535
    assert out["big_status"] == 200 and out["big_bytes"] == size and out["big_sha256"] == sha
    # 32 MiB went through; the proxy held at most a few windows of it at any time.
    assert peak - before < 16 * 1024, f"agent RSS grew {peak - before} KiB"


def test_a_destination_goaway_drains_in_flight_streams_and_refuses_the_rest(running_agent):
    out = h2("drain", "30", "/h2/drain", port=DRAIN_PORT)
    # nginx processes 20 streams per connection, then says GOAWAY: those 20 complete, the 10 it
    # never saw are refused (retryable), the client is told GOAWAY, and the connection closes.
    assert out["completed"] == 20 and out["refused"] == 10 and out["other"] == [], out
    # A PROTOCOL_ERROR GOAWAY here was seen once under CPU load: the agent's ERROR flows say why.
    errors = [f.get("Summary") for f in flows("--verdict", "ERROR", last=5)] if out["goaway"]["error"] else []
    assert out["bodies"] == ["drained\n"] and out["goaway"]["error"] == 0 and out["closed"], (out, errors)
    fl = flows("--http-path", "^/h2/drain$")
    assert sum(f["is_reply"] and f["l7"]["http"].get("code") == 200 for f in fl) == 20


def assert_good_clients_still_work():
    p = in_pod("shop/client", "curl", "-sS", "-m", "5", "--http2-prior-knowledge", f"{H2}/h2/after-abuse")
    assert p.stdout == "hello over h2\n"


def breach_flows(text):
    return [f for f in flows("--verdict", "ERROR", "--protocol", "http", last=2000) if text in f["Summary"]]


ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 11, 1


@pytest.mark.parametrize("scenario,args,goaway,limit,counter", [
    ("rapidreset", ["2000"], ENHANCE_YOUR_CALM, "stream resets (more than 200 RST_STREAM in 30 s, rapid reset)",
     "http2_limit_rapid_reset"),
    ("continuation", ["1000"], ENHANCE_YOUR_CALM, "CONTINUATION frames (more than 5 after one HEADERS)",
     "http2_limit_continuation_frames"),
    ("bigheaders", ["70000"], PROTOCOL_ERROR, "header list size (more than 16384 bytes)", "http2_limit_header_list_size"),
    ("streams", ["10000", "/h2/flood"], PROTOCOL_ERROR, "concurrent streams (more than 100)",
     "http2_limit_concurrent_streams"),
])
def test_abuse_ends_in_goaway_with_a_flow_naming_the_limit(running_agent, scenario, args, goaway, limit, counter):
    before_rss = running_agent.rss_kib()
    before = proxy_counters().get(counter, 0)
    out = h2(scenario, *args, timeout=180)
    assert out["goaway"] is not None and out["goaway"]["error"] == goaway and out["closed"], out
    assert proxy_counters().get(counter, 0) == before + 1
    named = breach_flows(limit)
    assert named and named[-1]["Summary"] == f"HTTP/2 limit breached by client: {limit}; connection closed with GOAWAY"
    assert running_agent.proc.poll() is None
    assert running_agent.rss_kib() - before_rss < 32 * 1024
    assert_good_clients_still_work()


def test_an_hpack_table_resized_past_the_limit_ends_in_goaway_compression_error(running_agent):
    out = h2("hpacktable", "65536")
    assert out["goaway"] == {"error": 9, "last_stream_id": 2147483647} and out["closed"], out  # COMPRESSION_ERROR
    named = breach_flows("HPACK misuse (e.g. its table resized past 4096 bytes)")
    assert named and named[-1]["Summary"].startswith("HTTP/2 protocol error from client: a frame or header block could not be decoded")
    assert h2("hpacktable", "4096")["responses"] == 1  # within the limit: answered
    assert_good_clients_still_work()


def test_malformed_response_header_blocks_are_refused_with_an_error_flow_naming_them(running_agent):
    """backend/files answers h2c on 8001 with header blocks no HTTP/2 server may send
    (servers/h2_responses.py, python `h2` with its checks off). The proxy validates the
    destination's header blocks once, as they go to the client: none of these is relayed, the
    client's stream is reset with PROTOCOL_ERROR and an ERROR flow (with the request's method and
    URL) names what was wrong; a well-formed stream on the same connection is answered."""
    before = proxy_counters().get("http2_protocol_errors", 0)
    bad = ["/h2/upper", "/h2/connection", "/h2/no-status"]
    out = json.loads(in_pod("shop/client", "python3", "tests/e2e/h2_client.py", FILES, "8001", "concurrent",
                            *bad, "/h2/fine", timeout=60).stdout)
    by_path = {s["path"]: s for s in out["streams"]}
    for path in bad:
        assert by_path[path]["status"] is None and by_path[path]["body"] == "", by_path[path]
        assert by_path[path]["reset"] == "PROTOCOL_ERROR", by_path[path]
    assert by_path["/h2/fine"]["status"] == 200 and by_path["/h2/fine"]["body"] == "ok", by_path["/h2/fine"]
    assert proxy_counters().get("http2_protocol_errors", 0) == before + len(bad)
    refused = {f["l7"]["http"].get("url", "").rsplit("/", 1)[-1]: f
               for f in breach_flows("HTTP/2 protocol error from server") if f["l7"]["http"].get("url", "").startswith(f"http://{FILES}:8001/")}
    assert set(refused) >= {"upper", "connection"}, refused
    for f in refused.values():
        assert f["verdict"] == "ERROR" and f["l7"]["type"] == "RESPONSE" and f["l7"]["http"]["method"] == "GET"
        assert f["Summary"].endswith("; stream reset"), f["Summary"]
    assert running_agent.proc.poll() is None
    assert_good_clients_still_work()


def test_upgrade_to_h2c_is_relayed_opaque_with_a_flow_that_says_so(running_agent):
    p = in_pod("shop/client", "python3", "-c", UPGRADE, "h2c", timeout=20)
    assert p.stdout.strip() == "HTTP/1.1 101 Switching Protocols True"
    deadline = time.time() + 5
    while time.time() < deadline:
        closed = [f for f in flows("--to-pod", "backend/files", "--protocol", "tcp", last=5)
                  if "Upgrade: h2c" in f["Summary"]]
        if closed:
            break
        time.sleep(0.2)
    assert closed and closed[-1]["Summary"].startswith(
        "TCP tunnel after Upgrade: h2c (HTTP/2 streams inside not inspected) closed: "), closed


def test_no_intercept_http2_relays_h2c_opaque(running_agent):
    running_agent.stop()
    running_agent.start("--no-intercept-http2")
    try:
        p = in_pod("shop/client", "curl", "-sS", "-m", "5", "--http2-prior-knowledge", f"{H2}/h2/opaque")
        assert p.stdout == "hello over h2\n"
        assert flows("--http-path", "^/h2/opaque$") == []
    finally:
        running_agent.stop()
        running_agent.start()
