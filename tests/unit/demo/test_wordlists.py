"""The demo's word lists: every word of a language fits that language's alphabet in params.yaml."""

import dataclasses
import re
from pathlib import Path

import pytest

from forgetting.data.corpus import normalise_text
from forgetting.demo.wordlists import CASES, LEXICONS
from forgetting.params import load_params

ROOT = Path(__file__).resolve().parents[3]
SLOT = re.compile(r"\{\w+\}")  # a template slot, filled by the composer


def strings(value) -> list[str]:
    """Every string inside a lexicon's fields: tuples, dict values (not the gender or case keys), determiner forms."""
    if isinstance(value, str):
        return [SLOT.sub(" ", value)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, tuple | list):
        return [s for v in value for s in strings(v)]
    if dataclasses.is_dataclass(value):
        return [s for field in dataclasses.fields(value) for s in strings(getattr(value, field.name))]
    return []


def words(lexicon) -> set[str]:
    """Every word form of a lexicon, normalised as training targets are."""
    return {w for text in strings(lexicon) for w in normalise_text(text).split()}


@pytest.mark.parametrize("lang", sorted(LEXICONS))
def test_words_fit_the_alphabet(lang):
    alphabet = set(load_params(ROOT / "params.yaml").sample.language(lang).alphabet)
    found = words(LEXICONS[lang])
    assert len(found) > 200
    assert {c for w in found for c in w} <= alphabet, sorted({c for w in found for c in w} - alphabet)


@pytest.mark.parametrize(("lang", "letters"), [("nl", "ëéï"), ("de", "äöüß")])
def test_the_lists_carry_the_languages_own_letters(lang, letters):
    found = "".join(words(LEXICONS[lang]))
    assert all(letter in found for letter in letters)


def test_every_determiner_has_a_form_per_case_and_gender():
    for lexicon in LEXICONS.values():
        genders = set(lexicon.nouns)
        for determiner in lexicon.determiners:
            assert {case for case, _ in determiner.forms} == set(CASES)
            assert {gender for _, gender in determiner.forms} == genders
