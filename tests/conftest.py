"""Session fixtures: a tiny corpus, tokenizer, model, checkpoint and bundle."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from export.pipeline import export_bundle
from model.builtin_corpus import builtin_corpus
from model.config import ModelConfig
from model.corpus import Corpus
from model.data import tokenize
from model.tokenizer import Tokenizer
from model.training import TrainConfig, Trainer
from model.transformer import Transformer


@pytest.fixture(scope="session")
def default_corpus() -> Corpus:
    """The built-in corpus the default model trains on (about 25 s to build)."""
    return builtin_corpus()


@pytest.fixture(scope="session")
def tiny_corpus() -> Corpus:
    return builtin_corpus(size=3000, seed=7)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus: Corpus) -> Tokenizer:
    texts = itertools.chain.from_iterable((p.source, p.target) for p in tiny_corpus.train)
    return Tokenizer.train(texts, tiny_corpus.languages, ModelConfig.from_name("tiny").vocab_size)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer: Tokenizer) -> Transformer:
    """An untrained tiny model with random weights: enough for exactness tests."""
    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny", vocab_size=len(tiny_tokenizer))
    return Transformer(config).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Corpus, tiny_tokenizer: Tokenizer
) -> Path:
    """A tiny model trained for a few seconds on the tiny corpus, saved as a checkpoint."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_checkpoint")
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=len(tiny_tokenizer)))
    examples = tokenize(tiny_corpus.train, tiny_tokenizer, max_len=64)
    config = TrainConfig(
        max_steps=150, valid_every=10_000, warmup_steps=30, lr_factor=2.0, max_tokens=3000
    )
    Trainer(model, tiny_tokenizer, config, directory).fit(examples, examples[:32])
    return directory


@pytest.fixture(scope="session")
def tiny_bundle(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_corpus: Corpus
) -> Path:
    """The tiny checkpoint exported to an fp32 bundle (parity-gated, as `python -m export` does)."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(tiny_checkpoint, out, "fp32", tiny_corpus.test[:100], threads=2)
    return out
