"""Experience replay, an option of any adaptation method: a fixed share of every training batch is source-language
(Dutch) training utterances, drawn from a seeded list that is written to a file.

The training DataLoader reads `ConcatDataset([target, replay])`: indices below `len(target)` are target utterances,
the rest replay ones. `ReplaySampler` orders them so that every consecutive block of `batch_size` indices (one
micro-batch) holds exactly `replay_per_batch` replay indices (`adapt.replay_fraction · batch_size`, a whole number
that the params check).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from forgetting.batching import LengthGroupedEpochSampler
from forgetting.corpus import Utterance, write_split_tsv
from forgetting.errors import InputError


class ReplayError(InputError):
    """Replay settings that the data cannot satisfy; the message names the params key."""


def choose_replay(utterances: Sequence[Utterance], samples: int, seed: int) -> list[Utterance]:
    """`samples` distinct utterances drawn with `random.Random(seed)`, in the order drawn."""
    if not 1 <= samples <= len(utterances):
        raise ReplayError(f"adapt.replay_samples = {samples}, but the source train split holds {len(utterances)} "
                          f"utterances (expected 1 to {len(utterances)})")
    return random.Random(seed).sample(list(utterances), samples)


def write_replay_list(path: Path, utterances: Sequence[Utterance]) -> None:
    """The replay utterances as a split TSV with their `duration_s`, readable by `forgetting.corpus.read_split_tsv`."""
    write_split_tsv(path, utterances, extra=("duration_s",))


class ReplaySampler(Sampler[int]):
    """Indices into `ConcatDataset([target, replay])` in blocks of `batch_size` (one micro-batch each): `batch_size −
    replay_per_batch` target indices, then `replay_per_batch` replay indices.

    Target indices follow `LengthGroupedEpochSampler(target_lengths, batch_size − replay_per_batch, seed)` at this
    epoch; the last block is completed by going round that order again, so every block is whole and no target
    utterance is dropped. Replay indices run through an endless stream of shuffles of the replay list, a fresh one
    (seeded by (seed, cycle)) each time the list is used up; epoch e takes the stream's e-th stretch, so the replay
    utterances are used equally often (± 1) over a run. The order depends only on the seed and the epoch: a resumed
    run skips exactly the batches it had seen. Under DistributedDataParallel each process gets whole blocks, so every
    process's micro-batch holds the same share of replay.
    """

    def __init__(self, target_lengths: Sequence[int], replay_count: int, batch_size: int, replay_per_batch: int,
                 seed: int):
        if not target_lengths or replay_count < 1:
            raise ReplayError(f"replay needs target and replay utterances, got {len(target_lengths)} and {replay_count}")
        if not 1 <= replay_per_batch < batch_size:
            raise ReplayError(f"adapt.replay_fraction gives {replay_per_batch} replayed utterances in a batch of "
                              f"{batch_size}: expected 1 to {batch_size - 1}")
        self.replay_per_batch, self.targets_per_batch = replay_per_batch, batch_size - replay_per_batch
        self.target_count, self.replay_count, self.batch_size, self.seed = len(target_lengths), replay_count, batch_size, seed
        self.batches = -(-self.target_count // self.targets_per_batch)
        self._targets = LengthGroupedEpochSampler(target_lengths, self.targets_per_batch, seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._targets.set_epoch(epoch)

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = list(self._targets)
        targets = [order[i % len(order)] for i in range(self.batches * self.targets_per_batch)]
        replay = self._replay_stream(self.epoch * self.batches * self.replay_per_batch, self.batches * self.replay_per_batch)
        for b in range(self.batches):
            yield from targets[b * self.targets_per_batch:(b + 1) * self.targets_per_batch]
            yield from (self.target_count + i for i in replay[b * self.replay_per_batch:(b + 1) * self.replay_per_batch])

    def _replay_stream(self, start: int, count: int) -> list[int]:
        """Positions `start` to `start + count` of the replay stream: replay-list indices, shuffle after shuffle."""
        first, last = start // self.replay_count, (start + count - 1) // self.replay_count
        stream = np.concatenate([np.random.default_rng((self.seed, cycle)).permutation(self.replay_count)
                                 for cycle in range(first, last + 1)])
        offset = start - first * self.replay_count
        return stream[offset:offset + count].tolist()
