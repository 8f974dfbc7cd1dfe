"""Exceptions -> gRPC status codes, and the per-RPC metrics, in one server interceptor.

Every RPC of the front ends (translator.v1 and the KServe v2 `inference` service), of every
method kind, ends with an explicit code, never UNKNOWN:

    InvalidArgumentError or a malformed message  -> INVALID_ARGUMENT
    ModelNotFoundError                           -> NOT_FOUND
    QueueFullError                               -> RESOURCE_EXHAUSTED
    QueueTimeoutError                            -> DEADLINE_EXCEEDED
    DrainingError                                -> UNAVAILABLE
    EngineError, any other exception             -> INTERNAL ("internal error"; logged)
    client cancel / client deadline              -> CANCELLED / DEADLINE_EXCEEDED (by gRPC)

Requests are deserialized here too, so that bytes that are not a valid message (invalid UTF-8 in
a string field included) get INVALID_ARGUMENT instead of gRPC's UNKNOWN. A front end names the
model that serves the call with `record_model`; the RPC's series carry it as their `model` label
("" until then: the label never takes a value from the request).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from service.errors import (
    DrainingError,
    EngineError,
    InvalidArgumentError,
    ModelNotFoundError,
    QueueFullError,
    QueueTimeoutError,
    ServiceError,
)
from service.metrics import KSERVE_METHODS, NO_MODEL, TRANSLATOR_METHODS, Metrics

log = logging.getLogger(__name__)

SERVICES = {
    "translator.v1.Translator": TRANSLATOR_METHODS,
    "inference.GRPCInferenceService": KSERVE_METHODS,
}

_STATUS: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
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
        self.model = NO_MODEL
        self.start = time.perf_counter()

    async def fail(self, error: Exception, context: Context) -> NoReturn:
        """Abort the RPC with the status of `error` (raises grpc.aio.AbortError)."""
        if isinstance(error, ServiceError):
            self.code = _STATUS.get(type(error), grpc.StatusCode.INTERNAL)
            message = str(error)  # our own messages: no paths, no tracebacks
            if error.reason:
                self.metrics.rejections.labels(error.reason, self.model).inc()
        else:
            log.error("%s failed", self.method, exc_info=error)
            self.code, message = grpc.StatusCode.INTERNAL, "internal error"
        await context.abort(self.code, message)
        raise AssertionError("unreachable: abort raises")

    def cancelled(self, context: Context) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0.001
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        reason = "deadline_exceeded" if expired else "cancelled"
        self.metrics.rejections.labels(reason, self.model).inc()

    def done(self) -> None:
        elapsed = time.perf_counter() - self.start
        self.metrics.requests.labels(self.method, self.code.name, self.model).inc()
        self.metrics.request_duration.labels(self.method, self.model).observe(elapsed)


_current: contextvars.ContextVar[_Outcome | None] = contextvars.ContextVar("rpc", default=None)


def record_model(name: str) -> None:
    """The current RPC is served by model `name` (a loaded model's name)."""
    outcome = _current.get()
    if outcome is not None:
        outcome.model = name


def _check(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise InvalidArgumentError(f"the request is not a valid message: {request.error}")
    return request


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check(request)


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler of the front ends' services; other services pass through untouched."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or method not in SERVICES.get(service, ()):
            return handler
        parse, serialize = _tolerant(handler.request_deserializer), handler.response_serializer
        if handler.unary_unary is not None:
            behavior = self._unary(method, handler.unary_unary, stream_in=False)
            return grpc.unary_unary_rpc_method_handler(behavior, parse, serialize)
        if handler.unary_stream is not None:
            behavior = self._stream(method, handler.unary_stream, stream_in=False)
            return grpc.unary_stream_rpc_method_handler(behavior, parse, serialize)
        if handler.stream_unary is not None:
            behavior = self._unary(method, handler.stream_unary, stream_in=True)
            return grpc.stream_unary_rpc_method_handler(behavior, parse, serialize)
        behavior = self._stream(method, handler.stream_stream, stream_in=True)
        return grpc.stream_stream_rpc_method_handler(behavior, parse, serialize)

    def _unary(
        self, method: str, behavior: Callable[..., Awaitable[Any]], stream_in: bool
    ) -> Callable[..., Any]:
        async def unary(request: Any, context: Context) -> Any:
            outcome = _Outcome(self._metrics, method)
            _current.set(outcome)
            try:
                return await behavior(_checked(request) if stream_in else _check(request), context)
            except asyncio.CancelledError:
                outcome.cancelled(context)
                raise
            except Exception as error:
                await outcome.fail(error, context)
            finally:
                outcome.done()

        return unary

    def _stream(
        self, method: str, behavior: Callable[..., AsyncIterator[Any]], stream_in: bool
    ) -> Callable[..., Any]:
        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            outcome = _Outcome(self._metrics, method)
            _current.set(outcome)
            try:
                requests = _checked(request) if stream_in else _check(request)
                async for response in behavior(requests, context):
                    yield response
            except asyncio.CancelledError:
                outcome.cancelled(context)
                raise
            except Exception as error:
                await outcome.fail(error, context)
            finally:
                outcome.done()

        return stream
