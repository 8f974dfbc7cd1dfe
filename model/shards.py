"""Tokenized pairs as flat token arrays: in memory, or memory-mapped from a prepared directory.

A corpus larger than memory is tokenized once by `python -m model.prepare` into

    DIR/prepared.json        format, counts, dtype, languages, where the corpus came from
    DIR/tokenizer.model      the sentencepiece model the ids belong to
    DIR/train.src.bin        source ids of every training pair, end to end (dtype in the json)
    DIR/train.src.offsets    int64, pairs + 1: pair i's ids are src[offsets[i]:offsets[i + 1]]
    DIR/train.tgt.bin, train.tgt.offsets    the same for the targets
    DIR/valid.tsv, test.tsv  the held-out splits as text, `lang<TAB>source<TAB>target`

Training reads the `.bin` files through `numpy.memmap`: only the length arrays (two ints per pair)
live in memory, and the pages of a batch's ids are read when the batch is built.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from model.corpus import CorpusError, Pair

FORMAT_VERSION = 1
META_FILE = "prepared.json"
TOKENIZER_FILE = "tokenizer.model"


def is_prepared(path: Path) -> bool:
    return (path / META_FILE).is_file()


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


@dataclass(frozen=True)
class TokenizedPairs:
    """Source and target ids of N pairs; the arrays may be in memory or memory-mapped."""

    src_tokens: np.ndarray  # (sum of source lengths,)
    src_offsets: np.ndarray  # (N + 1,) int64
    tgt_tokens: np.ndarray  # (sum of target lengths,)
    tgt_offsets: np.ndarray  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:  # (N,) int64
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:  # (N,) int64, target pieces without specials
        return np.diff(self.tgt_offsets)

    def pair(self, i: int) -> tuple[list[int], list[int]]:
        """Pair i's (source ids, target ids)."""
        src = self.src_tokens[self.src_offsets[i] : self.src_offsets[i + 1]]
        tgt = self.tgt_tokens[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]
        return src.tolist(), tgt.tolist()

    @classmethod
    def from_rows(
        cls, rows: Sequence[tuple[Sequence[int], Sequence[int]]], vocab_size: int
    ) -> TokenizedPairs:
        dtype = token_dtype(vocab_size)
        src = [np.asarray(s, dtype=dtype) for s, _ in rows]
        tgt = [np.asarray(t, dtype=dtype) for _, t in rows]
        return cls(*_flatten(src, dtype), *_flatten(tgt, dtype))

    @classmethod
    def open(cls, directory: Path) -> TokenizedPairs:
        """Memory-map the training split of a prepared directory."""
        meta = read_meta(directory)
        dtype = np.dtype(meta["dtype"])
        arrays = []
        for side in ("src", "tgt"):
            arrays.append(_map(directory / f"train.{side}.bin", dtype))
            arrays.append(_map(directory / f"train.{side}.offsets", np.dtype(np.int64)))
        pairs = cls(*arrays)
        for tokens, offsets, side in ((arrays[0], arrays[1], "src"), (arrays[2], arrays[3], "tgt")):
            if len(offsets) == 0 or int(offsets[-1]) != len(tokens):
                raise CorpusError(
                    f"{directory / f'train.{side}.bin'}: {len(tokens)} ids, but its offsets end"
                    f" at {int(offsets[-1]) if len(offsets) else 'nothing'}; prepare it again"
                )
        expected = meta["splits"]["train"]
        if len(pairs) != expected or len(pairs.tgt_offsets) != len(pairs.src_offsets):
            raise CorpusError(
                f"{directory}: {len(pairs)} training pairs on disk, but {META_FILE} says"
                f" {expected}; prepare it again"
            )
        return pairs


def _flatten(rows: Sequence[np.ndarray], dtype: np.dtype[Any]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    tokens = np.concatenate(rows) if rows else np.zeros(0, dtype=dtype)
    return tokens.astype(dtype, copy=False), offsets


def _map(path: Path, dtype: np.dtype[Any]) -> np.ndarray:
    if not path.is_file():
        raise CorpusError(f"{path}: missing from the prepared corpus; prepare it again")
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise CorpusError(f"{path}: {size} bytes is not a whole number of {dtype} values")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CorpusError(f"{path}: not a prepared corpus ({error})") from error
    if meta.get("format") != FORMAT_VERSION:
        raise CorpusError(
            f"{path}: format {meta.get('format')!r}, this code reads format {FORMAT_VERSION};"
            " prepare it again"
        )
    return meta


class ShardWriter:
    """Appends tokenized training pairs to the `.bin`/`.offsets` files of a prepared directory."""

    def __init__(self, directory: Path, vocab_size: int, flush_every: int = 65536) -> None:
        self.dtype = token_dtype(vocab_size)
        self.count = 0
        self._flush_every = flush_every
        self._files: dict[str, BinaryIO] = {}
        self._rows: dict[str, list[Sequence[int]]] = {"src": [], "tgt": []}
        self._ends = {"src": 0, "tgt": 0}
        for side in ("src", "tgt"):
            self._files[f"{side}.bin"] = (directory / f"train.{side}.bin").open("wb")
            offsets = (directory / f"train.{side}.offsets").open("wb")
            offsets.write(np.zeros(1, dtype=np.int64).tobytes())
            self._files[f"{side}.offsets"] = offsets

    def add(self, src: Sequence[int], tgt: Sequence[int]) -> None:
        self._rows["src"].append(src)
        self._rows["tgt"].append(tgt)
        self.count += 1
        if len(self._rows["src"]) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        for side, rows in self._rows.items():
            if not rows:
                continue
            lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
            ends = self._ends[side] + np.cumsum(lengths)
            self._ends[side] = int(ends[-1])
            tokens = np.fromiter(
                (t for r in rows for t in r), dtype=self.dtype, count=int(lengths.sum())
            )
            self._files[f"{side}.bin"].write(tokens.tobytes())
            self._files[f"{side}.offsets"].write(ends.tobytes())
            rows.clear()

    def close(self) -> None:
        self.flush()
        for handle in self._files.values():
            handle.close()


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """Written last: a directory with a prepared.json holds a complete prepared corpus."""
    text = json.dumps({"format": FORMAT_VERSION, **meta}, indent=2, ensure_ascii=False) + "\n"
    (directory / META_FILE).write_text(text, encoding="utf-8")


class TsvWriter:
    """A held-out split, written as `lang<TAB>source<TAB>target` lines as they come."""

    def __init__(self, path: Path) -> None:
        self.count = 0
        self._file = path.open("w", encoding="utf-8")

    def add(self, pair: Pair) -> None:
        source, target = (" ".join(text.split("\t")) for text in (pair.source, pair.target))
        self._file.write(f"{pair.lang}\t{source}\t{target}\n")
        self.count += 1

    def close(self) -> None:
        self._file.close()
