"""The Death Star API of Cilium's Star Wars demo, as a python http.server (a real server)."""
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DeathStar(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, text):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def drain(self):
        n = int(self.headers.get("Content-Length", "0") or 0)
        if n:
            self.rfile.read(n)

    def do_GET(self):
        if self.path in ("/", "/v1", "/v1/"):
            self.reply(200, json.dumps({"name": "Death Star", "model": "DS-1 Orbital Battle Station",
                                        "manufacturer": "Imperial Department of Military Research, Sienar Fleet Systems"}) + "\n")
        elif self.path == "/v1/healthz":
            self.reply(200, "ok\n")
        else:
            self.reply(404, "Not Found\n")

    def do_POST(self):
        self.drain()
        self.reply(200, "Ship landed\n") if self.path == "/v1/request-landing" else self.reply(404, "Not Found\n")

    def do_PUT(self):
        self.drain()
        if self.path == "/v1/exhaust-port":
            self.reply(503, "Panic: deathstar exploded\n")
        else:
            self.reply(404, "Not Found\n")


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6  # [::] with IPV6_V6ONLY off also accepts IPv4


if __name__ == "__main__":
    DualStackServer(("::", int(sys.argv[1]) if len(sys.argv) > 1 else 80), DeathStar).serve_forever()
