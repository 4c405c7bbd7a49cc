"""Hubble's gRPC API, driven by Python grpcio with stubs generated here from Loupe's protos
(api/v1): a real gRPC stack nobody here wrote. GetFlows' selections and filters against the
export file, bad requests, a stalled follower's lost events, ServerStatus/GetNodes/
GetNamespaces/Peer/Health, the TCP listener with TLS and mTLS (from the lab's node netns, where
the agent listens), and abuse: garbage on the socket, 1,000 followers, a 10 MB filter list."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from conftest import LOUPE, REPO, in_pod, loupe, run, status
from test_policy import policies  # noqa: F401  (fixture: an empty policy directory around a test)

SOCKET = "/run/loupe/hubble.sock"
WEB = "198.18.0.11"
RESOLVER = "198.19.0.10"
NODE_ADDRESS = "198.18.0.1:4244"   # the lab node's address (on its lo) and the Hubble port
STUBS = Path("/tmp/loupe-e2e-hubble-stubs")


def generate_stubs():
    if STUBS.exists():
        subprocess.run(["rm", "-rf", str(STUBS)], check=True)
    STUBS.mkdir(parents=True)
    protos = [str(p.relative_to(REPO / "api/v1")) for p in sorted((REPO / "api/v1").rglob("*.proto"))]
    run(sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "api/v1"), f"--python_out={STUBS}",
        f"--grpc_python_out={STUBS}", *protos)
    return STUBS


generate_stubs()
sys.path.insert(0, str(STUBS))
from flow import flow_pb2  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402
from health import health_pb2, health_pb2_grpc  # noqa: E402
from loupe import agent_pb2, agent_pb2_grpc  # noqa: E402
from observer import observer_pb2, observer_pb2_grpc  # noqa: E402
from peer import peer_pb2, peer_pb2_grpc  # noqa: E402


def channel(target=f"unix://{SOCKET}"):
    return grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])


def observer(ch=None):
    return observer_pb2_grpc.ObserverStub(ch or channel())


def get_flows(**kw):
    req = observer_pb2.GetFlowsRequest(**kw)
    return [r.flow for r in observer().GetFlows(req, timeout=30) if r.HasField("flow")]


def restart(agent, *extra):
    agent.stop()
    agent.start(*extra)


# --- the filters, evaluated in Python on the export file's JSON (Hubble's semantics) ---------

def pod_matches(spec, ep):
    ns, _, prefix = spec.partition("/") if "/" in spec else ("default", "", spec)
    return ep.get("namespace") == ns and ep.get("pod_name", "").startswith(prefix)


def ports(f):
    l4 = f.get("l4", {})
    p = l4.get("TCP") or l4.get("UDP") or {}
    return p.get("source_port"), p.get("destination_port")


def label_matches(sel, labels):
    k, _, v = sel.partition("=")
    return any(label == f"{k}={v}" or label.split(":", 1)[-1] == f"{k}={v}" for label in labels)


def field_matches(name, values, f):
    http = (f.get("l7") or {}).get("http") or {}
    if name == "source_pod":
        return any(pod_matches(v, f["source"]) for v in values)
    if name == "destination_pod":
        return any(pod_matches(v, f["destination"]) for v in values)
    if name == "verdict":
        return f["verdict"] in values
    if name == "http_status_code":
        code = str(http.get("code", ""))
        return bool(http.get("code")) and any(code.startswith(v[:-1]) if v.endswith("+") else code == v for v in values)
    if name == "event_type":
        et = f.get("event_type", {})
        return any(et.get("type") == t and (s is None or et.get("sub_type", 0) == s) for t, s in values)
    if name == "destination_port":
        return str(ports(f)[1]) in values
    if name == "source_label":
        return any(label_matches(v, f["source"].get("labels", [])) for v in values)
    if name == "destination_fqdn":
        return any(v in f.get("destination_names", []) for v in values)
    raise AssertionError(name)


def py_matches(flt, f):
    return all(field_matches(k, v, f) for k, v in flt.items())


def to_proto(flt):
    out = flow_pb2.FlowFilter()
    for k, v in flt.items():
        if k == "verdict":
            out.verdict.extend(flow_pb2.Verdict.Value(x) for x in v)
        elif k == "event_type":
            for t, s in v:
                out.event_type.add(type=t, match_sub_type=s is not None, sub_type=s or 0)
        else:
            getattr(out, k).extend(v)
    return out


@pytest.fixture(scope="module")
def exported(agent, tmp_path_factory):
    """The agent restarted with an export file, some traffic of every kind, and the file read
    back once it holds every flow the agent recorded."""
    if agent.proc is None or agent.proc.poll() is not None:
        agent.start()
    path = tmp_path_factory.mktemp("hubble") / "flows.json"
    restart(agent, f"--export-file={path}", "--export-file-max-size-mb=100")
    for _ in range(100):  # the world's HTTP server may still be starting
        if in_pod("plain/client", "curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", "http://198.19.0.11/",
                  check=False).stdout not in ("", "000"):
            break
        time.sleep(0.2)
    for path_ in ("/", "/hubble/missing", "/", "/hubble/missing2"):
        in_pod("shop/client", "curl", "-s", "-m", "5", "-o", "/dev/null", f"http://{WEB}{path_}", check=False)
        time.sleep(0.05)  # distinct timestamps for the since/until checks
    ip = in_pod("shop/client", "kdig", "+short", "+time=3", "+retry=0", f"@{RESOLVER}", "api.example.test", "A").stdout.split()[-1]
    in_pod("shop/client", "curl", "-s", "-m", "5", "-o", "/dev/null", f"http://{ip}/hubble/named", check=False)
    in_pod("backend/client", "curl", "-s", "-m", "5", "-o", "/dev/null", "http://198.18.0.14:8080/hubble/ingress", check=False)
    deadline = time.time() + 20
    while time.time() < deadline:
        seen = observer().ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5).seen_flows
        lines = path.read_text().splitlines() if path.exists() else []
        if seen and len(lines) == seen:
            break
        time.sleep(0.2)
    records = [json.loads(line)["flow"] for line in path.read_text().splitlines()]
    assert len(records) == seen and len(records) >= 12, (len(records), seen)
    yield records
    restart(agent)


def test_getflows_selects_what_the_same_filters_select_in_the_export_file(exported):
    uuids = [f["uuid"] for f in exported]
    assert [f.uuid for f in get_flows(number=5)] == uuids[-5:]
    assert [f.uuid for f in get_flows(number=3, first=True)] == uuids[:3]
    assert [f.uuid for f in get_flows(number=0)] == uuids, "number 0 without follow: every stored flow"

    # since/until: inclusive bounds on the flow's time.
    def ts(text):
        t = Timestamp()
        t.FromJsonString(text)
        return t
    lo, hi = exported[2]["time"], exported[-3]["time"]
    window = [f["uuid"] for f in exported if ts(lo).ToNanoseconds() <= ts(f["time"]).ToNanoseconds() <= ts(hi).ToNanoseconds()]
    assert [f.uuid for f in get_flows(since=ts(lo), until=ts(hi))] == window

    cases = [
        ([{"source_pod": ["shop/client"], "http_status_code": ["404"]},
          {"event_type": [(129, None)], "destination_port": ["53"]}],
         [{"verdict": ["ERROR"]}]),
        ([{"source_label": ["app=client"], "verdict": ["FORWARDED"]}], [{"event_type": [(4, 1)]}]),
        ([{"destination_fqdn": ["api.example.test"]}], []),
        ([{"destination_pod": ["backend/api"]}, {"http_status_code": ["2+"], "source_pod": ["backend/"]}], []),
        ([], [{"source_pod": ["shop/"]}]),
    ]
    for whitelist, blacklist in cases:
        want = [f["uuid"] for f in exported
                if (not whitelist or any(py_matches(w, f) for w in whitelist)) and not any(py_matches(b, f) for b in blacklist)]
        got = [f.uuid for f in get_flows(whitelist=[to_proto(w) for w in whitelist], blacklist=[to_proto(b) for b in blacklist])]
        assert got == want, (whitelist, blacklist)
        assert want, f"the traffic gave nothing for {whitelist} minus {blacklist}: the case checks nothing"
        last2 = [f.uuid for f in get_flows(number=2, whitelist=[to_proto(w) for w in whitelist],
                                            blacklist=[to_proto(b) for b in blacklist])]
        assert last2 == want[-2:], "number counts matching flows"

    # Every response says where and when.
    rs = list(observer().GetFlows(observer_pb2.GetFlowsRequest(number=3), timeout=10))
    assert all(r.node_name == "loupe-node" and r.time == r.flow.time and r.time.seconds > 0 for r in rs)
    # The message carries what the export file carries (protojson of the wire message == the file).
    by_uuid = {f["uuid"]: f for f in exported}
    for r in rs:
        wire = json_format.MessageToDict(r.flow, preserving_proto_field_name=True)
        for key in ("uuid", "verdict", "Type", "l4", "source", "destination", "event_type", "traffic_direction", "Summary"):
            assert wire.get(key) == by_uuid[r.flow.uuid].get(key), key


def test_bad_requests_are_invalid_argument_naming_what_was_wrong(exported):
    stub = observer()
    for req, words in [
        (observer_pb2.GetFlowsRequest(first=True, follow=True), "first"),
        (observer_pb2.GetFlowsRequest(whitelist=[flow_pb2.FlowFilter(
            experimental=flow_pb2.FlowFilter.Experimental(cel_expression=["true"]))]), "experimental.cel_expression"),
        (observer_pb2.GetFlowsRequest(whitelist=[flow_pb2.FlowFilter(source_ip=["10.0.0.0/99"])]), "source_ip"),
        (observer_pb2.GetFlowsRequest(blacklist=[flow_pb2.FlowFilter(destination_port=["http"])]), "destination_port"),
        (observer_pb2.GetFlowsRequest(whitelist=[flow_pb2.FlowFilter(http_path=["(unclosed"])]), "http_path"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            list(stub.GetFlows(req, timeout=10))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
        assert words in e.value.details(), e.value.details()
    # A filter field this build does not know (a newer client's) is refused, not dropped.
    # (whitelist entry holding field 500 = 1, a varint FlowFilter does not define)
    raw = observer_pb2.GetFlowsRequest(number=1).SerializeToString() + bytes([0x32, 0x03, 0xa0, 0x1f, 0x01])
    assert len(observer_pb2.GetFlowsRequest.FromString(raw).whitelist) == 1
    ch = channel()
    call = ch.unary_stream("/observer.Observer/GetFlows", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as e:
        list(call(raw, timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not know" in e.value.details()


def test_status_nodes_namespaces_peer_and_health_answer(exported):
    stub = observer()
    st = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    s = status()
    assert st.seen_flows == s["flows"]["total"] >= len(exported)
    assert st.max_flows == s["flows"]["capacity"] and st.num_flows == min(st.seen_flows, st.max_flows)
    assert st.uptime_ns > 0 and st.version and st.num_connected_nodes.value == 1
    nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
    assert [(n.name, n.address, n.state) for n in nodes] == [("loupe-node", NODE_ADDRESS, 1)]
    assert nodes[0].seen_flows == st.seen_flows or nodes[0].seen_flows >= st.seen_flows
    namespaces = [n.namespace for n in stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces]
    assert {"shop", "backend"} <= set(namespaces) and namespaces == sorted(namespaces)

    peers = peer_pb2_grpc.PeerStub(channel()).Notify(peer_pb2.NotifyRequest(), timeout=3)
    first = next(iter(peers))
    assert (first.name, first.address, first.type) == ("loupe-node", NODE_ADDRESS, peer_pb2.PEER_ADDED)
    assert not first.HasField("tls")
    peers.cancel()

    health = health_pb2_grpc.HealthStub(channel())
    for service in ("", "hubble.server.Observer"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    events = list(stub.GetAgentEvents(observer_pb2.GetAgentEventsRequest(), timeout=5))
    types = [flow_pb2.AgentEventType.Name(e.agent_event.type) for e in events]
    assert types[0] == "AGENT_STARTED" and "ENDPOINT_CREATED" in types, types
    created = [e.agent_event.endpoint_update for e in events if e.agent_event.type == flow_pb2.ENDPOINT_CREATED]
    assert any((c.namespace, c.pod_name) == ("shop", "client") for c in created)
    assert list(stub.GetDebugEvents(observer_pb2.GetDebugEventsRequest(), timeout=5)) == []

    st = agent_pb2_grpc.AgentStub(channel()).Status(agent_pb2.StatusRequest(), timeout=5)
    assert st.node_name == "loupe-node" and st.datapath["assigned_listener"] > 0 and st.flows.capacity == 65536
    assert st.proxy["connections_accepted"] > 0 and st.splice["available"] == 1


def test_a_stalled_follower_gets_lost_events_and_the_totals_add_up(running_agent):
    n = 200_000
    restart(running_agent, f"--synthetic-flows={n}", "--event-buffer-capacity=1000")
    try:
        lost_before = status()["lost_events"].get("observer", 0)
        call = observer().GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=120)
        deadline = time.time() + 60
        while time.time() < deadline and "synthetic flows:" not in Path(running_agent.log_path).read_text():
            time.sleep(0.2)   # not reading: the agent's queue for this follower overflows
        delivered = lost = 0
        for r in call:
            if r.HasField("flow"):
                delivered += r.flow.l7.http.url.endswith("/synthetic")
            elif r.HasField("lost_events"):
                assert r.lost_events.source == flow_pb2.OBSERVER_EVENTS_QUEUE and r.node_name == "loupe-node"
                lost += r.lost_events.num_events_lost
            if delivered + lost >= n:
                break
        call.cancel()
        assert delivered + lost == n and lost > 0 and delivered > 0, (delivered, lost)
        assert status()["lost_events"].get("observer", 0) - lost_before == lost
    finally:
        restart(running_agent)


TCP_CLIENT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import grpc
from observer import observer_pb2, observer_pb2_grpc
from peer import peer_pb2, peer_pb2_grpc
target, mode = sys.argv[2], sys.argv[3]
if mode == "plain":
    ch = grpc.insecure_channel(target)
else:
    d = sys.argv[4]
    root = open(d + "/ca.pem", "rb").read()
    key = open(d + "/client.key", "rb").read() if mode == "mtls" else None
    cert = open(d + "/client.pem", "rb").read() if mode == "mtls" else None
    ch = grpc.secure_channel(target, grpc.ssl_channel_credentials(root, key, cert),
                             options=[("grpc.ssl_target_name_override", "loupe-node.default.hubble-grpc.cilium.io")])
out = {}
try:
    out["seen"] = observer_pb2_grpc.ObserverStub(ch).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5).seen_flows
    out["flows"] = len([r for r in observer_pb2_grpc.ObserverStub(ch).GetFlows(observer_pb2.GetFlowsRequest(number=2), timeout=5)])
    peers = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest(), timeout=3)
    p = next(iter(peers))
    out["peer"] = [p.name, p.address, p.tls.server_name]
    peers.cancel()
except grpc.RpcError as e:
    out["error"] = e.code().name
print(json.dumps(out))
"""


