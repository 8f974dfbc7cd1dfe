"""The built-in corpus: English -> German, French, Spanish and Italian, from CLDR and num2words.

Every pair is real linguistic data: numbers spelled out by num2words (cardinals, ordinals, years),
and, from the Unicode CLDR through babel, dates, times, decimals, percentages, currency amounts,
unit expressions ("5 kilometres", "twenty-one hours"), and the names of languages, countries,
currencies, weekdays and months.

Two families of kinds:
  * enumerated kinds list every item once per language: every cardinal up to SMALL_NUMBERS, every
    ordinal and year of their range, every name. A user tries small numbers and names first, and a
    random draw would leave most of them out.
  * drawn kinds sample an endless seeded stream: big cardinals (log-uniform up to 10^9), dates,
    times, decimals, percentages, currency amounts, unit expressions.

One source has one target. CLDR renders some English dates identically in two styles ("May 24,
2010" is both en medium and en long) while the targets differ ("24 mag 2010", "24 maggio 2010");
such a source always gets the target of the fuller style (full > long > medium > short). Across
kinds the enumerated pairs come first and keep their target.

The generator is seeded and deterministic; the splits come from `corpus.split_corpus`, so train,
valid and test never share a source sentence. The closed lists a user tries first (weekday and
month names, the numbers below PINNED_NUMBERS) always train: a held-out "sixteen" or "Tuesday"
can only be memorised, never inferred. `check_set` draws a separate set of numbers and
dates with its own seed, none of them in the training split.

Normalization: CLDR separates some fields with no-break spaces (U+00A0, U+202F); they are written
as plain spaces, which is what people type.
"""

from __future__ import annotations

import datetime
import functools
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator

from babel import Locale
from babel.dates import format_date, format_time, get_day_names, get_month_names
from babel.languages import get_official_languages
from babel.lists import format_list
from babel.localedata import locale_identifiers
from babel.numbers import format_currency, format_decimal, format_percent, get_territory_currencies
from babel.units import format_unit
from num2words import num2words

from model.corpus import Corpus, Pair, split_corpus

LANGUAGES = ("de", "fr", "es", "it")
SOURCE_LANG = "en"
SMALL_NUMBERS = 3000  # every cardinal below this is in the corpus, in every language
PINNED_NUMBERS = 100  # every cardinal below this is in the training split
DATE_STYLES = ("full", "long", "medium", "short")  # fuller first: the canonical order
FIRST_DAY, LAST_DAY = datetime.date(1800, 1, 1), datetime.date(2199, 12, 31)
# English short dates show two year digits: "5/24/10" is 1910 as much as 2010. Short dates stay in
# one century, so that a source names one day.
SHORT_FIRST_DAY, SHORT_LAST_DAY = datetime.date(2000, 1, 1), datetime.date(2099, 12, 31)

_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " "})

Phrase = tuple[str, str]  # (English source, target)
Drawn = Callable[[random.Random, str], Phrase | None]  # None: nothing for this language
Enumerated = Callable[[str], Iterable[Phrase]]


def _normalize(text: str) -> str:
    return text.translate(_SPACES)


# --- numbers -------------------------------------------------------------------------------------


def small_cardinals(lang: str) -> Iterator[Phrase]:
    for n in range(SMALL_NUMBERS):
        yield num2words(n, lang=SOURCE_LANG), num2words(n, lang=lang)


def ordinals(lang: str) -> Iterator[Phrase]:
    for n in range(1, 1001):
        yield num2words(n, lang=SOURCE_LANG, to="ordinal"), num2words(n, lang=lang, to="ordinal")


def years(lang: str) -> Iterator[Phrase]:
    for y in range(1100, 2200):
        yield num2words(y, lang=SOURCE_LANG, to="year"), num2words(y, lang=lang, to="year")


def _big_number(rng: random.Random) -> int:
    """SMALL_NUMBERS to 10^9, log-uniform: every order of magnitude about equally likely."""
    return int(math.exp(rng.uniform(math.log(SMALL_NUMBERS), math.log(10**9))))


