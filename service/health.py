"""grpc.health.v1 statuses: liveness, readiness, and readiness per model.

    ""                                  SERVING while the engine threads run (liveness)
    "translator.v1.Translator"          SERVING once every model is loaded and warmed up
    "translator.v1.Translator/<model>"  SERVING while that model serves

All turn NOT_SERVING when the server drains, and stay so.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

LIVENESS = ""
READINESS = "translator.v1.Translator"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_service(model: str) -> str:
    """The health service name of one model's readiness."""
    return f"{READINESS}/{model}"


class Health:
    """The health servicer and the service's transitions."""

    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()  # "" starts SERVING

    async def starting(self) -> None:
        """Alive, not ready: before the models are warmed up."""
        await self.servicer.set(READINESS, NOT_SERVING)

    async def ready(self) -> None:
        await self.servicer.set(READINESS, SERVING)

    async def model_ready(self, model: str) -> None:
        await self.servicer.set(model_service(model), SERVING)

    async def model_gone(self, model: str) -> None:
        await self.servicer.set(model_service(model), NOT_SERVING)

    async def engine_stopped(self) -> None:
        """An engine thread is gone: the process should be restarted."""
        await self.servicer.set(LIVENESS, NOT_SERVING)
        await self.servicer.set(READINESS, NOT_SERVING)

    async def draining(self) -> None:
        """Everything NOT_SERVING, for good (SIGTERM)."""
        await self.servicer.enter_graceful_shutdown()
