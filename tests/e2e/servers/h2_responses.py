"""An HTTP/2 (h2c, prior knowledge) server built on python `h2` that answers with the header
blocks a well-behaved server never sends — what a proxy must refuse rather than relay
(RFC 9113 §8.2–8.3). Run beside bodies.py in backend/files, on port 8001.

GET /h2/upper       -> :status 200 with an upper-case field name (X-Upper)
GET /h2/connection  -> :status 200 with a connection-specific field (connection: keep-alive)
GET /h2/no-status   -> a response without :status
GET anything else   -> 200 "ok" (well formed)
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events

BAD = {
    "/h2/upper": [(":status", "200"), ("X-Upper", "1")],
    "/h2/connection": [(":status", "200"), ("connection", "keep-alive")],
    "/h2/no-status": [("content-type", "text/plain")],
}


def handle(sock):
    config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8", validate_outbound_headers=False,
                                       normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    with sock:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    path = dict(ev.headers).get(":path", "/")
                    bad = BAD.get(path)
                    if bad is not None:
                        conn.send_headers(ev.stream_id, bad, end_stream=False)
                        conn.send_data(ev.stream_id, b"bad", end_stream=True)
                    else:
                        conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "2")])
                        conn.send_data(ev.stream_id, b"ok", end_stream=True)
            sock.sendall(conn.data_to_send())


def serve(port):
    listener = socket.create_server(("0.0.0.0", port), reuse_port=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
