"""service.tokenizer gives exactly the ids and text of model.tokenizer, without torch."""

from __future__ import annotations

from model.corpus import Corpus
from model.tokenizer import Tokenizer
from service.tokenizer import SourceTokenizer, normalize

TRICKY = [
    "  leading and trailing  ",
    "tabs\tand\u00a0no-break\u202fspaces",
    "new\nlines\r\nand   runs",
    "digits 1234567 and 3.14",
    "unknown ✓ symbols ☃ and émigré",
    "x",
]


def _service_tokenizer(tokenizer: Tokenizer, tmp_path) -> SourceTokenizer:
    path = tmp_path / "tokenizer.model"
    tokenizer.save(path)
    languages = {lang: tokenizer.lang_id(lang) for lang in tokenizer.languages}
    specials = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    return SourceTokenizer(path, languages, specials)


def test_same_source_ids_and_text_as_training(
    tiny_tokenizer: Tokenizer, tiny_corpus: Corpus, tmp_path
):
    ours = _service_tokenizer(tiny_tokenizer, tmp_path)
    pairs = tiny_corpus.test[:300]
    texts = [p.source for p in pairs] + [p.target for p in pairs] + TRICKY
    for i, text in enumerate(texts):
        lang = tiny_tokenizer.languages[i % len(tiny_tokenizer.languages)]
        assert normalize(text) == Tokenizer.normalize(text)
        ids = ours.encode_source(text, lang)
        assert ids == tiny_tokenizer.encode_source(text, lang)
        target = tiny_tokenizer.encode_target(text)
        for generated in (target, [*target, 3], [2, *target, 3, 5, 6], [0, *target, 1]):
            assert ours.decode(generated) == tiny_tokenizer.decode(generated)
