"""The validate stage's CLI: outputs, metrics, the summary line, every reject reason in rejects.tsv, the
reject-fraction failure, atomic output."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from forgetting.data.corpus import Utterance, read_split_tsv, write_split_tsv
from forgetting.data.validation import REJECT_REASONS
from forgetting.layout import SPLITS
from stages import validate
from tests.unit.audio_files import cut_in_half, sine, write_clip

REPO = Path(__file__).resolve().parents[2]


def write_mp3(path: Path, seconds: float, freq: float) -> None:
    t = np.arange(round(seconds * 48_000)) / 48_000
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 48_000, format="MP3")


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A working directory like the repo root: params.yaml, a corpus with 9 good clips and 1 missing, the sampled TSVs."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["common_voice"]["nl"]["path"] = "corpus/nl"
    params["validate"].update(min_seconds=1.0, max_seconds=5.0, max_reject_fraction=0.2, workers=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    rows = []
    for i in range(10):
        name = f"common_voice_nl_{i}.mp3"
        if i != 7:
            write_mp3(tmp_path / "corpus" / "nl" / "clips" / name, 1.0 + 0.25 * i, 200 + 40 * i)
        rows.append(Utterance(f"spk{i % 3}", name, f"Zin {i}.", f"zin {i}"))
    for split, part in zip(SPLITS, (rows[:6], rows[6:8], rows[8:]), strict=True):
        write_split_tsv(tmp_path / "sampled" / f"{split}.tsv", part)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_stage(monkeypatch) -> None:
    argv = ["validate", "--lang", "nl", "--sampled", "sampled", "--out", "validated/nl", "--metrics", "reports/nl.json"]
    monkeypatch.setattr(sys, "argv", argv)
    validate.main()


def test_stage_writes_kept_rows_rejects_metrics_and_a_summary(repo, monkeypatch, capsys):
    (repo / "validated" / "nl" / "stale.tsv").parent.mkdir(parents=True)
    (repo / "validated" / "nl" / "stale.tsv").write_text("old run\n")
    run_stage(monkeypatch)

    out = repo / "validated" / "nl"
    assert sorted(p.name for p in out.iterdir()) == ["dev.tsv", "rejects.tsv", "test.tsv", "train.tsv"]
    assert not (repo / "validated" / "nl.tmp").exists()
    train = read_split_tsv(out / "train.tsv")
    assert [u.path for u in train] == [f"common_voice_nl_{i}.mp3" for i in range(6)]
    assert [u.duration_s for u in train] == [1.0, 1.25, 1.5, 1.75, 2.0, 2.25]
    assert [u.path for u in read_split_tsv(out / "dev.tsv")] == ["common_voice_nl_6.mp3"]
    rejects = (out / "rejects.tsv").read_text(encoding="utf-8").splitlines()
    assert rejects[1].split("\t")[:5] == ["dev", "common_voice_nl_7.mp3", "spk1", "Zin 7.", "missing"]

    metrics = json.loads((repo / "reports" / "nl.json").read_text(encoding="utf-8"))
    assert metrics["lang"] == "nl"
    assert metrics["splits"]["dev"] == {"sampled": 2, "kept": 1, "rejected": 1, "hours_kept": round(2.5 / 3600, 4)}
    assert (metrics["sampled"], metrics["kept"], metrics["rejected"]) == (10, 9, 1)
    assert metrics["rejects_by_reason"]["missing"] == 1
    assert metrics["reject_fraction"] == 0.1
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary == "validate nl: kept 9/10 clips (1 rejected: 1 missing) 0.01 h, wrote validated/nl"


def test_too_many_rejects_fail_loudly_and_leave_nothing_complete(repo, monkeypatch):
    for clip in list((repo / "corpus" / "nl" / "clips").glob("*_[0-3].mp3")):
        clip.unlink()
    with pytest.raises(SystemExit) as err:
        run_stage(monkeypatch)
    message = str(err.value.code)
    assert message.startswith("validate nl: rejected 5/10 clips (50.0%), more than validate.max_reject_fraction = 0.2")
    assert "most common reason: missing (5), e.g. train.tsv line 2 (common_voice_nl_0.mp3)" in message
    assert not (repo / "validated" / "nl").exists()
    assert not (repo / "reports" / "nl.json").exists()
    assert len((repo / "validated" / "nl.tmp" / "rejects.tsv").read_text().splitlines()) == 1 + 5


def test_a_wrong_corpus_path_names_the_missing_clips_folder(repo, monkeypatch):
    (repo / "corpus" / "nl" / "clips").rename(repo / "corpus" / "nl" / "elsewhere")
    with pytest.raises(SystemExit, match=r"validate nl: no clips folder corpus/nl/clips \(see params.yaml data.common_voice"):
        run_stage(monkeypatch)


def test_every_reject_reason_is_written_to_rejects_tsv_and_counted(repo, monkeypatch):
    """One sampled row per reject reason: rejects.tsv holds exactly the counted rows, one per reason."""
    clips = repo / "corpus" / "nl" / "clips"
    write_clip(repo / "corpus" / "nl" / "outside.mp3", sine(1.5, 48_000), 48_000)
    (clips / "unreadable.mp3").write_bytes(b"not audio" * 50)
    write_clip(clips / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    cut_in_half(write_clip(repo / "whole.mp3", sine(3.0, 48_000), 48_000), clips / "truncated.mp3")
    write_clip(clips / "too_long.mp3", sine(6.0, 48_000), 48_000)
    write_clip(clips / "too_short.mp3", sine(0.4, 48_000), 48_000)
    write_clip(clips / "silent.wav", np.zeros(32_000, dtype=np.float32), 16_000)
    bad = {"unsafe_path": "../outside.mp3", "missing": "absent.mp3", "unreadable": "unreadable.mp3", "empty": "empty.wav",
           "truncated": "truncated.mp3", "too_long": "too_long.mp3", "too_short": "too_short.mp3", "silent": "silent.wav"}
    assert set(bad) == set(REJECT_REASONS)
    rows = [Utterance("spk9", name, f"Zin {reason}.", f"zin {reason}") for reason, name in bad.items()]
    for split, part in zip(SPLITS, (rows[:4], rows[4:6], rows[6:]), strict=True):
        write_split_tsv(repo / "sampled" / f"{split}.tsv", read_split_tsv(repo / "sampled" / f"{split}.tsv") + part)
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["validate"]["max_reject_fraction"] = 1.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    run_stage(monkeypatch)

    metrics = json.loads((repo / "reports" / "nl.json").read_text(encoding="utf-8"))
    with open(repo / "validated" / "nl" / "rejects.tsv", encoding="utf-8", newline="") as f:
        rejects = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rejects) == metrics["rejected"] == 1 + len(bad)  # the fixture's missing clip, and one per reason
    assert {r["path"]: r["reason"] for r in rejects if r["client_id"] == "spk9"} == {v: k for k, v in bad.items()}
    assert metrics["rejects_by_reason"] == {reason: 2 if reason == "missing" else 1 for reason in REJECT_REASONS}
    assert metrics["kept"] + metrics["rejected"] == metrics["sampled"] == 10 + len(bad)
