"""Scoring: edit counts and corpus rates on hand-written cases; the speaker (cluster) and two-level bootstraps against
the one-utterance-speaker bootstrap, the √k law and an exhaustive enumeration; paired differences; the Wilcoxon
test against a hand-computed statistic and exact p; the derived metrics, the files eval writes and the predictions TSV."""

import csv
import itertools
from collections import Counter

import jiwer
import numpy as np
import pytest
from scipy import stats

from forgetting.evaluation import scoring
from forgetting.evaluation.scoring import (
    SCORE_COLUMNS,
    ScoringError,
    UtteranceScore,
    combine,
    compare_runs,
    derived_metrics,
    error_rates,
    interval_record,
    read_predictions,
    resample_rates,
    score_utterance,
    wilcoxon_p,
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
    score = score_utterance("a.mp3", "spk", reference, hypothesis)
    assert (score.path, score.client_id) == ("a.mp3", "spk")
    assert (score.word_errors, score.ref_words) == words
    assert (score.char_errors, score.ref_chars) == chars


def test_empty_reference_is_named():
    with pytest.raises(ScoringError, match=r"x\.mp3: empty reference"):
        score_utterance("x.mp3", "spk", "", "iets")


def test_corpus_rates_are_jiwers():
    references = ["het huis is groot", "die straße", "zo'n mooie dag"]
    hypotheses = ["het huis groot", "die strasse ist", "zo'n mooie dag"]
    rates = error_rates([score_utterance(str(i), f"s{i % 2}", r, h)
                         for i, (r, h) in enumerate(zip(references, hypotheses, strict=True))])
    assert rates["wer"] == pytest.approx(jiwer.wer(references, hypotheses))
    assert rates["cer"] == pytest.approx(jiwer.cer(references, hypotheses))
    assert (rates["utterances"], rates["speakers"]) == (3, 2) and "wer_ci_low" not in rates


def utterances(errors, units, speakers=None, prefix="u") -> list[UtteranceScore]:
    """One utterance per entry: word errors and words as given, characters 2× the errors over 5× the words."""
    speakers = [f"s{i}" for i in range(len(errors))] if speakers is None else speakers
    return [UtteranceScore(f"{prefix}{i}.mp3", str(spk), "r", "h", int(e), int(u), 2 * int(e), 5 * int(u))
            for i, (e, u, spk) in enumerate(zip(errors, units, speakers, strict=True))]


def width(rates: dict, rate: str = "wer") -> float:
    return rates[f"{rate}_ci_high"] - rates[f"{rate}_ci_low"]


def test_speaker_bootstrap_of_uniform_speakers_equals_one_utterance_speakers_and_is_wider():
    rng = np.random.default_rng(0)
    n, k = 40, 4
    errors, units = rng.integers(0, 6, n), rng.integers(5, 12, n)
    one_each = utterances(errors, units)
    k_each = utterances(np.repeat(errors, k), np.repeat(units, k), np.repeat([f"s{i}" for i in range(n)], k))
    single, clustered = (error_rates(s, 2000, 3, "speaker", 5) for s in (one_each, k_each))
    for key in ("wer_ci_low", "wer_ci_high", "cer_ci_low", "cer_ci_high"):
        assert clustered[key] == pytest.approx(single[key], rel=1e-12), key
    independent = error_rates(k_each, 2000, 3, "utterance", 5)
    for rate in ("wer", "cer"):  # k correlated copies look like k times the data to the utterance bootstrap: √k narrower
        assert width(clustered, rate) / width(independent, rate) == pytest.approx(np.sqrt(k), rel=0.1)
    assert (clustered["speakers"], clustered["utterances"]) == (n, n * k)


def test_two_level_bootstrap_matches_the_exhaustive_enumeration():
    errors = np.array([[[1.0, 4.0, 2.0]], [[3.0, 0.0, 5.0]]])  # (seeds, stats, clusters)
    units = np.array([[5.0, 6.0, 7.0]])
    exact: Counter[float] = Counter()
    for clusters in itertools.product(range(3), repeat=3):
        for seeds in itertools.product(range(2), repeat=2):
            rate = np.mean([errors[s, 0, list(clusters)].sum() / units[0, list(clusters)].sum() for s in seeds])
            exact[round(float(rate), 12)] += 1 / (27 * 4)
    drawn = resample_rates([errors], units, 40_000, seed=5)[:, 0, 0]
    empirical = Counter(round(float(r), 12) for r in drawn)
    assert set(empirical) <= set(exact)
    for value, probability in exact.items():  # a standard error is below 0.0025 here
        assert empirical[value] / len(drawn) == pytest.approx(probability, abs=0.01), value


def test_bootstrap_is_seeded_and_independent_of_the_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    scores = utterances(rng.integers(0, 4, 200), rng.integers(3, 12, 200), rng.integers(0, 30, 200))
    first = error_rates(scores, 500, 1, "speaker", 5)
    assert first["wer_ci_low"] < first["wer"] < first["wer_ci_high"] and width(first) < 0.2
    assert error_rates(scores, 500, 1, "speaker", 5) == first
    assert error_rates(scores, 500, 2, "speaker", 5) != first
    monkeypatch.setattr(scoring, "_CHUNK_ENTRIES", 100)  # three resamples per chunk: the same draws
    assert error_rates(scores, 500, 1, "speaker", 5) == first
    with pytest.raises(ScoringError, match="bootstrap needs >= 1 resample, got 0"):
        resample_rates([np.ones((1, 1, 3))], np.ones((1, 3)), 0, 1)
    with pytest.raises(ScoringError, match=r"eval\.bootstrap: must be one of speaker, utterance, got 'word'"):
        error_rates(scores, 10, 1, "word", 5)


def test_too_few_speakers_get_a_note_instead_of_an_interval():
    scores = utterances([1, 2, 0, 3, 1, 2, 0, 1], [5] * 8, ["a", "b", "c", "d"] * 2)
    few = error_rates(scores, 100, 0, "speaker", min_speakers=5)
    assert not any("_ci_" in key for key in few)
    assert few["note"] == "no interval: 4 speakers, fewer than eval.min_speakers = 5"
    assert few["speakers"] == 4
    for method in ("speaker", "utterance"):
        enough = error_rates(scores, 100, 0, method, min_speakers=4)
        assert "note" not in enough and enough["wer_ci_low"] <= enough["wer"] <= enough["wer_ci_high"]
    assert "note" not in error_rates(scores, 0, 0, "speaker", min_speakers=5)  # no resamples asked for: nothing withheld
    assert interval_record(1000, "speaker", 5) == {"method": "speaker", "samples": 1000, "level": 0.95, "min_speakers": 5}


def test_seed_groups_widen_the_interval_by_the_seed_spread():
    # every utterance of a run has one error rate, so only the seed draw moves the statistic: with two seeds of
    # 0.2 and 0.6 the mean of two drawn seeds is 0.2, 0.4 or 0.6 with probabilities 1/4, 1/2, 1/4
    speakers = [f"s{i}" for i in range(6)]
    low, high = utterances([1] * 6, [5] * 6, speakers), utterances([3] * 6, [5] * 6, speakers)
    group = combine([[low, high]], [1.0], 2000, 0, "speaker", 5, shared_seeds=True)
    assert group["wer"] == pytest.approx(0.4)
    assert (group["wer_ci_low"], group["wer_ci_high"]) == pytest.approx((0.2, 0.6))
    # copies of one run are one run: the same interval as the plain cluster bootstrap
    rng = np.random.default_rng(1)
    run = utterances(rng.integers(0, 5, 30), rng.integers(4, 9, 30), rng.integers(0, 8, 30))
    copies = combine([[run, run, run]], [1.0], 1000, 4, "speaker", 5, shared_seeds=True)
    alone = error_rates(run, 1000, 4, "speaker", 5)
    for key in ("wer", "wer_ci_low", "wer_ci_high", "cer_ci_low", "cer_ci_high"):
        assert copies[key] == pytest.approx(alone[key], rel=1e-12), key


def test_paired_differences():
    errors = np.random.default_rng(0).integers(0, 4, 100)
    base = utterances(errors, [5] * 100, np.arange(100) % 10)
    worse = utterances(errors + 1, [5] * 100, np.arange(100) % 10)  # one more error per 5 words everywhere
    same = combine([[base], [base]], [-1.0, 1.0], 300, 0, "speaker", 5, shared_seeds=True)
    assert (same["wer"], same["wer_ci_low"], same["wer_ci_high"]) == (0.0, 0.0, 0.0)
    shift = combine([[base], [worse]], [-1.0, 1.0], 300, 0, "speaker", 5, shared_seeds=True)
    assert (shift["wer"], shift["wer_ci_low"], shift["wer_ci_high"]) == pytest.approx((0.2, 0.2, 0.2))
    assert (shift["cer"], shift["cer_ci_low"], shift["cer_ci_high"]) == pytest.approx((0.08, 0.08, 0.08))
    with pytest.raises(ScoringError, match=r"u0\.mp3 against x0\.mp3"):
        combine([[base], [utterances(errors, [5] * 100, prefix="x")]], [-1.0, 1.0], 0, 0, "speaker", 5, shared_seeds=True)
    other_speaker = [*base[:-1], UtteranceScore("u99.mp3", "someone", "r", "h", 0, 5, 0, 25)]
    with pytest.raises(ScoringError, match=r"u99\.mp3 differ in speaker or reference: \('9', 'r'\) against \('someone', 'r'\)"):
        combine([[base], [other_speaker]], [-1.0, 1.0], 0, 0, "speaker", 5, shared_seeds=True)
    with pytest.raises(ScoringError, match="as many runs each"):
        combine([[base], [base, worse]], [-1.0, 1.0], 10, 0, "speaker", 5, shared_seeds=True)


def test_wilcoxon_on_a_hand_case():
    # six speakers of 10 words: per-speaker differences +0.1, -0.2, +0.3, +0.4, +0.5, +0.6 (all distinct, none zero)
    first = utterances([5] * 6, [10] * 6)
    second = utterances([6, 3, 8, 9, 10, 11], [10] * 6)
    differences = np.array([0.1, -0.2, 0.3, 0.4, 0.5, 0.6])
    ranks = stats.rankdata(np.abs(differences))
    assert list(ranks) == [1, 2, 3, 4, 5, 6]
    w_minus = ranks[differences < 0].sum()
    assert (w_minus, ranks[differences > 0].sum()) == (2, 19)
    # exact null: each of the 2^6 sign patterns equally likely; rank sums <= 2 come from {}, {1}, {2}
    subsets = [s for n in range(7) for s in itertools.combinations(range(1, 7), n) if sum(s) <= w_minus]
    exact_p = 2 * len(subsets) / 2 ** 6
    assert exact_p == 6 / 64
    scipy_result = stats.wilcoxon(differences)
    assert (scipy_result.statistic, scipy_result.pvalue) == pytest.approx((w_minus, exact_p))
    assert wilcoxon_p(differences) == pytest.approx(exact_p)
    compared = compare_runs([first], [second], 200, 0, "speaker", 5)
    assert compared["wer"] == pytest.approx((6 + 3 + 8 + 9 + 10 + 11) / 60 - 30 / 60)  # second minus first
    assert compared["wer_p"] == pytest.approx(exact_p) and compared["speakers"] == 6
    assert wilcoxon_p(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])) == pytest.approx(2 / 64)  # all one way: 2 of 64
    assert wilcoxon_p(np.zeros(20)) == 1.0
    few = compare_runs([first[:4]], [second[:4]], 200, 0, "speaker", 5)
    assert "wer_p" not in few and "wer_ci_low" not in few and few["note"].startswith("no interval: 4 speakers")


