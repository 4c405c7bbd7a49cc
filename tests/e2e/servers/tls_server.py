"""An HTTPS server for the TLS tests: a self-signed certificate for secure.example.test
(made here with the openssl CLI, in /tmp/loupe-e2e-tls, test material only), http.server
behind python's ssl, ALPN http/1.1.

    tls_server.py BIND_ADDRESS PORT
"""
import os
import ssl
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR = "/tmp/loupe-e2e-tls"
os.makedirs(DIR, exist_ok=True)
cert, key = f"{DIR}/cert.pem", f"{DIR}/key.pem"
if not os.path.exists(cert):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=secure.example.test",
                    "-addext", "subjectAltName=DNS:secure.example.test"], check=True, capture_output=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"hello over tls\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["http/1.1"])
server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
server.serve_forever()
