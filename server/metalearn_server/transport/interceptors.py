"""One place where domain errors become gRPC statuses, and every RPC is measured.

metalearn's own services are wrapped whole: measured, errors mapped, each
call's deadline and caller handed to the scheduler (:mod:`~metalearn_server.scheduling.call`).
Health and reflection keep their own handlers, with one guard for every
service: bytes that are not the method's request message get
``INVALID_ARGUMENT`` and one log line per minute at most, not gRPC's traceback
per call.  Calls to a method nobody serves are counted as ``UNIMPLEMENTED``.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from metalearn_server import errors
from metalearn_server.observability.logging import request_id
from metalearn_server.observability.metrics import Metrics
from metalearn_server.scheduling import call

log = logging.getLogger(__name__)

STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}
SERVICES = ("/metalearn.v1.FewShotService/", "/metalearn.v1.ModelService/", "/inference.GRPCInferenceService/")
#: The ``rpc`` label of calls to methods the server does not have (their names are the caller's to choose,
#: so they never become label values).
UNKNOWN_RPC = "unknown"
#: A status message is cut here: a client refuses trailers over its metadata limit (16 kB by default).
MAX_DETAILS = 2000
#: Malformed calls are logged at most once per this many seconds, with a count.
MALFORMED_LOG_SECONDS = 60.0

_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class _Undecodable:
    """Stands in for a request whose bytes are not the expected protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Refused:
    """Stands in for a request message refused unparsed (see ``check_message``)."""

    def __init__(self, error: errors.MetalearnError) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any] | None,
             check_message: Callable[[int], None] = lambda nbytes: None) -> Callable[[bytes], Any] | None:
    """gRPC answers a deserializer's exception with UNKNOWN (and logs a traceback); this lets the handler answer.
    ``check_message`` may refuse a message by its size before it is parsed."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            check_message(len(data))
        except errors.MetalearnError as error:
            return _Refused(error)
        try:
            return deserialize(data)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, and whatever else bad bytes cause
            return _Undecodable(error)
    return parse


def _decoded(request: Any, method: str) -> Any:
    if isinstance(request, _Refused):
        raise request.error
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument(f"the bytes sent are not a request message of {method} ({request.error}); "
                                     "send the message generated from the .proto files under protos/")
    return request


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's ``x-request-id`` if it is a sane token, else a fresh one."""
    given = dict(context.invocation_metadata() or ()).get("x-request-id", "")
    if 0 < len(given) <= 64 and all(c.isalnum() or c in "-_.:" for c in given):
        return given
    return uuid.uuid4().hex[:16]


def _caller(context: grpc.aio.ServicerContext) -> str:
    """Whom the fair share counts this call against: the bearer token's fingerprint, or the connection."""
    token = dict(context.invocation_metadata() or ()).get("authorization", "")
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return context.peer() or "unknown peer"


class MalformedCallLog:
    """Logs undecodable calls at most once per interval, with how many there were: a client sending
    garbage in a loop must not be able to fill the log (gRPC writes a traceback per call)."""

    def __init__(self, interval: float = MALFORMED_LOG_SECONDS) -> None:
        self.interval, self.count, self._last = interval, 0, float("-inf")

    def record(self, method: str, peer: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            log.warning("%d call(s) whose bytes are not the method's request message (answered INVALID_ARGUMENT) "
                        "since the last such line; the latest to %s from %s", self.count, method, peer)
            self.count, self._last = 0, now


class ServingInterceptor(grpc.aio.ServerInterceptor):
    """``check_message`` is the admission's early check (``Admission.check_message``): a request message that
    could not be admitted is refused by its size, unparsed, so a burst of large messages costs no copies."""

    def __init__(self, metrics: Metrics, check_message: Callable[[int], None] = lambda nbytes: None) -> None:
        self.metrics, self.check_message = metrics, check_message
        self.malformed = MalformedCallLog()

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            self.metrics.count(UNKNOWN_RPC, grpc.StatusCode.UNIMPLEMENTED.name)
            return handler
        if not details.method.startswith(SERVICES):
            return self._guarded(handler, details.method)
        rpc = details.method.rsplit("/", 1)[1]
        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._served(rpc, context):
                    return await behavior(_decoded(request, details.method), context)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=_lenient(handler.request_deserializer, self.check_message),
                response_serializer=handler.response_serializer)
        if handler.stream_stream:
            streaming = handler.stream_stream

            async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async def decoded() -> AsyncIterator[Any]:
                    async for request in requests:
                        yield _decoded(request, details.method)

                async with self._served(rpc, context):
                    async for response in streaming(decoded(), context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=_lenient(handler.request_deserializer, self.check_message),
                response_serializer=handler.response_serializer)
        raise TypeError(f"{details.method}: only unary-unary and stream-stream RPCs are wrapped")

    def _guarded(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """Another service's handler (health, reflection), answering undecodable bytes with INVALID_ARGUMENT."""
        kind = next(kind for kind in _KINDS if getattr(handler, kind))
        behavior = getattr(handler, kind)

        async def check(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                self.malformed.record(method, context.peer())
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the bytes sent are not a request message of {method} ({request.error})")
            return request

        async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for request in requests:  # streamed requests are checked as the servicer reads them
                yield await check(request, context)

        async def request_of(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return checked(request, context) if kind.startswith("stream") else await check(request, context)

        # gRPC tells a streaming answer from a single one by the handler's kind of function: keep the servicer's.
        if inspect.isasyncgenfunction(behavior):
            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for response in behavior(await request_of(request, context), context):
                    yield response
        else:
            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
                return await behavior(await request_of(request, context), context)

        return _KINDS[kind](guarded, request_deserializer=_lenient(handler.request_deserializer),
                            response_serializer=handler.response_serializer)

    @asynccontextmanager
    async def _served(self, rpc: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Time the RPC, map a domain error (or a crash) to its status, count and log the final code."""
        code = grpc.StatusCode.OK
        identity = request_id.set(_request_id(context))
        context.set_trailing_metadata((("x-request-id", request_id.get()),))
        started = time.perf_counter()
        remaining = context.time_remaining()
        deadline = call.deadline.set(None if remaining is None else time.monotonic() + remaining)
        caller = call.caller.set(_caller(context))
        with self.metrics.request(rpc):
            try:
                yield
            except errors.MetalearnError as error:
                code = STATUS[type(error)]
                await context.abort(code, str(error)[:MAX_DETAILS])
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                log.exception("%s failed unexpectedly", rpc)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, "internal error; the server logged the cause")
            except BaseException:  # cancelled by the client or past its deadline
                code = context.code() or grpc.StatusCode.CANCELLED
                raise
            finally:
                self.metrics.count(rpc, code.name)
                log.debug("%s %s in %.2f ms", rpc, code.name, 1000 * (time.perf_counter() - started))
                call.caller.reset(caller)
                call.deadline.reset(deadline)
                request_id.reset(identity)
