"""An OPUS-MT-shaped Marian model, from a `save_pretrained` directory to answers over gRPC that
equal `transformers`' `generate()`.

The model is random-initialised with transformers (swish, shared embeddings, a non-zero
final_logits_bias) with tiny sentencepiece models trained in the test (tests/hf_marian.py), then:
`python -m model.import_hf` -> `python -m export` (parity-gated, and checked against transformers'
own logits) -> a real server on a real port.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from safetensors.torch import load_file
from transformers import MarianMTModel, MarianTokenizer

from model.import_hf import main as import_hf
from service.pb.translator.v1 import translator_pb2 as pb
from service.pb.translator.v1 import translator_pb2_grpc as pb_grpc
from tests.hf_marian import SOURCE_WORDS, build_marian_dir, import_and_export
from tests.service.service_harness import ServerThread, translate_request

MAX_LENGTH = 24  # the generation config's max_length: at most 23 new tokens
INPUTS = 200
WORDS = SOURCE_WORDS[:20]  # the sentencepiece models' words (and numbers, below)


def _sentences(count: int, seed: int) -> list[str]:
    """Short sentences of known and unknown words, digits and punctuation."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [
            rng.choice(WORDS) if rng.random() < 0.7 else str(rng.randint(0, 999))
            for _ in range(rng.randint(1, 9))
        ]
        out.append(" ".join(words) + rng.choice(["", ".", "!", " ?"]))
    return out


@pytest.fixture(scope="module")
def marian_dirs(marian_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("marian")
    return {
        "safetensors": marian_dir,
        "bin": build_marian_dir(
            root / "bin" / "opus-mt-en-de", weights="bin", max_length=MAX_LENGTH
        ),
        "multi": build_marian_dir(
            root / "opus-mt-en-ROMANCE", target_languages=("es", "fr", "it"), max_length=MAX_LENGTH
        ),
    }


@pytest.fixture(scope="module")
def bundle(marian_bundle: Path) -> Path:
    return marian_bundle


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[ServerThread]:
    running = ServerThread(bundle, max_segments=64).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def hf(marian_dirs: dict[str, Path]) -> tuple[MarianMTModel, MarianTokenizer]:
    return _transformers(marian_dirs["safetensors"])


def _transformers(directory: Path) -> tuple[MarianMTModel, MarianTokenizer]:
    return MarianMTModel.from_pretrained(directory).eval(), MarianTokenizer.from_pretrained(
        directory
    )


def _generate(
    hf: tuple[MarianMTModel, MarianTokenizer], texts: Sequence[str], **options: Any
) -> list[list[tuple[str, int, float]]]:
    """(text, token count, score) of every hypothesis per text, as transformers gives them."""
    model, tokenizer = hf
    n = options.get("num_return_sequences", 1)
    out: list[list[tuple[str, int, float]]] = []
    for start in range(0, len(texts), 25):
        batch = tokenizer(list(texts[start : start + 25]), return_tensors="pt", padding=True)
        with torch.no_grad():
            result = model.generate(
                **batch, return_dict_in_generate=True, output_scores=True, **options
            )
        scores = getattr(result, "sequences_scores", None)
        for i, row in enumerate(result.sequences.tolist()):
            generated = row[1:]  # after the decoder start token
            if model.config.eos_token_id in generated:
                generated = generated[: generated.index(model.config.eos_token_id) + 1]
            else:
                generated = [t for t in generated if t != model.config.pad_token_id]
            text = tokenizer.decode(generated, skip_special_tokens=True)
            score = float(scores[i]) if scores is not None else 0.0
            if i % n == 0:
                out.append([])
            out[-1].append((text, len(generated), score))
    return out


def _serve(
    address: str, texts: Sequence[str], to: str, **options: Any
) -> list[pb.SegmentTranslation]:
    """All texts at once, in requests of 8 segments from concurrent clients (rows join and leave
    the batch at different steps)."""

    async def one(chunk: Sequence[str]) -> list[pb.SegmentTranslation]:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await pb_grpc.TranslatorStub(channel).Translate(
                translate_request(chunk, to, **options), timeout=300
            )
            return list(reply.translations)

    async def everything() -> list[pb.SegmentTranslation]:
        chunks = [texts[i : i + 8] for i in range(0, len(texts), 8)]
        results = await asyncio.gather(*(one(chunk) for chunk in chunks))
        return [t for chunk in results for t in chunk]

    return asyncio.run(everything())


def test_both_weight_formats_import_to_the_same_checkpoint(
    marian_dirs: dict[str, Path], tmp_path: Path
) -> None:
    for name in ("safetensors", "bin"):
        import_hf([str(marian_dirs[name]), "--out", str(tmp_path / name)])
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("safetensors", "bin"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "bin" / "config.json").read_text())
    assert config["model"]["activation"] == "swish"
    assert config["source_language"] == "en" and config["languages"] == ["de"]
    assert config["generation"]["rules"]["suppress_tokens"] == [config["model"]["pad_id"]]


