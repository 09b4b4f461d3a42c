"""A Hugging Face audio dataset as a corpus source: a DatasetDict of eSpeak speech written by `datasets` itself, with
`save_to_disk` and in the Hub's parquet layouts, read back with `read_rows` and `write_clips`."""

import io
import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
from datasets import Audio, Dataset, DatasetDict, load_from_disk

from forgetting.data.audio import load_clip_16k, resample
from forgetting.data.corpus import Utterance
from forgetting.data.hf_dataset import CLIP_NAME, DatasetSourceError, read_rows, write_clips
from forgetting.demo.espeak import open_espeak
from forgetting.demo.synth import CLIP_RATE_HZ, to_clip_rate
from forgetting.schema import DatasetSource

ROOT = Path(__file__).resolve().parents[3]
VOICE_RATE_HZ = 22_050  # eSpeak's output rate

# split -> rows of (sentence, its normalised text by hand, speaker, stored audio path, format, subtype, suffix expected)
# Paths without a known suffix (None, "raw_audio_3", "v2") make read_rows read the format from the bytes' header.
ROWS = {
    "train": [("Hallo, wereld!", "hallo wereld", "spk_a", "0001.wav", "WAV", "PCM_16", ".wav"),
              ("De kat zit op de MAT.", "de kat zit op de mat", "spk_b", "clips/0002.FLAC", "FLAC", "PCM_16", ".flac"),
              ("Zo’n mooie dag — echt waar?", "zo'n mooie dag echt waar", "spk_a", None, "MP3", "MPEG_LAYER_III", ".mp3"),
              ("’s Avonds eten wij.", "s avonds eten wij", "spk_c", "raw_audio_3", "FLAC", "PCM_24", ".flac"),
              ("Twee-en-twintig katten", "twee en twintig katten", "spk_b", "x.ogg", "OGG", "VORBIS", ".ogg")],
    "validation": [("Goedemorgen!", "goedemorgen", "spk_d", "v.wav", "WAV", "FLOAT", ".wav"),
                   ("Wat een weer…", "wat een weer", "spk_d", "v2", "OGG", "OPUS", ".opus")],
    "test": [("Tot ziens.", "tot ziens", "spk_e", "t.flac", "FLAC", "PCM_16", ".flac"),
             ("Dank je wel!", "dank je wel", "spk_f", "t2.wav", "WAV", "PCM_16", ".wav")],
    "extra": [("Nog een zin.", "nog een zin", "spk_g", "e.wav", "WAV", "PCM_16", ".wav")],
}
SPLITS = {"train": "train", "dev": "validation", "test": "test"}  # "extra" is in no split: read_rows leaves it
LAYOUTS = ("save_to_disk", "parquet_data", "parquet_split_dirs", "parquet_split_files")


def encode(sentence: str, voice: str, fmt: str, subtype: str) -> bytes:
    """`sentence` spoken by eSpeak, encoded in memory (MP3 and Opus at 48 kHz, the others at eSpeak's 22.05 kHz)."""
    samples = open_espeak().synthesise(sentence, voice, 160, 50)
    if subtype in ("MPEG_LAYER_III", "OPUS"):
        audio, rate = to_clip_rate(samples, VOICE_RATE_HZ), CLIP_RATE_HZ
    else:
        audio, rate = samples.astype(np.float32) * (0.8 / 32768), VOICE_RATE_HZ
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def audio() -> dict[str, list[bytes]]:
    """The stored audio bytes of every row, by split."""
    return {split: [encode(row[0], f"nl+{'fm'[i % 2]}{i % 3 + 1}", row[4], row[5]) for i, row in enumerate(rows)]
            for split, rows in ROWS.items()}


def dataset_dict(audio: dict[str, list[bytes]]) -> DatasetDict:
    """ROWS as `datasets` holds them: an Audio column (stored decodable, as the Hub's are), a text and a speaker column.

    Built as plain structs and then cast: `Audio().encode_example` would import torchcodec."""
    return DatasetDict({split: Dataset.from_dict({
        "audio": [{"bytes": data, "path": row[3]} for row, data in zip(rows, audio[split], strict=True)],
        "transcription": [row[0] for row in rows],
        "speaker_id": [row[2] for row in rows]}).cast_column("audio", Audio()) for split, rows in ROWS.items()})


