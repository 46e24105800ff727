"""Errors the client raises: one exception type carrying the gRPC status code."""
from __future__ import annotations

import grpc

#: How gRPC's own UNAVAILABLE reads when no connection was made at all (nothing listening, a name that does not
#: resolve, a malformed address), as opposed to a server that answered UNAVAILABLE itself.
_NO_CONNECTION = ("failed to connect", "errors resolving", "dns resolution failed")


class MetalearnError(Exception):
    """A call failed; ``code`` is the gRPC status, ``details`` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, details: str, rpc: str) -> None:
        super().__init__(f"{rpc} failed with {code.name}: {details}")
        self.code, self.details, self.rpc = code, details, rpc

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, rpc: str, target: str = "") -> "MetalearnError":
        """``target``, the address dialled, is named in the hint a connection failure gets."""
        details = error.details() or ""
        if error.code() == grpc.StatusCode.UNAVAILABLE and any(m in details.lower() for m in _NO_CONNECTION):
            details = (f"cannot reach a metalearn server at {target or 'the target'}: check the address (host:port) "
                       f"and that the server is running there ({details})")
        return cls(error.code(), details, rpc)
