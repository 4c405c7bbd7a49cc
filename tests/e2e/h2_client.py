"""Crafted HTTP/2 clients (python `h2`, `hyperframe`, `hpack`) for the HTTP/2 tests. Each
scenario prints its outcome as one JSON object.

    h2_client.py HOST PORT concurrent PATH...      all requests as concurrent streams of one connection
    h2_client.py HOST PORT slowreader BIG SMALL     BIG's reader stalls while SMALL completes
    h2_client.py HOST PORT drain N PATH             N concurrent streams to a server that says GOAWAY
    h2_client.py HOST PORT rapidreset N             N × (HEADERS, RST_STREAM) — CVE-2023-44487
    h2_client.py HOST PORT continuation N           one HEADERS and N CONTINUATION frames — CVE-2024-27316
    h2_client.py HOST PORT bigheaders BYTES         one header block that decodes to BYTES
    h2_client.py HOST PORT streams N PATH           N stream opens without waiting for answers
    h2_client.py HOST PORT hpacktable BYTES         a header block that resizes the HPACK table to BYTES
"""
import hashlib
import json
import os
import socket
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events
import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame,
                              SettingsFrame, WindowUpdateFrame)

HOST, PORT, SCENARIO = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ARGS = sys.argv[4:]


def request_headers(path, method="GET"):
    return [(":method", method), (":scheme", "http"), (":authority", f"{HOST}:{PORT}"), (":path", path)]


class Client:
    """An `h2` client connection driven by hand."""

    def __init__(self, window=65535):
        self.sock = socket.create_connection((HOST, PORT), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if window > 65535:
            self.conn.increment_flow_control_window(window - 65535)
        self.flush()
        self.streams = {}   # id -> {"status", "body", "ended", "reset"}
        self.goaway = None
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def get(self, path):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, request_headers(path), end_stream=True)
        self.streams[sid] = {"path": path, "status": None, "body": bytearray(), "ended": False, "reset": None}
        self.flush()
        return sid

    def pump(self, until, timeout=20, ack=lambda sid: True):
        """Handles events until `until()` holds, the connection closes, or the timeout."""
        deadline = time.time() + timeout
        while not until() and not self.closed and time.time() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.time()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            for ev in self.conn.receive_data(data):
                s = self.streams.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived) and s is not None:
                    s["status"] = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived) and s is not None:
                    s["body"] += ev.data
                    if ack(ev.stream_id):
                        self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and s is not None:
                    s["ended"] = True
                elif isinstance(ev, h2.events.StreamReset) and s is not None:
                    s["reset"] = ev.error_code.name if hasattr(ev.error_code, "name") else str(ev.error_code)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = {"error": getattr(ev.error_code, "name", str(ev.error_code)),
                                   "last_stream_id": ev.last_stream_id}
            self.flush()


