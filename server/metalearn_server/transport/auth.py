"""Bearer-token authentication and TLS credentials for the gRPC server.

Tokens come from a file or ``METALEARN_AUTH_TOKENS`` (comma-separated); a call
must carry ``authorization: Bearer <token>``.  The tokens file holds one token
per line; blank lines and lines starting with ``#`` are ignored, and spaces
around a token are stripped.  A token is at least :data:`MIN_TOKEN_LENGTH`
characters of the bearer-token alphabet (RFC 6750: letters, digits and
``-._~+/``, then ``=`` padding).  Anything else refuses the start-up, naming
the line but never its content, and so does a file with no token at all: a
server asked to authenticate never runs without it.

Tokens are compared in constant time (``hmac.compare_digest``) and never
logged.  A call without a valid token is refused from its metadata alone,
before its message is read, so an anonymous caller cannot make the server
parse tens of megabytes.  Health checks stay open unless ``--auth-health`` is
set, so that orchestrators can probe without a secret.
"""
from __future__ import annotations

import hmac
import logging
import re
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

from metalearn_server.errors import StartupError

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
MIN_TOKEN_LENGTH = 16
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
TOKEN_RULE = (f"a token is at least {MIN_TOKEN_LENGTH} characters of letters, digits and -._~+/ (then = padding); "
              "blank lines and lines starting with # are ignored")


def _token(text: str, where: str) -> bytes:
    if len(text) < MIN_TOKEN_LENGTH or not TOKEN.fullmatch(text):
        raise StartupError(f"{where} is not a valid bearer token: {TOKEN_RULE}")
    return text.encode()


def load_tokens(path: Path | None, inline: str) -> tuple[bytes, ...]:
    """The tokens a call may present; empty when authentication is off (no file, no inline tokens)."""
    tokens = [_token(text.strip(), f"token {i + 1} of METALEARN_AUTH_TOKENS / --auth-tokens")
              for i, text in enumerate(inline.split(",")) if text.strip()]
    if inline and not tokens:
        raise StartupError("--auth-tokens / METALEARN_AUTH_TOKENS is set but holds no token; the server would run "
                           "without authentication: give tokens or unset it")
    if path is not None:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise StartupError(f"--auth-tokens-file {path} cannot be read: {error}") from None
        found = [_token(line.strip(), f"line {number} of {path}") for number, line in enumerate(lines, 1)
                 if line.strip() and not line.strip().startswith("#")]
        if not found:
            raise StartupError(f"--auth-tokens-file {path} holds no token, so the server would run without "
                               f"authentication; add tokens ({TOKEN_RULE}) or drop the flag")
        tokens += found
    return tuple(tokens)


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
        if self._authorised(details):
            return await continuation(details)
        return REFUSAL


async def _refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                        "missing or invalid bearer token: send the metadata 'authorization: Bearer <token>'")


#: Answers any method UNAUTHENTICATED.  A streaming handler never reads the request (a unary one would wait for
#: the whole message), and it has no deserializer, so nothing the caller sent is parsed.
REFUSAL = grpc.stream_stream_rpc_method_handler(_refuse)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with ``client_ca``, mutual TLS (client certificates required).

    The files are checked with Python's ``ssl`` first, because gRPC reports any problem with them only as
    "Failed to bind to address"."""
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        check.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise StartupError(f"--tls-cert {cert} and --tls-key {key} are not a certificate and its private key: "
                           f"{getattr(error, 'reason', None) or error}") from None
    if client_ca is not None:
        try:
            check.load_verify_locations(client_ca)
        except (OSError, ssl.SSLError) as error:
            raise StartupError(f"--tls-client-ca {client_ca} is not a PEM CA bundle: {error}") from None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