def big_cardinal(rng: random.Random, lang: str) -> Phrase:
    n = _big_number(rng)
    return num2words(n, lang=SOURCE_LANG), num2words(n, lang=lang)


def decimal(rng: random.Random, lang: str) -> Phrase:
    value = min(_big_number(rng), rng.randrange(10**6)) + rng.randrange(100) / 100
    return format_decimal(value, locale=SOURCE_LANG), format_decimal(value, locale=lang)


def percent(rng: random.Random, lang: str) -> Phrase:
    value = rng.randrange(10000) / 10000
    pattern = "#,##0.##%"
    return (
        format_percent(value, pattern, locale=SOURCE_LANG),
        format_percent(value, pattern, locale=lang),
    )


# --- dates and times -----------------------------------------------------------------------------


def date_phrase(day: datetime.date, style: str, lang: str) -> Phrase:
    """The date in `style`; a source that a fuller style renders the same way gets its target."""
    source = format_date(day, style, locale=SOURCE_LANG)
    for canonical in DATE_STYLES:
        if format_date(day, canonical, locale=SOURCE_LANG) == source:
            return source, format_date(day, canonical, locale=lang)
    raise AssertionError("unreachable: `style` is one of DATE_STYLES")


def random_day(rng: random.Random, first: datetime.date, last: datetime.date) -> datetime.date:
    return first + datetime.timedelta(days=rng.randrange((last - first).days + 1))


def date(rng: random.Random, lang: str) -> Phrase:
    style = rng.choice(DATE_STYLES)
    if style == "short":
        day = random_day(rng, SHORT_FIRST_DAY, SHORT_LAST_DAY)
    else:
        day = random_day(rng, FIRST_DAY, LAST_DAY)
    return date_phrase(day, style, lang)


def time_of_day(rng: random.Random, lang: str) -> Phrase:
    moment = datetime.time(rng.randrange(24), rng.randrange(60))
    return format_time(moment, "short", locale=SOURCE_LANG), format_time(
        moment, "short", locale=lang
    )


def weekdays(lang: str) -> Iterator[Phrase]:
    en, target = get_day_names("wide", locale=SOURCE_LANG), get_day_names("wide", locale=lang)
    for day in sorted(en):
        yield en[day], target[day]


def months(lang: str) -> Iterator[Phrase]:
    en, target = get_month_names("wide", locale=SOURCE_LANG), get_month_names("wide", locale=lang)
    for month in sorted(en):
        yield en[month], target[month]


# --- money ---------------------------------------------------------------------------------------

SYMBOL_CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY")


@functools.cache
def current_currencies() -> tuple[str, ...]:
    """The ISO codes of the currencies some country uses today."""
    today = datetime.date(2026, 1, 1)
    codes = {c for t in territory_codes() for c in get_territory_currencies(t, today)}
    return tuple(sorted(codes))


def currency(rng: random.Random, lang: str) -> Phrase:
    """An amount with the currency's symbol ("$1,234.50") or its name ("1,234.50 US dollars")."""
    value = min(_big_number(rng), rng.randrange(10**6)) + rng.randrange(100) / 100
    if rng.random() < 0.5:
        code = rng.choice(SYMBOL_CURRENCIES)
        return (
            format_currency(value, code, locale=SOURCE_LANG),
            format_currency(value, code, locale=lang),
        )
    code = rng.choice(current_currencies())
    return (
        format_currency(value, code, locale=SOURCE_LANG, format_type="name"),
        format_currency(value, code, locale=lang, format_type="name"),
    )


def currency_names(lang: str) -> Iterator[Phrase]:
    en, target = Locale.parse(SOURCE_LANG).currencies, Locale.parse(lang).currencies
    for code in current_currencies():
        if code in en and code in target:
            yield en[code], target[code]


# --- names of languages, countries and locales ---------------------------------------------------

