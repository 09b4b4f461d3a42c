"""Decoding, resampling and safe clip paths, on real audio files."""

from pathlib import Path

import numpy as np
import pytest

from forgetting.data.audio import UnsafePathError, decode_audio, load_clip_16k, resample, safe_clip_path
from tests.unit.audio_files import sine, write_clip


@pytest.mark.parametrize(("suffix", "sr"), [("mp3", 48_000), ("flac", 44_100), ("wav", 16_000)])
def test_decode_audio_each_format(tmp_path, suffix, sr):
    path = write_clip(tmp_path / f"clip.{suffix}", sine(1.5, sr), sr)
    decoded, rate = decode_audio(path)
    assert rate == sr
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert len(decoded) == round(1.5 * sr)  # libsndfile's MP3 decoder is gapless: no encoder padding
    assert np.sqrt(np.mean(decoded**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)


def test_decode_audio_averages_channels(tmp_path):
    left, right = sine(1.0, 16_000, amplitude=0.5), sine(1.0, 16_000, amplitude=0.1)
    path = write_clip(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16_000)
    decoded, _ = decode_audio(path)
    np.testing.assert_allclose(decoded, sine(1.0, 16_000, amplitude=0.3), atol=1e-6)


def peak_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[np.argmax(spectrum)])


def test_resample_length_and_frequency():
    x = sine(2.0, 48_000, freq=440.0)
    y = resample(x, 48_000, 16_000)
    assert y.dtype == np.float32
    assert len(y) == 32_000
    assert peak_hz(y, 16_000) == pytest.approx(440.0, abs=1.0)


def test_resample_same_rate_is_a_no_op():
    x = sine(0.5, 16_000)
    assert resample(x, 16_000, 16_000) is x


def test_load_clip_16k_from_48k_mp3(tmp_path):
    path = write_clip(tmp_path / "clip.mp3", sine(2.0, 48_000, freq=300.0), 48_000)
    y = load_clip_16k(path)
    assert y.dtype == np.float32 and len(y) == 32_000
    assert peak_hz(y, 16_000) == pytest.approx(300.0, abs=1.0)


# --- safe clip paths ----------------------------------------------------------------------------------


@pytest.fixture
def clips(tmp_path) -> Path:
    """A clips folder beside a real clip outside it (`outside.mp3`), which no row may reach."""
    write_clip(tmp_path / "outside.mp3", sine(1.5, 48_000), 48_000)
    write_clip(tmp_path / "clips" / "inside.mp3", sine(1.5, 48_000), 48_000)
    return tmp_path / "clips"


def test_safe_clip_path_accepts_names_inside(clips):
    assert safe_clip_path(clips, "inside.mp3") == (clips / "inside.mp3").resolve()
    (clips / "alias.mp3").symlink_to(clips / "inside.mp3")
    assert safe_clip_path(clips, "alias.mp3") == (clips / "inside.mp3").resolve()
    assert safe_clip_path(clips, "sub/../inside.mp3") == (clips / "inside.mp3").resolve()


@pytest.mark.parametrize("name", ["../outside.mp3", "ABSOLUTE", "escape.mp3", "", ".", "bad\x00name.mp3"])
def test_safe_clip_path_refuses_names_outside(clips, name):
    (clips / "escape.mp3").symlink_to(clips.parent / "outside.mp3")
    name = str(clips.parent / "outside.mp3") if name == "ABSOLUTE" else name
    with pytest.raises(UnsafePathError, match=r"outside|cannot be resolved"):
        safe_clip_path(clips, name)
