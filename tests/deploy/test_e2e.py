"""End to end: the service on two models, a real Prometheus scraping it, every query evaluated.

`python -m service` runs as a subprocess, configured only through TRANSLATOR_* variables as in
the pod, on a model repository of two models (`default/1/` and `second/`), both the session's
`tiny_bundle` (tests/conftest.py) or the bundle directory named by TRANSLATOR_TEST_BUNDLE.
Debian's prometheus (scripts/fetch_prometheus.sh) scrapes it every second on loopback, with the
target labels the ServiceMonitor would add (namespace, pod, accelerator) and the rendered alert
rules loaded. A short, bounded load runs (a few seconds of Translate,
TranslateStream, ListLanguages and invalid requests). Then:

- every query of the dashboard (Grafana variables substituted) and of the autoscaler must
  parse and return at least one finite sample;
- every alert expression must parse, and Prometheus must have evaluated every rule without error;
- every model has its own series (build_info, requests, latency) under its `model` label;
- the service reports the CPU provider, and exits 0 on SIGTERM after the load.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.health import READINESS
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from tests.deploy.helpers import (
    DASHBOARD,
    REPO,
    alert_rules,
    dashboard_queries,
    find,
    grafana_to_promql,
)

LOAD_SECONDS = 6.0
MODELS = ("default", "second")
STARTUP_TIMEOUT_S = 180.0
# The dashboard's $__rate_interval: a window that covers the whole load.
RATE_INTERVAL = "2m"
SENTENCES = [
    "Good morning.",
    "forty-two",
    "The weather is nice today.",
    "I would like a cup of coffee, please.",
    "Where is the station?",
]


@dataclass
class Endpoints:
    grpc: str  # host:port of the gRPC server
    metrics_port: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Any, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what}: the process exited with {process.returncode}")
        try:
            if check():
                return
        except (OSError, grpc.RpcError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{what}: not ready after {timeout:.0f} s")


@pytest.fixture(scope="module")
def e2e_bundle(request: pytest.FixtureRequest) -> Path:
    if os.environ.get("TRANSLATOR_TEST_BUNDLE"):
        return Path(os.environ["TRANSLATOR_TEST_BUNDLE"])
    return Path(request.getfixturevalue("tiny_bundle"))


@pytest.fixture(scope="module")
def service(e2e_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """`python -m service` on loopback; stopped with SIGTERM, which must drain and exit 0."""
    grpc_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSLATOR_")}
    repository = tmp_path_factory.mktemp("repository")
    shutil.copytree(e2e_bundle, repository / "default" / "1")
    shutil.copytree(e2e_bundle, repository / MODELS[1])
    env |= {
        "TRANSLATOR_HOST": "127.0.0.1",
        "TRANSLATOR_PORT": str(grpc_port),
        "TRANSLATOR_METRICS_PORT": str(metrics_port),
        "TRANSLATOR_MODEL_REPOSITORY": str(repository),
        "TRANSLATOR_DEVICE": "cpu",
        "TRANSLATOR_THREADS": "1",
        "TRANSLATOR_MAX_ACTIVE_ROWS": "16",
        "TRANSLATOR_GRACE_PERIOD_S": "5",
        "TRANSLATOR_REFLECTION": "false",
    }
    log_path = tmp_path_factory.mktemp("service") / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    endpoints = Endpoints(f"127.0.0.1:{grpc_port}", metrics_port)
    try:
        with grpc.insecure_channel(endpoints.grpc) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service=READINESS)
            serving = health_pb2.HealthCheckResponse.SERVING

            def ready() -> bool:
                return bool(health.Check(request, timeout=2).status == serving)

            wait_for(f"service (log: {log_path})", ready, STARTUP_TIMEOUT_S, process)
        yield endpoints
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait()
    assert returncode == 0, f"the service exited with {returncode}:\n{log_path.read_text()}"


@pytest.fixture(scope="module")
def prometheus(
    service: Endpoints,
    prometheus_bin: Path,
    objects: dict[str, list[dict[str, Any]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """A real Prometheus on loopback scraping the service every second; its base URL."""
    work = tmp_path_factory.mktemp("prometheus")
    rules = find(objects["cpu"], "PrometheusRule")["spec"]
    (work / "rules.yaml").write_text(yaml.safe_dump(rules))
    target_labels = {"namespace": "translator", "pod": "translator-e2e", "accelerator": "cpu"}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": "translator",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{service.metrics_port}"], "labels": target_labels}
                ],
            }
        ],
    }
    (work / "prometheus.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = work / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(prometheus_bin / "prometheus"),
                f"--config.file={work / 'prometheus.yaml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)

        wait_for(f"prometheus (log: {log_path})", ready, 60, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def api(url: str, path: str, **params: str) -> dict[str, Any]:
    """GET a Prometheus API path; the decoded body, error responses (HTTP 400/422) included."""
    query = f"{url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(query, timeout=10) as response:
            body: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:
        body = json.load(error)
    return body


def send_load(address: str, seconds: float) -> Counter[str]:
    """A few seconds of mixed traffic; the status codes received."""
    codes: Counter[str] = Counter()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TranslatorStub(channel)
        languages = stub.ListLanguages(pb.ListLanguagesRequest(), timeout=10)
        targets = list(languages.target_languages)
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            target = targets[i % len(targets)]
            segments = [s.encode() for s in SENTENCES[: 1 + i % 3]]
            calls = [
                stub.Translate.future(
                    pb.TranslateRequest(
                        segments=segments, target_language=target, model=MODELS[k % 2]
                    ),
                    timeout=30,
                )
                for k in range(4)
            ]
            if i % 4 == 0:  # bad input: an empty segment
                calls.append(
                    stub.Translate.future(
                        pb.TranslateRequest(segments=[b""], target_language=target), timeout=30
                    )
                )
            stream = stub.TranslateStream(
                pb.TranslateStreamRequest(
                    text=SENTENCES[i % len(SENTENCES)].encode(),
                    target_language=target,
                    model=MODELS[i % 2],
                ),
                timeout=30,
            )
            try:
                for _ in stream:
                    pass
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1
            for call in calls:
                failure = call.exception()
                codes["OK" if failure is None else failure.code().name] += 1
            i += 1
    return codes


def finite_samples(result: dict[str, Any]) -> list[float]:
    data = result["data"]
    if data["resultType"] == "scalar":
        return [v for v in [float(data["result"][1])] if math.isfinite(v)]
    values = [float(series["value"][1]) for series in data["result"]]
    return [v for v in values if math.isfinite(v)]


def test_every_query_works_against_a_live_prometheus(
    service: Endpoints, prometheus: str, objects: dict[str, list[dict[str, Any]]]
):
    codes = send_load(service.grpc, LOAD_SECONDS)
    assert codes["OK"] >= 5, codes
    assert codes["INVALID_ARGUMENT"] >= 1, codes
    assert set(codes) <= {"OK", "INVALID_ARGUMENT"}, codes
    time.sleep(3)  # the last scrapes and rule evaluations after the load

    up = api(prometheus, "/api/v1/query", query='up{job="translator"}')
    assert finite_samples(up) == [1.0], up

    failures = []
    queries = [
        (where, grafana_to_promql(expr, RATE_INTERVAL))
        for where, expr in dashboard_queries(json.loads(DASHBOARD.read_text()))
    ]
    triggers = find(objects["cpu"], "ScaledObject")["spec"]["triggers"]
    queries += [(f"autoscaler trigger {t['name']}", t["metadata"]["query"]) for t in triggers]
    for where, expr in queries:
        result = api(prometheus, "/api/v1/query", query=expr)
        if result["status"] != "success":
            failures.append(f"{where}: {result.get('error')}\n    {expr}")
        elif not finite_samples(result):
            failures.append(f"{where}: no data\n    {expr}")

    alerts = alert_rules(find(objects["cpu"], "PrometheusRule"))
    for rule in alerts:
        result = api(prometheus, "/api/v1/query", query=rule["expr"])
        if result["status"] != "success":
            failures.append(f"alert {rule['alert']}: {result.get('error')}")
    assert not failures, "\n".join(failures)

    loaded = api(prometheus, "/api/v1/rules")["data"]["groups"]
    health = {r["name"]: (r["health"], r.get("lastError", "")) for g in loaded for r in g["rules"]}
    assert set(health) == {r["alert"] for r in alerts}
    assert all(h == "ok" for h, _ in health.values()), health

    info = api(prometheus, "/api/v1/query", query="translator_build_info")["data"]["result"]
    assert sorted(s["metric"]["model"] for s in info) == sorted(MODELS), info
    assert {s["metric"]["provider"] for s in info} == {"CPUExecutionProvider"}, info
    assert {s["metric"]["model_version"] for s in info if s["metric"]["model"] == "default"} == {
        "1"
    }
    assert info[0]["metric"]["accelerator"] == "cpu"
    per_model = {
        "requests": "sum by (model) (increase("
        f'translator_requests_total{{code="OK"}}[{RATE_INTERVAL}]))',
        "latency": "histogram_quantile(0.95, sum by (model, le) (rate("
        f'translator_request_duration_seconds_bucket{{method="Translate"}}[{RATE_INTERVAL}])))',
        "tokens": f"sum by (model) (rate(translator_output_tokens_total[{RATE_INTERVAL}]))",
    }
    for name, expr in per_model.items():
        result = api(prometheus, "/api/v1/query", query=expr)["data"]["result"]
        values = {s["metric"].get("model", ""): float(s["value"][1]) for s in result}
        assert all(values.get(m, 0) > 0 for m in MODELS), (name, values)
