"""From a language's metadata rows to its train/dev/test utterances, with the counts a thesis reports: the metadata
filters, a seeded sample, and either our grouped splits (disjoint by speaker and by sentence: `forgetting.data.splits`)
or the release's official ones. The sample stages (`stages/sample.py` for Common Voice, `stages/sample_hf.py` for a
Hugging Face dataset) read the rows and write what this returns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from forgetting.data.corpus import CorpusError, Utterance, filter_and_sample
from forgetting.data.splits import SplitError, overlap, split_grouped, split_statistics
from forgetting.layout import SPLITS
from forgetting.schema import LanguageSample, SampleParams


class AllRowsFilteredError(CorpusError):
    """No row of a metadata file passes the filters; the message names the file and the count per filter."""


@dataclass
class Sampled:
    """The splits drawn for a language (empty when drawing failed) and the counts for its metrics JSON."""

    splits: dict[str, list[Utterance]] = field(default_factory=dict)
    counts: dict[str, object] = field(default_factory=dict)


def _filter_counts(read: int, dropped: Counter[str], passed: int) -> dict[str, object]:
    return {"rows_read": read, "dropped_by_filter": dict(sorted(dropped.items())), "passed_filters": passed}


def _all_filtered(source: str, read: int, dropped: Counter[str]) -> AllRowsFilteredError:
    reasons = ", ".join(f"{reason} {count}" for reason, count in dropped.most_common()) or "no rows at all"
    return AllRowsFilteredError(f"{source}: none of its {read} rows passes the metadata filters ({reasons}); check "
                                "sample.min_up_votes, sample.include_segments and the language's alphabet")


def sample_grouped(rows: Sequence[Utterance], source: str, lang: LanguageSample, sample: SampleParams, seed: int,
                   lang_code: str) -> tuple[Sampled, CorpusError | None]:
    """Filter `rows` (from the file `source`), draw `lang.n` of them (seeded by `seed` and the language) and split them
    by `split_grouped`. Returns what was drawn and the error that stopped it, if any: the counts are filled either
    way, so the stage can write them before it fails."""
    drawn = filter_and_sample(rows, lang.alphabet, sample.min_up_votes, sample.include_segments, lang.n,
                              seed=f"{seed}-{lang_code}")
    result = Sampled(counts={"splits_from": "grouped", "seed": seed,
                             **_filter_counts(len(rows), drawn.dropped, len(drawn.passed)), "sampled": len(drawn.sampled)})
    if not drawn.passed:
        return result, _all_filtered(source, len(rows), drawn.dropped)
    try:
        grouped = split_grouped(drawn.sampled, vars(sample.split), sample.split_tolerance, sample.max_speaker_share, seed)
    except SplitError as err:
        return result, err
    result.splits = grouped.splits
    result.counts |= {"dropped_by_split": dict(sorted(grouped.dropped.items())),
                      "kept": sum(len(u) for u in grouped.splits.values()), "splits": split_statistics(grouped.splits)}
    return result, None


def sample_official(by_split: Mapping[str, Sequence[Utterance]], sources: Mapping[str, str], lang: LanguageSample,
                    sample: SampleParams, seed: int, lang_code: str) -> tuple[Sampled, CorpusError | None]:
    """The release's own splits (`by_split[split]`, read from `sources[split]`): each filtered, train drawn down to
    `lang.n` (dev and test whole: published results are on them), with the speakers and sentences they share, if
    any. Returns what was drawn and the error that stopped it, if any (the counts are filled either way)."""
    result = Sampled(counts={"splits_from": "official", "seed": seed, "by_split": {}})
    error: CorpusError | None = None
    for name in SPLITS:
        rows = by_split[name]
        n = lang.n if name == "train" else len(rows)
        drawn = filter_and_sample(rows, lang.alphabet, sample.min_up_votes, sample.include_segments, n,
                                  seed=f"{seed}-{lang_code}-{name}")
        result.counts["by_split"][name] = {**_filter_counts(len(rows), drawn.dropped, len(drawn.passed)),
                                          "sampled": len(drawn.sampled)}
        result.splits[name] = drawn.sampled
        if not drawn.passed and error is None:
            error = _all_filtered(sources[name], len(rows), drawn.dropped)
    if error is not None:
        result.splits = {}
        return result, error
    result.counts |= {"kept": sum(len(u) for u in result.splits.values()), "splits": split_statistics(result.splits),
                      "overlap": overlap(result.splits)}
    return result, None