def tcp_client(mode, certs=""):
    p = run("ip", "netns", "exec", "loupe-node", sys.executable, "-c", TCP_CLIENT, str(STUBS), NODE_ADDRESS, mode, str(certs),
            timeout=30)
    return json.loads(p.stdout)


def make_certs(d):
    def openssl(*args):
        run("openssl", *args)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=loupe-e2e-hubble-ca", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    for name, san in (("server", "DNS:loupe-node.default.hubble-grpc.cilium.io"), ("client", "DNS:hubble-relay.example.test")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr")
        Path(f"{d}/{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.pem")


def test_the_tcp_listener_in_plain_tls_and_mtls(running_agent, tmp_path):
    plain = tcp_client("plain")
    assert plain.get("seen", 0) >= 0 and "error" not in plain and plain["peer"] == ["loupe-node", NODE_ADDRESS, ""], plain
    make_certs(tmp_path)
    try:
        restart(running_agent, f"--hubble-tls-cert-file={tmp_path}/server.pem", f"--hubble-tls-key-file={tmp_path}/server.key")
        tls = tcp_client("tls", tmp_path)
        assert "error" not in tls and tls["peer"] == ["loupe-node", NODE_ADDRESS, "loupe-node.default.hubble-grpc.cilium.io"], tls
        assert tcp_client("plain").get("error") == "UNAVAILABLE", "a plaintext client on the TLS port"
        restart(running_agent, f"--hubble-tls-cert-file={tmp_path}/server.pem", f"--hubble-tls-key-file={tmp_path}/server.key",
                f"--hubble-tls-client-ca-files={tmp_path}/ca.pem")
        assert "error" not in tcp_client("mtls", tmp_path)
        assert tcp_client("tls", tmp_path).get("error") == "UNAVAILABLE", "mTLS without a client certificate"
        # The unix socket stays plaintext (local, root-only).
        assert observer().ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5).seen_flows >= 0
    finally:
        restart(running_agent)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def test_abuse_garbage_silent_clients_a_thousand_followers_and_a_huge_filter(running_agent):
    # Garbage on the socket: the connection is closed, the agent carries on.
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512)):
        s = socket.socket(socket.AF_UNIX)
        s.connect(SOCKET)
        s.sendall(junk)
        s.settimeout(5)
        try:
            while s.recv(65536):
                pass
        except (socket.timeout, ConnectionResetError):
            pass
        s.close()
    assert observer().ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5).max_flows > 0

    # 1,000 concurrent followers (10 connections × 100 streams).
    before = rss_kib(running_agent.pid)
    channels = [channel() for _ in range(10)]
    calls = [observer(ch).GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=120)
             for ch in channels for _ in range(100)]
    deadline = time.time() + 30
    while time.time() < deadline and status()["flows"]["subscribers"] < 1000:
        time.sleep(0.5)
    subscribers = status()["flows"]["subscribers"]
    during = rss_kib(running_agent.pid)
    print(f"1,000 followers: agent RSS {before} KiB -> {during} KiB (+{(during - before) / 1000:.1f} KiB each)")
    in_pod("shop/client", "curl", "-s", "-m", "5", "-o", "/dev/null", f"http://{WEB}/hubble/followed", check=False)
    got = []
    for c in calls[:3] + calls[-3:]:
        for r in c:
            if r.HasField("flow") and "/hubble/followed" in r.flow.l7.http.url:
                got.append(r.flow.uuid)
                break
    for c in calls:
        c.cancel()
    for ch in channels:
        ch.close()
    assert subscribers >= 1000, subscribers
    assert len(got) == 6 and len(set(got)) == 1, "every follower sees the same new flow"
    deadline = time.time() + 20
    while time.time() < deadline and status()["flows"]["subscribers"] > 1:
        time.sleep(0.5)
    assert status()["flows"]["subscribers"] <= 1, "cancelled followers are unsubscribed"

    # A request with a 10 MB filter list: refused with a clear status, the agent alive.
    huge = observer_pb2.GetFlowsRequest(whitelist=[flow_pb2.FlowFilter(uuid=["x" * 1000] * 10_000)])
    assert huge.ByteSize() > 10_000_000
    ch = grpc.insecure_channel(f"unix://{SOCKET}", options=[("grpc.max_send_message_length", 64 << 20)])
    with pytest.raises(grpc.RpcError) as e:
        list(observer(ch).GetFlows(huge, timeout=30))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "bytes" in e.value.details(), e.value
    assert observer().ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5).max_flows > 0
    assert running_agent.proc.poll() is None


def test_the_star_wars_policy_drop_is_a_type_1_drop_event_on_the_wire(policies):
    from test_policy import RULE1, apply, ship  # noqa: PLC0415
    apply(RULE1)
    code, _, rc = ship("xwing", "POST", "/v1/request-landing")
    assert code == 0 and rc != 0
    drops = get_flows(number=1, whitelist=[flow_pb2.FlowFilter(source_pod=["default/xwing"], verdict=[flow_pb2.DROPPED],
                                                                 event_type=[flow_pb2.EventTypeFilter(type=1)])])
    assert len(drops) == 1
    d = drops[0]
    assert (d.event_type.type, d.event_type.sub_type, d.drop_reason, d.drop_reason_desc, d.Type) == \
        (1, 133, 133, flow_pb2.POLICY_DENIED, flow_pb2.L3_L4)
    # ... and it is what `-t drop` / `--type drop:133` select.
    assert get_flows(number=1, whitelist=[flow_pb2.FlowFilter(event_type=[flow_pb2.EventTypeFilter(
        type=1, match_sub_type=True, sub_type=133)])])[0].uuid == d.uuid
