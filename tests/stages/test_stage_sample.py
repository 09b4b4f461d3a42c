"""The sample stages' CLIs: grouped splits (no speaker and no sentence in two splits) and the release's official ones
from a Common Voice-layout folder, the counts that add up, the Benchmark segment, every row filtered away; and a
Hugging Face dataset saved by `datasets` itself through sample_hf -> validate."""

import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from datasets import Audio, Dataset, DatasetDict

from forgetting.data.corpus import CorpusError, read_split_tsv
from forgetting.demo.espeak import open_espeak
from forgetting.demo.synth import HEADER
from forgetting.layout import SPLITS
from stages import sample, sample_hf, validate

REPO = Path(__file__).resolve().parents[2]
WORDS = ["de", "kat", "zit", "op", "mat", "een", "hond", "loopt", "in", "tuin", "zon", "schijnt", "over", "huis", "boom"]


def params_in(folder: Path, change) -> None:
    """The repo's params.yaml, changed by `change(params)`, written to `folder`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    change(params)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


def metadata_row(client: str, path: str, sentence: str, segment: str = "", up: int = 2, down: int = 0) -> str:
    fields = dict.fromkeys(HEADER, "") | {"client_id": client, "path": path, "sentence": sentence, "up_votes": str(up),
                                          "down_votes": str(down), "locale": "nl", "segment": segment}
    return "\t".join(fields[name] for name in HEADER)


def write_tsv(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["\t".join(HEADER), *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    """A Common Voice-layout Dutch folder (metadata only: sample never opens a clip): 60 speakers of 2 to 9 rows,
    sentences read by about two speakers each, 3 Benchmark segment rows and 2 down-voted rows."""
    rnd = random.Random(3)
    sentences = [" ".join(rnd.choices(WORDS, k=5)).capitalize() + "." for _ in range(160)]
    rows = []
    for speaker in range(60):
        for _ in range(rnd.randint(2, 9)):
            rows.append(metadata_row(f"spk{speaker:02d}", f"c{len(rows)}.mp3", rnd.choice(sentences)))
    rows += [metadata_row("spk00", f"seg{i}.mp3", "Negen", segment="Benchmark") for i in range(3)]
    rows += [metadata_row("spk01", f"down{i}.mp3", "Fout gelezen.", up=1, down=3) for i in range(2)]
    write_tsv(tmp_path / "cv" / "nl" / "validated.tsv", rows)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cv" / "nl"


def run(module, monkeypatch, lang: str = "nl") -> dict:
    monkeypatch.setattr(sys, "argv", [module.__name__, "--lang", lang, "--out", f"sampled/{lang}", "--metrics", f"{lang}.json"])
    module.main()
    return json.loads(Path(f"{lang}.json").read_text(encoding="utf-8"))


def test_grouped_splits_keep_speakers_and_sentences_apart_and_the_counts_add_up(corpus, monkeypatch, capsys):
    params_in(Path.cwd(), lambda p: p["data"]["common_voice"]["nl"].update(path=str(corpus)))
    counts = run(sample, monkeypatch)
    splits = {name: read_split_tsv(Path(f"sampled/nl/{name}.tsv")) for name in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not {u.client_id for u in splits[a]} & {u.client_id for u in splits[b]}, (a, b)
                assert not {u.text for u in splits[a]} & {u.text for u in splits[b]}, (a, b)
    assert counts["dropped_by_filter"] == {"segment": 3, "too_few_up_votes": 2}
    assert counts["rows_read"] == counts["passed_filters"] + 5 and counts["sampled"] == counts["passed_filters"]
    assert counts["sampled"] == counts["kept"] + sum(counts["dropped_by_split"].values())
    assert counts["kept"] == sum(len(s) for s in splits.values())
    kept = counts["kept"]
    fractions = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["sample"]["split"]
    for name, fraction in fractions.items():
        stats = counts["splits"][name]
        assert stats["utterances"] == len(splits[name]) and abs(stats["utterances"] - fraction * kept) <= 0.1 * fraction * kept
        assert stats["speakers"] == len({u.client_id for u in splits[name]})
        assert stats["sentences"] == len({u.text for u in splits[name]})
        if name != "train":
            assert stats["largest_speaker_share"] <= 0.2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"sample nl: grouped splits from {corpus}: kept {kept}")


def test_official_splits_are_the_release_files_filtered_with_their_overlap_reported(corpus, monkeypatch):
    write_tsv(corpus / "train.tsv", [metadata_row(f"spk{i % 4}", f"t{i}.mp3", f"Zin {WORDS[i % 15]} {WORDS[i // 15]}.")
                                     for i in range(40)])
    write_tsv(corpus / "dev.tsv", [metadata_row("spk0", "d0.mp3", "Zin op de."), metadata_row("spk9", "d1.mp3", "Nieuw.")])
    write_tsv(corpus / "test.tsv", [metadata_row("spk8", "e0.mp3", "Anders."),
                                    metadata_row("spk8", "e1.mp3", "Negen", segment="Benchmark")])

    def official(p: dict) -> None:
        del p["data"]["common_voice"]["nl"]
        p["data"]["common_voice_official"]["nl"] = {"path": str(corpus)}
        p["sample"]["nl"].update(n=30)
    params_in(Path.cwd(), official)
    counts = run(sample, monkeypatch)
    assert counts["splits_from"] == "official"
    assert {name: counts["by_split"][name]["sampled"] for name in SPLITS} == {"train": 30, "dev": 2, "test": 1}
    assert counts["by_split"]["test"]["dropped_by_filter"] == {"segment": 1}
    assert counts["overlap"]["train/dev"]["shared_speakers"] == 1  # spk0 reads in both
    assert counts["overlap"]["train/dev"]["shared_sentences"] == 1  # "zin op de" too
    assert counts["overlap"]["dev/test"] == {"shared_speakers": 0, "shared_sentences": 0, "utterances_with_shared_sentence": 0}
    assert len(read_split_tsv(Path("sampled/nl/train.tsv"))) == 30  # drawn down to n; dev and test whole


def test_when_every_row_is_filtered_away_the_error_names_the_file_and_the_counts_are_written(corpus, monkeypatch):
    def no_letters(p: dict) -> None:
        p["data"]["common_voice"]["nl"].update(path=str(corpus))
        p["sample"]["nl"].update(alphabet="x")
    params_in(Path.cwd(), no_letters)
    rows = len((corpus / "validated.tsv").read_text(encoding="utf-8").splitlines()) - 1
    with pytest.raises(CorpusError, match=rf"{corpus}/validated.tsv: none of its {rows} rows passes the metadata filters "
                                          rf"\(chars_outside_alphabet {rows - 5}, segment 3, too_few_up_votes 2\)"):
        run(sample, monkeypatch)
    counts = json.loads(Path("nl.json").read_text(encoding="utf-8"))
    assert counts["passed_filters"] == 0 and sum(counts["dropped_by_filter"].values()) == counts["rows_read"] == rows
    assert not Path("sampled/nl/train.tsv").exists()


@pytest.fixture
def dataset(tmp_path, monkeypatch) -> Path:
    """A Dutch DatasetDict of real eSpeak speech (FLAC bytes) written by `datasets` with `save_to_disk`: 6 speakers,
    30 rows over train/validation/test, sentences read by two speakers each."""
    espeak, rnd = open_espeak(), random.Random(5)
    sentences = [" ".join(rnd.choices(WORDS, k=4)).capitalize() + "." for _ in range(15)]
    splits = {}
    for name, speakers in (("train", range(4)), ("validation", (4,)), ("test", (5,))):
        rows = [(s, sentences[(i + s) % 15]) for s in speakers for i in range(5)]
        audio = []
        for speaker, sentence in rows:
            samples = espeak.synthesise(sentence, f"nl+{'fm'[speaker % 2]}{speaker % 3 + 1}", 150 + 10 * speaker, 50)
            buffer = io.BytesIO()
            sf.write(buffer, samples.astype(np.float32) / 32768 * 0.8, espeak.sample_rate_hz, format="FLAC")
            audio.append({"bytes": buffer.getvalue(), "path": f"{name}_{len(audio)}.flac"})
        splits[name] = Dataset.from_dict({"audio": audio, "text": [s for _, s in rows],
                                          "speaker": [f"spk{s}" for s, _ in rows]}).cast_column("audio", Audio())
    DatasetDict(splits).save_to_disk(tmp_path / "fleurs_nl")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "fleurs_nl"


@pytest.mark.parametrize("how", ["grouped", "official"])
def test_a_dataset_saved_by_datasets_runs_through_sample_and_validate(dataset, monkeypatch, how):
    def from_dataset(p: dict) -> None:
        del p["data"]["common_voice"]["nl"]
        p["data"]["datasets"]["nl"] = {"path": str(dataset), "clips": "clips/nl", "audio": "audio", "sentence": "text",
                                       "client_id": "speaker",
                                       "split_names": {"train": "train", "dev": "validation", "test": "test"},
                                       "splits": how}
        p["sample"].update(split_tolerance=0.5, max_speaker_share=1.0)
        p["validate"].update(workers=1, max_reject_fraction=0.0, min_seconds=0.5)
    params_in(Path.cwd(), from_dataset)
    counts = run(sample_hf, monkeypatch)
    if how == "grouped":
        assert counts["rows_read"] == 30 and counts["sampled"] == counts["kept"] + sum(counts["dropped_by_split"].values())
    else:
        assert sum(split["rows_read"] for split in counts["by_split"].values()) == counts["kept"] == 30
    sampled = [u for name in SPLITS for u in read_split_tsv(Path(f"sampled/nl/{name}.tsv"))]
    assert sorted(p.name for p in Path("clips/nl").iterdir()) == sorted(u.path for u in sampled)  # exactly the drawn rows
    monkeypatch.setattr(sys, "argv", ["validate", "--lang", "nl", "--sampled", "sampled/nl", "--out", "validated/nl",
                                      "--metrics", "validated.json"])
    validate.main()
    validated = json.loads(Path("validated.json").read_text(encoding="utf-8"))
    assert validated["kept"] == len(sampled) and validated["rejected"] == 0
    train = read_split_tsv(Path("validated/nl/train.tsv"))
    assert train and all(u.duration_s > 0.5 for u in train)
    if how == "official":
        assert {u.client_id for u in train} == {"spk0", "spk1", "spk2", "spk3"}
