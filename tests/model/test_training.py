"""Training: the schedule, learning on a toy task, checkpoints, and the command line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_model, save_checkpoint
from model.config import ModelConfig
from model.data import collate, length_buckets, tokenize
from model.tokenizer import Tokenizer
from model.training import TrainConfig, Trainer, learning_rate, validate
from model.transformer import Transformer
from service.bundle import sha256_of
from tests.model.commands import run_module


def test_schedule_warms_up_then_decays_as_inverse_square_root() -> None:
    config = TrainConfig(warmup_steps=100)
    rates = [learning_rate(s, 128, config) for s in (1, 50, 100, 400)]
    assert rates[0] < rates[1] < rates[2]
    assert rates[3] == pytest.approx(rates[2] / 2)


def test_length_buckets_respect_the_token_budget(tiny_corpus, tiny_tokenizer) -> None:
    examples = tokenize(tiny_corpus.train, tiny_tokenizer, max_len=64)
    batches = length_buckets(examples, max_tokens=500)
    assert sum(len(b) for b in batches) == len(examples)
    for group in batches:
        batch = collate(group)
        assert batch.src_ids.numel() + batch.tgt_in.numel() <= 500 + batch.tgt_in.shape[0]


def test_training_lowers_the_loss_and_checkpoints_resume(
    tiny_corpus, tiny_tokenizer, tmp_path
) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=len(tiny_tokenizer)))
    examples = tokenize(tiny_corpus.train[:300], tiny_tokenizer, max_len=64)
    trainer = Trainer(
        model,
        tiny_tokenizer,
        TrainConfig(max_steps=40, valid_every=1000, warmup_steps=10),
        tmp_path,
    )
    first = validate(model, examples[:20], max_tokens=3000)["valid_loss"]
    metrics = trainer.fit(examples, examples[:20])
    assert trainer.state.step == 40
    assert metrics["valid_loss"] < first
    reloaded, tokenizer = load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor)
    assert tokenizer.encode_source("one", "de") == tiny_tokenizer.encode_source("one", "de")


def test_checkpoint_errors(
    tiny_model: Transformer, tiny_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_model(tmp_path / "missing")
    save_checkpoint(tmp_path, tiny_model, tiny_tokenizer)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt weights file"):
        load_model(tmp_path)
    save_checkpoint(tmp_path, tiny_model, tiny_tokenizer)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["d_ff"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(tmp_path)


def run_train(*args: str) -> subprocess.CompletedProcess[str]:
    return run_module("model.train", "--preset", "tiny", *args)


@pytest.fixture
def small_tsv(tmp_path: Path, tiny_corpus) -> Path:
    path = tmp_path / "corpus.tsv"
    # Pairs from every split: the CLI re-splits by source, so all three splits are non-empty.
    pairs = tiny_corpus.train[:500] + tiny_corpus.valid[:50] + tiny_corpus.test[:50]
    path.write_text("".join(f"{p.lang}\t{p.source}\t{p.target}\n" for p in pairs))
    return path


def test_cli_trains_on_a_tsv_corpus_and_resumes(small_tsv: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    result = run_train(
        "--corpus", str(small_tsv), "--out", str(out), "--max-steps", "6", "--valid-every", "3"
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["languages"]) == {"de", "es", "fr", "it", "all"}
    assert "exact" in result.stdout and "chrF" in result.stdout
    resumed = run_train(
        "--corpus", str(small_tsv), "--out", str(out), "--max-steps", "8", "--resume"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 6" in resumed.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "corpus file not found"),
        ("", "the corpus is empty"),
        ("de\tone\n", ":1: 2 columns"),
        ("de\tone\teins\nqq\ttwo\tzwei\n", ":2: unknown language tag 'qq'"),
    ],
)
def test_cli_bad_corpus_is_one_clear_line(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "corpus.tsv"
    if content is not None:
        path.write_text(content)
    result = run_train("--corpus", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_resume_from_corrupt_or_mismatched_checkpoint(small_tsv: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    assert (
        run_train("--corpus", str(small_tsv), "--out", str(out), "--max-steps", "2").returncode == 0
    )
    mismatch = run_module(
        "model.train", "--preset", "small", "--corpus", str(small_tsv), "--out", str(out),
        "--resume",
    )  # fmt: skip
    assert mismatch.returncode == 2
    assert "does not match preset 'small'" in mismatch.stderr
    (out / "trainer_state.pt").write_bytes(b"not a torch file")
    corrupt = run_train("--corpus", str(small_tsv), "--out", str(out), "--resume")
    assert corrupt.returncode == 2
    assert "corrupt trainer state" in corrupt.stderr
    assert "Traceback" not in corrupt.stderr


def test_the_same_command_gives_the_same_weights(tmp_path: Path) -> None:
    """Training ends at a step count and every source of randomness is seeded."""
    common = ("--corpus", "builtin", "--corpus-size", "1500", "--max-steps", "12")
    runs = {
        name: run_train(*common, "--out", str(tmp_path / name), *extra)
        for name, extra in (("first", ()), ("again", ()), ("other_seed", ("--seed", "2")))
    }
    for result in runs.values():
        assert result.returncode == 0, result.stderr
    assert "12/12" in runs["first"].stderr  # the progress bar counts steps against the total
    digests = {name: sha256_of(tmp_path / name / "model.safetensors") for name in runs}
    assert digests["first"] == digests["again"]
    assert digests["first"] != digests["other_seed"]
