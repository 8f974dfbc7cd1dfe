"""The built-in corpus: English -> German, French, Spanish and Italian, from CLDR and num2words.

Every pair is real linguistic data: numbers spelled out by num2words (cardinals, ordinals, years)
and dates, times, decimals, percentages and currency amounts formatted by babel from the Unicode
CLDR. The generator is seeded and deterministic; the splits come from `corpus.split_corpus`, so
train, valid and test never share a source sentence.

Normalization: CLDR separates some fields with no-break spaces (U+00A0, U+202F); they are written
as plain spaces, which is what people type.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Iterator

from babel.dates import format_date, format_time
from babel.numbers import format_currency, format_decimal, format_percent
from num2words import num2words

from model.corpus import Corpus, Pair, split_corpus

LANGUAGES = ("de", "fr", "es", "it")
SOURCE_LANG = "en"

_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " "})

Generator = Callable[[random.Random, str], tuple[str, str]]


def _normalize(text: str) -> str:
    return text.translate(_SPACES)


def _number(rng: random.Random) -> int:
    """A number with every order of magnitude up to a million about equally likely."""
    digits = rng.choice((1, 2, 2, 3, 3, 4, 5, 6))
    return rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def cardinal(rng: random.Random, lang: str) -> tuple[str, str]:
    n = _number(rng)
    return num2words(n, lang=SOURCE_LANG), num2words(n, lang=lang)


def ordinal(rng: random.Random, lang: str) -> tuple[str, str]:
    n = rng.randrange(1, 1000)
    return num2words(n, lang=SOURCE_LANG, to="ordinal"), num2words(n, lang=lang, to="ordinal")


def year(rng: random.Random, lang: str) -> tuple[str, str]:
    y = rng.randrange(1100, 2100)
    return num2words(y, lang=SOURCE_LANG, to="year"), num2words(y, lang=lang, to="year")


def date(rng: random.Random, lang: str) -> tuple[str, str]:
    style = rng.choice(("short", "medium", "long", "full"))
    # English short dates show two year digits: keep them unambiguous within one century.
    first_year = 2000 if style == "short" else 1800
    day = datetime.date(first_year, 1, 1) + datetime.timedelta(days=rng.randrange(365 * 300))
    day = min(day, datetime.date(2099, 12, 31))
    return format_date(day, style, locale=SOURCE_LANG), format_date(day, style, locale=lang)


def time_of_day(rng: random.Random, lang: str) -> tuple[str, str]:
    moment = datetime.time(rng.randrange(24), rng.randrange(60))
    return format_time(moment, "short", locale=SOURCE_LANG), format_time(
        moment, "short", locale=lang
    )


def decimal(rng: random.Random, lang: str) -> tuple[str, str]:
    value = _number(rng) + rng.randrange(100) / 100
    return format_decimal(value, locale=SOURCE_LANG), format_decimal(value, locale=lang)


def percent(rng: random.Random, lang: str) -> tuple[str, str]:
    value = rng.randrange(10000) / 10000
    return (
        format_percent(value, "#,##0.##%", locale=SOURCE_LANG),
        format_percent(value, "#,##0.##%", locale=lang),
    )


def currency(rng: random.Random, lang: str) -> tuple[str, str]:
    value = _number(rng) + rng.randrange(100) / 100
    code = rng.choice(("EUR", "USD", "GBP", "CHF", "JPY"))
    return (
        format_currency(value, code, locale=SOURCE_LANG),
        format_currency(value, code, locale=lang),
    )


# How often each kind of sentence is drawn.
GENERATORS: dict[Generator, int] = {
    cardinal: 30,
    ordinal: 8,
    year: 8,
    date: 30,
    time_of_day: 5,
    decimal: 7,
    percent: 4,
    currency: 8,
}


def generate_pairs(seed: int, languages: tuple[str, ...] = LANGUAGES) -> Iterator[Pair]:
    """An endless, deterministic stream of pairs (duplicates possible)."""
    rng = random.Random(seed)
    kinds = list(GENERATORS)
    weights = list(GENERATORS.values())
    while True:
        lang = rng.choice(languages)
        (kind,) = rng.choices(kinds, weights)
        source, target = kind(rng, lang)
        yield Pair(lang, _normalize(source), _normalize(target))


def builtin_corpus(size: int = 200_000, seed: int = 1234) -> Corpus:
    """`size` distinct pairs, cut into train (~94 %), valid (~2 %) and test (~4 %) by source."""
    if size < 1:
        raise ValueError(f"corpus size must be >= 1, got {size}")
    pairs: dict[tuple[str, str], Pair] = {}
    stream = generate_pairs(seed)
    while len(pairs) < size:
        pair = next(stream)
        pairs.setdefault((pair.lang, pair.source), pair)
    return split_corpus(pairs.values())
