"""Scoring: edit counts and corpus rates on hand-written cases, bootstrap intervals, the derived continual-learning
metrics, the files eval writes and the predictions TSV."""

import csv

import jiwer
import numpy as np
import pytest

from forgetting import scoring
from forgetting.scoring import (
    SCORE_COLUMNS,
    ScoringError,
    UtteranceScore,
    bootstrap_ci,
    derived_metrics,
    error_rates,
    paired_bootstrap_ci,
    read_predictions,
    score_utterance,
    write_scores_tsv,
)
from tests.unit.exp_show import FIXTURES


@pytest.mark.parametrize(("reference", "hypothesis", "words", "chars"), [
    ("het huis is groot", "het huis is groot", (0, 4), (0, 17)),
    ("het huis is groot", "het huis groot", (1, 4), (3, 17)),  # one word deleted: "is" and a space
    ("die straße", "die strasse ist", (2, 2), (6, 10)),  # ß -> ss: 1 sub + 1 ins; " ist": 4 ins
    ("één", "", (1, 1), (3, 3)),
])
def test_score_utterance_counts_edits(reference, hypothesis, words, chars):
    score = score_utterance("a.mp3", reference, hypothesis)
    assert (score.word_errors, score.ref_words) == words
    assert (score.char_errors, score.ref_chars) == chars


def test_empty_reference_is_named():
    with pytest.raises(ScoringError, match=r"x\.mp3: empty reference"):
        score_utterance("x.mp3", "", "iets")


def test_corpus_rates_are_jiwers():
    references = ["het huis is groot", "die straße", "zo'n mooie dag"]
    hypotheses = ["het huis groot", "die strasse ist", "zo'n mooie dag"]
    rates = error_rates([score_utterance(str(i), r, h) for i, (r, h) in enumerate(zip(references, hypotheses, strict=True))])
    assert rates["wer"] == pytest.approx(jiwer.wer(references, hypotheses))
    assert rates["cer"] == pytest.approx(jiwer.cer(references, hypotheses))
    assert rates["utterances"] == 3 and "wer_ci_low" not in rates


def scores(errors, ref_words=5, prefix="u") -> list[UtteranceScore]:
    return [UtteranceScore(f"{prefix}{i}.mp3", "r", "h", e, ref_words, 2 * e, 4 * ref_words) for i, e in enumerate(errors)]


def test_bootstrap_ci_is_seeded_and_brackets_the_wer(monkeypatch):
    rng = np.random.default_rng(0)
    errors, refs = rng.integers(0, 4, 200), rng.integers(3, 12, 200)
    wer = errors.sum() / refs.sum()
    low, high = bootstrap_ci(errors, refs, samples=500, seed=1)
    assert low < wer < high and high - low < 0.2
    assert bootstrap_ci(errors, refs, samples=500, seed=1) == (low, high)
    assert bootstrap_ci(errors, refs, samples=500, seed=2) != (low, high)
    monkeypatch.setattr(scoring, "_CHUNK_ENTRIES", 1000)  # five resamples per chunk: same draws, same interval
    assert bootstrap_ci(errors, refs, samples=500, seed=1) == pytest.approx((low, high))
    with pytest.raises(ScoringError, match="bootstrap"):
        bootstrap_ci(errors, refs, samples=0, seed=1)


def test_paired_bootstrap_ci_of_a_difference():
    errors = np.random.default_rng(0).integers(0, 4, 100)
    assert paired_bootstrap_ci(errors, errors, [5] * 100, samples=200, seed=0) == (0.0, 0.0)
    low, high = paired_bootstrap_ci(errors, errors + 1, [5] * 100, samples=200, seed=0)  # one more error per 5 words
    assert low == pytest.approx(0.2) and high == pytest.approx(0.2)


def test_derived_metrics_of_the_models_present():
    pretrained = {"nl": scores([1, 1, 0, 0]), "de": scores([4, 5, 4, 5], prefix="d")}
    only = derived_metrics({"pretrained": pretrained}, "pretrained", "adapted", "nl", "de", samples=0, seed=0)
    assert only == {}
    adapted = {"nl": scores([3, 2, 1, 0]), "de": scores([1, 1, 0, 0], prefix="d")}
    both = derived_metrics({"pretrained": pretrained, "adapted": adapted}, "pretrained", "adapted", "nl", "de",
                           samples=100, seed=0)
    assert both["forgetting"]["nl"]["wer"] == pytest.approx(0.3 - 0.1)  # Dutch error rose
    assert both["forgetting"]["nl"]["cer"] == pytest.approx((0.6 - 0.2) / 4)
    assert both["learning"]["de"]["wer"] == pytest.approx(0.9 - 0.1)  # German error fell
    for change in (both["forgetting"]["nl"], both["learning"]["de"]):
        assert change["wer_ci_low"] <= change["wer"] <= change["wer_ci_high"]
    assert both["awer"] == pytest.approx((0.3 + 0.1) / 2)  # mean WER after adaptation
    assert both["bwt"] == pytest.approx(-(0.3 - 0.1))
    # identical systems: every paired resample draws the same utterances for both, so the interval is exactly (0, 0)
    same = derived_metrics({"pretrained": pretrained, "adapted": pretrained}, "pretrained", "adapted", "nl", "de",
                           samples=200, seed=0)
    for change in (same["forgetting"]["nl"], same["learning"]["de"]):
        assert (change["wer"], change["wer_ci_low"], change["wer_ci_high"]) == (0.0, 0.0, 0.0)
    shuffled = {"pretrained": pretrained, "adapted": {**adapted, "nl": scores([3, 2, 1, 0], prefix="x")}}
    with pytest.raises(ScoringError, match=r"u0\.mp3 against x0\.mp3"):
        derived_metrics(shuffled, "pretrained", "adapted", "nl", "de", samples=0, seed=0)


def test_scores_tsv(tmp_path):
    rows = [score_utterance("a.mp3", "zo'n dag", "zo'n dak"), score_utterance("b.mp3", "één", "")]
    write_scores_tsv(tmp_path / "eval" / "pretrained_nl.tsv", rows)
    with open(tmp_path / "eval" / "pretrained_nl.tsv", encoding="utf-8", newline="") as f:
        read = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert tuple(read[0]) == SCORE_COLUMNS
    assert read[0]["hypothesis"] == "zo'n dak" and read[1]["hypothesis"] == "" and read[1]["ref_chars"] == "3"


def test_malformed_predictions_name_the_file_and_line():
    text = (FIXTURES / "predictions" / "34b6578" / "adapted_nl.tsv").read_text(encoding="utf-8")
    broken = text.replace("\t4\t", "\tfour\t", 1)
    with pytest.raises(ValueError, match=r"main:adapted_nl.tsv line \d+: expected 7 columns"):
        read_predictions(broken, "main:adapted_nl.tsv")
    with pytest.raises(ValueError, match="header must be"):
        read_predictions("path\tref\n", "x.tsv")
