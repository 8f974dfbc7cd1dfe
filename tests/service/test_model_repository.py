"""A model repository: several models in one server, each by name, with their own engines.

The repository holds three different models in both layouts: the shipped default model
(`default/1/`), the session's tiny bundle (`tiny/`, no versions) and a tiny OPUS-MT-shaped Marian
model with its own tokenizer kind (`en-de/3/`).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import weakref
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.bundle import MANIFEST_FILE, read_manifest
from service.health import READINESS, model_service
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from service.repository import scan_repository
from service.settings import ServiceSettings, SettingsFileError, engine_settings
from tests.hf_marian import SOURCE_WORDS
from tests.service.service_harness import ServerThread, promtool, stub, translate_request

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "models" / "default"
ENGLISH = [
    "Good morning.",
    "forty-two",
    "The weather is nice today.",
    "seventeen thousand three hundred and five",
    "Monday",
    "the third of May, nineteen ninety-nine",
    "I would like a cup of coffee, please.",
    "twenty-one percent",
]


def _marian_sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = SOURCE_WORDS[:20]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(count)]


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory, service_bundle: Path, marian_bundle: Path
) -> Path:
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(DEFAULT_BUNDLE, root / "default" / "1")
    shutil.copytree(service_bundle, root / "tiny")
    shutil.copytree(marian_bundle, root / "en-de" / "3")
    (root / "en-de" / "settings.json").write_text(json.dumps({"max_active_rows": 16}))
    return root


@pytest.fixture(scope="module")
def served(repository: Path) -> Iterator[ServerThread]:
    running = ServerThread(
        DEFAULT_BUNDLE, model_repository=repository, repository_poll_s=0, max_segments=64
    ).start()
    yield running
    running.stop()


# Every model and the requests it gets: (model, target language, sentences).
def _workload() -> list[tuple[str, str, list[str]]]:
    return [
        ("default", "de", ENGLISH),
        ("default", "it", ENGLISH),
        ("tiny", "fr", ENGLISH),
        ("tiny", "es", ENGLISH),
        ("en-de", "de", _marian_sentences(16, seed=3)),
    ]


def test_each_model_is_listed_and_answers_by_name(served: ServerThread, repository: Path) -> None:
    channel, translator = stub(served.address)
    with channel:
        listing = translator.ListModels(pb.ListModelsRequest(), timeout=10)
        by_name = {m.name: m for m in listing.models}
        assert sorted(by_name) == ["default", "en-de", "tiny"]
        assert listing.default_model == "default"
        assert by_name["default"].version == "1" and by_name["en-de"].version == "3"
        assert by_name["tiny"].version == read_manifest(repository / "tiny").version
        assert all(m.state == pb.ModelStatus.READY for m in listing.models)
        assert list(by_name["en-de"].target_languages) == ["de"]
        assert by_name["en-de"].limits.max_beam_size == 8
        assert set(by_name["default"].target_languages) == {"de", "es", "fr", "it"}
        for name in ("default", "tiny", "en-de"):
            request = translate_request(["one two"], "de")
            request.model = name
            reply = translator.Translate(request, timeout=30)
            assert (reply.model_name, reply.model_version) == (name, by_name[name].version)
            languages = translator.ListLanguages(pb.ListLanguagesRequest(model=name), timeout=10)
            assert languages.model_name == name
        unnamed = translator.Translate(translate_request(["forty-two"], "de"), timeout=30)
        assert unnamed.model_name == "default"
        assert unnamed.translations[0].text == "zweiundvierzig"


def test_unknown_model_is_not_found_and_lists_the_loaded_ones(served: ServerThread) -> None:
    channel, translator = stub(served.address)
    with channel:
        request = translate_request(["Hello"], "de")
        request.model = "fr-en"
        with pytest.raises(grpc.RpcError) as error:
            translator.Translate(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'fr-en'" in error.value.details()
        assert "default, en-de, tiny" in error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            translator.ListLanguages(pb.ListLanguagesRequest(model="nope"), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_readiness_per_model(served: ServerThread) -> None:
    with grpc.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in (READINESS, *(model_service(m) for m in ("default", "tiny", "en-de"))):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service=model_service("nope")), timeout=5)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_model_gets_its_own_settings(served: ServerThread) -> None:
    assert served.engine("en-de").settings.max_active_rows == 16
    assert served.engine("tiny").settings.max_active_rows == 64


def _translate(translator: pb_grpc.TranslatorStub, model: str, to: str, text: str) -> str:
    request = translate_request([text], to)
    request.model = model
    reply = translator.Translate(request, timeout=60)
    assert reply.model_name == model
    return str(reply.translations[0].text)


def test_64_concurrent_clients_over_three_models_get_their_one_at_a_time_outputs(
    served: ServerThread,
) -> None:
    work = [(m, to, text) for m, to, texts in _workload() for text in texts]
    channel, translator = stub(served.address)
    with channel:
        alone = {item: _translate(translator, *item) for item in work}

    async def client(i: int, aio: pb_grpc.TranslatorStub) -> list[tuple[tuple[str, str, str], str]]:
        got = []
        for k in range(len(work) // 4):
            model, to, text = item = work[(i * 7 + k) % len(work)]
            request = translate_request([text], to)
            request.model = model
            reply = await aio.Translate(request, timeout=120)
            assert reply.model_name == model
            got.append((item, reply.translations[0].text))
        return got

    async def everyone() -> list[list[tuple[tuple[str, str, str], str]]]:
        async with grpc.aio.insecure_channel(served.address) as aio_channel:
            aio = pb_grpc.TranslatorStub(aio_channel)
            return await asyncio.gather(*(client(i, aio) for i in range(64)))

    together = [pair for run in asyncio.run(everyone()) for pair in run]
    assert len(together) == 64 * (len(work) // 4)
    assert {item[0] for item, _ in together} == {"default", "tiny", "en-de"}
    mismatches = [(item, text, alone[item]) for item, text in together if text != alone[item]]
    assert not mismatches, mismatches[:3]


def _series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


def test_per_model_counters_match_the_clients_and_unknown_models_add_no_series(
    served: ServerThread,
) -> None:
    def ok(model: str) -> float:
        labels = {"method": "Translate", "code": "OK", "model": model}
        return served.sample("translator_requests_total", labels)

    before = {m: ok(m) for m in ("default", "tiny", "en-de")}
    sent = {"default": 5, "tiny": 3, "en-de": 2}
    channel, translator = stub(served.address)
    with channel:
        for model, count in sent.items():
            for _ in range(count):
                _translate(translator, model, "de", "one two")
        request = translate_request(["Hello"], "de")
        request.model = "missing"
        with pytest.raises(grpc.RpcError):  # the first creates the series of model=""
            translator.Translate(request, timeout=10)
        series = _series(served.scrape())
        for i in range(1000):
            request = translate_request(["Hello"], "de")
            request.model = f"missing-{i}"
            with pytest.raises(grpc.RpcError):
                translator.Translate(request, timeout=10)
    assert {m: ok(m) - before[m] for m in sent} == sent
    text = served.scrape()
    assert _series(text) == series
    assert "missing-" not in text
    not_found = {"method": "Translate", "code": "NOT_FOUND", "model": ""}
    assert served.sample("translator_requests_total", not_found) >= 1001
    assert served.sample("translator_rejections_total", {"reason": "model_not_found"}) >= 1000
    check = subprocess.run(
        [str(promtool()), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    versions = {"default": "1", "en-de": "3"}
    for model, version in versions.items():
        labels = {"model": model, "model_version": version, "provider": "CPUExecutionProvider"}
        assert served.sample("translator_build_info", labels) == 1


# -- the repository on disk, without a server --


def _bundle_stub(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / MANIFEST_FILE).write_text("{}")
    return directory


def test_scan_finds_both_layouts_and_serves_the_highest_complete_version(tmp_path: Path) -> None:
    _bundle_stub(tmp_path / "plain")
    for version in ("1", "2", "10"):
        _bundle_stub(tmp_path / "versioned" / version)
    (tmp_path / "versioned" / "11").mkdir()  # being copied: no manifest yet
    _bundle_stub(tmp_path / "versioned" / "latest")  # not an integer
    _bundle_stub(tmp_path / ".incoming")  # hidden: a copy in progress
    _bundle_stub(tmp_path / "bad name!")
    (tmp_path / "empty").mkdir()
    found = scan_repository(tmp_path)
    assert sorted(found) == ["plain", "versioned"]
    assert (found["plain"].version, found["plain"].path) == ("", tmp_path / "plain")
    assert (found["versioned"].version, found["versioned"].path.name) == ("10", "10")


def test_a_model_settings_file_overrides_engine_settings_and_names_its_errors(
    tmp_path: Path,
) -> None:
    settings = ServiceSettings(threads=2, max_active_rows=32)
    assert engine_settings(settings, tmp_path).max_active_rows == 32
    (tmp_path / "settings.json").write_text('{"max_active_rows": 8}')
    chosen = engine_settings(settings, tmp_path)
    assert (chosen.max_active_rows, chosen.threads) == (8, 2)
    (tmp_path / "settings.json").write_text('{"max_active_row": 8}')
    with pytest.raises(SettingsFileError, match=r"settings\.json: max_active_row: .*allowed keys"):
        engine_settings(settings, tmp_path)
    (tmp_path / "settings.json").write_text('{"max_active_rows": 0}')
    with pytest.raises(SettingsFileError, match="max_active_rows: Input should be greater"):
        engine_settings(settings, tmp_path)
    (tmp_path / "settings.json").write_text("[1, 2")
    with pytest.raises(SettingsFileError, match="not a readable JSON object"):
        engine_settings(settings, tmp_path)


def test_removing_a_model_directory_unloads_it_and_frees_its_engine(
    tmp_path: Path, service_bundle: Path
) -> None:
    shutil.copytree(service_bundle, tmp_path / "a" / "1")
    shutil.copytree(service_bundle, tmp_path / "b")
    running = ServerThread(
        service_bundle, model_repository=tmp_path, default_model="a", repository_poll_s=0
    ).start()
    try:
        gone = weakref.ref(running.engine("b"))
        shutil.rmtree(tmp_path / "b")
        running.call(running.server.repository.rescan())
        channel, translator = stub(running.address)
        with channel:
            request = translate_request(["one"], "de")
            request.model = "b"
            with pytest.raises(grpc.RpcError) as error:
                translator.Translate(request, timeout=10)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
            assert (
                translator.Translate(translate_request(["one"], "de"), timeout=30).model_name == "a"
            )
        running.wait_until(lambda: gone() is None, timeout=10)
    finally:
        running.stop()


def test_startup_needs_a_default_model_when_several_are_loaded(
    tmp_path: Path, service_bundle: Path
) -> None:
    shutil.copytree(service_bundle, tmp_path / "a")
    shutil.copytree(service_bundle, tmp_path / "b")
    running = ServerThread(service_bundle, model_repository=tmp_path)
    with pytest.raises(ValueError, match=r"TRANSLATOR_DEFAULT_MODEL is unset .* 2 models"):
        running.start()


def test_the_client_cli_names_a_model_and_lists_them_all(
    served: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.client import main as client

    assert client(["--address", served.address, "--list"]) == 0
    listing = capsys.readouterr().out
    assert "model default (default) version 1 READY" in listing
    assert "model en-de version 3 READY" in listing and "en -> de" in listing
    assert client(["--address", served.address, "--to", "de", "forty-two"]) == 0
    assert capsys.readouterr().out == "zweiundvierzig\n"
    assert client(["--address", served.address, "--model", "nope", "forty-two"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_startup_falls_back_past_a_broken_newest_version(
    tmp_path: Path, service_bundle: Path
) -> None:
    shutil.copytree(service_bundle, tmp_path / "m" / "1")
    broken = shutil.copytree(service_bundle, tmp_path / "m" / "2")
    (broken / "encoder.onnx").write_bytes(b"not a graph")
    running = ServerThread(service_bundle, model_repository=tmp_path, repository_poll_s=0).start()
    try:
        assert running.engine("m").info.version == "1"
        running.call(running.server.repository.rescan())  # refused once, not retried
        failed = {"model": "m", "result": "failed"}
        assert running.sample("translator_model_loads_total", failed) == 1
        assert running.engine("m").info.version == "1"
    finally:
        running.stop()


class _InjectedOrtError(Exception):
    """What onnxruntime raises: an Exception, not a RuntimeError."""


def test_an_engine_that_fails_to_warm_up_is_refused_and_polling_goes_on(
    tmp_path: Path, service_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.engine import TranslationEngine

    real_warm_up = TranslationEngine.warm_up

    def warm_up(engine: TranslationEngine) -> None:
        if engine.info.version == "2":
            raise _InjectedOrtError("injected: out of device memory")
        real_warm_up(engine)

    monkeypatch.setattr(TranslationEngine, "warm_up", warm_up)
    shutil.copytree(service_bundle, tmp_path / "m" / "1")
    running = ServerThread(service_bundle, model_repository=tmp_path, repository_poll_s=0.2).start()
    try:
        shutil.copytree(service_bundle, tmp_path / "m" / ".2")
        (tmp_path / "m" / ".2").rename(tmp_path / "m" / "2")
        failed = {"model": "m", "result": "failed"}
        running.wait_until(lambda: running.sample("translator_model_loads_total", failed) == 1, 30)
        assert running.engine("m").info.version == "1"
        shutil.copytree(service_bundle, tmp_path / "m" / ".3")
        (tmp_path / "m" / ".3").rename(tmp_path / "m" / "3")
        running.wait_until(lambda: running.engine("m").info.version == "3", timeout=30)
    finally:
        running.stop()