def write_layout(dd: DatasetDict, root: Path, layout: str) -> Path:
    """`dd` written by `datasets` in `layout`; train in two shards (row groups of two rows in parquet)."""
    if layout == "save_to_disk":
        dd.save_to_disk(root, num_shards={split: 2 if split == "train" else 1 for split in dd})
        return root
    for split, ds in dd.items():
        parts = [ds.select(range(3)), ds.select(range(3, len(ds)))] if split == "train" else [ds]
        for i, part in enumerate(parts):
            shard = f"{split}-{i:05d}-of-{len(parts):05d}.parquet"
            name = {"parquet_data": f"data/{shard}", "parquet_split_dirs": f"{split}/{i:04d}.parquet",
                    "parquet_split_files": f"{split}.parquet" if len(parts) == 1 else shard}[layout]
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            part.to_parquet(root / name, batch_size=2)
    return root


@pytest.fixture(scope="module")
def stored(audio, tmp_path_factory) -> dict[str, Path]:
    dd = dataset_dict(audio)
    return {layout: write_layout(dd, tmp_path_factory.mktemp(layout), layout) for layout in LAYOUTS}


def source(path: Path, **changes) -> DatasetSource:
    fields = {"path": path, "clips": path.parent / "clips", "audio": "audio", "sentence": "transcription",
              "client_id": "speaker_id", "split_names": SPLITS, "splits": "grouped"} | changes
    return DatasetSource(**fields)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_read_rows_reads_every_row_once_in_order(stored, layout):
    rows = read_rows(source(stored[layout]))
    assert list(rows) == ["train", "validation", "test"]
    for split, utterances in rows.items():
        expected = [(f"{split}-{i:08d}{row[6]}", row[2], row[0], row[1], i) for i, row in enumerate(ROWS[split])]
        assert [(u.path, u.client_id, u.sentence, u.text, u.line) for u in utterances] == expected
        assert all(u.up_votes is None and u.down_votes is None for u in utterances)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_write_clips_writes_the_stored_bytes_which_decode_as_the_source(stored, audio, layout, tmp_path):
    src = source(stored[layout])
    utterances = [u for split in read_rows(src).values() for u in split]
    clips = tmp_path / "clips"
    written = write_clips(src, utterances, clips, progress=False)
    assert written == sum(len(data) for split in SPLITS.values() for data in audio[split])
    assert sorted(p.name for p in clips.iterdir()) == sorted(u.path for u in utterances)
    assert not (tmp_path / "clips.tmp").exists()
    for split in SPLITS.values():
        for row, data in enumerate(audio[split]):
            clip = clips / f"{split}-{row:08d}{ROWS[split][row][6]}"
            assert clip.read_bytes() == data
            source_audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
            np.testing.assert_array_equal(load_clip_16k(clip), resample(source_audio.mean(axis=1, dtype=np.float32), rate))
            assert rate == (CLIP_RATE_HZ if ROWS[split][row][5] in ("MPEG_LAYER_III", "OPUS") else VOICE_RATE_HZ)


def test_write_clips_writes_only_the_rows_asked_for(stored, audio, tmp_path):
    """A sample: rows from the middle of train's second shard and the end of test, in any order."""
    for layout in ("save_to_disk", "parquet_data"):
        src = source(stored[layout])
        rows = read_rows(src)
        chosen = [rows["test"][1], rows["train"][3], rows["train"][0]]
        clips = tmp_path / layout
        assert write_clips(src, chosen, clips, progress=False) == len(audio["test"][1]) + len(audio["train"][3]) + len(
            audio["train"][0])
        assert sorted(p.name for p in clips.iterdir()) == ["test-00000001.wav", "train-00000000.wav", "train-00000003.flac"]
        assert (clips / "train-00000003.flac").read_bytes() == audio["train"][3]


def test_a_plain_dataset_is_the_split_train(audio, tmp_path):
    dataset_dict(audio)["test"].save_to_disk(tmp_path / "plain")
    rows = read_rows(source(tmp_path / "plain", split_names={"train": "train"}))
    assert [(u.path, u.text) for u in rows["train"]] == [("train-00000000.flac", "tot ziens"),
                                                          ("train-00000001.wav", "dank je wel")]


def test_without_a_speaker_column_each_row_is_its_own_speaker(stored):
    rows = read_rows(source(stored["parquet_data"], client_id=None))
    assert [u.client_id for u in rows["validation"]] == ["validation:0", "validation:1"]
    assert len({u.client_id for split in rows.values() for u in split}) == 9


def test_datasets_never_decodes_audio(stored, tmp_path):
    """The stored feature is decodable: had the reader not cast it to Audio(decode=False), `datasets` would decode
    (here: raise, torchcodec is not installed; where it is: import it)."""
    assert load_from_disk(stored["save_to_disk"])["train"].features["audio"] == Audio(decode=True)
    for layout in LAYOUTS:
        src = source(stored[layout])
        write_clips(src, [u for split in read_rows(src).values() for u in split], tmp_path / layout, progress=False)
    assert "torchcodec" not in sys.modules


