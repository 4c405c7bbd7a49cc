"""`loupe ui` in a real browser: Debian's headless Chromium driven by selenium (chromium-driver),
against the agent in the lab with Cilium's Star Wars story (rule1) plus shop → backend traffic.
The map, the XSS-as-text guarantee, clicking a card, the namespace and verdict filters, the JSON
endpoints against `loupe observe`, the browser console, a screenshot; then bad input, the
loopback/token rules, a --server that is not a Hubble API, and a server that goes away and
comes back while the page is open."""
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import LOUPE, REPO, in_pod, loupe, run
from test_policy import DS, RULE1, apply, policies  # noqa: F401  (fixture: an empty policy directory)

SOCKET = "unix:///run/loupe/hubble.sock"
WEB = "198.18.0.11"
XSS_PATH = "/v1/<img/src=x/onerror=window.__xss=1>"
XSS_HEADER = "<script>window.__xss=2</script>"
SCREENSHOT = REPO / ".build" / "loupe-ui.png"


class UIProcess:
    """`loupe ui`, started and stopped by PID; `url` is the address it printed."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([LOUPE, "ui", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = []
        self.url = None
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("loupe ui: http"):
                self.url = line.split()[2]
                break
        if self.url is None:
            self.stop()
            raise AssertionError("loupe ui did not start: " + "".join(self.output))
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=lambda: [self.output.append(l) for l in self.proc.stdout], daemon=True).start()

    @property
    def base(self):
        return self.url.split("?")[0].rstrip("/")

    def get(self, path, headers=None):
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture()
def ui(running_agent):
    u = UIProcess("--server", SOCKET, "--listen", "127.0.0.1:0")
    yield u
    u.stop()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("chromium and chromium-driver are needed (scripts/install-deps.sh installs them)")
    o = Options()
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,768",
              "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking"]:
        o.add_argument(a)
    o.binary_location = chromium
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver_path), options=o)
    yield d
    d.quit()


def wait_for(what, predicate, timeout=10.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # noqa: BLE001  (the page is still rendering)
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def curl(pod, *args):
    return in_pod(pod, "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", *args, check=False).stdout


def star_wars_traffic():
    apply(RULE1)
    assert curl("default/tiefighter", "-X", "POST", f"http://{DS}/v1/request-landing") == "200"
    assert curl("default/xwing", "-X", "POST", f"http://{DS}/v1/request-landing") == "000"  # denied at connect
    assert curl("default/tiefighter", "-X", "PUT", f"http://{DS}/v1/exhaust-port") == "403"
    # A pod chooses its path and headers: markup in both must show as text and run nothing.
    assert curl("default/tiefighter", "--path-as-is", "-H", f"X-Probe: {XSS_HEADER}", f"http://{DS}{XSS_PATH}") == "403"
    assert curl("shop/client", f"http://{WEB}/users/12345") == "200"


def cards(d):
    return {e.get_attribute("data-id") for e in d.find_elements("css selector", "g.card")}


def edge(d, source, destination):
    found = d.find_elements("css selector", f'g.edge[data-source="{source}"][data-destination="{destination}"]')
    return found[0] if found else None


def table_text(d):
    return [r.text for r in d.find_elements("css selector", "#flows tbody tr")]


def console_errors(d):
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def observe_uuids(*args):
    out = loupe("observe", "-o", "json", *args).stdout
    return [json.loads(l)["flow"]["uuid"] for l in out.splitlines() if l.strip()]


def api_uuids(ui, query):
    status, _, body = ui.get("/api/flows?" + query)
    assert status == 200, body
    return [json.loads(l)["flow"]["uuid"] for l in body.splitlines() if l.strip() and '"flow"' in l]


def test_the_map_shows_the_star_wars_story_as_text_in_a_real_browser(policies, ui, browser):
    star_wars_traffic()
    d = browser
    d.get_log("browser")  # start with an empty console log
    d.get(ui.url)
    want = {"default/tiefighter", "default/xwing", "default/deathstar", "shop/client", "backend/web"}
    wait_for("the Star Wars cards", lambda: want <= cards(d))
    # tiefighter → deathstar (mixed: landed and 403) and xwing → deathstar (denied: red).
    xwing = wait_for("the xwing edge", lambda: edge(d, "default/xwing", "default/deathstar"))
    assert xwing.get_attribute("data-dropped") == "true"
    assert xwing.find_element("css selector", "path.edge-line").get_attribute("stroke") == "#c62828"
    tie = edge(d, "default/tiefighter", "default/deathstar")
    assert tie is not None and tie.get_attribute("data-mixed") == "true"
    shop = edge(d, "shop/client", "backend/web")
    assert shop.get_attribute("data-dropped") == "false"

    # Markup in a path and a header is shown as text and never runs.
    rows = wait_for("the XSS request in the table", lambda: [r for r in d.find_elements("css selector", "#flows tbody tr")
                                                             if XSS_PATH in r.text])
    assert d.execute_script("return window.__xss === undefined")
    assert d.execute_script("return document.querySelectorAll('img, script:not([src])').length") == 0
    details = []
    for row in rows:
        row.click()
        details.append(wait_for("the flow detail", lambda: d.find_element("id", "flow-detail").text))
    assert any(XSS_HEADER in t for t in details), details
    assert d.execute_script("return window.__xss === undefined")

    # Deathstar (reached with the keyboard: focus + Enter) lists its flows — the 403 PUT
    # /v1/exhaust-port — and its endpoints.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    card = d.find_element("css selector", 'g.card[data-id="default/deathstar"]')
    d.execute_script("arguments[0].focus()", card)
    ActionChains(d).send_keys(Keys.ENTER).perform()
    wait_for("deathstar selected", lambda: d.find_element("id", "sel-title").text == "default/deathstar")
    wait_for("deathstar's 403 PUT", lambda: any("403 PUT http://198.18.0.16/v1/exhaust-port" in t for t in table_text(d)))
    assert all("deathstar" in t for t in table_text(d)), table_text(d)
    endpoints = d.find_element("id", "endpoints").text
    assert "PUT /v1/exhaust-port" in endpoints and "403×1" in endpoints, endpoints
    assert "POST /v1/request-landing" in endpoints
    ActionChains(d).send_keys(Keys.ESCAPE).perform()  # Escape clears the selection
    wait_for("the selection cleared", lambda: d.find_element("id", "sel-title").text == "Nothing selected")

    # Namespace filter: only default → the shop and backend boxes go, the story stays.
    d.find_element("css selector", '#ns-list input[data-namespace="default"]').click()
    wait_for("shop hidden", lambda: "shop/client" not in cards(d) and "default/deathstar" in cards(d))
    assert not d.find_elements("css selector", 'g.box[data-namespace="shop"]')
    wait_for("only default flows", lambda: table_text(d) and all("default/" in t for t in table_text(d)))
    d.find_element("id", "ns-all").click()
    wait_for("shop back", lambda: "shop/client" in cards(d))

    # Verdict filter: DROPPED → the forwarded-only shop edge goes, the xwing edge stays.
    d.execute_script("const s = document.getElementById('f-verdict'); s.value = 'DROPPED'; s.dispatchEvent(new Event('change'));")
    wait_for("forwarded-only edges hidden", lambda: edge(d, "shop/client", "backend/web") is None
             and edge(d, "default/xwing", "default/deathstar") is not None)
    wait_for("only dropped flows", lambda: table_text(d) and all(t.endswith("DROPPED") for t in table_text(d)))
    d.execute_script("const s = document.getElementById('f-verdict'); s.value = ''; s.dispatchEvent(new Event('change'));")
    wait_for("all edges back", lambda: edge(d, "shop/client", "backend/web") is not None)

    # The JSON endpoints agree with `loupe observe` (same filter names, same question).
    assert api_uuids(ui, "verdict=DROPPED&last=5") == observe_uuids("--verdict", "DROPPED", "--last", "5")
    assert api_uuids(ui, "namespace=default&http-method=PUT&last=3") == observe_uuids("--namespace", "default", "--http-method", "PUT", "--last", "3")
    assert api_uuids(ui, "from-pod=shop/client&last=2") == observe_uuids("--from-pod", "shop/client", "--last", "2")
    status, _, body = ui.get("/api/graph?namespace=default")
    graph = json.loads(body)
    ids = {n["id"] for n in graph["nodes"]}
    assert {"default/tiefighter", "default/xwing", "default/deathstar"} <= ids and "shop/client" not in ids
    put = [e for e in graph["endpoints"]["default/deathstar"] if e["method"] == "PUT"]
    assert put and put[0]["path"] == "/v1/exhaust-port" and put[0]["statuses"].get("403") == 1

    assert console_errors(d) == []
    # The screenshot (README): deathstar selected, its endpoints and flows listed.
    d.find_element("css selector", 'g.card[data-id="default/deathstar"]').click()
    wait_for("deathstar's endpoints", lambda: d.find_elements("id", "endpoints"))
    SCREENSHOT.parent.mkdir(exist_ok=True)
    d.save_screenshot(str(SCREENSHOT))
    if os.environ.get("LOUPE_UPDATE_SCREENSHOT") == "1":
        shutil.copy(SCREENSHOT, REPO / "docs" / "loupe-ui.png")
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_page_says_when_the_server_goes_away_and_resumes(policies, ui, browser, running_agent):
    d = browser
    d.get(ui.url)
    wait_for("connected", lambda: d.find_element("id", "server").get_attribute("data-connected") == "true")
    wait_for("cards", lambda: cards(d))
    before = {c.get_attribute("data-id"): c.rect for c in d.find_elements("css selector", "g.card")}
    running_agent.stop()
    wait_for("the outage shown", lambda: "unreachable" in d.find_element("id", "banner").text, timeout=15)
    assert d.find_element("id", "server").get_attribute("data-connected") == "false"
    running_agent.start()
    wait_for("connected again", lambda: d.find_element("id", "server").get_attribute("data-connected") == "true", timeout=20)
    assert d.find_element("id", "banner").get_attribute("hidden") is not None
    # New flows reach the open page after the outage.
    marker = f"/users/after-outage-{int(time.time())}"
    for _ in range(50):
        if curl("shop/client", f"http://{WEB}{marker}") == "200":
            break
        time.sleep(0.2)
    wait_for("a flow from after the outage", lambda: any(marker in t for t in table_text(d)), timeout=15)
    # The layout stays put while updates arrive: every card is where it was.
    after = {c.get_attribute("data-id"): c.rect for c in d.find_elements("css selector", "g.card")}
    moved = {k: (before[k], after[k]) for k in before if k in after and before[k] != after[k]}
    assert not moved, moved


def test_bad_input_gets_400_naming_it_and_the_page_is_locked_down(ui):
    status, headers, body = ui.get("/api/flows?bogus=1")
    assert status == 400 and "bogus" in body and "unknown filter" in body
    status, _, body = ui.get("/api/flows?verdict=NOPE")
    assert status == 400 and "verdict" in body and "NOPE" in body
    status, _, body = ui.get("/api/flows?ip=not-an-ip")
    assert status == 400 and "not-an-ip" in body
    status, _, body = ui.get("/api/graph?max-nodes=lots")
    assert status == 400 and "max-nodes" in body
    status, _, body = ui.get("/api/graph?since=yesterday")
    assert status == 400 and "since" in body
    status, _, body = ui.get("/api/events?http-status=abc")
    assert status == 400 and "http-status" in body
    status, headers, body = ui.get("/")
    assert status == 200 and '<script src="app.js"' in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_listening_beyond_loopback_needs_a_token_and_the_token_is_checked(running_agent, tmp_path):
    p = run(LOUPE, "ui", "--server", SOCKET, "--listen", "0.0.0.0:0", check=False, timeout=20)
    assert p.returncode != 0 and "not a loopback address" in p.stderr and "--auth-token-file" in p.stderr
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-the-test\n")
    u = UIProcess("--server", SOCKET, "--listen", "127.0.0.1:0", "--auth-token-file", str(token))
    try:
        assert u.get("/api/status")[0] == 401
        assert u.get("/api/status", {"Authorization": "Bearer wrong-token-wrong-token"})[0] == 401
        status, _, body = u.get("/api/status", {"Authorization": "Bearer s3cret-token-for-the-test"})
        assert status == 200 and json.loads(body)["server"] == SOCKET
        # The printed address carries the token once: it sets an HttpOnly cookie and redirects to /.
        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(u.url, timeout=5)
            raise AssertionError("expected a redirect")
        except urllib.error.HTTPError as e:
            assert e.code == 302 and e.headers["Location"] == "/"
            cookie = e.headers["Set-Cookie"]
            assert "loupe_ui_token=s3cret-token-for-the-test" in cookie and "HttpOnly" in cookie
        assert u.get("/api/status", {"Cookie": "loupe_ui_token=s3cret-token-for-the-test"})[0] == 200
    finally:
        u.stop()
    # Or TLS: a certificate of its own on any address.
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
        "-subj", "/CN=loupe-ui-test", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"))
    u = UIProcess("--server", SOCKET, "--listen", "0.0.0.0:0", "--listen-tls-cert-file", str(tmp_path / "cert.pem"),
                  "--listen-tls-key-file", str(tmp_path / "key.pem"))
    try:
        assert u.url.startswith("https://")
        port = u.url.rsplit(":", 1)[1].split("/")[0]
        p = run("curl", "-s", "--cacert", str(tmp_path / "cert.pem"), "--resolve", f"loupe-ui-test:{port}:127.0.0.1",
                f"https://loupe-ui-test:{port}/api/status")
        assert json.loads(p.stdout)["server"] == SOCKET
    finally:
        u.stop()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_a_server_that_is_not_a_hubble_api_is_refused_clearly(tmp_path):
    port = free_port()
    http = subprocess.Popen(["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        p = run(LOUPE, "ui", "--server", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", check=False, timeout=30)
        assert p.returncode == 1 and "is not a Hubble API" in p.stderr, p.stderr
    finally:
        http.terminate()
        http.wait(timeout=10)
