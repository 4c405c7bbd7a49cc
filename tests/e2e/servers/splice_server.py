"""Servers for the kernel splice tests (raw TCP, not HTTP), one thread per connection.

7100  says "ready\\n" first (so the proxy decides at once: opaque), then echoes until EOF.
7101  says "ready\\n", reads until the client's EOF (half-close), then answers the sha256 of
      what it got, a newline and 1 MiB of b"t", and closes.
7102  a WebSocket echo server (RFC 6455 handshake over HTTP/1.1, then text/binary frames echoed).
Each connection is logged with its peer ("IP connected to PORT").
"""
import base64
import hashlib
import socket
import sys
import threading

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


def echo(conn):
    conn.sendall(b"ready\n")
    while True:
        data = conn.recv(1 << 20)
        if not data:
            return
        conn.sendall(data)


def digest_after_eof(conn):
    conn.sendall(b"ready\n")
    h = hashlib.sha256()
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        h.update(data)
    conn.sendall(h.hexdigest().encode() + b"\n" + b"t" * (1 << 20))


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def websocket(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return
        head += chunk
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    try:
        while True:
            b0, b1 = recv_exact(conn, 2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(recv_exact(conn, 2), "big")
            elif n == 127:
                n = int.from_bytes(recv_exact(conn, 8), "big")
            mask = recv_exact(conn, 4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(recv_exact(conn, n)))
            opcode = b0 & 0x0F
            if opcode == 8:  # close: answer and end
                conn.sendall(bytes([0x88, 0]))
                return
            length = (bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big") if n < 65536
                      else bytes([127]) + n.to_bytes(8, "big"))
            conn.sendall(bytes([0x80 | opcode]) + length + payload)
    except EOFError:
        return


def serve(port, handler):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1024)
    while True:
        c, peer = s.accept()
        print(f"{peer[0]} connected to {port}", flush=True)

        def run(c=c):
            with c:
                try:
                    handler(c)
                except OSError:
                    pass
        threading.Thread(target=run, daemon=True).start()


for port, handler in [(7101, digest_after_eof), (7102, websocket)]:
    threading.Thread(target=serve, args=(port, handler), daemon=True).start()
serve(7100, echo)
