"""Generated from `protocol/rounds.proto` by `python -m protocol.codegen`; never edited by hand.

The messages and gRPC stubs (`rounds_pb2`, `rounds_pb2_grpc`) with their `.pyi` type stubs
(mypy-protobuf). A test regenerates them and fails if the committed files differ; linters and
the type checker skip this folder.
"""
