"""HTTP/2 (h2c prior knowledge) through the proxy: opaque by default, per-stream flows with
the experimental --intercept-http2."""
import re

from conftest import flows, in_pod

H2 = "http://198.18.0.11:8080"   # backend/web: nginx `listen 8080 http2`


def test_h2c_is_relayed_by_default(running_agent):
    p = in_pod("shop/client", "curl", "-sS", "-m", "5", "--http2-prior-knowledge", f"{H2}/h2/opaque")
    assert p.stdout == "hello over h2\n"
    assert flows("--http-path", "^/h2/opaque$") == []


def test_intercepted_h2_gives_per_stream_flows(running_agent):
    running_agent.stop()
    running_agent.start("--intercept-http2")
    try:
        p = in_pod("shop/client", "curl", "-sS", "-m", "5", "--http2-prior-knowledge", f"{H2}/h2/one")
        assert p.stdout == "hello over h2\n"
        req, resp = flows("--http-path", "^/h2/one$", last=2)
        assert req["l7"]["http"]["protocol"] == "HTTP/2" and req["l7"]["http"]["url"] == f"{H2}/h2/one"
        assert resp["l7"]["http"]["code"] == 200 and resp["Summary"].startswith("HTTP/2 200 ")
        out = in_pod("shop/client", "h2load", "-n", "2000", "-c", "4", "-m", "8", f"{H2}/h2/load", timeout=60).stdout
        assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored", out), out
        fl = flows("--http-path", "^/h2/load$")
        assert sum(not f["is_reply"] for f in fl) == 2000 and sum(f["is_reply"] for f in fl) == 2000
    finally:
        running_agent.stop()
        running_agent.start()
