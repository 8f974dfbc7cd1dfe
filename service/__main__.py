"""`python -m service`: settings -> TranslationServer -> serve until SIGTERM -> drain -> exit.

SIGHUP rescans the model repository at once. Exit codes: 0 after a clean drain; 1 when startup
fails (bad settings, bundle, model settings file or device), with one error line naming the cause.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from pydantic import ValidationError

from service.bundle import BundleError
from service.server import TranslationServer
from service.sessions import DeviceError
from service.settings import (
    ServiceSettings,
    SettingsFileError,
    UnknownSettingError,
    check_environment,
)

log = logging.getLogger("service")

STARTUP_ERRORS = (BundleError, DeviceError, SettingsFileError, OSError, RuntimeError, ValueError)


async def serve(settings: ServiceSettings) -> None:
    """Run the server until SIGTERM or SIGINT, then drain within the grace period."""
    server = TranslationServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.rescan)
    await server.start()
    await stop.wait()
    log.info("draining: grace period %.1f s", settings.grace_period_s)
    await server.stop()
    log.info("stopped")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        check_environment(os.environ)
        settings = ServiceSettings()
    except (ValidationError, UnknownSettingError) as error:
        log.error("invalid settings: %s", error)
        return 1
    logging.getLogger("service").setLevel(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except (
        BundleError,
        DeviceError,
        SettingsFileError,
        OSError,
        RuntimeError,
        ValueError,
    ) as error:
        log.error("startup failed: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
