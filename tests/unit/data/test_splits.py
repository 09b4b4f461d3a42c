"""Splits disjoint by speaker and sentence: the invariants on heavy-tailed corpora, hand-computed cuts, the errors."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forgetting.data.corpus import Utterance
from forgetting.data.splits import DROP_REASON, SplitError, overlap, split_grouped, split_statistics

FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}
EVAL = ("dev", "test")


def heavy_corpus(n: int, speakers: int, seed: int, alpha: float = 1.2, max_readers: int = 5) -> list[Utterance]:
    """`n` utterances by `speakers` speakers of Pareto(`alpha`)-distributed sizes (each at least one utterance);
    each sentence is read 1 to `max_readers` times, the readings dealt to speakers at random (so one component
    holds most of the data, as in Common Voice)."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(alpha, speakers) + 1
    sizes = 1 + rng.multinomial(n - speakers, weights / weights.sum())
    speaker = rng.permutation(np.repeat(np.arange(speakers), sizes))
    readings = np.repeat(np.arange(n), rng.integers(1, max_readers + 1, n))[:n]
    sentence = rng.permutation(readings)
    return [Utterance(f"spk{s}", f"{i}.mp3", f"Satz {t}.", f"satz {t}") for i, (s, t) in
            enumerate(zip(speaker.tolist(), sentence.tolist(), strict=True))]