class Raw:
    """Frames written by hand, past the limits a well-behaved client library enforces."""

    def __init__(self):
        self.sock = socket.create_connection((HOST, PORT), timeout=10)
        self.encoder = hpack.Encoder()
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()
                          + WindowUpdateFrame(0, window_increment=(1 << 30)).serialize())
        self.lock = threading.Lock()
        self.counts = {"headers": 0, "rst": 0, "data_bytes": 0}
        self.rst_codes = {}
        self.ended = set()     # streams whose response ended (END_STREAM)
        self.bodies = {}
        self.resets = {}       # stream -> RST_STREAM error code
        self.goaway = None
        self.closed = False

    def send(self, *frames):
        try:
            with self.lock:
                self.sock.sendall(b"".join(f.serialize() for f in frames))
            return True
        except OSError:
            return False

    def headers(self, sid, path, end_headers=True, extra=()):
        f = HeadersFrame(sid)
        f.data = self.encoder.encode(request_headers(path) + list(extra))
        f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f

    def read(self, quiet=2.0, limit=60):
        """Reads frames until the connection closes, or nothing came for `quiet` seconds."""
        buf = b""
        end = time.time() + limit
        self.sock.settimeout(quiet)
        while time.time() < end:
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                return
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            buf += data
            while len(buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                frame.parse_body(memoryview(buf[9:9 + length]))
                buf = buf[9 + length:]
                self.on_frame(frame)

    def on_frame(self, frame):
        if isinstance(frame, (HeadersFrame, DataFrame)) and "END_STREAM" in frame.flags:
            self.ended.add(frame.stream_id)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            ack = SettingsFrame(0)
            ack.flags.add("ACK")
            self.send(ack)
        elif isinstance(frame, HeadersFrame):
            self.counts["headers"] += 1
        elif isinstance(frame, DataFrame):
            self.counts["data_bytes"] += len(frame.data)
            self.bodies[frame.stream_id] = self.bodies.get(frame.stream_id, b"") + frame.data
            if frame.data:
                self.send(WindowUpdateFrame(frame.stream_id, window_increment=len(frame.data)))
        elif isinstance(frame, RstStreamFrame):
            self.resets[frame.stream_id] = frame.error_code
            self.counts["rst"] += 1
            self.rst_codes[frame.error_code] = self.rst_codes.get(frame.error_code, 0) + 1
        elif isinstance(frame, GoAwayFrame):
            self.goaway = {"error": frame.error_code, "last_stream_id": frame.last_stream_id}


def concurrent(paths):
    c = Client()
    ids = [c.get(p) for p in paths]
    c.pump(lambda: all(c.streams[i]["ended"] or c.streams[i]["reset"] for i in ids))
    return {"streams": [{"path": c.streams[i]["path"], "status": c.streams[i]["status"],
                         "body": c.streams[i]["body"].decode(errors="replace"), "reset": c.streams[i]["reset"]}
                        for i in ids]}


def slowreader(big, small, stall=3.0):
    # A large connection window, so only the big stream's own window holds it back.
    c = Client(window=1 << 30)
    stalled = set()
    a = c.get(big)
    stalled.add(a)
    # Read until the big stream's window (64 KiB) is used up and nothing more comes.
    c.pump(lambda: False, timeout=1.5, ack=lambda sid: sid not in stalled)
    before = len(c.streams[a]["body"])
    t0 = time.time()
    b = c.get(small)
    c.pump(lambda: c.streams[b]["ended"] or c.streams[b]["reset"] is not None, timeout=10,
           ack=lambda sid: sid not in stalled)
    small_seconds = time.time() - t0
    time.sleep(stall)  # the test samples the agent's memory while the big stream is stalled
    c.pump(lambda: False, timeout=0.3, ack=lambda sid: sid not in stalled)
    during = len(c.streams[a]["body"])
    stalled.clear()
    c.conn.acknowledge_received_data(len(c.streams[a]["body"]), a)
    c.flush()
    c.pump(lambda: c.streams[a]["ended"] or c.streams[a]["reset"] is not None, timeout=60)
    body = bytes(c.streams[a]["body"])
    return {"big_bytes_while_stalled": during, "big_bytes_before_small": before,
            "small_status": c.streams[b]["status"], "small_body": c.streams[b]["body"].decode(errors="replace"),
            "small_seconds": round(small_seconds, 3), "big_status": c.streams[a]["status"],
            "big_bytes": len(body), "big_sha256": hashlib.sha256(body).hexdigest(), "big_reset": c.streams[a]["reset"]}


def drain(n, path):
    # Frame by frame: `h2` stops reading at GOAWAY, but a graceful GOAWAY lets streams finish.
    r = Raw()
    ids = [2 * i + 1 for i in range(n)]
    r.send(*[r.headers(sid, path) for sid in ids])
    r.read(quiet=10)
    done = [i for i in ids if i in r.ended and i not in r.resets]
    refused = [i for i in ids if r.resets.get(i) == 7]  # REFUSED_STREAM
    other = [i for i in ids if i not in done and i not in refused]
    return {"completed": len(done), "refused": len(refused), "other": [r.resets.get(i) for i in other],
            "bodies": sorted({r.bodies.get(i, b"").decode() for i in done}), "goaway": r.goaway, "closed": r.closed}


def rapidreset(n):
    r = Raw()
    sent = 0
    for i in range(n):
        sid = 2 * i + 1
        if not r.send(r.headers(sid, "/h2/reset"), RstStreamFrame(sid, error_code=8)):  # CANCEL
            break
        sent += 1
    r.read()
    return {"sent": sent, "goaway": r.goaway, "closed": r.closed}


def continuation(n):
    r = Raw()
    f = r.headers(1, "/h2/continuation", end_headers=False)
    f.flags.discard("END_STREAM")
    frames = [f]
    block = r.encoder.encode([("x-filler", "a")])
    for _ in range(n):
        c = ContinuationFrame(1)
        c.data = block
        frames.append(c)
    ok = r.send(*frames)
    r.read()
    return {"sent": ok, "goaway": r.goaway, "closed": r.closed}


def bigheaders(size):
    # Distinct random values (nothing to index or compress away), split into 16 KiB frames.
    r = Raw()
    extra = [(f"x-big-{i}", os.urandom(512).hex()) for i in range(size // 1050 + 1)]
    block = r.encoder.encode(request_headers("/h2/bigheaders") + extra)
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    frames = []
    for i, chunk in enumerate(chunks):
        f = HeadersFrame(1) if i == 0 else ContinuationFrame(1)
        f.data = chunk
        if i == 0:
            f.flags.add("END_STREAM")
        if i == len(chunks) - 1:
            f.flags.add("END_HEADERS")
        frames.append(f)
    r.send(*frames)
    r.read()
    return {"block_bytes": len(block), "goaway": r.goaway, "rst": r.rst_codes, "closed": r.closed,
            "responses": r.counts["headers"]}


def hpacktable(size):
    # HPACK dynamic table size update (RFC 7541 §6.3: 001 + 5-bit prefix integer) past our SETTINGS.
    r = Raw()
    prefix, rest = 31, size - 31
    update = bytearray([0x20 | prefix])
    while rest >= 128:
        update.append((rest & 0x7F) | 0x80)
        rest >>= 7
    update.append(rest)
    f = r.headers(1, "/h2/hpack")
    f.data = bytes(update) + f.data
    r.send(f)
    r.read()
    return {"goaway": r.goaway, "closed": r.closed, "responses": r.counts["headers"]}


def streams(n, path):
    r = Raw()
    sender_done = threading.Event()

    def send_all():
        for i in range(0, n, 100):
            if not r.send(*[r.headers(2 * j + 1, path) for j in range(i, min(n, i + 100))]):
                break
        sender_done.set()

    t = threading.Thread(target=send_all, daemon=True)
    t.start()
    r.read(quiet=3.0, limit=120)
    t.join(timeout=5)
    return {"responses": r.counts["headers"], "rst": r.counts["rst"], "rst_codes": r.rst_codes,
            "goaway": r.goaway, "closed": r.closed}


if SCENARIO == "concurrent":
    out = concurrent(ARGS)
elif SCENARIO == "slowreader":
    out = slowreader(ARGS[0], ARGS[1])
elif SCENARIO == "drain":
    out = drain(int(ARGS[0]), ARGS[1])
elif SCENARIO == "rapidreset":
    out = rapidreset(int(ARGS[0]))
elif SCENARIO == "continuation":
    out = continuation(int(ARGS[0]))
elif SCENARIO == "bigheaders":
    out = bigheaders(int(ARGS[0]))
elif SCENARIO == "hpacktable":
    out = hpacktable(int(ARGS[0]))
elif SCENARIO == "streams":
    out = streams(int(ARGS[0]), ARGS[1])
else:
    sys.exit(f"unknown scenario {SCENARIO}")
print(json.dumps(out))
