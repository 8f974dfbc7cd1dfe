"""Text <-> token ids, the same protocol as training (model/tokenizer.py), without torch.

A source is `<2xx> pieces... </s>`: the target-language token first, end-of-sentence last. Output
text is the sentencepiece decoding of the generated ids up to `</s>`, without `<pad>`/`<s>`.
Normalization only turns no-break spaces and tabs into spaces and collapses runs of whitespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import sentencepiece as spm

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
