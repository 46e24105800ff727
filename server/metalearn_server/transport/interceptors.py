"""One place where domain errors become gRPC statuses, and every RPC is measured.

Only metalearn's own services are wrapped; health and reflection pass through.
"""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from metalearn_server import errors
from metalearn_server.observability.logging import request_id
from metalearn_server.observability.metrics import Metrics
from metalearn_server.scheduling.admission import request_deadline

log = logging.getLogger(__name__)

STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}
SERVICES = ("/metalearn.v1.FewShotService/", "/metalearn.v1.ModelService/", "/inference.GRPCInferenceService/")


class _Undecodable:
    """Stands in for a request whose bytes are not the expected protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """gRPC answers a deserializer's exception with UNKNOWN; this lets the handler answer INVALID_ARGUMENT."""
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, and whatever else bad bytes cause
            return _Undecodable(error)
    return parse


def _decoded(request: Any, service: str, rpc: str) -> Any:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument(f"the bytes sent are not a {service}.{rpc}Request ({request.error}); "
                                     "send the message generated from the .proto files under protos/")
    return request


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's ``x-request-id`` if it is a sane token, else a fresh one."""
    given = dict(context.invocation_metadata() or ()).get("x-request-id", "")
    if 0 < len(given) <= 64 and all(c.isalnum() or c in "-_.:" for c in given):
        return given
    return uuid.uuid4().hex[:16]


class ServingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICES):
            return handler
        service, rpc = details.method.strip("/").rsplit("/", 1)
        service = service.rsplit(".", 1)[0]  # the proto package: metalearn.v1 or inference
        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._served(rpc, context):
                    return await behavior(_decoded(request, service, rpc), context)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.stream_stream:
            streaming = handler.stream_stream

            async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async def decoded() -> AsyncIterator[Any]:
                    async for request in requests:
                        yield _decoded(request, service, rpc)

                async with self._served(rpc, context):
                    async for response in streaming(decoded(), context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        raise TypeError(f"{details.method}: only unary-unary and stream-stream RPCs are wrapped")

    @asynccontextmanager
    async def _served(self, rpc: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Time the RPC, map a domain error (or a crash) to its status, count and log the final code."""
        code = grpc.StatusCode.OK
        identity = request_id.set(_request_id(context))
        context.set_trailing_metadata((("x-request-id", request_id.get()),))
        started = time.perf_counter()
        remaining = context.time_remaining()
        deadline = request_deadline.set(None if remaining is None else time.monotonic() + remaining)
        with self.metrics.request(rpc):
            try:
                yield
            except errors.MetalearnError as error:
                code = STATUS[type(error)]
                await context.abort(code, str(error))
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
                request_deadline.reset(deadline)
                request_id.reset(identity)
