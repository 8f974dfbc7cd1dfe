"""grpc.health.v1 statuses: liveness ("") and readiness ("translator.v1.Translator").

    ""                          SERVING while the engine threads run (liveness)
    "translator.v1.Translator"  SERVING once the bundle is loaded and warmed up (readiness)

Both turn NOT_SERVING when the server drains, and stay so.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

LIVENESS = ""
READINESS = "translator.v1.Translator"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """The health servicer and the service's transitions."""

    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()  # "" starts SERVING

    async def starting(self) -> None:
        """Alive, not ready: before the bundle is warmed up."""
        await self.servicer.set(READINESS, NOT_SERVING)

    async def ready(self) -> None:
        await self.servicer.set(READINESS, SERVING)

    async def engine_stopped(self) -> None:
        """An engine thread is gone: the process should be restarted."""
        await self.servicer.set(LIVENESS, NOT_SERVING)
        await self.servicer.set(READINESS, NOT_SERVING)

    async def draining(self) -> None:
        """Everything NOT_SERVING, for good (SIGTERM)."""
        await self.servicer.enter_graceful_shutdown()
