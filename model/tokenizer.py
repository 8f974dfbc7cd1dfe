"""One sentencepiece vocabulary shared by source and target, with target-language tokens.

A source sentence is encoded as `<2xx> pieces... </s>`: the first token names the language to
translate into, so one model serves several language pairs. A target sentence is decoded from
`<s>` and ends at `</s>`. Digits are split into single pieces, so numbers and dates are copied
digit by digit. No normalization rule is applied beyond turning no-break spaces into spaces, so
every corpus sentence round-trips exactly.

This module does not import torch.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MAX_PIECE_LENGTH = 16  # sentencepiece's default: the longest piece, in characters
_LANG_TOKEN = re.compile(r"^<2([a-z]{2,3}(?:_[A-Za-z]+)?)>$")
_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\t": " "})


def lang_token(lang: str) -> str:
    return f"<2{lang}>"


class UnknownLanguageError(ValueError):
    """A target language the vocabulary has no token for."""


class Tokenizer:
    """Encodes sources with their target-language token and decodes targets."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.languages: tuple[str, ...] = tuple(
            sorted(
                m.group(1)
                for i in range(len(self._sp))
                if (m := _LANG_TOKEN.match(self._sp.id_to_piece(i)))
            )
        )

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        return cls(Path(path).read_bytes())

    def save(self, path: Path) -> None:
        Path(path).write_bytes(self.model_proto)

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        languages: Sequence[str],
        vocab_size: int,
        max_piece_length: int = MAX_PIECE_LENGTH,
    ) -> Tokenizer:
        """Train a unigram model on `sentences` with one token per target language; no piece is
        longer than `max_piece_length` characters."""
        if max_piece_length < 1:
            raise ValueError(f"max piece length must be >= 1, got {max_piece_length}")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            max_sentencepiece_length=max_piece_length,
            model_type="unigram",
            character_coverage=1.0,
            normalization_rule_name="identity",
            split_digits=True,
            byte_fallback=False,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            user_defined_symbols=[lang_token(lang) for lang in sorted(languages)],
            hard_vocab_limit=False,
            num_threads=2,
            minloglevel=2,
        )
        return cls(model.getvalue())

    def __len__(self) -> int:
        return len(self._sp)

    def pieces(self) -> list[str]:
        """The piece of every id, in id order."""
        return [self._sp.id_to_piece(i) for i in range(len(self._sp))]

    def lang_id(self, lang: str) -> int:
        if lang not in self.languages:
            raise UnknownLanguageError(
                f"unsupported target language {lang!r}; supported: {', '.join(self.languages)}"
            )
        return int(self._sp.piece_to_id(lang_token(lang)))

    @staticmethod
    def normalize(text: str) -> str:
        return " ".join(text.translate(_SPACES).split())

    def encode_source(self, text: str, lang: str) -> list[int]:
        """`<2lang> pieces </s>`."""
        return [self.lang_id(lang), *self._sp.encode(self.normalize(text)), EOS_ID]

    def encode_target(self, text: str) -> list[int]:
        """Target pieces without specials; training adds `<s>` in front and `</s>` behind."""
        return list(self._sp.encode(self.normalize(text)))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of target ids, stopping at `</s>` and skipping the other special tokens."""
        pieces = []
        for token in ids:
            if token == EOS_ID:
                break
            if token not in (PAD_ID, BOS_ID):
                pieces.append(int(token))
        return str(self._sp.decode(pieces))
