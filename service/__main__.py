"""`python -m service`: settings -> TranslationServer -> serve until SIGTERM -> drain -> exit.

SIGHUP rescans the model repository at once. Exit codes: 0 after a clean drain; 1 when an
engine thread dies (within a second: Kubernetes restarts the container), or when startup fails
(bad settings, bundle, model settings file, TLS file or device), with one error line naming the
cause.
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


async def serve(server: TranslationServer) -> int:
    """Run the server until SIGTERM or SIGINT, then drain; the exit code: 0 after a drain, 1
    when an engine thread died (the process should be restarted, not left hanging)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.rescan)
    await server.start()
    asked, failed = asyncio.create_task(stop.wait()), asyncio.create_task(server.failed.wait())
    await asyncio.wait({asked, failed}, return_when=asyncio.FIRST_COMPLETED)
    asked.cancel()
    failed.cancel()
    if server.failed.is_set():
        log.error("an engine thread stopped: exiting with status 1 so that it is restarted")
        await server.stop(grace=0, delay=0)
        return 1
    log.info("draining: grace period %.1f s", server.settings.grace_period_s)
    await server.stop()
    log.info("stopped")
    return 0


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
        return asyncio.run(serve(TranslationServer(settings)))
    except STARTUP_ERRORS as error:
        log.error("startup failed: %s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
