"""The service's error taxonomy: each class is one gRPC status and one rejection reason.

Modules below the servicer raise these; `interceptors` turns them into status codes and metrics.
This module imports neither grpc nor onnxruntime, so the scheduler and runner can raise them.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; `reason` is the `translator_rejections_total` label, or None."""

    reason: str | None = None


class InvalidArgumentError(ServiceError):
    """Bad input: the message names the limit and the value. -> INVALID_ARGUMENT."""

    reason = "invalid_argument"


class QueueFullError(ServiceError):
    """The admission queue is full. -> RESOURCE_EXHAUSTED, answered at once."""

    reason = "queue_full"


class QueueTimeoutError(ServiceError):
    """The deadline passed while the request waited in the queue; it never ran.

    -> DEADLINE_EXCEEDED.
    """

    reason = "deadline_exceeded"


class DrainingError(ServiceError):
    """Not ready yet, or draining after SIGTERM. -> UNAVAILABLE (retryable)."""

    reason = "draining"


class EngineError(ServiceError):
    """The model failed while running this request. -> INTERNAL, with a clean message."""


class ModelNotFoundError(ServiceError):
    """The request names a model that is not loaded; the message lists the loaded ones.

    -> NOT_FOUND.
    """

    reason = "model_not_found"
