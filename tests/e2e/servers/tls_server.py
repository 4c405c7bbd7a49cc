"""An HTTPS server for the TLS tests: http.server behind python's ssl, ALPN http/1.1, with
the self-signed test certificate in /tmp/loupe-e2e-tls (SANs secure.example.test and
web.backend.test; made by the e2e fixtures before `lab up`, or here when missing; test
material only).

    tls_server.py BIND_ADDRESS PORT...
    tls_server.py --make-certificate-only
"""
import os
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR = "/tmp/loupe-e2e-tls"
os.makedirs(DIR, exist_ok=True)
cert, key = f"{DIR}/cert.pem", f"{DIR}/key.pem"
if not os.path.exists(cert):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=secure.example.test",
                    "-addext", "subjectAltName=DNS:secure.example.test,DNS:web.backend.test"], check=True, capture_output=True)
if sys.argv[1:] == ["--make-certificate-only"]:
    sys.exit(0)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        # An access log line with the peer (the upstream-source tests read it).
        sys.stderr.write(f"{self.client_address[0]} {fmt % args}\n")
        sys.stderr.flush()

    def do_GET(self):
        body = b"hello over tls\n" if self.path != "/secret" else b"the secret\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1"])
servers = []
for port in sys.argv[2:]:
    server = ThreadingHTTPServer((sys.argv[1], int(port)), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    servers.append(server)
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
