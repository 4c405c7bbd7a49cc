"""A real gRPC client (python grpcio) for the HTTP/2 tests: one call, its outcome as JSON.

    grpc_client.py TARGET unary|find|count|secret [ARG]
"""
import json
import sys

import grpc

target, call = sys.argv[1], sys.argv[2]
arg = (sys.argv[3] if len(sys.argv) > 3 else "").encode()
methods = {"unary": "SayHello", "find": "Find", "count": "Count", "secret": "Secret"}
with grpc.insecure_channel(target) as channel:
    path = f"/helloworld.Greeter/{methods[call]}"
    try:
        if call == "count":
            replies = list(channel.unary_stream(path)(arg, timeout=20))
            out = {"code": "OK", "messages": len(replies), "last": replies[-1].decode() if replies else None}
        else:
            reply = channel.unary_unary(path)(arg, timeout=10)
            out = {"code": "OK", "reply": reply.decode()}
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details()}
print(json.dumps(out))
