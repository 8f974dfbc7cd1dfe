"""`python -m model.import_hf`: what it refuses, in one line naming the file and the field."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model.checkpoint import load_model
from tests.hf_marian import build_marian_dir


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_marian_dir(tmp_path_factory.mktemp("hf") / "opus-mt-en-de")


def _run(directory: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model.import_hf", str(directory), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        check=False,
    )


def _edited(
    source: Path, tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None]
) -> Path:
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    values = json.loads((copy / name).read_text())
    edit(values)
    (copy / name).write_text(json.dumps(values))
    return copy


def test_import_writes_a_checkpoint_that_loads(marian_dir: Path, tmp_path: Path) -> None:
    result = _run(marian_dir, tmp_path / "ckpt")
    assert result.returncode == 0, result.stderr
    assert "en -> de" in result.stdout
    model, tokenizer = load_model(tmp_path / "ckpt")
    assert model.config.position_layout == "halves" and model.config.logits_bias
    assert model.config.decoder_start_id == model.config.pad_id == len(tokenizer) - 1
    assert float(model.logits_bias.abs().max()) > 0


@pytest.mark.parametrize(
    ("name", "edit", "named"),
    [
        ("config.json", lambda c: c.update(model_type="bart"), "model_type 'bart'"),
        ("config.json", lambda c: c.update(activation_function="gelu_new"), "activation_function"),
        ("config.json", lambda c: c.update(decoder_vocab_size=7), "decoder_vocab_size"),
        ("config.json", lambda c: c.update(tie_word_embeddings=False), "tie_word_embeddings"),
        ("config.json", lambda c: c.pop("d_model"), "d_model"),
        (
            "generation_config.json",
            lambda c: c.update(no_repeat_ngram_size=3),
            "no_repeat_ngram_size",
        ),
        (
            "generation_config.json",
            lambda c: c.update(bad_words_ids=[[5, 6]]),
            "bad_words_ids",
        ),
        ("generation_config.json", lambda c: c.update(do_sample=True), "do_sample"),
        ("generation_config.json", lambda c: c.update(top_secret_rule=1), "top_secret_rule"),
        ("tokenizer_config.json", lambda c: c.update(separate_vocabs=True), "separate_vocabs"),
    ],
)
def test_unsupported_input_exits_2_naming_file_and_field(
    marian_dir: Path, tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None], named: str
) -> None:
    result = _run(_edited(marian_dir, tmp_path, name, edit), tmp_path / "out")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert name in line and named in line, line
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("missing", ["source.spm", "vocab.json", "config.json"])
def test_a_missing_file_is_named(marian_dir: Path, tmp_path: Path, missing: str) -> None:
    copy = tmp_path / "opus-mt-en-de"
    shutil.copytree(marian_dir, copy)
    (copy / missing).unlink()
    result = _run(copy, tmp_path / "out")
    assert result.returncode == 2 and missing in result.stderr, result.stderr


def test_no_weights_is_refused(marian_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "opus-mt-en-de"
    shutil.copytree(marian_dir, copy)
    (copy / "model.safetensors").unlink()
    result = _run(copy, tmp_path / "out")
    assert result.returncode == 2 and "pytorch_model.bin" in result.stderr


def test_languages_come_from_flags_when_nothing_names_them(
    marian_dir: Path, tmp_path: Path
) -> None:
    anonymous = tmp_path / "some-model"
    shutil.copytree(marian_dir, anonymous)
    refused = _run(anonymous, tmp_path / "a")
    assert refused.returncode == 2 and "--source-language" in refused.stderr
    result = _run(anonymous, tmp_path / "b", "--source-language", "en", "--target-language", "nl")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "b" / "config.json").read_text())["languages"] == ["nl"]