_NOT_A_COUNTRY = {"EU", "EZ", "UN", "QO", "ZZ", "XA", "XB"}


@functools.cache
def territory_codes() -> tuple[str, ...]:
    codes = [str(c) for c in Locale.parse(SOURCE_LANG).territories]
    return tuple(
        sorted(c for c in codes if len(c) == 2 and c.isalpha() and c not in _NOT_A_COUNTRY)
    )


@functools.cache
def language_codes() -> tuple[str, ...]:
    """The official languages of some country that have a CLDR locale and a name in English and
    in every target language."""
    names = [Locale.parse(lang).languages for lang in (SOURCE_LANG, *LANGUAGES)]
    official = {c for t in territory_codes() for c in get_official_languages(t, de_facto=True)}
    codes = official & {i for i in locale_identifiers() if "_" not in i}
    return tuple(sorted(c for c in codes if all(c in n for n in names)))


def language_names(lang: str) -> Iterator[Phrase]:
    en, target = Locale.parse(SOURCE_LANG).languages, Locale.parse(lang).languages
    for code in language_codes():
        yield en[code], target[code]


def country_names(lang: str) -> Iterator[Phrase]:
    en, target = Locale.parse(SOURCE_LANG).territories, Locale.parse(lang).territories
    for code in territory_codes():
        if code in target:
            yield en[code], target[code]


NAMES: dict[str, Enumerated] = {
    "language": language_names,
    "country": country_names,
    "currency_name": currency_names,
}


@functools.cache
def _names(kind: str, lang: str) -> tuple[Phrase, ...]:
    return tuple((_normalize(s), _normalize(t)) for s, t in NAMES[kind](lang))


def _spanish_and(text: str) -> str:
    """Spanish writes "e" for "y" before an /i/ sound: "Francia e Italia", "e Hinojosa"."""
    return re.sub(r" y (?=[IiÍí]|H[iíy]|h[iíy])(?![Hh]ie)", " e ", text)


def name_list(rng: random.Random, lang: str) -> Phrase:
    """Two or three names of one kind joined by CLDR's list pattern: "Germany, France, and
    Italy" -> "Deutschland, Frankreich und Italien". Every name is seen in many contexts, so a
    name held out of training as a bare source is still one the model has met."""
    names = _names(rng.choice(sorted(NAMES)), lang)
    chosen = rng.sample(names, rng.choice((2, 3)))
    source = format_list([s for s, _ in chosen], locale=SOURCE_LANG)
    target = format_list([t for _, t in chosen], locale=lang)
    return source, _spanish_and(target) if lang == "es" else target


# --- unit expressions ----------------------------------------------------------------------------

# CLDR unit -> grammatical gender of its noun in (de, fr, es, it): m, f or n. A number spelled out
# in words agrees with it ("eine Stunde", "une heure", "veintiuna horas", "un'ora").
UNITS: dict[str, dict[str, str]] = {
    "length-kilometer": {"de": "m", "fr": "m", "es": "m", "it": "m"},
    "length-meter": {"de": "m", "fr": "m", "es": "m", "it": "m"},
    "length-centimeter": {"de": "m", "fr": "m", "es": "m", "it": "m"},
    "length-mile": {"de": "f", "fr": "m", "es": "f", "it": "m"},
    "mass-kilogram": {"de": "n", "fr": "m", "es": "m", "it": "m"},
    "mass-gram": {"de": "n", "fr": "m", "es": "m", "it": "m"},
    "volume-liter": {"de": "m", "fr": "m", "es": "m", "it": "m"},
    "duration-hour": {"de": "f", "fr": "f", "es": "f", "it": "f"},
    "duration-minute": {"de": "f", "fr": "f", "es": "m", "it": "m"},
    "duration-second": {"de": "f", "fr": "f", "es": "m", "it": "m"},
    "duration-day": {"de": "m", "fr": "m", "es": "m", "it": "m"},
    "duration-week": {"de": "f", "fr": "f", "es": "f", "it": "f"},
    "duration-month": {"de": "m", "fr": "m", "es": "m", "it": "m"},
    "duration-year": {"de": "n", "fr": "m", "es": "m", "it": "m"},
}
ENGLISH_UNIT_LOCALES = ("en", "en_GB")  # "kilometers" and "kilometres" both


