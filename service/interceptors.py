"""Exceptions -> gRPC status codes, and the per-RPC metrics, in one server interceptor.

Every translator.v1 RPC ends with an explicit code, never UNKNOWN:

    InvalidArgumentError or a malformed message  -> INVALID_ARGUMENT
    QueueFullError                               -> RESOURCE_EXHAUSTED
    QueueTimeoutError                            -> DEADLINE_EXCEEDED
    DrainingError                                -> UNAVAILABLE
    EngineError, any other exception             -> INTERNAL ("internal error"; logged)
    client cancel / client deadline              -> CANCELLED / DEADLINE_EXCEEDED (by gRPC)

Requests are deserialized here too, so that bytes that are not a valid message (invalid UTF-8 in
a string field included) get INVALID_ARGUMENT instead of gRPC's UNKNOWN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from service.errors import (
    DrainingError,
    EngineError,
    InvalidArgumentError,
    QueueFullError,
    QueueTimeoutError,
    ServiceError,
)
from service.metrics import METHODS, Metrics

log = logging.getLogger(__name__)

SERVICE = "translator.v1.Translator"

_STATUS: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    QueueTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    DrainingError: grpc.StatusCode.UNAVAILABLE,
    EngineError: grpc.StatusCode.INTERNAL,
}

Context = Any  # grpc.aio.ServicerContext; grpc ships no type hints


class _Malformed:
    """What the tolerant deserializer returns for bytes that are not a valid message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # protobuf raises DecodeError, and others on bad input
            return _Malformed(error)

    return parse


class _Outcome:
    """Status code bookkeeping of one RPC."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.metrics, self.method = metrics, method
        self.code = grpc.StatusCode.OK
        self.start = time.perf_counter()

    async def fail(self, error: Exception, context: Context) -> NoReturn:
        """Abort the RPC with the status of `error` (raises grpc.aio.AbortError)."""
        if isinstance(error, ServiceError):
            self.code = _STATUS.get(type(error), grpc.StatusCode.INTERNAL)
            message = str(error)  # our own messages: no paths, no tracebacks
            if error.reason:
                self.metrics.rejections.labels(error.reason).inc()
        else:
            log.error("%s failed", self.method, exc_info=error)
            self.code, message = grpc.StatusCode.INTERNAL, "internal error"
        await context.abort(self.code, message)
        raise AssertionError("unreachable: abort raises")

    def cancelled(self, context: Context) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0.001
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        self.metrics.rejections.labels("deadline_exceeded" if expired else "cancelled").inc()

    def done(self) -> None:
        self.metrics.requests.labels(self.method, self.code.name).inc()
        self.metrics.request_duration.labels(self.method).observe(time.perf_counter() - self.start)


def _check(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise InvalidArgumentError(f"the request is not a valid message: {request.error}")


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every translator.v1 handler; other services pass through untouched."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service != SERVICE or method not in METHODS:
            return handler
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), parse, handler.response_serializer
            )
        return grpc.unary_stream_rpc_method_handler(
            self._stream(method, handler.unary_stream), parse, handler.response_serializer
        )

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def unary(request: Any, context: Context) -> Any:
            outcome = _Outcome(self._metrics, method)
            try:
                _check(request)
                return await behavior(request, context)
            except asyncio.CancelledError:
                outcome.cancelled(context)
                raise
            except Exception as error:
                await outcome.fail(error, context)
            finally:
                outcome.done()

        return unary

    def _stream(
        self, method: str, behavior: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., Any]:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            outcome = _Outcome(self._metrics, method)
            try:
                _check(request)
                async for response in behavior(request, context):
                    yield response
            except asyncio.CancelledError:
                outcome.cancelled(context)
                raise
            except Exception as error:
                await outcome.fail(error, context)
            finally:
                outcome.done()

        return stream
