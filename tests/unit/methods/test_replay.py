"""Experience replay: the seeded choice and its list file, and the sampler's blocks on real clips read through a
DataLoader: each batch holds exactly the set number of replayed utterances, all from the written list, in the
length-grouped target order, epoch after epoch, also when batches are dealt out to two processes."""

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader

from forgetting.data.corpus import Utterance, normalise_text, read_split_tsv
from forgetting.methods.replay import choose_replay, write_replay_list
from forgetting.training.batching import CTCCollator, LengthGroupedEpochSampler, ReplayError, ReplaySampler, UtteranceDataset
from tests.unit.audio_files import sine, write_clip
from tests.unit.tiny import SENTENCES

TARGETS, REPLAYED, BATCH, PER_BATCH, SEED = 10, 6, 4, 1, 3


def clips(root: Path, lang: str, count: int, first_s: float) -> list[Utterance]:
    """`count` real WAV sines of distinct lengths in `root`, as validated rows with their durations."""
    rows = []
    for i in range(count):
        seconds = first_s + 0.1 * i
        path = f"{lang}_{i}.wav"
        write_clip(root / path, sine(seconds, 16_000, freq=200 + 20 * i), 16_000)
        sentence = SENTENCES[lang][i % 2]
        rows.append(Utterance(client_id=f"{lang}{i % 3}", path=path, sentence=sentence, text=normalise_text(sentence),
                              line=i + 2, duration_s=seconds))
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    return root, clips(root, "de", TARGETS, 0.5), clips(root, "nl", 15, 0.4)


def test_choice_is_seeded_and_distinct_and_too_many_raise(corpus):
    _, _, source = corpus
    chosen = choose_replay(source, REPLAYED, SEED)
    assert chosen == choose_replay(source, REPLAYED, SEED) != choose_replay(source, REPLAYED, SEED + 1)
    assert len({u.path for u in chosen}) == REPLAYED and all(u in source for u in chosen)
    with pytest.raises(ReplayError, match=r"adapt.replay_samples = 16, but the source train split holds 15 utterances"):
        choose_replay(source, 16, SEED)


def test_every_batch_holds_the_set_number_of_replayed_utterances_from_the_written_list(corpus, processor):
    root, target, source = corpus
    write_replay_list(root / "replay.tsv", choose_replay(source, REPLAYED, SEED))
    listed = read_split_tsv(root / "replay.tsv")
    assert [dataclasses.replace(u, line=0) for u in listed] == [dataclasses.replace(u, line=0)
                                                                for u in choose_replay(source, REPLAYED, SEED)]
    dataset = ConcatDataset([UtteranceDataset(target, root, processor), UtteranceDataset(listed, root, processor)])
    sampler = ReplaySampler(dataset.datasets[0].lengths, REPLAYED, BATCH, PER_BATCH, SEED)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, collate_fn=CTCCollator())
    batches = list(loader)
    assert len(sampler) == 4 * BATCH and len(batches) == 4  # ⌈10 / 3⌉ blocks of 3 target + 1 replayed utterances
    replayed, seen = {u.path for u in listed}, Counter()
    for batch in batches:
        assert batch["input_values"].shape[0] == BATCH
        assert sum(path in replayed for path in batch["paths"]) == PER_BATCH
        assert batch["paths"][-1] in replayed
        seen.update(batch["paths"][:-1])
    assert set(seen) == {u.path for u in target}  # every target utterance; two again to complete the last block


def test_targets_follow_the_length_grouped_order_and_replay_cycles_evenly():
    # more targets than one mega-batch (50 x 3): the length-grouped order then changes with the epoch
    lengths = torch.randint(8_000, 80_000, (400,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler, replay_uses = ReplaySampler(lengths, REPLAYED, BATCH, PER_BATCH, SEED), Counter()
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        blocks = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
        assert len(blocks) == 134  # ⌈400 / 3⌉
        grouped = LengthGroupedEpochSampler(lengths, BATCH - PER_BATCH, SEED)
        grouped.set_epoch(epoch)
        expected = list(grouped)
        assert [i for block in blocks for i in block[:-1]] == expected + expected[:2]  # the last block completed
        assert all(block[-1] >= len(lengths) for block in blocks)
        replay_uses.update(block[-1] - len(lengths) for block in blocks)
        orders.append(order)
    assert replay_uses == {i: 67 for i in range(REPLAYED)}  # 3 epochs x 134 blocks, evenly over the 6 replayed
    assert [i for i in orders[0] if i < 400] != [i for i in orders[1] if i < 400]  # the targets reshuffled
    resumed = ReplaySampler(lengths, REPLAYED, BATCH, PER_BATCH, SEED)
    resumed.set_epoch(1)
    assert list(resumed) == orders[1]  # the order depends on the seed and the epoch only


def test_two_processes_each_get_whole_blocks(corpus):
    _, target, _ = corpus
    lengths = [round(u.duration_s * 16_000) for u in target] * 2  # 20 targets: 7 blocks
    sampler = ReplaySampler(lengths, REPLAYED, BATCH, PER_BATCH, SEED)
    for process in (0, 1):
        shard = BatchSamplerShard(BatchSampler(sampler, BATCH, drop_last=False), num_processes=2, process_index=process)
        batches = list(shard)
        assert len(batches) == 4  # 7 blocks dealt out in turn, the last process's completed from the start
        assert all(len(b) == BATCH and sum(i >= len(lengths) for i in b) == PER_BATCH for b in batches)


def test_a_batch_without_target_utterances_is_refused():
    with pytest.raises(ReplayError, match="gives 4 replayed utterances in a batch of 4: expected 1 to 3"):
        ReplaySampler([16_000] * 5, REPLAYED, 4, 4, SEED)
