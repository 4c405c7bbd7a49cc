"""mitmproxy addon for the bench: run mitmproxy's transparent mode behind Loupe's tc redirect.

Loupe's tc program hands the pod's connection to whatever listens on port 15001 with
bpf_sk_assign and no NAT, as Envoy's `transparent: true` listener expects:
- the listener needs IP_TRANSPARENT to answer for the destination's address (Loupe and Envoy
  set it; mitmproxy, made for iptables REDIRECT, does not), and
- the accepted socket's local address *is* the destination the pod dialled (Loupe and Envoy's
  original_dst read it so); mitmproxy asks conntrack (SO_ORIGINAL_DST), which only knows NAT.
"""
import asyncio
import socket

import mitmproxy.platform

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
_start_server = asyncio.start_server


async def _start_transparent_server(client_connected_cb, host=None, port=None, **kwargs):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind((host or "0.0.0.0", port or 0))
    return await _start_server(client_connected_cb, sock=sock, **kwargs)


asyncio.start_server = _start_transparent_server
mitmproxy.platform.original_addr = lambda sock: sock.getsockname()[:2]
