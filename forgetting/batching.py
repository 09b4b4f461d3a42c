"""Batches for CTC training and inference: a dataset of lazily decoded clips, the collator that pads audio and
labels apart, and the length-grouped sampler whose order depends only on the seed and the epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from transformers import Wav2Vec2Processor
from transformers.trainer_pt_utils import get_length_grouped_indices

from forgetting.audio import TARGET_SR, load_clip_16k, safe_clip_path
from forgetting.corpus import WORD_DELIMITER, Utterance
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
