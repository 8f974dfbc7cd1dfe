"""The exported bundle: contract, parity with PyTorch, reference search, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.parity import BATCH_TOLERANCE, TOLERANCE, check_parity, joined_vs_alone_diff
from export.reference_decoder import ReferenceDecoder
from model.checkpoint import load_model
from model.corpus import Corpus
from model.transformer import DecoderLayer
from service.bundle import BundleError, load_bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path) -> ReferenceDecoder:
    return ReferenceDecoder(load_bundle(tiny_bundle), threads=2)


def test_manifest_describes_the_bundle(tiny_bundle: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    assert manifest.raw["format_version"] == 3
    assert manifest.tokenizer == "sentencepiece" and manifest.source_language == "en"
    assert manifest.decoding["beam_size"] == 1 and manifest.decoding["rules"]["beam"] == "native"
    assert manifest.precision == "fp32" and manifest.raw["opset"] == 18
    assert manifest.special_tokens == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert sorted(manifest.languages) == ["de", "es", "fr", "it"]
    assert set(manifest.raw["files"]) == {"encoder.onnx", "decoder.onnx", "tokenizer.model"}
    decoder = manifest.graph("decoder")
    shapes = {io["name"]: io["shape"] for io in decoder["inputs"] + decoder["outputs"]}
    assert shapes["past_lengths"] == ["batch"] and shapes["total_length"] == []
    assert shapes["past_key_values.0.decoder.key"][2] == "capacity"
    assert shapes["present.0.decoder.key"] == shapes["past_key_values.0.decoder.key"]
    assert shapes["past_key_values.0.encoder.key"][2] == "src_len"
    # Pitfall 1: decoder steps never output the constant cross K/V.
    assert not [o for o in decoder["outputs"] if ".encoder." in o["name"]]


def test_graphs_follow_the_exporter_rules(tiny_bundle: Path) -> None:
    for name in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(tiny_bundle / name))
        ops = {node.op_type for node in model.graph.node}
        assert "If" not in ops and "Loop" not in ops
        assert not list(tiny_bundle.glob("*.data"))  # weights inside the .onnx file
        assert all(
            init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer
        )


def test_parity_gate_figures_within_tolerance(tiny_bundle: Path) -> None:
    parity = load_bundle(tiny_bundle).manifest.raw["parity"]
    assert parity["encoder_max_abs_diff"] <= TOLERANCE
    assert parity["decoder_max_abs_diff"] <= TOLERANCE
    assert parity["batch_vs_alone_max_abs_diff"] <= BATCH_TOLERANCE
    assert parity["late_join_max_abs_diff"] <= BATCH_TOLERANCE
    assert parity["greedy_token_agreement"] == 1.0
    assert parity["test_split"]["all"]["agreement_with_pytorch"] == 1.0


def test_parity_checks_run_again_independently(
    tiny_checkpoint, reference, tiny_corpus: Corpus
) -> None:
    model, tokenizer = load_model(tiny_checkpoint)
    sources = [tokenizer.encode_source(p.source, p.lang) for p in tiny_corpus.test[:24]]
    figures = check_parity(model, reference, sources, gate=True)
    assert figures["decoder_max_abs_diff"] < TOLERANCE


def test_parity_gate_catches_a_wrong_graph(tiny_checkpoint, reference, tiny_corpus: Corpus) -> None:
    model, tokenizer = load_model(tiny_checkpoint)
    layer = model.decoder_layers[0]
    assert isinstance(layer, DecoderLayer)
    with torch.no_grad():  # PyTorch now differs from the graphs: every channel of a bias off by
        # 0.5, alternating in sign (LayerNorm would remove a shift shared by all channels). The
        # tiny model's logits are flat enough that a smaller change can stay within the tolerance.
        signs = torch.ones_like(layer.ffn.outer.bias)
        signs[1::2] = -1.0
        layer.ffn.outer.bias.add_(0.5 * signs)
    sources = [tokenizer.encode_source(p.source, p.lang) for p in tiny_corpus.test[:8]]
    with pytest.raises(RuntimeError, match="decoder_max_abs_diff"):
        check_parity(model, reference, sources, gate=True)


def test_beam_search_of_width_one_is_greedy(
    reference: ReferenceDecoder, tiny_checkpoint, tiny_corpus
) -> None:
    _, tokenizer = load_model(tiny_checkpoint)
    for pair in tiny_corpus.test[:10]:
        source = tokenizer.encode_source(pair.source, pair.lang)
        (greedy,) = reference.greedy([source], 30)
        ((beam, _),) = reference.beam_search(
            source, beam_size=1, max_new_tokens=30, length_penalty=0.0
        )
        assert beam == greedy


def test_beam_search_n_best_is_ranked_and_distinct(
    reference: ReferenceDecoder, tiny_checkpoint, tiny_corpus
) -> None:
    _, tokenizer = load_model(tiny_checkpoint)
    source = tokenizer.encode_source(tiny_corpus.test[0].source, tiny_corpus.test[0].lang)
    hypotheses = reference.beam_search(
        source, beam_size=4, max_new_tokens=30, length_penalty=1.0, n_best=3
    )
    assert len(hypotheses) == 3
    scores = [score for _, score in hypotheses]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(ids) for ids, _ in hypotheses}) == 3


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def test_bundle_with_a_missing_file(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"decoder.onnx: missing from the bundle"):
        load_bundle(bundle)


def test_bundle_with_a_wrong_checksum(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    with (bundle / "tokenizer.model").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(BundleError, match=r"tokenizer.model: sha256 .* does not match"):
        load_bundle(bundle)


def test_bundle_with_an_unknown_format_version(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest.json: unknown format_version 99"):
        load_bundle(bundle)


def test_bundle_whose_graph_inputs_do_not_match(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    # Swap in the encoder graph as the decoder, with a checksum that matches the new file.
    shutil.copy(bundle / "encoder.onnx", bundle / "decoder.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    from service.bundle import sha256_of

    manifest["files"]["decoder.onnx"] = sha256_of(bundle / "decoder.onnx")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"decoder.onnx: graph inputs .* do not match"):
        load_bundle(bundle)


def test_bundle_directory_missing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_bundle(tmp_path / "nothing")


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_export_cli_bad_checkpoint_and_unwritable_output(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    missing = run_export("--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "b"))
    assert missing.returncode == 2
    assert "checkpoint directory not found" in missing.stderr and "Traceback" not in missing.stderr
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    unwritable = run_export(
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(blocked / "bundle"),
        "--corpus-size",
        "300",
    )
    assert unwritable.returncode == 2
    assert (
        "cannot write the bundle there" in unwritable.stderr
        and "Traceback" not in unwritable.stderr
    )


def test_failed_export_leaves_nothing_that_looks_valid(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    (checkpoint / "model.safetensors").write_bytes(b"corrupt")
    result = run_export("--checkpoint", str(checkpoint), "--out", str(tmp_path / "models" / "x"))
    assert result.returncode == 2 and "corrupt weights file" in result.stderr
    assert not (tmp_path / "models" / "x").exists()
    assert (
        not list((tmp_path / "models").glob(".*partial*"))
        if (tmp_path / "models").exists()
        else True
    )


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_bundles_report_their_cost(
    precision: str, tiny_checkpoint: Path, tiny_corpus: Corpus, tmp_path: Path
) -> None:
    from export.pipeline import export_bundle

    manifest = export_bundle(
        tiny_checkpoint, tmp_path / precision, precision, tiny_corpus.test[:40]
    )
    bundle = load_bundle(tmp_path / precision)
    assert bundle.manifest.precision == precision
    report = manifest["parity"]["test_split"]["all"]
    assert 0.0 <= report["agreement_with_pytorch"] <= 1.0 and report["sentences"] == 40
    decoder = onnx.load(str(bundle.decoder_path))
    if precision == "fp16":
        logits = next(o for o in decoder.graph.output if o.name == "logits")
        assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    else:  # weight-only int8, activations quantized per row: batching changes nothing
        for graph in (decoder, onnx.load(str(bundle.encoder_path))):
            assert any(n.op_type == "MatMulNBits" for n in graph.graph.node)
            weights = {init.name for init in graph.graph.initializer}
            matmuls = [n for n in graph.graph.node if n.op_type == "MatMul"]
            assert not [n.name for n in matmuls if n.input[1] in weights]
        for check in ("batch_vs_alone_max_abs_diff", "late_join_max_abs_diff"):
            assert manifest["parity"][check] == 0.0, check
        # sources of every length mod 4 (3 mod 4 is where padding once changed a row's result)
        sources = [[4 + (7 * i + n) % 50 for i in range(n)] + [3] for n in range(1, 12)]
        reference = ReferenceDecoder(bundle)
        assert joined_vs_alone_diff(reference, sources, [0] * len(sources)) == 0.0
        assert joined_vs_alone_diff(reference, sources[:6], [0, 3, 1, 4, 2, 5]) == 0.0
    out = ReferenceDecoder(bundle).greedy([[4, 5, 6, 3]], 5)
    assert len(out[0]) >= 1 and all(isinstance(t, int) for t in out[0])
    assert np.isfinite(manifest["parity"]["decoder_max_abs_diff"])


def test_bundle_loader_and_reference_decoder_never_import_torch() -> None:
    code = "import sys, service.bundle, export.reference_decoder; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
