"""The models a server holds: one engine per model name, found on disk, swapped without downtime.

Two layouts:

    TRANSLATOR_BUNDLE_PATH=DIR          one bundle; its manifest names the model
    TRANSLATOR_MODEL_REPOSITORY=DIR     DIR/<name>/ is a bundle, or holds versions
                                        DIR/<name>/<N>/ (integers; the highest with a
                                        manifest.json is served); DIR/<name>/settings.json
                                        may override engine settings

A rescan (every `repository_poll_s`, and on SIGHUP) loads what is new or changed beside what
serves: the new engine is loaded and warmed up off the event loop, then takes the name in one
step on the event loop; the old one finishes its in-flight work and is dropped. A version that
fails to load is logged, counted (`translator_model_loads_total{result="failed"}`) and not
retried until it changes; the old one keeps serving. A model whose directory is gone is unloaded
after draining. Names starting with "." are ignored (copy a bundle there, then rename it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.bundle import MANIFEST_FILE, BundleError, read_manifest
from service.engine import TranslationEngine
from service.errors import DrainingError, ModelNotFoundError
from service.health import Health
from service.metrics import Metrics
from service.sessions import DeviceError
from service.settings import ServiceSettings, SettingsFileError, engine_settings

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_NAME = "default"


class ModelLoadError(RuntimeError):
    """A bundle that passed its checks failed to open or warm up (onnxruntime's own errors, an
    out-of-memory device, ...); the message names the bundle."""


LOAD_ERRORS = (BundleError, DeviceError, SettingsFileError, OSError, RuntimeError, ValueError)


@dataclass(frozen=True)
class ModelSource:
    """One model version on disk."""

    name: str
    version: str  # the version directory's name; "" for a bundle without versions
    path: Path  # the bundle directory
    stamp: tuple[int, int]  # manifest.json's (mtime_ns, size): a rewritten bundle is reloaded
    model_dir: Path  # the model's directory, where its settings.json may be


def _stamp(bundle: Path) -> tuple[int, int]:
    stat = (bundle / MANIFEST_FILE).stat()
    return stat.st_mtime_ns, stat.st_size


def model_versions(model_dir: Path) -> list[ModelSource]:
    """The bundles of `model_dir`, newest first: itself, or its complete version directories."""
    if (model_dir / MANIFEST_FILE).is_file():
        return [ModelSource(model_dir.name, "", model_dir, _stamp(model_dir), model_dir)]
    versions = sorted(
        (
            (int(d.name), d)
            for d in model_dir.iterdir()
            if d.is_dir() and d.name.isascii() and d.name.isdigit()
        ),
        reverse=True,
    )
    return [
        ModelSource(model_dir.name, str(number), path, _stamp(path), model_dir)
        for number, path in versions
        if (path / MANIFEST_FILE).is_file()
    ]


def scan_repository(root: Path) -> dict[str, ModelSource]:
    """Every model of the repository at `root`, by name.

    Raises:
        OSError: `root` is not a readable directory.
    """
    found = {}
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if not MODEL_NAME.fullmatch(child.name):
            log.warning("%s: ignored; a model name is letters, digits, '.', '_', '-'", child)
            continue
        versions = model_versions(child)
        if versions:
            found[child.name] = versions[0]
    return found


def single_bundle(path: Path) -> dict[str, ModelSource]:
    """The one model of TRANSLATOR_BUNDLE_PATH, named by its manifest. Raises BundleError."""
    manifest = read_manifest(path)
    return {manifest.name: ModelSource(manifest.name, "", path, _stamp(path), path)}


class ModelRepository:
    """The loaded engines, by name, and the rescans that change them.

    Args:
        settings: the service settings (the repository or the bundle, the engine settings).
        metrics: the server's metrics (per-model series, loads, build_info).
        health: readiness per model (`translator.v1.Translator/<name>`).
        service_version: the service's version, for build_info.
    """

    def __init__(
        self, settings: ServiceSettings, metrics: Metrics, health: Health, service_version: str
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._service_version = service_version
        self._engines: dict[str, TranslationEngine] = {}
        self._served: dict[str, ModelSource] = {}
        self._refused: dict[str, ModelSource] = {}  # failed once; retried when it changes
        self._tasks: set[asyncio.Task[None]] = set()  # engines closing, engine watchdogs
        self._rescan_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.engine_failed = asyncio.Event()  # an engine's threads ended unasked
        self._started = False  # every model of the startup is loaded
        self.stopping = False  # SIGTERM: NOT_SERVING everywhere, though still serving (drain delay)
        self.default = ""

    # -- lookups, on the event loop --

    def get(self, name: str) -> TranslationEngine:
        """The engine serving `name` ("" = the default model).

        Raises:
            DrainingError: before every model of the startup is loaded (UNAVAILABLE: retry).
            ModelNotFoundError: no such model is loaded (the message lists the loaded ones).
        """
        engine = self._engines.get(name or self.default)
        if engine is None and not self._started:
            raise DrainingError("the service is starting: its models are loading")
        if engine is None:
            loaded = ", ".join(sorted(self._engines)) or "none"
            raise ModelNotFoundError(f"model {name!r} is not loaded; loaded models: {loaded}")
        return engine

    def engines(self) -> list[TranslationEngine]:
        """The serving engines, by name."""
        return [self._engines[name] for name in sorted(self._engines)]

    @property
    def ready(self) -> bool:
        """Every model of the startup is loaded and none is draining (KServe ServerReady)."""
        engines = self._engines.values()
        return self._started and not self.stopping and all(e.state == "ready" for e in engines)

    # -- life cycle --

    def sources(self) -> dict[str, ModelSource]:
        """What the disk holds now. Raises OSError or BundleError."""
        root = self._settings.model_repository
        return scan_repository(root) if root else single_bundle(self._settings.bundle_path)

    async def start(self) -> None:
        """Load every model. A version that fails is refused as a rescan refuses it, and the
        next older one is tried; a model none of whose versions loads stops the startup.

        Raises:
            BundleError, DeviceError, SettingsFileError, ValueError: naming the file or setting.
        """
        sources = self.sources()
        if not sources:
            raise BundleError(
                f"{self._settings.model_repository}: no models; put a bundle in <name>/ or"
                " <name>/<version>/"
            )
        self.default = self._default_model(sorted(sources))
        for source in sources.values():
            self._install(*await self._open_newest(source))
        self._started = True

    async def _open_newest(self, source: ModelSource) -> tuple[TranslationEngine, ModelSource]:
        """The newest version of `source`'s model that loads; newer ones are refused."""
        candidates = model_versions(source.model_dir) if source.version else [source]
        for candidate in candidates[:-1]:
            try:
                return await self._open(candidate), candidate
            except LOAD_ERRORS as error:
                self._refuse(candidate, error)
        return await self._open(candidates[-1]), candidates[-1]

    def _default_model(self, names: list[str]) -> str:
        wanted = self._settings.default_model
        if wanted and wanted not in names:
            raise ValueError(
                f"TRANSLATOR_DEFAULT_MODEL={wanted!r} is not in the repository: {', '.join(names)}"
            )
        if wanted:
            return wanted
        if len(names) == 1:
            return names[0]
        if DEFAULT_NAME in names:
            return DEFAULT_NAME
        raise ValueError(
            f"TRANSLATOR_DEFAULT_MODEL is unset and the repository holds {len(names)} models"
            f" ({', '.join(names)}), none named {DEFAULT_NAME!r}: set it"
        )

    def wake(self) -> None:
        """Rescan now (SIGHUP), retrying the versions refused so far (a copy finished since)."""
        self._refused.clear()
        self._wake.set()

    async def watch(self) -> None:
        """Rescan every `repository_poll_s` (0: only when woken); runs until cancelled."""
        poll = self._settings.repository_poll_s or None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()
            try:
                await self.rescan()
            except Exception:  # a bug must not end the rescans for the life of the process
                log.exception("repository rescan failed; the next one runs as usual")

    async def rescan(self) -> None:
        """Load new and changed models, unload removed ones (one rescan at a time)."""
        async with self._rescan_lock:
            try:
                sources = self.sources()
            except (OSError, BundleError) as error:
                log.error("repository scan failed, nothing changed: %s", error)
                return
            for name, source in sorted(sources.items()):
                if source in (self._served.get(name), self._refused.get(name)):
                    continue
                try:
                    engine = await self._open(source)
                except LOAD_ERRORS as error:
                    self._refuse(source, error)
                    continue
                self._install(engine, source)
            for name in sorted(set(self._served) - set(sources)):
                self._remove(name)

    def _refuse(self, source: ModelSource, error: Exception) -> None:
        log.error("model %s %s refused: %s", source.name, source.version or "-", error)
        self._metrics.model_loads.labels(source.name, "failed").inc()
        self._refused[source.name] = source

    async def _open(self, source: ModelSource) -> TranslationEngine:
        """Load and warm up off the event loop, then start. Raises what `load` raises."""
        loop = asyncio.get_running_loop()
        settings = engine_settings(self._settings, source.model_dir)
        metrics = self._metrics.for_model(source.name)
        try:
            engine = await loop.run_in_executor(
                None,
                lambda: TranslationEngine.load(
                    source.path, settings, metrics, source.name, source.version or None
                ),
            )
            await loop.run_in_executor(None, engine.warm_up)
        except LOAD_ERRORS:
            raise
        except Exception as error:  # onnxruntime's errors derive from Exception alone
            raise ModelLoadError(f"{source.path}: {type(error).__name__}: {error}") from error
        engine.start()
        return engine

    def _install(self, engine: TranslationEngine, source: ModelSource) -> None:
        """`engine` takes the name now; the one it replaces drains and closes."""
        name, info = source.name, engine.info
        old = self._engines.get(name)
        self._engines[name], self._served[name] = engine, source
        self._metrics.model_loaded(name, info.version, info.provider, self._service_version)
        self._spawn(self._health.model_ready(name))
        self._spawn(self._watch_engine(engine))
        if old is not None:
            self._spawn(self._retire(old, "replaced"))
        log.info(
            "model %s version %s serving from %s (provider %s)%s",
            name,
            info.version,
            source.path,
            info.provider,
            f", replacing version {old.info.version}" if old else "",
        )

    def _remove(self, name: str) -> None:
        engine = self._engines.pop(name)
        self._served.pop(name)
        self._metrics.model_unloaded(name)
        self._spawn(self._health.model_gone(name))
        self._spawn(self._retire(engine, "its directory is gone"))

    async def _retire(self, engine: TranslationEngine, why: str) -> None:
        """Let `engine` finish its in-flight work, then stop it; dropped, it frees its model."""
        await engine.close()
        log.info("model %s version %s unloaded (%s)", engine.info.name, engine.info.version, why)

    async def _watch_engine(self, engine: TranslationEngine) -> None:
        await engine.stopped()
        if engine.failed:
            log.error("model %s: an engine thread stopped; reporting NOT_SERVING", engine.info.name)
            await self._health.engine_stopped()
            self.engine_failed.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drain(self) -> None:
        """Every engine refuses new requests; in-flight ones go on."""
        for engine in self._engines.values():
            engine.drain()

    async def close(self) -> None:
        """Stop every engine (after the gRPC server has stopped) and the background work."""
        await asyncio.gather(*(e.close(finish=False) for e in self._engines.values()))
        await asyncio.gather(*self._tasks, return_exceptions=True)  # old versions, watchdogs
