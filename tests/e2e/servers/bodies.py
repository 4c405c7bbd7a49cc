"""A small real HTTP server (python http.server) for streaming-body tests.

POST /upload      -> 200, body = sha256 hex of the request body (read in 1 MiB chunks)
GET  /bytes/N     -> 200, N bytes of a deterministic pattern, streamed in 1 MiB chunks
GET  /upgrade     -> with `Upgrade: echo` (or h2c): 101 Switching Protocols, then echoes raw bytes
GET  /raw-response -> RAW_RESPONSE below, byte for byte (odd spellings a re-encoding proxy would change)
GET  /bad-response -> a response framed two ways (Content-Length and chunked): a proxy must not relay it
GET  /big-head/N  -> 200 with an X-Big header of N bytes (a head larger than one read) echoing the
                     length of the request's X-Big header as the body
On port+1: h2_responses.py (HTTP/2 responses with malformed header blocks).
"""
import hashlib
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 1 << 20
# Chunked last (so chunked framing) under another coding, a chunk extension, a trailer, header
# names in odd case and a value with inner spaces: a proxy that relays bytes as they came
# passes it unchanged.
RAW_RESPONSE = (b"HTTP/1.1 200 Fine\r\nX-Odd-CASE: a  b\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n000\r\nX-Trailer: t\r\n\r\n")


def pattern_chunk():
    block = hashlib.sha256(b"loupe").digest()
    return (block * (CHUNK // len(block) + 1))[:CHUNK]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        h = hashlib.sha256()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(CHUNK, remaining))
                    h.update(data)
                    remaining -= len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                data = self.rfile.read(min(CHUNK, remaining))
                if not data:
                    break
                h.update(data)
                remaining -= len(data)
        body = h.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/raw-response":
            self.wfile.write(RAW_RESPONSE)
            return
        if self.path.startswith("/big-head/"):
            body = str(len(self.headers.get("X-Big", ""))).encode()
            self.send_response(200)
            self.send_header("X-Big", "b" * int(self.path.split("/")[2]))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/bad-response":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            return
        if self.path == "/upgrade" and self.headers.get("Upgrade") in ("echo", "h2c"):
            self.send_response(101)
            self.send_header("Upgrade", self.headers.get("Upgrade"))
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(65536)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
            return
        if not self.path.startswith("/bytes/"):
            body = b"bodies server\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        n = int(self.path.split("/")[2])
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        chunk = pattern_chunk()
        while n:
            part = chunk[: min(n, CHUNK)]
            self.wfile.write(part)
            n -= len(part)


if __name__ == "__main__":
    import h2_responses
    threading.Thread(target=h2_responses.serve, args=(int(sys.argv[1]) + 1,), daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
