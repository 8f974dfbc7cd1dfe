"""`python -m service` as a process: no torch, startup failures, SIGTERM with requests in flight."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_harness import stub, translate_request

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"serving .* on [\d.]+:(\d+) \(metrics :(\d+)")


def test_service_never_imports_torch():
    code = (
        "import sys; import service.__main__, service.servicer, service.server, service.client;"
        " import service.runner, service.sessions, service.scheduler;"
        " bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model', 'export'));"
        " print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _start(bundle: Path, **env: str) -> subprocess.Popen[str]:
    variables = (
        {k: v for k, v in os.environ.items() if not k.startswith("TRANSLATOR_")}
        | {
            "TRANSLATOR_HOST": "127.0.0.1",
            "TRANSLATOR_PORT": "0",
            "TRANSLATOR_METRICS_PORT": "0",
            "TRANSLATOR_BUNDLE_PATH": str(bundle),
            "TRANSLATOR_DEVICE": "cpu",
            "TRANSLATOR_THREADS": "1",
        }
        | env
    )
    return subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=variables,
        stderr=subprocess.PIPE,
        text=True,
    )


def _port(process: subprocess.Popen[str], log: list[str]) -> int:
    assert process.stderr is not None
    for line in process.stderr:
        log.append(line)
        if match := LISTENING.search(line):
            return int(match.group(1))
    raise AssertionError("the server never reported its port:\n" + "".join(log))


def test_bad_bundle_exits_1_with_one_clear_line(tmp_path: Path):
    process = _start(tmp_path / "missing")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "startup failed" in err and "missing" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("TRANSLATOR_MAX_ACTIVE_ROW", "did you mean TRANSLATOR_MAX_ACTIVE_ROWS?"),
        ("TRANSLATOR_TLS_CERT_FIEL", "did you mean TRANSLATOR_TLS_CERT_FILE?"),
        ("TRANSLATOR_BANANA", "known: TRANSLATOR_ADMIT_EVERY_STEPS"),
    ],
)
def test_an_unknown_setting_stops_the_start_with_its_name(
    service_bundle: Path, variable: str, hint: str
):
    process = _start(service_bundle, **{variable: "1"})
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    (line,) = [line for line in err.splitlines() if "ERROR" in line]
    assert f"unknown setting {variable}; {hint}" in line


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("truncate encoder.onnx", "encoder.onnx: sha256"),
        ("garbage manifest.json", "manifest.json: not valid JSON"),
        ("remove decoder.onnx", "decoder.onnx: missing"),
    ],
)
def test_a_damaged_bundle_exits_1_naming_the_file(
    service_bundle: Path, tmp_path: Path, damage: str, named: str
):
    bundle = shutil.copytree(service_bundle, tmp_path / "bundle")
    action, name = damage.split()
    if action == "truncate":
        data = (bundle / name).read_bytes()
        (bundle / name).write_bytes(data[: len(data) // 2])
    elif action == "garbage":
        (bundle / name).write_bytes(b"\x00\xff not json")
    else:
        (bundle / name).unlink()
    process = _start(bundle)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and named in errors[0], err
    assert "Traceback" not in err


def test_cuda_requested_without_cuda_exits_1(service_bundle: Path):
    process = _start(service_bundle, TRANSLATOR_DEVICE="cuda")
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:  # a machine with a GPU: nothing to check here
        return
    assert process.returncode == 1
    assert "cuda" in err.lower()


def test_sigterm_finishes_in_flight_requests_and_exits_0(service_bundle: Path):
    process = _start(
        service_bundle,
        TRANSLATOR_GRACE_PERIOD_S="20",
        TRANSLATOR_MAX_ACTIVE_ROWS="4",
        TRANSLATOR_DRAIN_DELAY_S="0",
    )
    log: list[str] = []
    try:
        port = _port(process, log)
        reader = threading.Thread(target=lambda: log.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        channel, translator = stub(f"127.0.0.1:{port}")
        with channel:
            request = translate_request(["The weather is nice today."] * 8, "de", beam_size=4)
            calls = [translator.Translate.future(request, timeout=60) for _ in range(16)]
            time.sleep(0.05)
            in_flight = sum(not call.done() for call in calls)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            health = health_pb2_grpc.HealthStub(channel)
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.RpcError as error:  # already refusing new RPCs
                assert error.code() == grpc.StatusCode.UNAVAILABLE
            try:
                translator.Translate(translate_request(["new"], "de"), timeout=5)
                raise AssertionError("a request after SIGTERM was served")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
            results = [call.result(timeout=60) for call in calls]
        assert all(len(r.translations) == 8 for r in results)
        assert in_flight > 0
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "draining" in "".join(log)
