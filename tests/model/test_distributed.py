"""Data-parallel training with a real torchrun (2 processes, gloo), exact resumes, rank failures.

The tiny preset has no dropout, so a step is a pure function of the weights and the global
batch: the same on one process as on two, up to the order in which float sums are taken.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from service.bundle import sha256_of

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
CORPUS = ("--corpus", "builtin", "--corpus-size", "3000")


def train(*args: str, ranks: int = 1, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m model.train --preset tiny` alone, or under torchrun with `ranks` processes."""
    if ranks == 1:
        launcher = [sys.executable, "-m", "model.train", "--threads", "1"]
    else:
        launcher = [
            str(TORCHRUN),
            "--nproc_per_node",
            str(ranks),
            "--standalone",  # a free port on this machine
            "-m",
            "model.train",
        ]
    result = subprocess.run(
        [*launcher, "--preset", "tiny", *CORPUS, "--no-evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return result


def losses(out: Path) -> dict[int, float]:
    lines = (out / "train_log.jsonl").read_text().splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}


def max_weight_difference(a: Path, b: Path) -> float:
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert left.keys() == right.keys()
    return max(float((left[k] - right[k]).abs().max()) for k in left)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """20 steps on 1 process and on 2; 10 steps on 2 then 10 more on 1 (--resume)."""
    root = tmp_path_factory.mktemp("ddp")
    outs = {name: root / name for name in ("one", "two", "resumed")}
    for name, ranks, steps in (("one", 1, 20), ("two", 2, 20), ("resumed", 2, 10)):
        result = train("--out", str(outs[name]), "--max-steps", str(steps), ranks=ranks)
        assert result.returncode == 0, result.stderr[-3000:]
    resumed = train("--out", str(outs["resumed"]), "--max-steps", "20", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 10 (saved by 2 process(es))" in resumed.stdout
    return outs


def test_two_ranks_take_the_single_process_steps(runs: dict[str, Path]) -> None:
    """Each rank computes half of every global batch; the loss is the global batch's mean."""
    one, two = losses(runs["one"]), losses(runs["two"])
    assert sorted(one) == sorted(two) == list(range(1, 21))
    assert abs(one[20] - two[20]) < 1e-4
    assert max(abs(one[s] - two[s]) for s in one) < 1e-4
    assert max_weight_difference(runs["one"], runs["two"]) < 1e-4


def test_one_process_resumes_a_two_process_run(runs: dict[str, Path]) -> None:
    """Step, optimizer, data position and schedule continue where the 2-process run stopped."""
    assert max_weight_difference(runs["resumed"], runs["two"]) < 1e-5
    resumed, uninterrupted = losses(runs["resumed"]), losses(runs["two"])
    assert sorted(resumed) == list(range(1, 21))  # the log continues, no step twice
    assert max(abs(resumed[s] - uninterrupted[s]) for s in range(11, 21)) < 1e-4


def test_a_resume_on_as_many_processes_is_exact(tmp_path: Path) -> None:
    out, whole = tmp_path / "resumed", tmp_path / "whole"
    assert train("--out", str(out), "--max-steps", "6").returncode == 0
    assert train("--out", str(out), "--max-steps", "12", "--resume").returncode == 0
    assert train("--out", str(whole), "--max-steps", "12").returncode == 0
    assert sha256_of(out / "model.safetensors") == sha256_of(whole / "model.safetensors")


def test_a_killed_rank_ends_the_run_with_a_message(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        str(TORCHRUN), "--nproc_per_node", "2", "--standalone", "-m", "model.train",
        "--preset", "tiny", *CORPUS, "--no-evaluate", "--out", str(out),
        "--max-steps", "100000", "--save-every", "20",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    pid = None
    for line in process.stdout:
        if match := re.search(r"rank 1/2: pid (\d+)", line):
            pid = int(match.group(1))
            break
    assert pid is not None
    deadline = time.monotonic() + 120
    while not (out / "trainer_state.pt").exists():  # past the first checkpoint
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    output, _ = process.communicate(timeout=60)
    elapsed = time.monotonic() - killed
    assert process.returncode != 0
    assert elapsed < 30
    assert "rank      : 1" in output and "SIGKILL" in output  # torchrun names the failed rank
    # The survivor says where the run stands and how to go on.
    assert re.search(r"rank 0: (stopped by signal SIGTERM|another rank stopped)", output), output
    assert "continue it with --resume" in output


def test_a_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train("--out", str(out), "--max-steps", "2").returncode == 0
    refused = train("--out", str(out), "--max-steps", "4", "--max-tokens", "2000", "--resume")
    assert refused.returncode == 2
    assert "--max-tokens 3000 in the checkpoint, 2000 now" in refused.stderr
    assert "Traceback" not in refused.stderr
    other_corpus = train("--out", str(out), "--max-steps", "4", "--resume", "--corpus-seed", "3")
    assert other_corpus.returncode == 2
    assert "resume it on the same corpus" in other_corpus.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line() -> None:
    result = train("--out", "/nonexistent", "--device", "cuda")
    assert result.returncode == 2
    assert "--device cuda: no CUDA device is available" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path: Path, precision: str) -> None:
    """Autocast on the CPU (bf16; fp16 with the gradient scaler); the loss goes down."""
    out = tmp_path / precision
    result = train("--out", str(out), "--max-steps", "40", "--precision", precision)
    assert result.returncode == 0, result.stderr[-2000:]
    log = losses(out)
    assert all(map(torch.isfinite, map(torch.tensor, log.values())))
    assert sum(list(log.values())[-5:]) / 5 < sum(list(log.values())[:5]) / 5
    assert f"1 process(es) on cpu, {precision}" in result.stdout
