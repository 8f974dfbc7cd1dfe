"""The default model that ships with the repository: it loads with the current code and still
translates as well as its manifest says.

A change of the bundle format (FORMAT_VERSION, the graph contract, the manifest fields) fails here
until models/default is rebuilt (`make bundle`) in the same commit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from export.reference_decoder import ReferenceDecoder
from model.builtin_corpus import DEFAULT_SEED, DEFAULT_SIZE
from model.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, load_config
from model.corpus import Corpus, Pair
from model.tokenizer import Tokenizer
from service.bundle import Bundle, load_bundle, sha256_of

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "models" / "default"
CHECKPOINT = REPO / "checkpoints" / "default"
SAMPLE = 1000  # test sentences decoded through ONNX Runtime
TOLERANCE = 0.01  # one point of exact match


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(BUNDLE)  # checksums, format version, graph I/O against the contract


@pytest.fixture(scope="module")
def reference(bundle: Bundle) -> ReferenceDecoder:
    return ReferenceDecoder(bundle, threads=2)


def greedy_texts(reference: ReferenceDecoder, bundle: Bundle, pairs: list[Pair]) -> list[str]:
    tokenizer = Tokenizer.load(bundle.tokenizer_path)
    sources = [tokenizer.encode_source(p.source, p.lang) for p in pairs]
    outputs: list[str] = []
    for start in range(0, len(sources), 64):
        chunk = sources[start : start + 64]
        limit = min(bundle.manifest.max_target_tokens, 2 * max(map(len, chunk)) + 10)
        outputs += [tokenizer.decode(ids) for ids in reference.greedy(chunk, limit)]
    return outputs


def test_the_shipped_checkpoint_is_the_one_the_bundle_was_exported_from(bundle: Bundle) -> None:
    saved = load_config(CHECKPOINT)
    assert saved.model.to_dict() == bundle.manifest.model
    assert sorted(saved.languages) == sorted(bundle.manifest.languages)
    assert sha256_of(CHECKPOINT / TOKENIZER_FILE) == bundle.manifest.raw["files"][TOKENIZER_FILE]
    assert (CHECKPOINT / WEIGHTS_FILE).is_file() and (CHECKPOINT / CONFIG_FILE).is_file()
    assert not (CHECKPOINT / "trainer_state.pt").exists(), "the optimizer state is not shipped"


def test_a_sample_of_its_test_split_scores_what_the_manifest_records(
    bundle: Bundle, reference: ReferenceDecoder, default_corpus: Corpus
) -> None:
    # The session's default corpus (shared with the corpus tests) is the one it trained on.
    assert bundle.manifest.raw["training"]["corpus"] == {
        "name": "builtin",
        "size": DEFAULT_SIZE,
        "seed": DEFAULT_SEED,
    }
    test = default_corpus.test
    recorded = bundle.manifest.raw["parity"]["test_split"]["all"]
    assert recorded["sentences"] == len(test), "the corpus no longer rebuilds the same test split"
    sample = test[:: max(1, len(test) // SAMPLE)][:SAMPLE]
    assert len(sample) >= 500
    outputs = greedy_texts(reference, bundle, sample)
    exact = sum(o == p.target for o, p in zip(outputs, sample, strict=True)) / len(sample)
    assert abs(exact - recorded["exact_match"]) <= TOLERANCE, (exact, recorded["exact_match"])


def test_the_readme_call_prints_what_the_readme_shows(
    bundle: Bundle, reference: ReferenceDecoder
) -> None:
    readme = (REPO / "README.md").read_text()
    call = re.search(r'service\.client --to (\w+) "([^"]+)"\n(.+)\n', readme)
    assert call, "the README's first screen shows a service.client call and its output"
    lang, source, shown = call.groups()
    (output,) = greedy_texts(reference, bundle, [Pair(lang, source, "")])
    assert shown.strip() == output
