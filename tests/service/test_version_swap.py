"""A new version of a model replaces the old one under load, in a real `python -m service`.

The repository starts with `default/1/` (the shipped model). Eight closed-loop clients translate
the whole time. Version 2 is copied in (under a hidden name, then renamed, as the deploy README
says) and SIGHUP makes the server look: no request fails, each client sees version 1 and then
only version 2, and once version 1 is unloaded the process's memory is back within 20 % of
before the swap. Then a broken version 3 (a corrupted graph: its checksum fails) is refused:
no request fails and version 2 keeps serving.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc

from tests.service.service_harness import stub, translate_request

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "models" / "default"
LISTENING = re.compile(r"serving .* on [\d.]+:(\d+) \(metrics :(\d+)")
CLIENTS = 8
SENTENCES = [
    "Good morning.",
    "forty-two",
    "The weather is nice today.",
    "seventeen thousand three hundred and five",
    "Monday",
    "twenty-one percent",
]


class Log:
    """The server's stderr, read in a thread; `wait_for` a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._process = process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.05)
        raise AssertionError(f"no log line matched {pattern!r}:\n" + "".join(self.lines[-20:]))


class Clients:
    """Closed-loop clients, each recording the model version of every answer, in order."""

    def __init__(self, address: str) -> None:
        self.versions: list[list[str]] = [[] for _ in range(CLIENTS)]
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i, address), daemon=True)
            for i in range(CLIENTS)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, i: int, address: str) -> None:
        channel, translator = stub(address)
        with channel:
            k = i
            while not self._stop.is_set():
                request = translate_request([SENTENCES[k % len(SENTENCES)]], "de")
                try:
                    reply = translator.Translate(request, timeout=30)
                    self.versions[i].append(reply.model_version)
                except grpc.RpcError as error:
                    self.failures.append(f"{error.code().name}: {error.details()}")
                k += 1

    def count(self) -> int:
        return sum(len(v) for v in self.versions)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _copy_in(bundle: Path, model_dir: Path, version: int) -> Path:
    """Copy under a hidden name, then rename: the scan never sees half a bundle."""
    incoming = model_dir / f".incoming-{version}"
    shutil.copytree(bundle, incoming)
    return incoming.rename(model_dir / str(version))


def test_version_swap_under_load_loses_nothing_and_frees_the_old_version(tmp_path: Path) -> None:
    model_dir = tmp_path / "repository" / "default"
    shutil.copytree(DEFAULT_BUNDLE, model_dir / "1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSLATOR_")} | {
        "TRANSLATOR_HOST": "127.0.0.1",
        "TRANSLATOR_PORT": "0",
        "TRANSLATOR_METRICS_PORT": "0",
        "TRANSLATOR_MODEL_REPOSITORY": str(model_dir.parent),
        "TRANSLATOR_REPOSITORY_POLL_S": "0",  # SIGHUP only: the test says when
        "TRANSLATOR_DEVICE": "cpu",
        "TRANSLATOR_THREADS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    log = Log(process)
    try:
        match = log.wait_for(LISTENING.pattern, timeout=120)
        address, metrics_port = f"127.0.0.1:{match.group(1)}", int(match.group(2))
        clients = Clients(address)
        time.sleep(3.0)
        rss_before = _rss_mb(process.pid)

        _copy_in(DEFAULT_BUNDLE, model_dir, 2)
        process.send_signal(signal.SIGHUP)
        peak, deadline = rss_before, time.monotonic() + 120
        while not any("model default version 1 unloaded" in line for line in log.lines):
            assert time.monotonic() < deadline, "version 1 was never unloaded"
            peak = max(peak, _rss_mb(process.pid))
            time.sleep(0.02)
        time.sleep(3.0)
        rss_after = _rss_mb(process.pid)
        swapped = clients.count()

        broken = _copy_in(DEFAULT_BUNDLE, model_dir, 3)
        with (broken / "decoder.onnx").open("r+b") as graph:
            graph.seek(1000)
            graph.write(b"\xff\xfe\xfd\xfc")
        process.send_signal(signal.SIGHUP)
        log.wait_for(r"model default 3 refused: .*decoder\.onnx: sha256", timeout=60)
        time.sleep(2.0)
        clients.stop()

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as reply:
            metrics = reply.read().decode()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()

    print(
        f"\n{clients.count()} requests ({swapped} by the end of the swap), "
        f"{len(clients.failures)} failed; RSS {rss_before:.0f} MB before the swap,"
        f" {peak:.0f} MB at most during it, {rss_after:.0f} MB after"
    )
    assert not clients.failures, clients.failures[:5]
    for versions in clients.versions:
        assert versions and versions[0] == "1" and versions[-1] == "2"
        switch = versions.index("2")
        assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}
    assert rss_after <= 1.2 * rss_before
    assert 'translator_model_loads_total{model="default",result="failed"} 1.0' in metrics
    assert 'translator_model_loads_total{model="default",result="loaded"} 2.0' in metrics
    assert 'model="default",model_version="2"' in metrics
    assert 'model_version="1"' not in metrics
