"""A raw TCP echo server (not HTTP) for the opaque relay test. Logs each peer ("IP connected")."""
import socket
import sys
import threading


def serve(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
while True:
    c, peer = s.accept()
    print(f"{peer[0]} connected", flush=True)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
