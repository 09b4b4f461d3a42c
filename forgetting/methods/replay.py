"""Experience replay, an option of any adaptation method: a fixed share of every training batch is source-language
(Dutch) training utterances, drawn from a seeded list that is written to a file.

The training DataLoader reads `ConcatDataset([target, replay])`: indices below `len(target)` are target utterances,
the rest replay ones. The training core's `ReplaySampler` (`forgetting.training.batching`) orders them so that every
consecutive block of `batch_size` indices (one micro-batch) holds exactly `replay_per_batch` replay indices
(`adapt.replay_fraction · batch_size`, a whole number that the params check).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from forgetting.data.corpus import Utterance, write_split_tsv
from forgetting.training.batching import ReplayError


def choose_replay(utterances: Sequence[Utterance], samples: int, seed: int) -> list[Utterance]:
    """`samples` distinct utterances drawn with `random.Random(seed)`, in the order drawn."""
    if not 1 <= samples <= len(utterances):
        raise ReplayError(f"adapt.replay_samples = {samples}, but the source train split holds {len(utterances)} "
                          f"utterances (expected 1 to {len(utterances)})")
    return random.Random(seed).sample(list(utterances), samples)


def write_replay_list(path: Path, utterances: Sequence[Utterance]) -> None:
    """The replay utterances as a split TSV with their `duration_s`, readable by `forgetting.data.corpus.read_split_tsv`."""
    write_split_tsv(path, utterances, extra=("duration_s",))
