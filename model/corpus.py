"""Parallel corpora: sentence pairs, the readers for user files, and the train/valid/test split.

A user corpus is either
  * a TSV file with `source<TAB>target` (the target language given separately) or
    `target_lang<TAB>source<TAB>target` on every line, or
  * two line-aligned plain-text files, source and target (the target language given separately).

Every sentence pair is assigned to a split by a hash of its source sentence, so the same source
never appears in two splits, whatever its target language.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from babel import Locale, UnknownLocaleError

SPLITS = ("train", "valid", "test")


class CorpusError(ValueError):
    """A corpus that cannot be read: the message names the file, the line and the reason."""


@dataclass(frozen=True)
class Pair:
    """One sentence pair: English (or any) source, its translation, and the target language."""

    lang: str  # target language code, e.g. "de"
    source: str
    target: str
    kind: str = ""  # what the sentence is, e.g. "date" (the built-in corpus); "" for user corpora


@dataclass
class Corpus:
    """A corpus cut into disjoint splits."""

    train: list[Pair] = field(default_factory=list)
    valid: list[Pair] = field(default_factory=list)
    test: list[Pair] = field(default_factory=list)

    @property
    def languages(self) -> list[str]:
        return sorted({p.lang for p in self.train})

    def split(self, name: str) -> list[Pair]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
        pairs: list[Pair] = getattr(self, name)
        return pairs


def split_of(source: str, valid_per_mille: int = 20, test_per_mille: int = 40) -> str:
    """The split a source sentence belongs to; stable across runs, machines and languages."""
    bucket = int.from_bytes(hashlib.sha256(source.encode()).digest()[:4], "big") % 1000
    if bucket < test_per_mille:
        return "test"
    if bucket < test_per_mille + valid_per_mille:
        return "valid"
    return "train"


def check_language(tag: str) -> str:
    """Return `tag` if it is a language CLDR knows, else raise a CorpusError naming it."""
    try:
        Locale.parse(tag)
    except (UnknownLocaleError, ValueError) as error:
        raise CorpusError(f"unknown language tag {tag!r}") from error
    return tag


def split_corpus(pairs: Iterable[Pair], pinned: frozenset[str] = frozenset()) -> Corpus:
    """Deduplicate pairs and assign each one to its split by its source sentence.

    Sources in `pinned` always train: closed lists a model can only learn by seeing each item
    (weekday names, the first hundred numbers), which a held-out test item would only measure as
    unlearnable. The splits stay disjoint by source.
    """
    corpus = Corpus()
    seen: set[tuple[str, str]] = set()
    for pair in pairs:
        if (pair.lang, pair.source) in seen:
            continue
        seen.add((pair.lang, pair.source))
        corpus.split("train" if pair.source in pinned else split_of(pair.source)).append(pair)
    return corpus


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise CorpusError(f"{path}: corpus file not found")
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"{path}: not valid UTF-8 ({error.reason} at byte {error.start})"
        ) from error


def iter_tsv(path: Path, target_lang: str | None = None) -> Iterator[Pair]:
    """Stream `source<TAB>target` (needs `target_lang`) or `lang<TAB>source<TAB>target` lines.

    One line at a time, so a corpus larger than memory can be read; a malformed line raises a
    CorpusError naming the file and the line number.
    """
    if target_lang is not None:
        check_language(target_lang)
    known: set[str] = set()  # languages already checked: CLDR parsing is slow per line
    for number, line in _open_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}:{number}"
        if len(fields) == 3:
            lang, source, target = fields
            if lang not in known:
                try:
                    known.add(check_language(lang))
                except CorpusError as error:
                    raise CorpusError(f"{where}: {error}") from None
        elif len(fields) == 2:
            if target_lang is None:
                raise CorpusError(
                    f"{where}: 2 columns (source, target) but no target language was given;"
                    " pass --target-lang or use 3 columns: lang<TAB>source<TAB>target"
                )
            lang, (source, target) = target_lang, fields
        else:
            raise CorpusError(
                f"{where}: expected 2 or 3 tab-separated columns, found {len(fields)}"
            )
        if not source.strip() or not target.strip():
            raise CorpusError(f"{where}: empty {'source' if not source.strip() else 'target'}")
        yield Pair(lang, source.strip(), target.strip())


def iter_aligned(source_path: Path, target_path: Path, target_lang: str) -> Iterator[Pair]:
    """Stream two line-aligned files; the line counts must match and no line may be empty."""
    check_language(target_lang)
    sources, targets = _open_lines(source_path), _open_lines(target_path)
    counts = [0, 0]
    for source_line, target_line in itertools.zip_longest(sources, targets):
        if source_line is None or target_line is None:
            counts[source_line is None] += 1  # count the rest of the longer file
            continue
        (number, source), (_, target) = source_line, target_line
        counts = [number, number]
        for path, text in ((source_path, source), (target_path, target)):
            if not text.strip():
                raise CorpusError(f"{path}:{number}: empty line in a line-aligned corpus")
        yield Pair(target_lang, source.strip(), target.strip())
    if counts[0] != counts[1]:
        raise CorpusError(
            f"{source_path} has {counts[0]} lines but {target_path} has {counts[1]};"
            " line-aligned files must have the same number of lines"
        )


def _nonempty(pairs: Iterable[Pair], path: Path) -> list[Pair]:
    found = list(pairs)
    if not found:
        raise CorpusError(f"{path}: the corpus is empty")
    return found


def iter_pairs(path: Path, target_file: Path | None, target_lang: str | None) -> Iterator[Pair]:
    """Stream a TSV corpus, or two line-aligned files when `target_file` is given."""
    if target_file is None:
        return iter_tsv(path, target_lang)
    if target_lang is None:
        raise CorpusError("a line-aligned corpus needs --target-lang")
    return iter_aligned(path, target_file, target_lang)


def read_pairs(path: Path, target_file: Path | None, target_lang: str | None) -> list[Pair]:
    """All pairs of a corpus file (see `iter_pairs`)."""
    return _nonempty(iter_pairs(path, target_file, target_lang), path)


def read_tsv(path: Path, target_lang: str | None = None) -> list[Pair]:
    """All pairs of a TSV corpus (see `iter_tsv`)."""
    return _nonempty(iter_tsv(path, target_lang), path)


def read_aligned(source_path: Path, target_path: Path, target_lang: str) -> list[Pair]:
    """All pairs of two line-aligned files (see `iter_aligned`)."""
    return _nonempty(iter_aligned(source_path, target_path, target_lang), source_path)
