"""The clip checks and the validation pool, on real audio files: every reject reason, the counts, the rejects TSV."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from forgetting.data import validation
from forgetting.data.audio import decode_audio
from forgetting.data.corpus import Utterance
from forgetting.data.validation import (
    REJECT_COLUMNS,
    ClipCheck,
    Reject,
    Validation,
    ValidationError,
    check_clip,
    check_named_clip,
    check_reject_fraction,
    validate_splits,
    validation_metrics,
    write_rejects_tsv,
)
from tests.unit.audio_files import cut_in_half, sine, write_clip

BOUNDS = {"min_seconds": 1.0, "max_seconds": 3.0, "min_rms": 0.001}


@pytest.fixture
def clips(tmp_path) -> Path:
    """A clips folder beside a real clip outside it (`outside.mp3`), which no row may reach."""
    write_clip(tmp_path / "outside.mp3", sine(1.5, 48_000), 48_000)
    write_clip(tmp_path / "clips" / "inside.mp3", sine(1.5, 48_000), 48_000)
    return tmp_path / "clips"


@pytest.mark.parametrize("name", ["../outside.mp3", "ABSOLUTE", "escape.mp3"])
def test_unsafe_clip_is_never_opened(clips, name, monkeypatch):
    (clips / "escape.mp3").symlink_to(clips.parent / "outside.mp3")
    name = str(clips.parent / "outside.mp3") if name == "ABSOLUTE" else name

    def fail(*args, **kwargs):
        raise AssertionError(f"opened {args}")

    monkeypatch.setattr(validation, "check_clip", fail)
    monkeypatch.setattr(validation.sf, "SoundFile", fail)
    result = check_named_clip(clips, name, **BOUNDS)
    assert result.reason == "unsafe_path"
    assert result.detail == f"{name!r} resolves outside the clips folder clips"  # where it points is not recorded


# --- the clip checks ----------------------------------------------------------------------------------


def test_check_clip_keeps_a_good_clip_with_its_decoded_duration(tmp_path):
    path = write_clip(tmp_path / "ok.mp3", sine(1.5, 48_000), 48_000)
    assert check_clip(path, **BOUNDS) == ClipCheck(duration_s=1.5)


def test_missing(tmp_path):
    result = check_clip(tmp_path / "nope.mp3", **BOUNDS)
    assert result.reason == "missing" and "nope.mp3" in result.detail


def test_corrupt_bytes_are_unreadable_with_the_error_text(tmp_path):
    path = tmp_path / "corrupt.mp3"
    path.write_bytes(b"\x00not audio at all\xff" * 64)
    result = check_clip(path, **BOUNDS)
    assert result.reason == "unreadable"
    assert "Error opening" in result.detail


def test_truncated_mp3_decodes_short_without_error_and_is_rejected(tmp_path):
    full = write_clip(tmp_path / "full.mp3", sine(3.0, 48_000, amplitude=0.2), 48_000)
    half = cut_in_half(full, tmp_path / "half.mp3")
    # What libsndfile does: the Xing header still declares the full length, decoding simply stops early.
    assert sf.info(half).frames == 3 * 48_000
    decoded, sr = decode_audio(half)
    assert 0.3 * 3 * sr < len(decoded) < 0.7 * 3 * sr
    # The kept duration would be within bounds (1.4 s), but the clip no longer covers its sentence.
    result = check_clip(half, **BOUNDS)
    assert result.reason == "truncated" and result.duration_s is None
    assert "3.00 s its header declares" in result.detail


def test_truncated_wav_gets_its_true_decoded_duration(tmp_path):
    full = write_clip(tmp_path / "full.wav", sine(3.0, 16_000), 16_000)
    half = cut_in_half(full, tmp_path / "half.wav")
    result = check_clip(half, **BOUNDS)
    assert result.reason is None
    assert result.duration_s == pytest.approx(1.5, abs=0.01)


def test_truncated_flac_is_unreadable(tmp_path):
    full = write_clip(tmp_path / "full.flac", 0.2 * np.random.default_rng(0).standard_normal(48_000 * 3), 48_000)
    half = cut_in_half(full, tmp_path / "half.flac")
    assert check_clip(half, **BOUNDS).reason == "unreadable"


def test_empty(tmp_path):
    path = write_clip(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    assert check_clip(path, **BOUNDS).reason == "empty"


def test_silent(tmp_path):
    path = write_clip(tmp_path / "silent.wav", sine(2.0, 16_000, amplitude=0.0005), 16_000)
    result = check_clip(path, **BOUNDS)
    assert result.reason == "silent" and "RMS" in result.detail


@pytest.mark.parametrize(("seconds", "reason"), [(0.5, "too_short"), (4.0, "too_long")])
def test_duration_bounds(tmp_path, seconds, reason):
    path = write_clip(tmp_path / "clip.mp3", sine(seconds, 48_000), 48_000)
    assert check_clip(path, **BOUNDS).reason == reason


def test_too_long_is_decided_on_decoded_samples_without_decoding_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "_BLOCK_FRAMES", 16_000)
    path = write_clip(tmp_path / "long.wav", sine(60.0, 16_000), 16_000)
    result = check_clip(path, **BOUNDS)
    assert result.reason == "too_long" and "stopped at 4.00 s" in result.detail  # the first block past 3 s


# --- the validation pool and its counts ---------------------------------------------------------------


def utterance(path: str, line: int, speaker: str = "spk") -> Utterance:
    return Utterance(speaker, path, f"zin {line}", f"zin {line}", line=line)


@pytest.fixture
def sampled(tmp_path) -> tuple[dict[str, list[Utterance]], Path]:
    """Three splits over a clips folder with good clips and one clip per reject reason."""
    clips = tmp_path / "nl" / "clips"
    for i in range(6):
        write_clip(clips / f"ok{i}.mp3", sine(1.2 + 0.1 * i, 48_000, freq=200 + 50 * i), 48_000)
    write_clip(clips / "short.mp3", sine(0.4, 48_000), 48_000)
    write_clip(clips / "silent.wav", np.zeros(32_000, dtype=np.float32), 16_000)
    write_clip(clips / "outside.mp3", sine(1.5, 48_000), 48_000).rename(tmp_path / "outside.mp3")
    (clips / "corrupt.mp3").write_bytes(b"garbage" * 100)
    splits = {
        "train": [utterance(n, i + 2) for i, n in enumerate(["ok0.mp3", "short.mp3", "ok1.mp3", "../../outside.mp3", "ok2.mp3"])],
        "dev": [utterance(n, i + 2, "b") for i, n in enumerate(["missing.mp3", "ok3.mp3", "silent.wav"])],
        "test": [utterance(n, i + 2, "c") for i, n in enumerate(["ok4.mp3", "corrupt.mp3", "ok5.mp3"])],
    }
    return splits, clips


def test_validate_splits_keeps_order_and_records_every_reject(sampled):
    splits, clips = sampled
    result = validate_splits(splits, clips, **BOUNDS, workers=1, progress=False)
    assert [u.path for u in result.kept["train"]] == ["ok0.mp3", "ok1.mp3", "ok2.mp3"]
    assert [u.duration_s for u in result.kept["train"]] == [1.2, 1.3, 1.4]
    assert [u.path for u in result.kept["test"]] == ["ok4.mp3", "ok5.mp3"]
    assert [(r.split, r.utterance.path, r.reason) for r in result.rejects] == [
        ("train", "short.mp3", "too_short"),
        ("train", "../../outside.mp3", "unsafe_path"),
        ("dev", "missing.mp3", "missing"),
        ("dev", "silent.wav", "silent"),
        ("test", "corrupt.mp3", "unreadable"),
    ]
    metrics = validation_metrics(splits, result)
    assert metrics["splits"]["train"] == {"sampled": 5, "kept": 3, "rejected": 2, "hours_kept": round(3.9 / 3600, 4)}
    for counts in metrics["splits"].values():
        assert counts["kept"] + counts["rejected"] == counts["sampled"]
    assert (metrics["sampled"], metrics["kept"], metrics["rejected"]) == (11, 6, 5)
    assert metrics["rejects_by_reason"] == {"unsafe_path": 1, "missing": 1, "unreadable": 1, "empty": 0, "truncated": 0,
                                            "too_long": 0, "too_short": 1, "silent": 1}
    assert metrics["reject_fraction"] == round(5 / 11, 6)


def test_two_workers_give_the_same_result_as_one(sampled):
    splits, clips = sampled
    one = validate_splits(splits, clips, **BOUNDS, workers=1, progress=False)
    two = validate_splits(splits, clips, **BOUNDS, workers=2, progress=False)
    assert two == one


def test_validation_metrics_refuses_lost_rows(sampled):
    splits, _ = sampled
    kept = {name: list(rows) for name, rows in splits.items()}
    kept["dev"].pop()
    with pytest.raises(ValidationError, match="dev: 3 rows sampled, but 2 kept \\+ 0 rejected"):
        validation_metrics(splits, Validation(kept, []))


def test_reject_fraction_bound_names_language_reason_and_example():
    splits = {"train": [utterance(f"c{i}.mp3", i + 2) for i in range(10)], "dev": [], "test": []}
    rejects = [Reject("train", u, "missing", f"no file /corpus/nl/clips/{u.path}") for u in splits["train"][:3]]
    rejects.append(Reject("train", splits["train"][3], "silent", "RMS 1e-05 < min 0.001"))
    result = Validation({"train": splits["train"][4:], "dev": [], "test": []}, rejects)
    metrics = validation_metrics(splits, result)
    check_reject_fraction("nl", result, metrics, max_reject_fraction=0.4)
    with pytest.raises(ValidationError) as err:
        check_reject_fraction("nl", result, metrics, max_reject_fraction=0.1)
    message = str(err.value)
    assert message.startswith("validate nl: rejected 4/10 clips (40.0%)")
    assert "most common reason: missing (3)" in message
    assert "train.tsv line 2 (c0.mp3): no file /corpus/nl/clips/c0.mp3" in message


def test_write_rejects_tsv_keeps_one_row_per_reject(tmp_path):
    u = utterance("x.mp3", 2)
    write_rejects_tsv(tmp_path / "rejects.tsv", [Reject("dev", u, "unreadable", "Error opening\n'x.mp3':\tbad")])
    lines = (tmp_path / "rejects.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == list(REJECT_COLUMNS)
    assert lines[1].split("\t") == ["dev", "x.mp3", "spk", "zin 2", "unreadable", "Error opening 'x.mp3': bad"]
    assert len(lines) == 2


def test_reject_details_name_clips_relative_to_the_clips_folder(tmp_path, monkeypatch):
    clips = tmp_path / "corpus" / "nl" / "clips"
    clips.mkdir(parents=True)
    (clips / "bad.mp3").write_bytes(b"\x00" * 300)
    monkeypatch.chdir(tmp_path)
    for folder in (clips, Path("corpus/nl/clips")):  # absolute and relative data.corpus
        missing = check_named_clip(folder, "gone.mp3", **BOUNDS)
        unreadable = check_named_clip(folder, "bad.mp3", **BOUNDS)
        assert missing.detail == "no file clips/gone.mp3"
        assert "clips/bad.mp3" in unreadable.detail and str(tmp_path) not in unreadable.detail