def test_the_bundle_matches_pytorch_and_transformers(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    parity = manifest["parity"]
    assert parity["transformers_max_abs_diff"] <= 1e-4
    assert parity["decoder_max_abs_diff"] <= 1e-4 and parity["greedy_token_agreement"] == 1.0
    assert manifest["tokenizer"] == "marian"
    assert manifest["decoding"]["beam_size"] == 4
    assert manifest["decoding"]["max_new_tokens"] == MAX_LENGTH - 1


def test_greedy_equals_generate(server: ServerThread, hf: Any) -> None:
    texts = _sentences(INPUTS, seed=1)
    theirs = _generate(hf, texts, num_beams=1)
    ours = _serve(server.address, texts, "de", beam_size=1)
    assert len(ours) == len(theirs) == INPUTS
    lengths = set()
    for text, mine, (expected,) in zip(texts, ours, theirs, strict=True):
        assert (mine.text, mine.token_count) == expected[:2], text
        lengths.add(mine.token_count)
    assert len(lengths) > 3, "the random model should produce outputs of varied lengths"


FLOAT32_TIE = 1e-6  # scores this close are one value up to log-softmax rounding (about 1e-7)


def _ties_explain(
    got: Sequence[tuple[str, int, float]], expected: Sequence[tuple[str, int, float]]
) -> bool:
    """Whether `got` differs from `expected` only in the order of (or the cut between) hypotheses
    whose scores are a float32 tie: transformers' and our log-softmax round differently, and
    topk leaves the order of equal scores open."""
    if len(got) != len(expected):
        return False
    scores = {h[:2]: h[2] for h in expected}
    for mine, theirs in zip(got, expected, strict=True):
        if mine[:2] == theirs[:2]:
            continue
        score = scores.get(mine[:2], mine[2])
        if abs(score - theirs[2]) > FLOAT32_TIE:
            return False
    return True


@pytest.mark.parametrize(("length_penalty", "n_best"), [(1.0, 1), (0.6, 3), (1.4, 4)])
def test_beam_search_equals_generate(
    server: ServerThread, hf: Any, length_penalty: float, n_best: int
) -> None:
    """The n best of every input as generate() ranks them, scores within 1e-4; an order may
    differ only between hypotheses whose scores tie in float32, on at most 2 % of inputs."""
    texts = _sentences(INPUTS, seed=int(length_penalty * 10) + n_best)
    theirs = _generate(
        hf, texts, num_beams=4, num_return_sequences=n_best, length_penalty=length_penalty
    )
    ours = _serve(
        server.address, texts, "de", beam_size=4, n_best=n_best, length_penalty=length_penalty
    )
    ties = 0
    for text, mine, expected in zip(texts, ours, theirs, strict=True):
        got = [(h.text, h.token_count, h.score) for h in mine.hypotheses]
        if [g[:2] for g in got] != [e[:2] for e in expected]:
            assert _ties_explain(got, expected), (text, got, expected)
            ties += 1
        for (_, _, score), (_, _, reference) in zip(got, expected, strict=True):
            assert score == pytest.approx(reference, abs=1e-4), text
    assert ties <= INPUTS // 50, f"{ties} of {INPUTS} inputs ordered differently on ties"


def test_defaults_are_the_generation_config(server: ServerThread, hf: Any) -> None:
    """No options: beam 4 and max_length from generation_config.json, as generate() without
    arguments."""
    texts = _sentences(24, seed=7)
    theirs = _generate(hf, texts)
    ours = _serve(server.address, texts, "de")
    assert [(t.text, t.token_count) for t in ours] == [e[0][:2] for e in theirs]


def test_list_languages_names_the_model_pair(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        reply = pb_grpc.TranslatorStub(channel).ListLanguages(pb.ListLanguagesRequest(), timeout=10)
    assert reply.source_language == "en" and list(reply.target_languages) == ["de"]


def test_a_multilingual_model_serves_each_of_its_targets(
    marian_dirs: dict[str, Path], tmp_path: Path
) -> None:
    directory = marian_dirs["multi"]
    bundle = import_and_export(directory, tmp_path)
    hf = _transformers(directory)
    texts = _sentences(20, seed=11)
    running = ServerThread(bundle).start()
    try:
        with grpc.insecure_channel(running.address) as channel:
            listed = pb_grpc.TranslatorStub(channel).ListLanguages(
                pb.ListLanguagesRequest(), timeout=10
            )
        assert list(listed.target_languages) == ["es", "fr", "it"]
        outputs = {}
        for lang in listed.target_languages:
            theirs = _generate(hf, [f">>{lang}<< {t}" for t in texts], num_beams=1)
            ours = _serve(running.address, texts, lang, beam_size=1)
            assert [(t.text, t.token_count) for t in ours] == [e[0][:2] for e in theirs], lang
            outputs[lang] = [t.text for t in ours]
        assert outputs["es"] != outputs["fr"], "the language token must reach the model"
    finally:
        running.stop()
