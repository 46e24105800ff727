"""One place where domain errors become gRPC statuses, and every RPC is measured.

Only metalearn's own services are wrapped; health and reflection pass through.
"""
from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from metalearn_server import errors
from metalearn_server.observability.metrics import Metrics

log = logging.getLogger(__name__)

STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}
SERVICES = ("/metalearn.v1.FewShotService/", "/metalearn.v1.ModelService/")


class _Outcome:
    """Turns the exception that ended an RPC (if any) into its status, and counts it."""

    def __init__(self, rpc: str, metrics: Metrics, context: grpc.aio.ServicerContext) -> None:
        self.rpc, self.metrics, self.context = rpc, metrics, context

    async def fail(self, error: BaseException) -> None:
        if isinstance(error, errors.MetalearnError):
            await self.context.abort(STATUS[type(error)], str(error))
        log.exception("%s failed unexpectedly", self.rpc)
        await self.context.abort(grpc.StatusCode.INTERNAL, "internal error; the server logged the cause")

    def count(self, error: BaseException | None) -> None:
        if error is None:
            code = self.context.code() or grpc.StatusCode.OK
        elif isinstance(error, errors.MetalearnError):
            code = STATUS[type(error)]
        else:
            code = self.context.code() or grpc.StatusCode.CANCELLED
        self.metrics.count(self.rpc, code.name if isinstance(code, grpc.StatusCode) else str(code))


class ServingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICES):
            return handler
        rpc = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(rpc, handler.unary_unary),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(rpc, handler.stream_stream),
                request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        raise TypeError(f"{details.method}: only unary-unary and stream-stream RPCs are wrapped")

    def _unary(self, rpc: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            outcome, error = _Outcome(rpc, self.metrics, context), None
            with self.metrics.request(rpc):
                try:
                    return await behavior(request, context)
                except BaseException as caught:  # noqa: BLE001 - every outcome is counted, then re-raised or mapped
                    error = caught
                    if isinstance(caught, Exception) and not isinstance(caught, grpc.aio.AbortError):
                        await outcome.fail(caught)
                    raise
                finally:
                    outcome.count(error)
        return wrapped

    def _stream(self, rpc: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            outcome, error = _Outcome(rpc, self.metrics, context), None
            with self.metrics.request(rpc):
                try:
                    async for response in behavior(requests, context):
                        yield response
                except BaseException as caught:  # noqa: BLE001 - as above
                    error = caught
                    if isinstance(caught, Exception) and not isinstance(caught, grpc.aio.AbortError):
                        await outcome.fail(caught)
                    raise
                finally:
                    outcome.count(error)
        return wrapped
