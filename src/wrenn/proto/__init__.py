"""Wire contracts: the `.proto` files of envd and of the host agent, and the code generated from them.

This is the only package that the processes share. `python -m wrenn.proto.generate` regenerates the
`*_pb.py` (protobuf-py) and `*_connect.py` (connectrpc) modules, which are committed so that no runtime
needs protoc.

- `wrenn.proto.envd.process`, `wrenn.proto.envd.filesystem`: envd's services, wire-compatible with E2B.
- `wrenn.proto.hostagent.v1`: the host agent's API, spoken by the control plane.
"""
