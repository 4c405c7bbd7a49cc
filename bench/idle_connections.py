"""Opens N keep-alive HTTP connections, one request each, then holds them open until stdin closes."""
import socket
import sys

host, n = sys.argv[1], int(sys.argv[2])
conns = []
for _ in range(n):
    s = socket.create_connection((host, 80), timeout=10)
    s.sendall(b"GET /idle HTTP/1.1\r\nHost: nginx\r\n\r\n")
    conns.append(s)
ok = 0
for s in conns:
    if s.recv(4096).startswith(b"HTTP/1.1 200"):
        ok += 1
print(ok, flush=True)
sys.stdin.read()
