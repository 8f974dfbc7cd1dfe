"""Text <-> token ids for a bundle, without torch: one tokenizer per kind of service/bundle.py.

`SourceTokenizer` ("sentencepiece", models trained here) follows model/tokenizer.py. A source
is `<2xx> pieces... </s>`: the target-language token first, end-of-sentence last. Output text is
the sentencepiece decoding of the generated ids up to `</s>`, without `<pad>`/`<s>`.
Normalization only turns no-break spaces and tabs into spaces and collapses runs of whitespace.

`MarianTokenizer` ("marian", imported OPUS-MT models) is transformers' MarianTokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import sentencepiece as spm

from service.bundle import Bundle
from service.types import TextTokenizer

_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\t": " "})


def normalize(text: str) -> str:
    """Whitespace normalization of model/tokenizer.py `Tokenizer.normalize`."""
    return " ".join(text.translate(_SPACES).split())


class SourceTokenizer:
    """Encodes sources for a bundle and decodes its outputs.

    Args:
        path: the bundle's `tokenizer.model`.
        languages: target language code -> id of its `<2xx>` token (from the manifest).
        special_tokens: {"pad", "unk", "bos", "eos"} -> id (from the manifest).
    """

    def __init__(
        self, path: Path, languages: Mapping[str, int], special_tokens: Mapping[str, int]
    ) -> None:
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self._languages = dict(languages)
        self._eos = special_tokens["eos"]
        self._skipped = frozenset((special_tokens["pad"], special_tokens["bos"]))

    def encode_source(self, text: str, lang: str) -> list[int]:
        """`[<2lang>, pieces..., </s>]`; `lang` must be one of the bundle's languages."""
        return [self._languages[lang], *self._sp.encode(normalize(text)), self._eos]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, stopping at `</s>` and skipping `<pad>` and `<s>`."""
        pieces: list[int] = []
        for token in ids:
            if token == self._eos:
                break
            if token not in self._skipped:
                pieces.append(int(token))
        return str(self._sp.decode(pieces))


class MarianTokenizer:
    """The tokenizer of an imported Marian (OPUS-MT) model, as `transformers`' MarianTokenizer.

    Two sentencepiece models segment text (`source.spm` the source, `target.spm` the target), and
    `vocab.json` maps pieces to the model's ids: its ids are not the sentencepiece ids. A piece
    missing from vocab.json is `<unk>`. The special tokens `</s>`, `<unk>` and `<pad>` written in
    a text are those tokens. A multilingual model names its target with a `>>xx<<` token written
    before the text; a model with one target has none.

    Decoding skips the special tokens and joins pieces with the *source* sentencepiece model, as
    transformers does for a vocabulary shared by source and target (`separate_vocabs` false).

    Args:
        source_spm, target_spm: the sentencepiece models.
        vocab: vocab.json, piece -> id, holding `</s>`, `<unk>` and `<pad>`.
    """

    EOS, UNK, PAD = "</s>", "<unk>", "<pad>"

    def __init__(self, source_spm: Path, target_spm: Path, vocab: Path) -> None:
        self._source = spm.SentencePieceProcessor(model_file=str(source_spm))
        self._target = spm.SentencePieceProcessor(model_file=str(target_spm))
        self._ids: dict[str, int] = json.loads(vocab.read_text(encoding="utf-8"))
        missing = [t for t in (self.EOS, self.UNK, self.PAD) if t not in self._ids]
        if missing:
            raise ValueError(f"{vocab}: no {', '.join(missing)} token")
        self._pieces = {i: piece for piece, i in self._ids.items()}
        self.eos_id = self._ids[self.EOS]
        self.unk_id = self._ids[self.UNK]
        self.pad_id = self._ids[self.PAD]
        self._specials = frozenset((self.eos_id, self.unk_id, self.pad_id))
        self._special_split = re.compile(
            "(" + "|".join(re.escape(t) for t in (self.EOS, self.UNK, self.PAD)) + ")"
        )
        # Target language code -> id of its `>>code<<` token (empty for a model with one target).
        self.languages = {
            piece[2:-2]: i
            for piece, i in self._ids.items()
            if piece.startswith(">>") and piece.endswith("<<") and len(piece) > 4
        }

    def __len__(self) -> int:
        return len(self._ids)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` followed by `</s>`; a leading `>>xx<<` is one token."""
        ids: list[int] = []
        for chunk in self._special_split.split(text):
            if not chunk:
                continue
            if chunk in (self.EOS, self.UNK, self.PAD):
                ids.append(self._ids[chunk])
                continue
            pieces: list[str] = []
            if chunk.startswith(">>") and (end := chunk.find("<<")) != -1:
                pieces.append(chunk[: end + 2])
                chunk = chunk[end + 2 :]
            pieces += self._source.encode(chunk, out_type=str)
            ids += [self._ids.get(piece, self.unk_id) for piece in pieces]
        ids.append(self.eos_id)
        return ids

    def encode_source(self, text: str, lang: str) -> list[int]:
        """Source ids to translate `text` into `lang` (one of `languages`, when there are any)."""
        return self.encode(f">>{lang}<< {text}" if lang in self.languages else text)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids, without special tokens."""
        pieces = [
            self._pieces.get(i) or self._source.IdToPiece(i) or self.UNK
            for i in map(int, ids)
            if i not in self._specials
        ]
        text: str = self._source.decode_pieces(pieces)
        return text.replace("\u2581", " ").strip()


def load_tokenizer(bundle: Bundle) -> TextTokenizer:
    """The tokenizer of a loaded bundle, by the manifest's tokenizer kind."""
    manifest = bundle.manifest
    if manifest.tokenizer == "marian":
        return MarianTokenizer(*bundle.tokenizer_paths)
    languages = {lang: int(i) for lang, i in manifest.languages.items() if i is not None}
    return SourceTokenizer(bundle.tokenizer_path, languages, manifest.special_tokens)
