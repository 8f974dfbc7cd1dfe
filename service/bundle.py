"""The model bundle: a self-describing directory written by `export` and read by the service.

    models/<name>/
      manifest.json     format version, model config, tokenizer kind, special tokens, source and
                        target languages, decoding defaults and rules, graph I/O, opset,
                        precision, limits, sha256 of every file, training and parity figures
      tokenizer files   by tokenizer kind (TOKENIZER_FILES): "sentencepiece" tokenizer.model, a
                        vocabulary shared by source and target with `<2xx>` language tokens;
                        "marian" source.spm, target.spm and vocab.json (imported OPUS-MT models)
      encoder.onnx      input_ids, attention_mask -> cross-attention K/V of every decoder layer
      decoder.onnx      one decoder step, one token per row, over a fixed-capacity
                        self-attention cache that the step writes in place:
                          input_ids (B,) int64, past_lengths (B,) int32 (cached slots of
                          each row = the position of its token), total_length () int32
                          (max past_lengths + 1), encoder_attention_mask (B, S) int64,
                          past K/V 2L x (B, H, M, Dh), cross K/V 2L x (B, H, S, Dh)
                          -> logits (B, V), present K/V 2L x (B, H, M, Dh)

special_tokens["bos"] is the token the decoder starts from (Marian's is its pad token). The
manifest's `languages` maps each target language to its language token id, or to null for a
model with one target and no such token. `decoding` holds the defaults a request gets for unset
options and the rules every request gets (see `service.search.DecodingRules`).

Format history: 1 (one sentencepiece tokenizer, no decoding section) and 2 (a decoder graph whose
cache grew by one slot per step, left-padded, with position ids and a self-attention mask) are no
longer read; such a bundle is refused with a message naming its version (re-export it from its
checkpoint: `python -m export`, or `make bundle`).

`load_bundle` checks the format version, that every file is there with its checksum, and that the
graphs' inputs and outputs are the ones the manifest declares, and fails fast naming the file and
what is wrong. This module never imports torch or onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

FORMAT_VERSION = 3
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
TOKENIZER_FILES: dict[str, tuple[str, ...]] = {
    "sentencepiece": (TOKENIZER_FILE,),
    "marian": ("source.spm", "target.spm", "vocab.json"),
}


class BundleError(ValueError):
    """A bundle that cannot be served: the message names the file and what is wrong."""


def encoder_input_names() -> list[str]:
    return ["input_ids", "attention_mask"]


def encoder_output_names(n_layers: int) -> list[str]:
    return [f"present.{i}.encoder.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def decoder_input_names(n_layers: int) -> list[str]:
    names = ["input_ids", "past_lengths", "total_length", "encoder_attention_mask"]
    names += [
        f"past_key_values.{i}.decoder.{kv}" for i in range(n_layers) for kv in ("key", "value")
    ]
    names += [
        f"past_key_values.{i}.encoder.{kv}" for i in range(n_layers) for kv in ("key", "value")
    ]
    return names


def decoder_output_names(n_layers: int) -> list[str]:
    return ["logits"] + [
        f"present.{i}.decoder.{kv}" for i in range(n_layers) for kv in ("key", "value")
    ]


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest.json; `raw` keeps every field, the attributes are the ones code uses."""

    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def version(self) -> str:
        return str(self.raw["version"])

    @property
    def precision(self) -> str:
        return str(self.raw["precision"])

    @property
    def model(self) -> dict[str, Any]:
        model: dict[str, Any] = self.raw["model"]
        return model

    @property
    def n_layers(self) -> int:
        return int(self.model["n_decoder_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.model["n_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.model["d_model"]) // self.n_heads

    @property
    def vocab_size(self) -> int:
        return int(self.model["vocab_size"])

    @property
    def special_tokens(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.raw["special_tokens"].items()}

    @property
    def languages(self) -> dict[str, int | None]:
        """Target language code -> id of its language token (None: the model's only target)."""
        return {k: None if v is None else int(v) for k, v in self.raw["languages"].items()}

    @property
    def tokenizer(self) -> str:
        """The tokenizer kind, a key of TOKENIZER_FILES."""
        return str(self.raw["tokenizer"])

    @property
    def decoding(self) -> dict[str, Any]:
        """{"beam_size", "max_new_tokens" (0: per source), "length_penalty", "n_best", "rules"}."""
        decoding: dict[str, Any] = self.raw["decoding"]
        return decoding

    @property
    def source_language(self) -> str:
        return str(self.raw["source_language"])

    @property
    def max_source_tokens(self) -> int:
        return int(self.raw["limits"]["max_source_tokens"])

    @property
    def max_target_tokens(self) -> int:
        return int(self.raw["limits"]["max_target_tokens"])

    @property
    def float_dtype(self) -> str:
        """numpy dtype name of the graphs' float inputs and outputs."""
        return "float16" if self.precision == "fp16" else "float32"

    def graph(self, name: str) -> dict[str, Any]:
        graph: dict[str, Any] = self.raw["graphs"][name]
        return graph


@dataclass(frozen=True)
class Bundle:
    """A checked bundle on disk."""

    path: Path
    manifest: Manifest

    @property
    def tokenizer_path(self) -> Path:
        """The first tokenizer file (the only one of a "sentencepiece" bundle)."""
        return self.path / TOKENIZER_FILES[self.manifest.tokenizer][0]

    @property
    def tokenizer_paths(self) -> tuple[Path, ...]:
        return tuple(self.path / name for name in TOKENIZER_FILES[self.manifest.tokenizer])

    @property
    def encoder_path(self) -> Path:
        return self.path / ENCODER_FILE

    @property
    def decoder_path(self) -> Path:
        return self.path / DECODER_FILE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_REQUIRED = (
    "format_version",
    "name",
    "version",
    "model",
    "precision",
    "opset",
    "special_tokens",
    "tokenizer",
    "decoding",
    "languages",
    "source_language",
    "limits",
    "graphs",
    "files",
)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise BundleError(f"{directory}: bundle directory not found")
    if not path.is_file():
        raise BundleError(f"{path}: missing; not a model bundle")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: unknown format_version {version!r};"
            f" this service reads version {FORMAT_VERSION}"
            + (
                " (re-export it from its checkpoint with python -m export, or make bundle)"
                if version in (1, 2)
                else ""
            )
        )
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise BundleError(f"{path}: missing fields {missing}")
    if raw["tokenizer"] not in TOKENIZER_FILES:
        raise BundleError(
            f"{path}: unknown tokenizer {raw['tokenizer']!r}; known: {sorted(TOKENIZER_FILES)}"
        )
    return Manifest(raw)


