"""The gRPC front: semcache.v1 servicers, protobuf converters, the interceptor that opens each
call of the pipeline (`edge/calls.py`), and the grpc.aio server."""
