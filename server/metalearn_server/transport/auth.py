"""Bearer-token authentication and TLS credentials for the gRPC server.

Tokens come from a file (one per line) or ``METALEARN_AUTH_TOKENS``
(comma-separated); a call must carry ``authorization: Bearer <token>``.
Tokens are compared in constant time (``hmac.compare_digest``) and never
logged.  Health checks stay open unless ``--auth-health`` is set, so that
orchestrators can probe without a secret.
"""
from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Awaitable, Callable

import grpc

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def load_tokens(path: Path | None, inline: str) -> tuple[bytes, ...]:
    tokens = [t.strip() for t in inline.split(",") if t.strip()]
    if path is not None:
        tokens += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return tuple(t.encode() for t in tokens)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: tuple[bytes, ...], protect_health: bool) -> None:
        if not tokens:
            raise ValueError("authentication needs at least one token")
        self.tokens, self.protect_health = tokens, protect_health

    def _authorised(self, details: grpc.HandlerCallDetails) -> bool:
        if not self.protect_health and details.method.startswith(HEALTH_PREFIX):
            return True
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        candidate = presented.strip().encode()
        # Compare against every token, so the time taken does not say which one nearly matched.
        return sum(hmac.compare_digest(candidate, token) for token in self.tokens) > 0

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or self._authorised(details):
            return handler
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers UNAUTHENTICATED."""
    message = "missing or invalid bearer token: send the metadata 'authorization: Bearer <token>'"

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        "unary_unary": grpc.unary_unary_rpc_method_handler,
        "unary_stream": grpc.unary_stream_rpc_method_handler,
        "stream_unary": grpc.stream_unary_rpc_method_handler,
        "stream_stream": grpc.stream_stream_rpc_method_handler,
    }
    for kind, build in kinds.items():
        if getattr(handler, kind):
            return build(refuse, request_deserializer=handler.request_deserializer,
                         response_serializer=handler.response_serializer)
    raise TypeError("unknown handler kind")


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with ``client_ca``, mutual TLS (client certificates required)."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
