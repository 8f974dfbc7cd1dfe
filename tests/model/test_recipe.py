"""The paper's recipe beyond the training loop: checkpoint averaging, beam search with a length
penalty, and BLEU with sacrebleu's signature on a test file the user gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from export.reference_decoder import ReferenceDecoder
from model.checkpoint import load_model, step_weights
from model.corpus import Corpus
from model.data import pad
from model.decoding import beam_decode, greedy_decode
from service.bundle import load_bundle
from tests.model.commands import run_module


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run that keeps the weights of its last 3 saves (steps 8, 10, 12)."""
    out = tmp_path_factory.mktemp("recipe") / "ckpt"
    result = run_module(
        "model.train", "--preset", "tiny", "--corpus", "builtin", "--corpus-size", "1500",
        "--out", str(out), "--max-steps", "12", "--save-every", "2", "--keep-checkpoints", "3",
        "--no-evaluate",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_training_keeps_the_last_saves(kept: Path) -> None:
    assert [p.stem for p in step_weights(kept)] == [
        "step-0000008",
        "step-0000010",
        "step-0000012",
    ]
    last = load_file(str(step_weights(kept)[-1]))
    final = load_file(str(kept / "model.safetensors"))
    assert all(torch.equal(last[k], final[k]) for k in final)


def test_average_is_the_mean_of_the_last_checkpoints(kept: Path, tmp_path: Path) -> None:
    out = tmp_path / "avg"
    result = run_module(
        "model.average", "--checkpoint", str(kept), "--last", "2", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "step-0000010, step-0000012" in result.stdout
    a, b = (load_file(str(p)) for p in step_weights(kept)[-2:])
    averaged = load_file(str(out / "model.safetensors"))
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (a[name] + b[name]) / 2, rtol=0, atol=1e-7)
    model, _ = load_model(out)  # a whole checkpoint: config, tokenizer, weights
    assert model.config == load_model(kept)[0].config
    assert not torch.equal(averaged["embed.tokens.weight"], b["embed.tokens.weight"])


def test_average_errors_are_one_line(kept: Path, tmp_path: Path) -> None:
    too_many = run_module(
        "model.average", "--checkpoint", str(kept), "--last", "9", "--out", str(tmp_path / "x")
    )
    assert too_many.returncode == 2
    assert "3 kept checkpoint(s), fewer than --last 9" in too_many.stderr
    same = run_module("model.average", "--checkpoint", str(kept), "--out", str(kept))
    assert same.returncode == 2
    assert "write the average elsewhere" in same.stderr


def test_beam_search_follows_the_reference_decoder(
    tiny_checkpoint: Path, tiny_bundle: Path, tiny_corpus: Corpus
) -> None:
    """The same rules as the ONNX reference decoder: the checkpoint and its bundle agree."""
    model, tokenizer = load_model(tiny_checkpoint)
    reference = ReferenceDecoder(load_bundle(tiny_bundle))
    pairs = tiny_corpus.test[:24]
    sources = [tokenizer.encode_source(p.source, p.lang) for p in pairs]
    src_ids, src_mask = pad(sources)
    limit = 24
    beams = beam_decode(model, src_ids, src_mask, limit, beam_size=4, length_penalty=0.6)
    expected = [reference.beam_search(s, 4, limit, length_penalty=0.6)[0][0] for s in sources]
    assert beams == expected
    # Beam 1 is greedy search.
    assert beam_decode(model, src_ids, src_mask, limit, beam_size=1) == greedy_decode(
        model, src_ids, src_mask, limit
    )


def test_bleu_on_a_user_test_file_with_sacrebleus_signature(
    tiny_checkpoint: Path, tiny_corpus: Corpus, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    test_file = tmp_path / "newstest.tsv"
    pairs = tiny_corpus.test[:40]
    test_file.write_text("".join(f"{p.lang}\t{p.source}\t{p.target}\n" for p in pairs))
    result = run_module(
        "model.evaluate", "--checkpoint", str(checkpoint), "--test-file", str(test_file),
        "--beam-size", "4", "--length-penalty", "0.6",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "decoding: beam 4, length penalty 0.6" in result.stdout
    assert (
        "BLEU signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2." in result.stdout
    )
    assert (checkpoint / "metrics-newstest.json").is_file()
    missing = run_module(
        "model.evaluate", "--checkpoint", str(checkpoint), "--test-file",
        str(tmp_path / "nope.tsv"),
    )  # fmt: skip
    assert missing.returncode == 2
    assert "corpus file not found" in missing.stderr
