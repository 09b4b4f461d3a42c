"""Batches on real eSpeak clips: the lazily decoding dataset, the collator, and the length-grouped sampler."""


import numpy as np
import pytest
import torch

from forgetting.data.audio import load_clip_16k
from forgetting.data.corpus import Utterance
from forgetting.training.batching import CTCCollator, LengthGroupedEpochSampler, TrainDataError, UtteranceDataset, batch_rows
from forgetting.training.model import build_processor


def test_dataset_decodes_lazily_and_normalises(corpus, monkeypatch):
    decoded = []
    monkeypatch.setattr("forgetting.training.batching.load_clip_16k",
                        lambda path: decoded.append(path.name) or load_clip_16k(path))
    processor = build_processor(corpus.vocab)
    dataset = UtteranceDataset(corpus.utterances[:3], corpus.clips_dir, processor)
    assert dataset.lengths == [round(u.duration_s * 16_000) for u in corpus.utterances[:3]] and decoded == []
    item = dataset[1]
    assert decoded == [corpus.utterances[1].path]
    assert len(item["input_values"]) == dataset.lengths[1]
    assert item["input_values"].dtype == np.float32
    assert abs(item["input_values"].mean()) < 1e-3 and abs(item["input_values"].std() - 1) < 1e-2
    text = corpus.utterances[1].text
    assert processor.tokenizer.decode(item["labels"], group_tokens=False) == text
    assert item["labels"].count(processor.tokenizer.convert_tokens_to_ids("|")) == text.count(" ")
    with pytest.raises(TrainDataError, match=r"line 7 \(x\.mp3\): no duration_s"):
        UtteranceDataset([Utterance("c", "x.mp3", "Een", "een", line=7)], corpus.clips_dir, processor)


def test_collator_pads_audio_and_labels_separately():
    items = [{"input_values": np.ones(5, np.float32), "labels": [3, 4]},
             {"input_values": np.full(3, 2.0, np.float32), "labels": [5, 6, 7, 8]}]
    batch = CTCCollator()(items)
    assert batch["input_values"].tolist() == [[1, 1, 1, 1, 1], [2, 2, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[3, 4, -100, -100], [5, 6, 7, 8]]
    assert batch["input_values"].dtype == torch.float32 and batch["labels"].dtype == torch.long


def test_sampler_groups_by_length_and_reshuffles_per_epoch():
    lengths = list(range(100, 0, -1))
    sampler = LengthGroupedEpochSampler(lengths, batch_size=4, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(100)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    spreads = [np.ptp([lengths[i] for i in first[b:b + 4]]) for b in range(0, 100, 4)]
    assert np.median(spreads) < 30  # sorted within mega-batches of 24; a random batch of 4 spreads ~60


def test_batch_rows_are_trimmed_to_their_own_lengths():
    items = [{"input_values": np.ones(5, np.float32), "labels": [3, 4], "path": "a.mp3"},
             {"input_values": np.full(3, 2.0, np.float32), "labels": [5, 6, 7, 8], "path": "b.mp3"},
             {"input_values": np.full(2, 3.0, np.float32), "labels": [9], "path": "c.mp3"}]
    rows = batch_rows(CTCCollator()(items), 1, 3)
    assert rows["input_values"].tolist() == [[2, 2, 2], [3, 3, 0]]
    assert rows["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert rows["labels"].tolist() == [[5, 6, 7, 8], [9, -100, -100, -100]]
    assert rows["paths"] == ["b.mp3", "c.mp3"]
