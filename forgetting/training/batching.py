"""Batches for CTC training and inference: a dataset of lazily decoded clips, the collator that pads audio and
labels apart, the length-grouped sampler whose order depends only on the seed and the epoch, and the replay sampler
that gives every micro-batch a fixed share of a second dataset's utterances (experience replay, which chooses them)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from transformers import Wav2Vec2Processor
from transformers.trainer_pt_utils import get_length_grouped_indices

from forgetting.data.audio import TARGET_SR, load_clip_16k, safe_clip_path
from forgetting.data.corpus import WORD_DELIMITER, Utterance
from forgetting.errors import InputError

LABEL_PAD = -100  # ignored by the CTC loss


class TrainDataError(InputError):
    """Training data the core cannot use; the message names the row."""


@dataclass(frozen=True)
class Split:
    """Utterances of one split of one language, and the folder their clips are in."""

    utterances: Sequence[Utterance]
    clips: Path


class UtteranceDataset(Dataset):
    """Utterances whose clips are decoded only when an item is read (in DataLoader workers).

    An item is `{"input_values": float32 (samples,), "labels": list[int], "path": str}`: the 16 kHz clip normalised
    per utterance by the processor's feature extractor (zero mean, unit variance), the tokenizer ids of the
    normalised text (spaces as `|`), and the clip's name in the metadata. `lengths` (samples) come from the
    `duration_s` column, so length grouping decodes nothing.
    """

    def __init__(self, utterances: Sequence[Utterance], clips_dir: Path, processor: Wav2Vec2Processor):
        for u in utterances:
            if u.duration_s is None:
                raise TrainDataError(f"line {u.line} ({u.path}): no duration_s; train on the validated splits")
        self.utterances = list(utterances)
        self.lengths = [round(u.duration_s * TARGET_SR) for u in self.utterances]
        self.clips_dir = clips_dir
        self.processor = processor

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, np.ndarray | list[int]]:
        u = self.utterances[index]
        audio = load_clip_16k(safe_clip_path(self.clips_dir, u.path))
        input_values = self.processor.feature_extractor(audio, sampling_rate=TARGET_SR)["input_values"][0]
        labels = self.processor.tokenizer(u.text.replace(" ", WORD_DELIMITER))["input_ids"]
        return {"input_values": input_values, "labels": labels, "path": u.path}


@dataclass(frozen=True)
class CTCCollator:
    """Pads a list of `UtteranceDataset` items: audio with `padding_value` into `input_values` (batch, samples)
    plus `attention_mask` (batch, samples; 1 = real sample), labels with -100 into `labels` (batch, tokens); the
    clips' names, where the items have them, as `paths` (so a bad batch can be named)."""

    padding_value: float = 0.0

    def __call__(self, items: Sequence[Mapping[str, np.ndarray | list[int]]]) -> dict[str, torch.Tensor]:
        samples = max(len(item["input_values"]) for item in items)
        tokens = max(len(item["labels"]) for item in items)
        input_values = torch.full((len(items), samples), self.padding_value, dtype=torch.float32)
        attention_mask = torch.zeros((len(items), samples), dtype=torch.long)
        labels = torch.full((len(items), tokens), LABEL_PAD, dtype=torch.long)
        for row, item in enumerate(items):
            audio, ids = item["input_values"], item["labels"]
            input_values[row, : len(audio)] = torch.from_numpy(np.asarray(audio, dtype=np.float32))
            attention_mask[row, : len(audio)] = 1
            labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        batch = {"input_values": input_values, "attention_mask": attention_mask, "labels": labels}
        if all("path" in item for item in items):
            batch["paths"] = [item["path"] for item in items]
        return batch


class LengthGroupedEpochSampler(Sampler[int]):
    """transformers' length grouping (shuffled mega-batches, each sorted by length) from precomputed lengths,
    reshuffled from `seed + epoch`: the order of an epoch never depends on the RNG state, so a resumed run
    skips exactly the batches it had seen."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def batch_rows(batch: dict, start: int, end: int) -> dict:
    """Rows `start:end` of a collated batch, trimmed to their own longest audio and label sequence."""
    mask = batch["attention_mask"][start:end]
    samples = int(mask.sum(-1).max())
    labels = batch["labels"][start:end]
    tokens = int((labels != LABEL_PAD).sum(-1).max())
    piece = {"input_values": batch["input_values"][start:end, :samples], "attention_mask": mask[:, :samples],
             "labels": labels[:, :tokens]}
    if "paths" in batch:
        piece["paths"] = batch["paths"][start:end]
    return piece


class ReplayError(InputError):
    """Replay settings that the data cannot satisfy; the message names the params key."""


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