def test_derived_metrics_of_the_models_present():
    pretrained = {"nl": utterances([1, 1, 0, 0], [5] * 4), "de": utterances([4, 5, 4, 5], [5] * 4, prefix="d")}
    only = derived_metrics({"pretrained": pretrained}, "pretrained", "adapted", "nl", "de", samples=0, seed=0)
    assert only == {}
    adapted = {"nl": utterances([3, 2, 1, 0], [5] * 4), "de": utterances([1, 1, 0, 0], [5] * 4, prefix="d")}
    both = derived_metrics({"pretrained": pretrained, "adapted": adapted}, "pretrained", "adapted", "nl", "de",
                           samples=100, seed=0, method="speaker", min_speakers=2)
    assert both["forgetting"]["nl"]["wer"] == pytest.approx(0.3 - 0.1)  # Dutch error rose
    assert both["forgetting"]["nl"]["cer"] == pytest.approx((0.6 - 0.2) / 5)
    assert both["learning"]["de"]["wer"] == pytest.approx(0.9 - 0.1)  # German error fell
    for change in (both["forgetting"]["nl"], both["learning"]["de"]):
        for rate in ("wer", "cer"):
            assert change[f"{rate}_ci_low"] <= change[rate] <= change[f"{rate}_ci_high"]
    assert both["awer"] == pytest.approx((0.3 + 0.1) / 2)  # mean WER after adaptation
    assert both["bwt"] == pytest.approx(-(0.3 - 0.1))
    withheld = derived_metrics({"pretrained": pretrained, "adapted": adapted}, "pretrained", "adapted", "nl", "de",
                               samples=100, seed=0, method="speaker", min_speakers=5)
    assert withheld["forgetting"]["nl"]["note"] == "no interval: 4 speakers, fewer than eval.min_speakers = 5"


