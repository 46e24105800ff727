"""Errors the client raises: one exception type carrying the gRPC status code."""
from __future__ import annotations

import grpc


class MetalearnError(Exception):
    """A call failed; ``code`` is the gRPC status, ``details`` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, details: str, rpc: str) -> None:
        super().__init__(f"{rpc} failed with {code.name}: {details}")
        self.code, self.details, self.rpc = code, details, rpc

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, rpc: str) -> "MetalearnError":
        return cls(error.code(), error.details() or "", rpc)