def test_nothing_is_copied_into_the_cache_or_the_dataset_folder(stored, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    for layout in LAYOUTS:
        before = sorted(p for p in stored[layout].rglob("*"))
        src = source(stored[layout])
        write_clips(src, [u for split in read_rows(src).values() for u in split], tmp_path / layout, progress=False)
        assert sorted(p for p in stored[layout].rglob("*")) == before
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cached, "the parquet builder did not look in the cache set here: this test would prove nothing"
    assert all(p.suffix == ".lock" and p.stat().st_size == 0 for p in cached), cached


def test_rows_with_only_a_path_read_the_file_inside_the_dataset_folder_only(audio, tmp_path):
    """A parquet row may hold a path and no bytes. Inside the dataset folder it is read; outside it is refused, and
    the clips written before the refused row are removed with the unfinished folder."""
    root = tmp_path / "ds"
    (root / "audio").mkdir(parents=True)
    (root / "audio" / "inside.flac").write_bytes(audio["test"][0])
    (tmp_path / "outside.wav").write_bytes(audio["test"][1])
    paths = ["audio/inside.flac", str(tmp_path / "outside.wav")]  # relative to the dataset folder; absolute
    Dataset.from_dict({"audio": [{"bytes": None, "path": path} for path in paths],
                       "transcription": ["Tot ziens.", "Dank je wel!"], "speaker_id": ["a", "b"]}).cast_column(
        "audio", Audio()).to_parquet(root / "train.parquet", batch_size=2)
    src = source(root, split_names={"train": "train"})
    rows = read_rows(src)["train"]
    assert [u.path for u in rows] == ["train-00000000.flac", "train-00000001.wav"]

    assert write_clips(src, rows[:1], tmp_path / "clips", progress=False) == len(audio["test"][0])
    assert (tmp_path / "clips" / "train-00000000.flac").read_bytes() == audio["test"][0]

    with pytest.raises(DatasetSourceError, match=rf"{root} split 'train' row 1 column 'audio': no audio bytes, and its path "
                                                 rf"'{tmp_path / 'outside.wav'}' is not a file inside the dataset folder"):
        write_clips(src, rows, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "fresh.tmp").exists()
    with pytest.raises(DatasetSourceError, match="row 1"):
        write_clips(src, rows, tmp_path / "clips", progress=False)
    assert [p.name for p in (tmp_path / "clips").iterdir()] == ["train-00000000.flac"]  # the previous folder stays


def test_write_clips_refuses_names_it_did_not_give(stored, tmp_path):
    src = source(stored["save_to_disk"])
    rows = read_rows(src)
    for name in ("../train-00000000.wav", "train-00000000.txt", "train-0.wav", "train/00000000.wav"):
        with pytest.raises(DatasetSourceError, match=rf"clip name '{name}' .* is not one that read_rows gives"):
            write_clips(src, [rows["train"][1], Utterance(client_id="x", path=name, sentence="", text="")],
                        tmp_path / "clips", progress=False)
    with pytest.raises(DatasetSourceError, match=r"split 'train' row 0: asked for twice"):
        write_clips(src, [rows["train"][0], rows["train"][0]], tmp_path / "clips", progress=False)
    has = r"\['extra', 'test', 'train', 'validation'\]"
    with pytest.raises(DatasetSourceError, match=rf"no split\(s\) \['dev'\]; the dataset has splits {has}"):
        write_clips(src, [Utterance(client_id="x", path="dev-00000000.wav", sentence="", text="")],
                    tmp_path / "clips", progress=False)
    with pytest.raises(DatasetSourceError, match=r"split 'test' row 7 column 'audio': no such row; the split has 2 rows"):
        write_clips(src, [Utterance(client_id="x", path="test-00000007.wav", sentence="", text="")],
                    tmp_path / "clips", progress=False)
    assert not (tmp_path / "clips").exists()


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet_split_files"])
def test_errors_name_the_folder_split_and_column(stored, layout, tmp_path):
    root = stored[layout]
    has = r"\['extra', 'test', 'train', 'validation'\]"
    with pytest.raises(DatasetSourceError, match=rf"{root}: no split\(s\) \['dev', 'valid'\] .* the dataset has splits {has}"):
        read_rows(source(root, split_names={"train": "train", "dev": "dev", "test": "valid"}))
    with pytest.raises(DatasetSourceError, match=rf"{root} split 'train': no sentence column 'text', no client_id column "
                                                 r"'speaker'; its columns are \['audio', 'transcription', 'speaker_id'\]"):
        read_rows(source(root, sentence="text", client_id="speaker"))
    with pytest.raises(DatasetSourceError, match=r"split 'train' column 'transcription': Value\('string'\), expected an Audio"):
        read_rows(source(root, audio="transcription", sentence="speaker_id"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetSourceError, match=rf"{tmp_path / 'empty'}: no dataset: not a save_to_disk folder"):
        read_rows(source(tmp_path / "empty"))


def test_unreadable_bytes_without_a_suffix_and_missing_speakers_are_refused_by_row(audio, tmp_path):
    def save(name: str, rows: list[tuple[bytes, str | None, str | None]]) -> Path:
        Dataset.from_dict({"audio": [{"bytes": data, "path": path} for data, path, _ in rows],
                           "transcription": ["Hallo"] * len(rows), "speaker_id": [s for _, _, s in rows]}).cast_column(
            "audio", Audio()).save_to_disk(tmp_path / name)
        return tmp_path / name

    root = save("garbage", [(audio["test"][0], "a.flac", "a"), (b"not audio at all" * 8, "blob", "b")])
    with pytest.raises(DatasetSourceError, match=rf"{root} split 'train' row 1 column 'audio': no audio file suffix in its "
                                                 "path and libsndfile cannot read its bytes"):
        read_rows(source(root, split_names={"train": "train"}))
    aiff = io.BytesIO()
    sf.write(aiff, np.zeros(800, np.float32), 16_000, format="AIFF")
    root = save("aiff", [(aiff.getvalue(), None, "a")])
    with pytest.raises(DatasetSourceError, match=r"row 0 column 'audio': audio format AIFF .*, expected one of .wav, .flac"):
        read_rows(source(root, split_names={"train": "train"}))
    root = save("no_speaker", [(audio["test"][0], "a.flac", "a"), (audio["test"][1], "b.wav", None)])
    with pytest.raises(DatasetSourceError, match=rf"{root} split 'train' row 1 column 'speaker_id': no speaker"):
        read_rows(source(root, split_names={"train": "train"}))


# Run in a fresh interpreter: in a long test session a resize of one of Python's global tables (e.g. of the interned
# strings, which pathlib fills) is a single allocation of megabytes, which tracemalloc counts as if it were audio.
MEASURE_MEMORY = """
import json, sys, tracemalloc
from pathlib import Path
from forgetting.data.hf_dataset import DatasetSource, read_rows, write_clips
peaks = {}
for root in sys.argv[1:]:
    src = DatasetSource(path=Path(root), clips=Path(root + "_clips"), audio="audio", sentence="transcription",
                        client_id="speaker_id", split_names={"train": "train"}, splits="grouped")
    read_rows(src)  # the modules and caches `datasets` sets up on first use are not the dataset
    tracemalloc.start()
    rows = read_rows(src)["train"]
    read_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    written = write_clips(src, rows, src.clips, progress=False)
    peaks[Path(root).name] = {"read": read_peak, "write": tracemalloc.get_traced_memory()[1], "written": written}
    tracemalloc.stop()
print(json.dumps(peaks))
"""


def test_memory_holds_a_few_clips_not_the_dataset(tmp_path):
    """48 noise clips of 256 kB, Python allocations: reading the rows holds no audio (measured: 0.05 to 0.12 MB, the
    builder's bookkeeping); writing them holds about two batches of AUDIO_BATCH_ROWS = 8 clips (the one being written
    from and the one being read; measured: 4.2 to 4.7 MB), well under half the dataset (12.3 MB)."""
    clips, clip_bytes = 48, 256_000
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (clips, (clip_bytes - 44) // 2)).astype(np.float32)
    data = []
    for x in noise:
        buffer = io.BytesIO()
        sf.write(buffer, x, 16_000, format="WAV", subtype="PCM_16")
        data.append(buffer.getvalue())
    assert {len(d) for d in data} == {clip_bytes}
    dd = DatasetDict(train=Dataset.from_dict({"audio": [{"bytes": d, "path": f"{i}.wav"} for i, d in enumerate(data)],
                                              "transcription": ["ruis"] * clips, "speaker_id": ["s"] * clips}).cast_column(
        "audio", Audio()))
    layouts = ("save_to_disk", "parquet_data")
    roots = [str(write_layout(dd, tmp_path / layout, layout)) for layout in layouts]
    run = subprocess.run([sys.executable, "-c", MEASURE_MEMORY, *roots], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    peaks = json.loads(run.stdout.splitlines()[-1])
    for layout in layouts:
        assert peaks[layout]["written"] == clips * clip_bytes
        assert peaks[layout]["read"] < clip_bytes, peaks
        assert peaks[layout]["write"] < clips // 2 * clip_bytes, peaks


def test_clip_names_are_safe_file_names(stored):
    for split in read_rows(source(stored["parquet_split_dirs"])).values():
        for u in split:
            assert CLIP_NAME.fullmatch(u.path) and "/" not in u.path and not u.path.startswith(".")