def largest_group_share(utterances: list[Utterance]) -> float:
    """The share of utterances in the largest group linked by shared speakers or sentences (union-find)."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for u in utterances:
        parent[root("speaker " + u.client_id)] = root("sentence " + u.text)
    return max(Counter(root("speaker " + u.client_id) for u in utterances).values()) / len(utterances)


def reader(speaker: str, texts: list[str], first: int = 0) -> list[Utterance]:
    return [Utterance(speaker, f"{speaker}_{first + i}.mp3", text, text) for i, text in enumerate(texts)]


def check_invariants(utterances: list[Utterance], result, fractions=FRACTIONS, tolerance=0.1, cap=0.2) -> None:
    splits = result.splits
    assert list(splits) == list(fractions)
    speaker_split = {u.client_id: name for name, rows in splits.items() for u in rows}
    sentence_split = {u.text: name for name, rows in splits.items() for u in rows}
    for name, rows in splits.items():  # no speaker and no sentence in two splits
        assert all(speaker_split[u.client_id] == name and sentence_split[u.text] == name for u in rows)
    position = {u.path: i for i, u in enumerate(utterances)}
    for rows in splits.values():  # input order, each input utterance at most once
        assert [position[u.path] for u in rows] == sorted({position[u.path] for u in rows})
    kept = sum(len(rows) for rows in splits.values())
    placed = {u.path for rows in splits.values() for u in rows}
    dropped = [u for u in utterances if u.path not in placed]
    assert kept + len(dropped) == len(utterances)
    assert result.dropped == Counter({DROP_REASON: len(dropped)})
    for u in dropped:  # its sentence is kept in one split, its speaker in another
        home = sentence_split[u.text]
        if u.client_id in speaker_split:
            assert speaker_split[u.client_id] != home
        else:  # a speaker kept nowhere: only the cap can keep it out of its sentences' split
            assert home in EVAL
    for name, rows in splits.items():
        target = fractions[name] * kept
        assert abs(len(rows) - target) <= tolerance * target, (name, len(rows), target)
    for name in EVAL:
        assert max(Counter(u.client_id for u in splits[name]).values()) <= cap * len(splits[name])


@pytest.mark.parametrize("seed", range(4))
def test_heavy_tailed_corpus_with_one_giant_group_is_cut_within_every_invariant(seed):
    utterances = heavy_corpus(3000, 120, seed, alpha=1.5)
    assert largest_group_share(utterances) > 0.95
    assert max(Counter(u.client_id for u in utterances).values()) > 5 * len(utterances) / 120  # heavy-tailed
    result = split_grouped(utterances, FRACTIONS, tolerance=0.1, max_speaker_share=0.2, seed=seed)
    check_invariants(utterances, result)
    assert result.dropped[DROP_REASON] > 0  # the giant group had to be cut


def test_a_speaker_with_30_percent_of_the_data_goes_to_train():
    utterances = heavy_corpus(2000, 80, seed=7)
    big = [u.text for u in utterances[:300]] + [f"eigener satz {i}" for i in range(600)]  # shares sentences too
    utterances += reader("dominant", big)
    speakers = Counter(u.client_id for u in utterances)
    assert speakers["dominant"] / len(utterances) == pytest.approx(0.31, abs=0.01)
    for seed in range(3):
        result = split_grouped(utterances, FRACTIONS, tolerance=0.1, max_speaker_share=0.2, seed=seed)
        check_invariants(utterances, result)
        assert {u.client_id for u in result.splits["train"]} >= {"dominant"}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(50, 1500), speakers=st.integers(2, 120), alpha=st.floats(0.5, 3.0), max_readers=st.integers(1, 5),
       corpus_seed=st.integers(0, 2**16), seed=st.integers(0, 2**16), tolerance=st.sampled_from([0.05, 0.1, 0.3]),
       cap=st.sampled_from([0.1, 0.2, 0.5, 1.0]))
def test_any_corpus_gives_valid_splits_or_an_error_naming_a_split_and_a_param(n, speakers, alpha, max_readers, corpus_seed,
                                                                              seed, tolerance, cap):
    utterances = heavy_corpus(n, min(speakers, n), corpus_seed, alpha, max_readers)
    try:
        result = split_grouped(utterances, FRACTIONS, tolerance, cap, seed)
    except SplitError as err:
        assert "split " in str(err) and "sample." in str(err) and "target" in str(err)
    else:
        check_invariants(utterances, result, tolerance=tolerance, cap=cap)


def test_whole_groups_fill_the_splits_exactly_without_drops():
    # ten speakers, each with ten sentences of their own: ten groups of ten
    utterances = [u for s in range(10) for u in reader(f"spk{s}", [f"satz {s} {i}" for i in range(10)])]
    result = split_grouped(utterances, FRACTIONS, tolerance=0.1, max_speaker_share=1.0, seed=0)
    assert [len(result.splits[name]) for name in FRACTIONS] == [80, 10, 10]
    assert result.dropped == {DROP_REASON: 0}
    check_invariants(utterances, result, cap=1.0)


def test_a_cut_takes_the_cheapest_speakers_and_drops_exactly_what_they_shared():
    # one group: every speaker reads "hub". Moving a cheap speaker (hub + 40 sentences of its own) into an eval split
    # drops its hub reading: 1 drop per 40 kept. A medium one also reads six of the pricey speakers' ten common
    # sentences (7 drops per 40), a pricey one would lose all it has.
    cheap = {f"cheap{s}": reader(f"cheap{s}", ["hub"] + [f"eigen {s} {i}" for i in range(40)]) for s in range(4)}
    shared = [f"gemein {i}" for i in range(6)]
    medium = {f"medium{s}": reader(f"medium{s}", ["hub", *shared] + [f"mittel {s} {i}" for i in range(40)]) for s in range(4)}
    pricey = {f"pricey{s}": reader(f"pricey{s}", ["hub"] + [f"gemein {i}" for i in range(10)]) for s in range(6)}
    utterances = [u for group in (cheap, medium, pricey) for rows in group.values() for u in rows]  # 164 + 188 + 66
    for seed in range(5):
        result = split_grouped(utterances, FRACTIONS, tolerance=0.1, max_speaker_share=1.0, seed=seed)
        # dev and test each get one cheap speaker's 40 own sentences (target 0.1 * (418 - 2) = 41.6, within 10 %)
        assert result.dropped == Counter({DROP_REASON: 2})
        assert [len(result.splits[name]) for name in FRACTIONS] == [336, 40, 40]
        for name in EVAL:
            (speaker,) = {u.client_id for u in result.splits[name]}
            assert speaker in cheap and "hub" not in {u.text for u in result.splits[name]}
        check_invariants(utterances, result, cap=1.0)


def test_a_speaker_left_with_nothing_joins_the_split_of_its_sentences():
    # as above, and each cheap speaker's first sentence is also read by a one-utterance speaker: when the cheap speaker
    # moves, the tie gives that sentence to the eval split, which leaves the small speaker nothing in train
    cheap = [u for s in range(4) for u in reader(f"cheap{s}", ["hub"] + [f"eigen {s} {i}" for i in range(11)])]
    pricey = [u for s in range(6) for u in reader(f"pricey{s}", ["hub"] + [f"gemein {i}" for i in range(10)])]
    echo = [u for s in range(4) for u in reader(f"echo{s}", [f"eigen {s} 0"])]
    utterances = cheap + pricey + echo  # 48 + 66 + 4 = 118
    for seed in range(5):
        result = split_grouped(utterances, FRACTIONS, tolerance=0.1, max_speaker_share=1.0, seed=seed)
        assert result.dropped == Counter({DROP_REASON: 2})  # the moved cheap speakers' hub readings only
        assert [len(result.splits[name]) for name in FRACTIONS] == [92, 12, 12]
        for name in EVAL:
            speakers = {u.client_id for u in result.splits[name]}
            (number,) = {s[-1] for s in speakers}
            assert speakers == {f"cheap{number}", f"echo{number}"}
        check_invariants(utterances, result, cap=1.0)


def test_same_seed_same_splits_other_seed_other_splits():
    utterances = heavy_corpus(3000, 150, seed=3)
    first = split_grouped(utterances, FRACTIONS, 0.1, 0.2, seed=0)
    again = split_grouped(list(utterances), FRACTIONS, 0.1, 0.2, seed=0)
    assert first == again
    assert all([u.path for u in first.splits[n]] == [u.path for u in again.splits[n]] for n in FRACTIONS)
    others = [split_grouped(utterances, FRACTIONS, 0.1, 0.2, seed=s) for s in (1, 2)]
    assert all({u.client_id for u in o.splits["dev"]} != {u.client_id for u in first.splits["dev"]} for o in others)


def test_other_fractions_and_split_names_are_honoured():
    utterances = heavy_corpus(4000, 200, seed=5)
    fractions = {"fit": 0.6, "val": 0.25, "eval": 0.15}
    result = split_grouped(utterances, fractions, 0.1, 0.2, seed=0, eval_splits=("val", "eval"))
    assert list(result.splits) == ["fit", "val", "eval"]
    speaker_split = {u.client_id: name for name, rows in result.splits.items() for u in rows}
    assert len(speaker_split) == len({u.client_id for rows in result.splits.values() for u in rows})
    kept = sum(map(len, result.splits.values()))
    for name, fraction in fractions.items():
        assert abs(len(result.splits[name]) - fraction * kept) <= 0.1 * fraction * kept


@pytest.mark.parametrize(("utterances", "message"), [
    (reader("a", [f"a {i}" for i in range(50)]) + reader("b", [f"b {i}" for i in range(50)]),
     r"split (dev|test): target .* reached 0, outside sample\.split_tolerance 0\.1"),
    (reader("big", [f"s {i}" for i in range(900)]) + [u for s in range(10) for u in reader(f"small{s}", [f"t {s} {i}" for i in
                                                                                                        range(10)])],
     r"split dev: target 100\.0 utterances \(0\.1 of 1000 kept\), reached 50, .* the 10 speakers within "
     r"sample\.max_speaker_share 0\.2 \(20 utterances each\)"),
    ([u for s in range(3) for u in reader(f"spk{s}", [f"s {s} {i}" for i in range(100)])],
     r"split dev: .*no speaker is small enough for it: sample\.max_speaker_share 0\.2 allows 6 utterances per speaker, "
     r"the smallest has 100"),
])
def test_an_infeasible_split_names_the_split_its_target_and_the_param_to_change(utterances, message):
    with pytest.raises(SplitError, match=message):
        split_grouped(utterances, FRACTIONS, tolerance=0.1, max_speaker_share=0.2, seed=0)


def test_bad_split_names_and_no_utterances_are_refused():
    utterances = heavy_corpus(500, 40, seed=0)
    with pytest.raises(SplitError, match=r"sample\.split: expected the eval splits \['dev', 'test'\] and one train split"):
        split_grouped(utterances, {"train": 0.9, "dev": 0.1}, 0.1, 0.2, seed=0)
    with pytest.raises(SplitError, match="nothing to split: 0 utterances"):
        split_grouped([], FRACTIONS, 0.1, 0.2, seed=0)


def test_statistics_and_overlap_count_by_hand():
    splits = {
        "train": reader("a", ["x", "y", "y"]) + reader("b", ["z"]),
        "dev": reader("b", ["y"], first=5) + reader("c", ["w"]),
        "test": reader("d", ["x"], first=7),
    }
    assert split_statistics(splits) == {
        "train": {"utterances": 4, "speakers": 2, "sentences": 3, "largest_speaker_share": 0.75},
        "dev": {"utterances": 2, "speakers": 2, "sentences": 2, "largest_speaker_share": 0.5},
        "test": {"utterances": 1, "speakers": 1, "sentences": 1, "largest_speaker_share": 1.0},
    }
    assert overlap(splits) == {
        "train/dev": {"shared_speakers": 1, "shared_sentences": 1, "utterances_with_shared_sentence": 1},
        "train/test": {"shared_speakers": 0, "shared_sentences": 1, "utterances_with_shared_sentence": 1},
        "dev/test": {"shared_speakers": 0, "shared_sentences": 0, "utterances_with_shared_sentence": 0},
    }
    assert split_statistics({"dev": []}) == {"dev": {"utterances": 0, "speakers": 0, "sentences": 0,
                                                     "largest_speaker_share": 0.0}}