def test_scores_tsv_round_trip(tmp_path):
    rows = [score_utterance("a.mp3", "spk-1", "zo'n dag", "zo'n dak"), score_utterance("b.mp3", "spk-2", "één", "")]
    write_scores_tsv(tmp_path / "eval" / "pretrained_nl.tsv", rows)
    with open(tmp_path / "eval" / "pretrained_nl.tsv", encoding="utf-8", newline="") as f:
        read = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert tuple(read[0]) == SCORE_COLUMNS and SCORE_COLUMNS[:2] == ("path", "client_id")
    assert read[0]["hypothesis"] == "zo'n dak" and read[1]["hypothesis"] == "" and read[1]["ref_chars"] == "3"
    assert read_predictions((tmp_path / "eval" / "pretrained_nl.tsv").read_text(encoding="utf-8"), "x") == rows


def test_malformed_or_old_predictions_name_the_file_and_line():
    text = next((FIXTURES / "predictions").glob("*/adapted_nl.tsv")).read_text(encoding="utf-8")
    broken = text.replace("\t4\t", "\tfour\t", 1)
    with pytest.raises(ScoringError, match=r"main:adapted_nl.tsv line \d+: expected 8 columns"):
        read_predictions(broken, "main:adapted_nl.tsv")
    without_speakers = "\n".join("\t".join(c for i, c in enumerate(line.split("\t")) if i != 1) for line in text.splitlines())
    with pytest.raises(ScoringError, match=r"old.tsv: no client_id column .*re-run eval"):
        read_predictions(without_speakers, "old.tsv")
    with pytest.raises(ScoringError, match="header must be"):
        read_predictions("path\tclient_id\tref\n", "x.tsv")