def _unit(value: float, unit: str, locale: str) -> str | None:
    text = _normalize(format_unit(value, unit, "long", locale=locale))
    return None if unit in text else text  # babel falls back to the unit's id where CLDR has none


def number_in_words(n: int, lang: str, gender: str) -> str:
    """`n` in words, agreeing in gender with the noun that follows (1 <= n < 1000)."""
    words: str = num2words(n, lang=lang)
    if lang == "de" and n == 1:
        return "eine" if gender == "f" else "ein"
    if lang == "es":
        if gender == "f":
            words = words.replace("ientos", "ientas")
        if words == "veintiuno":
            return "veintiuna" if gender == "f" else "veintiún"
        return re.sub(r"(^| )uno$", r"\1una" if gender == "f" else r"\1un", words)
    if lang == "fr" and gender == "f":
        return re.sub(r"(^|[ -])un$", r"\1une", words)
    if lang == "it" and n == 1:
        return "una" if gender == "f" else "un"
    return words


def spelled_unit(n: int, unit: str, locale: str, lang: str) -> str | None:
    """ "n unit" with n in words: `locale` formats the unit, `lang` spells the number."""
    text = _unit(n, unit, locale)
    if text is None:
        return None
    words = num2words(n, lang=SOURCE_LANG) if lang == SOURCE_LANG else None
    words = words or number_in_words(n, lang, UNITS[unit][lang])
    if lang == "it" and n == 1 and UNITS[unit]["it"] == "f" and text[2] in "aeiou":
        return "un'" + text[2:]  # un'ora
    return text.replace(str(n), words, 1)


def unit_expression(rng: random.Random, lang: str) -> Phrase | None:
    """A quantity with its unit, in digits ("2.5 hours") or in words ("twenty-one kilometres")."""
    unit = rng.choice(sorted(UNITS))
    english = rng.choice(ENGLISH_UNIT_LOCALES)
    if rng.random() < 0.5:
        value: float = int(math.exp(rng.uniform(0, math.log(10**4))))
        if rng.random() < 0.2:
            value += rng.choice((0.25, 0.5, 0.75))
        source, target = _unit(value, unit, english), _unit(value, unit, lang)
    else:
        n = int(math.exp(rng.uniform(0, math.log(1000))))
        if n > 100 and n % 100 == 1:  # "hundertein", "centouno": agreement rules left out
            return None
        source, target = (
            spelled_unit(n, unit, english, SOURCE_LANG),
            spelled_unit(n, unit, lang, lang),
        )
    if source is None or target is None:
        return None
    return source, target


# --- the corpus ----------------------------------------------------------------------------------

# Enumerated first: these pairs keep their target when a drawn pair has the same source.
ENUMERATED: dict[str, Enumerated] = {
    "cardinal": small_cardinals,
    "ordinal": ordinals,
    "year": years,
    "weekday": weekdays,
    "month": months,
    **NAMES,
}
# Drawn kinds and how often each is drawn.
DRAWN: dict[str, tuple[Drawn, int]] = {
    "cardinal": (big_cardinal, 24),
    "date": (date, 32),
    "time": (time_of_day, 5),
    "decimal": (decimal, 7),
    "percent": (percent, 4),
    "currency": (currency, 12),
    "unit": (unit_expression, 14),
    "name_list": (name_list, 6),
}
KINDS = tuple(dict.fromkeys([*ENUMERATED, *DRAWN]))


def enumerated_pairs(languages: tuple[str, ...] = LANGUAGES) -> Iterator[Pair]:
    for kind, phrases in ENUMERATED.items():
        for lang in languages:
            for source, target in phrases(lang):
                yield Pair(lang, _normalize(source), _normalize(target), kind)


