"""A real gRPC server (python grpcio) for the HTTP/2 tests, without generated code: methods
take and return raw bytes.

  /helloworld.Greeter/SayHello   unary: b"hello " + request
  /helloworld.Greeter/Find       unary: NOT_FOUND "no such greeting"
  /helloworld.Greeter/Count      server streaming: int(request) messages b"n=<i>"
  /helloworld.Greeter/Secret     unary: b"the secret" (the policy tests deny it)
"""
import sys
from concurrent import futures

import grpc


def say_hello(request, context):
    print(f"{context.peer()} SayHello", flush=True)  # the peer this server sees
    return b"hello " + request


def find(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")


def count(request, context):
    for i in range(int(request)):
        yield b"n=%d" % i


def secret(request, context):
    return b"the secret"


def raw(fn, streaming=False):
    make = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
    return make(fn, request_deserializer=None, response_serializer=None)


handlers = grpc.method_handlers_generic_handler("helloworld.Greeter", {
    "SayHello": raw(say_hello), "Find": raw(find), "Count": raw(count, streaming=True), "Secret": raw(secret),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((handlers,))
server.add_insecure_port(f"0.0.0.0:{sys.argv[1]}")
server.start()
server.wait_for_termination()