def _check_files(directory: Path, manifest: Manifest) -> None:
    expected = {ENCODER_FILE, DECODER_FILE, *TOKENIZER_FILES[manifest.tokenizer]}
    listed = set(manifest.raw["files"])
    if not expected <= listed:
        raise BundleError(
            f"{directory / MANIFEST_FILE}: files {sorted(expected - listed)} not listed"
        )
    for name, checksum in sorted(manifest.raw["files"].items()):
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        actual = sha256_of(path)
        if actual != checksum:
            raise BundleError(f"{path}: sha256 {actual} does not match the manifest's {checksum}")


def _check_graph(path: Path, declared: dict[str, Any]) -> None:
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # onnx raises DecodeError and others for a bad file
        raise BundleError(f"{path}: not a readable ONNX model ({error})") from error
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    for kind, found in (("inputs", inputs), ("outputs", outputs)):
        wanted = [entry["name"] for entry in declared[kind]]
        if found != wanted:
            raise BundleError(f"{path}: graph {kind} {found} do not match the manifest's {wanted}")


def load_bundle(directory: Path | str, verify_graphs: bool = True) -> Bundle:
    """Read and check a bundle.

    Args:
        directory: the bundle directory.
        verify_graphs: also parse both graphs and compare their I/O names with the manifest.

    Returns:
        The checked bundle.

    Raises:
        BundleError: naming the file and what is wrong.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    _check_files(directory, manifest)
    n_layers = manifest.n_layers
    contract = {
        "encoder": (encoder_input_names(), encoder_output_names(n_layers)),
        "decoder": (decoder_input_names(n_layers), decoder_output_names(n_layers)),
    }
    for name, (inputs, outputs) in contract.items():
        declared = manifest.graph(name)
        if [e["name"] for e in declared["inputs"]] != inputs or [
            e["name"] for e in declared["outputs"]
        ] != outputs:
            raise BundleError(
                f"{directory / MANIFEST_FILE}: the {name} graph's declared inputs/outputs"
                f" do not follow"
                f" the contract (inputs {inputs}, outputs {outputs})"
            )
        if verify_graphs:
            _check_graph(directory / declared["file"], declared)
    return Bundle(directory, manifest)