def drawn_pairs(seed: int, languages: tuple[str, ...] = LANGUAGES) -> Iterator[Pair]:
    """An endless, deterministic stream of drawn pairs (duplicates possible)."""
    rng = random.Random(seed)
    kinds = list(DRAWN)
    weights = [weight for _, weight in DRAWN.values()]
    while True:
        lang = rng.choice(languages)
        (kind,) = rng.choices(kinds, weights)
        phrase = DRAWN[kind][0](rng, lang)
        if phrase is not None:
            yield Pair(lang, _normalize(phrase[0]), _normalize(phrase[1]), kind)


def generate_pairs(seed: int, languages: tuple[str, ...] = LANGUAGES) -> Iterator[Pair]:
    """Every enumerated pair, then the endless drawn stream."""
    yield from enumerated_pairs(languages)
    yield from drawn_pairs(seed, languages)


DEFAULT_SIZE = 200_000
DEFAULT_SEED = 1234


def builtin_corpus(size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> Corpus:
    """`size` distinct pairs, cut into train (~94 %), valid (~2 %) and test (~4 %) by source.

    From DEFAULT_SIZE up, every enumerated pair is in; a smaller corpus holds a seeded sample of
    them in the same proportion, so that it mixes the same kinds.
    """
    if size < 1:
        raise ValueError(f"corpus size must be >= 1, got {size}")
    enumerated = list(enumerated_pairs())
    if size < DEFAULT_SIZE:
        share = len(enumerated) * size // DEFAULT_SIZE
        enumerated = random.Random(seed).sample(enumerated, share)
    pairs: dict[tuple[str, str], Pair] = {}
    for pair in enumerated:
        pairs.setdefault((pair.lang, pair.source), pair)
    stream = drawn_pairs(seed)
    while len(pairs) < size:
        pair = next(stream)
        pairs.setdefault((pair.lang, pair.source), pair)
    return split_corpus(pairs.values(), pinned_sources())


def pinned_sources() -> frozenset[str]:
    """The English sources that always train (see the module docstring)."""
    numbers = (num2words(n, lang=SOURCE_LANG) for n in range(PINNED_NUMBERS))
    lists = (weekdays(LANGUAGES[0]), months(LANGUAGES[0]))
    names = (source for phrases in lists for source, _ in phrases)
    return frozenset([*numbers, *names])


def check_set(train: Iterable[Pair], seed: int = 20_261_202, per_kind: int = 250) -> list[Pair]:
    """Numbers drawn log-uniformly from 1 to 10^6 and dates from 1900 to 2100 in every style,
    `per_kind` of each per language, none of whose sources is in `train`.

    Short dates stay in 2000-2099 (two-digit English years, see SHORT_FIRST_DAY).
    """
    rng = random.Random(seed)
    seen = {(p.lang, p.source) for p in train}
    pairs: list[Pair] = []

    def keep(pair: Pair) -> bool:
        if (pair.lang, pair.source) in seen:
            return False
        seen.add((pair.lang, pair.source))
        pairs.append(pair)
        return True

    for lang in LANGUAGES:
        numbers = dates = 0
        while numbers < per_kind:
            n = int(math.exp(rng.uniform(0, math.log(10**6))))
            numbers += keep(
                Pair(lang, num2words(n, lang=SOURCE_LANG), num2words(n, lang=lang), "cardinal")
            )
        while dates < per_kind:
            style = DATE_STYLES[dates % len(DATE_STYLES)]
            if style == "short":
                day = random_day(rng, SHORT_FIRST_DAY, SHORT_LAST_DAY)
            else:
                day = random_day(rng, datetime.date(1900, 1, 1), datetime.date(2100, 12, 31))
            source, target = date_phrase(day, style, lang)
            dates += keep(Pair(lang, _normalize(source), _normalize(target), "date"))
    return pairs
