"""Train/dev/test splits disjoint by speaker (`client_id`) and by sentence (normalised `text`).

Common Voice has many readers per sentence, so a speaker-disjoint split still puts most test sentences in train.
Each utterance links its speaker to its sentence; the connected components of that graph (groups) can go to any
split whole without losing anything. On a real release one group holds almost everything, so it is cut: speakers
are taken out of it into the eval splits, every sentence then belongs to the split holding most of its utterances
(ties: the eval splits in order, then train), and its utterances in other splits are dropped and counted.

Targets are fractions of the kept utterances. One seeded assignment:
1. Whole groups, in seeded order, each to the eval split furthest below its target that it brings closer to the
   target (within the upper bound, its largest speaker within the cap); the rest stays in train.
2. While an eval split is more than `SETTLED` of the tolerance below target, speakers of the groups left in train
   move into the hungriest split they bring closer: first those whose move drops fewest utterances per utterance
   gained, in steps of `EFFICIENCY_STEP` (estimated with everyone else in train; the seed orders each step). The
   counts are exact as speakers move, and the targets assume that the drops still to come follow the rate so far.
3. The whole groups are placed again, against the kept total that step 2 left.
4. A speaker left with nothing kept joins the split owning most of its sentences. A speaker above the cap of its
   eval split is excluded from the eval splits, and the assignment repeated.
A greedy order can miss where another one fits: `ATTEMPTS` seeded orders are tried before giving up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import connected_components

from forgetting.data.corpus import CorpusError, Utterance

DROP_REASON = "sentence_in_other_split"  # the utterance's sentence belongs to another split than its speaker
ATTEMPTS = 4  # seeded orders tried before giving up: a greedy order can miss where another one fits
SETTLED = 0.5  # an eval split this part of the tolerance below its target takes no more: the rest absorbs later drops
EFFICIENCY_STEP = 0.1  # speakers whose drops per gained utterance differ by less are equally good; the seed orders them


@dataclass(frozen=True)
class Splits:
    """Split name -> its utterances, in input order; and reason -> utterances dropped to keep the splits disjoint."""

    splits: dict[str, list[Utterance]]
    dropped: Counter[str]


class SplitError(CorpusError):
    """No assignment meets the split fractions, the tolerance or the speaker cap; the message names the split, its
    target, what was reached, why, and the params to change."""


@dataclass(frozen=True)
class _Graph:
    """Utterances as edges between integer speaker and sentence ids (numbered in order of first occurrence)."""

    speaker: np.ndarray  # (utterances,) speaker id of each utterance
    sentence: np.ndarray  # (utterances,) sentence id of each utterance
    speaker_size: np.ndarray  # (speakers,) utterances of each speaker
    sentence_size: np.ndarray  # (sentences,) utterances of each sentence
    group: np.ndarray  # (speakers,) connected component of each speaker
    pair_start: np.ndarray  # (speakers + 1,) speaker s reads the pairs pair_start[s]:pair_start[s + 1]
    pair_sentence: np.ndarray  # (pairs,) the sentence of each distinct (speaker, sentence) pair
    pair_count: np.ndarray  # (pairs,) how often the speaker reads it


def _ids(values: Iterable[str], n: int) -> tuple[np.ndarray, int]:
    """(n,) int32 ids of the `n` values, numbered in order of first occurrence, and how many distinct values there are."""
    ids: dict[str, int] = {}
    return np.fromiter((ids.setdefault(value, len(ids)) for value in values), np.int32, n), len(ids)


def _graph(utterances: Sequence[Utterance]) -> _Graph:
    """The speaker-sentence graph of `utterances`, its groups (connected components) and each speaker's readings."""
    n = len(utterances)
    speaker, n_speakers = _ids((u.client_id for u in utterances), n)
    sentence, n_sentences = _ids((u.text for u in utterances), n)
    nodes = n_speakers + n_sentences  # speakers first, then sentences
    edges = csr_array((np.ones(n, np.int8), (speaker, n_speakers + sentence)), shape=(nodes, nodes))
    _, component = connected_components(edges, directed=False)
    pairs, pair_count = np.unique(speaker.astype(np.int64) * n_sentences + sentence, return_counts=True)
    return _Graph(speaker, sentence, np.bincount(speaker, minlength=n_speakers), np.bincount(sentence, minlength=n_sentences),
                  component[:n_speakers], np.searchsorted(pairs // n_sentences, np.arange(n_speakers + 1)),
                  (pairs % n_sentences).astype(np.int32), pair_count.astype(np.int32))


class _Assignment:
    """Speaker labels under construction. Labels index `names`: the eval splits in order, then train (last)."""

    def __init__(self, graph: _Graph, fractions: np.ndarray, tolerance: float, cap: float, rng: np.random.Generator,
                 excluded: np.ndarray) -> None:
        self.g, self.fractions, self.tolerance, self.cap = graph, fractions, tolerance, cap
        self.train = len(fractions) - 1
        self.kept = [0] * self.train + [len(graph.speaker)]  # exact utterances kept per label
        groups = int(graph.group.max()) + 1
        self.group_size = np.bincount(graph.group, weights=graph.speaker_size, minlength=groups).astype(np.int64)
        self.group_largest = np.zeros(groups, np.int64)
        np.maximum.at(self.group_largest, graph.group, graph.speaker_size)
        self.group_label = np.full(groups, self.train)
        self.group_cut = np.zeros(groups, bool)  # a speaker of it moved alone (step 2)
        self.group_closed = np.bincount(graph.group, weights=excluded, minlength=groups) > 0  # holds an excluded speaker
        self.group_order = rng.permutation(groups)
        self.tie_break = rng.random(len(graph.speaker_size))
        self.speaker_label = np.full(len(graph.speaker_size), self.train)
        self.excluded = excluded

    def target(self, label: int, kept: list[int], drop_rate: float) -> float:
        """`label`'s fraction of the kept total expected at the end: the total of `kept` (per label) less the drops
        still to come while the eval splits fill up at `drop_rate` drops per utterance they gain."""
        filled, share = sum(kept[: self.train]), self.fractions[: self.train].sum()
        return self.fractions[label] * (sum(kept) + drop_rate * filled) / (1 + drop_rate * share)

    def hungry(self, drop_rate: float) -> list[int]:
        """Eval labels not yet settled below their target, furthest below (relative to the target) first."""
        targets = [self.target(e, self.kept, drop_rate) for e in range(self.train)]
        short = [e for e in range(self.train) if self.kept[e] < (1 - SETTLED * self.tolerance) * targets[e]]
        return sorted(short, key=lambda e: self.kept[e] / targets[e])

    def fits(self, label: int, change: list[int], largest: int, drop_rate: float) -> bool:
        """Whether the kept counts changing by `change` (per label) bring `label` closer to its target, keep every
        eval split within its upper bound, and a speaker of `largest` kept utterances within the cap of `label`'s target
        (the split ends near its target; a speaker above the cap of the final size is excluded and the assignment
        repeated)."""
        kept = [k + c for k, c in zip(self.kept, change, strict=True)]
        before = [self.target(e, self.kept, drop_rate) for e in range(self.train)]
        after = [self.target(e, kept, drop_rate) for e in range(self.train)]
        return (abs(kept[label] - after[label]) < abs(self.kept[label] - before[label]) and largest <= self.cap * after[label]
                and all(kept[e] <= (1 + self.tolerance) * after[e] for e in range(self.train))
                # a tie won by another eval split must not push that one further past its target
                and all(kept[e] - after[e] <= max(0.0, self.kept[e] - before[e]) for e in range(self.train) if e != label))

    def place_groups(self) -> None:
        """Step 1 and 3: groups not cut into eval splits, whole (no drops)."""
        for group in self.group_order[~self.group_cut[self.group_order] & ~self.group_closed[self.group_order]]:
            hungry = self.hungry(drop_rate=0.0)
            if not hungry:
                return
            size, largest = int(self.group_size[group]), int(self.group_largest[group])
            for label in hungry:
                change = [0] * len(self.kept)
                change[label], change[self.train] = size, -size
                if self.fits(label, change, largest, drop_rate=0.0):
                    self.group_label[group] = label
                    self.kept = [k + c for k, c in zip(self.kept, change, strict=True)]
                    break

    def unplace_groups(self) -> None:
        """Return every whole group to train (the kept total does not change)."""
        for label in range(self.train):
            size = int(self.group_size[self.group_label == label].sum())
            self.kept[label] -= size
            self.kept[self.train] += size
        self.group_label[:] = self.train

    def cut(self) -> None:
        """Step 2: move speakers of the groups left in train into the eval splits below target."""
        g, train = self.g, self.train
        in_train = (self.group_label[g.group] == train) & ~self.excluded
        pair_speaker = np.repeat(np.arange(len(g.speaker_size)), np.diff(g.pair_start))
        mine, theirs = g.pair_count, g.sentence_size[g.pair_sentence] - g.pair_count  # readings of each pair's sentence
        win = np.bincount(pair_speaker, weights=np.where(mine >= theirs, mine, 0), minlength=len(g.speaker_size))
        loss = np.bincount(pair_speaker, weights=np.minimum(mine, theirs), minlength=len(g.speaker_size))
        step = np.floor(win / (win + loss) / EFFICIENCY_STEP)
        candidates = np.flatnonzero(in_train)
        candidates = candidates[np.lexsort((self.tie_break[candidates], -step[candidates]))]  # the seed orders a step
        counts = [[0] * len(g.sentence_size) for _ in range(train)] + [g.sentence_size.tolist()]
        owner = [train] * len(g.sentence_size)  # the label each sentence belongs to
        start_total, start_filled, drop_rate = sum(self.kept), sum(self.kept[:train]), 0.0
        for speaker in candidates.tolist():
            hungry = self.hungry(drop_rate)
            if not hungry:
                break
            lo, hi = g.pair_start[speaker], g.pair_start[speaker + 1]
            reads = list(zip(g.pair_sentence[lo:hi].tolist(), g.pair_count[lo:hi].tolist(), strict=True))
            for label in hungry:
                change, owners = _move(reads, counts, owner, train, label)
                gain = change[label] + sum(min(0, c) for e, c in enumerate(change[:train]) if e != label)
                kept = sum(count for (_, count), new in zip(reads, owners, strict=True) if new == label)  # the speaker's
                if gain > 0 and self.fits(label, change, kept, drop_rate):
                    break
            else:
                continue
            for (sentence, count), new_owner in zip(reads, owners, strict=True):
                counts[train][sentence] -= count
                counts[label][sentence] += count
                owner[sentence] = new_owner
            self.kept = [k + c for k, c in zip(self.kept, change, strict=True)]
            self.speaker_label[speaker] = label
            gained = sum(self.kept[:train]) - start_filled
            drop_rate = max(0.0, (start_total - sum(self.kept)) / gained) if gained > 0 else 0.0
        self.group_cut = np.bincount(g.group, weights=self.speaker_label != train, minlength=len(self.group_label)) > 0

    def labels(self) -> np.ndarray:
        """(speakers,) the label of every speaker: its own in a cut group, its group's otherwise."""
        return np.where(self.group_cut[self.g.group], self.speaker_label, self.group_label[self.g.group])


def _move(reads: list[tuple[int, int]], counts: list[list[int]], owner: list[int], source: int,
          dest: int) -> tuple[list[int], list[int]]:
    """What moving a speaker's `reads` ((sentence, count) pairs) from label `source` to `dest` changes: the kept
    utterances per label, and the new owner label of each sentence (the most utterances; ties: the lower label)."""
    change = [0] * len(counts)
    owners = []
    for sentence, count in reads:
        column = [per_label[sentence] for per_label in counts]
        change[owner[sentence]] -= column[owner[sentence]]
        column[source] -= count
        column[dest] += count
        new_owner = column.index(max(column))
        change[new_owner] += column[new_owner]
        owners.append(new_owner)
    return change, owners


def split_grouped(utterances: Sequence[Utterance], fractions: Mapping[str, float], tolerance: float,
                  max_speaker_share: float, seed: int, eval_splits: Sequence[str] = ("dev", "test")) -> Splits:
    """Splits disjoint by speaker and by sentence, each within `tolerance` (relative) of its fraction of the kept
    utterances, no speaker holding more than `max_speaker_share` of an eval split; deterministic from `seed`.

    `fractions` names the eval splits and one more split (train), which takes every group and speaker too large
    for the eval splits. Raises SplitError when the assignment misses a target or the cap.
    """
    names = [*eval_splits, *(name for name in fractions if name not in eval_splits)]
    if len(names) != len(eval_splits) + 1 or not set(eval_splits) <= set(fractions):
        raise SplitError(f"sample.split: expected the eval splits {list(eval_splits)} and one train split, got "
                         f"{list(fractions)}")
    if not utterances:
        raise SplitError(f"nothing to split: 0 utterances for {', '.join(names)}")
    graph = _graph(utterances)
    shares = np.array([fractions[name] for name in names], dtype=float)
    first_problems: list[str] = []
    for attempt in range(ATTEMPTS):
        label, kept = _assign(graph, shares, tolerance, max_speaker_share, [seed, attempt])
        problems = _target_problems(names, shares, np.bincount(label[kept], minlength=len(names)), tolerance,
                                    max_speaker_share, graph.speaker_size)
        if not problems:
            rows = {name: [utterances[i] for i in np.flatnonzero(kept & (label == e)).tolist()] for e, name in enumerate(names)}
            return Splits({name: rows[name] for name in fractions}, Counter({DROP_REASON: int((~kept).sum())}))
        first_problems = first_problems or problems
    raise SplitError(f"no assignment within the targets in {ATTEMPTS} seeded attempts; the first: " + "; ".join(first_problems))


def _assign(graph: _Graph, shares: np.ndarray, tolerance: float, cap: float,
            seed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One seeded assignment within the cap: each utterance's label and whether it is kept, both (utterances,)."""
    excluded = np.zeros(len(graph.speaker_size), bool)
    while True:  # each round excludes at least one more speaker (excluded speakers never enter an eval split)
        assignment = _Assignment(graph, shares, tolerance, cap, np.random.default_rng(seed), excluded)
        assignment.place_groups()
        assignment.cut()
        assignment.unplace_groups()
        assignment.place_groups()
        label, kept = _settle(graph, assignment.labels(), excluded, len(shares))
        sizes = np.bincount(label[kept], minlength=len(shares))
        over_cap = np.zeros_like(excluded)
        for e in range(len(shares) - 1):
            over_cap |= np.bincount(graph.speaker[kept & (label == e)], minlength=len(excluded)) > cap * sizes[e]
        if not over_cap.any():
            return label, kept
        excluded |= over_cap


def _settle(graph: _Graph, speaker_label: np.ndarray, excluded: np.ndarray, labels: int) -> tuple[np.ndarray, np.ndarray]:
    """The label of each utterance's speaker and whether the utterance is kept, both (utterances,).

    A sentence belongs to the label holding most of its utterances (ties: the lower label); an utterance is kept
    where its speaker's label is its sentence's. A speaker left with nothing kept then joins the label owning most
    of its sentences (unless it is excluded from the eval splits), so that no utterance is dropped that a split
    could take without sharing a speaker or a sentence.
    """
    per_label = np.bincount(speaker_label[graph.speaker] * len(graph.sentence_size) + graph.sentence,
                            minlength=labels * len(graph.sentence_size)).reshape(labels, -1)
    owner = per_label.argmax(axis=0)[graph.sentence]  # (utterances,) the label of each utterance's sentence
    kept = speaker_label[graph.speaker] == owner
    orphan = (np.bincount(graph.speaker, weights=kept, minlength=len(speaker_label)) == 0) & ~excluded
    if orphan.any():
        votes = np.bincount(graph.speaker * labels + owner, minlength=len(speaker_label) * labels).reshape(-1, labels)
        speaker_label = np.where(orphan, votes.argmax(axis=1), speaker_label)
        kept = speaker_label[graph.speaker] == owner
    return speaker_label[graph.speaker], kept


def _target_problems(names: list[str], shares: np.ndarray, sizes: np.ndarray, tolerance: float, cap: float,
                     speaker_sizes: np.ndarray) -> list[str]:
    """Each split outside `tolerance` of its target (`sizes`: the kept utterances per split), with why and what to
    change."""
    total = int(sizes.sum())
    problems = []
    for e, name in enumerate(names):
        target = shares[e] * total
        if abs(sizes[e] - target) <= tolerance * target:
            continue
        most = cap * target
        if name == names[-1]:
            why = "the eval splits leave it outside; change sample.split or raise sample.split_tolerance"
        elif sizes[e] > target:
            why = "its groups and speakers are too large to land closer; raise sample.split_tolerance"
        elif not (speaker_sizes <= most).any():
            why = (f"no speaker is small enough for it: sample.max_speaker_share {cap:g} allows {most:.0f} utterances "
                   f"per speaker, the smallest has {int(speaker_sizes.min())}; raise sample.max_speaker_share, or "
                   f"add speakers")
        else:
            why = (f"the {int((speaker_sizes <= most).sum())} speakers within sample.max_speaker_share {cap:g} "
                   f"({most:.0f} utterances each) do not reach it without breaking another split; raise "
                   f"sample.max_speaker_share or sample.split_tolerance, lower its fraction in sample.split, or add speakers")
        problems.append(f"split {name}: target {target:.1f} utterances ({shares[e]:g} of {total} kept), reached "
                        f"{int(sizes[e])}, outside sample.split_tolerance {tolerance:g}: {why}")
    return problems


def split_statistics(splits: Mapping[str, Sequence[Utterance]]) -> dict[str, dict[str, float | int]]:
    """Per split: utterances, speakers, sentences (distinct normalised texts), and the largest speaker's share of the
    split's utterances (0..1; 0 for an empty split)."""
    stats: dict[str, dict[str, float | int]] = {}
    for name, rows in splits.items():
        per_speaker = Counter(u.client_id for u in rows)
        stats[name] = {"utterances": len(rows), "speakers": len(per_speaker), "sentences": len({u.text for u in rows}),
                       "largest_speaker_share": max(per_speaker.values()) / len(rows) if rows else 0.0}
    return stats


def overlap(splits: Mapping[str, Sequence[Utterance]]) -> dict[str, dict[str, int]]:
    """Per pair of splits ("train/dev", in the mapping's order): speakers and sentences in both, and the utterances
    of the smaller split (the first on a tie) whose sentence occurs in the other."""
    result = {}
    for a, b in combinations(splits, 2):
        small, large = (a, b) if len(splits[a]) <= len(splits[b]) else (b, a)
        large_sentences = {u.text for u in splits[large]}
        result[f"{a}/{b}"] = {
            "shared_speakers": len({u.client_id for u in splits[a]} & {u.client_id for u in splits[b]}),
            "shared_sentences": len({u.text for u in splits[a]} & {u.text for u in splits[b]}),
            "utterances_with_shared_sentence": sum(u.text in large_sentences for u in splits[small]),
        }
    return result
