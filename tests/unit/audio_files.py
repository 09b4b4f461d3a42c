"""Real audio files for the tests: sines written in MP3, FLAC or WAV, and files cut short."""

from pathlib import Path

import numpy as np
import soundfile as sf

FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "flac": ("FLAC", "PCM_16"), "wav": ("WAV", "FLOAT")}


def sine(seconds: float, sr: int, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_clip(path: Path, audio: np.ndarray, sr: int) -> Path:
    """`audio` (samples,) or (samples, channels) written in the format its suffix names."""
    fmt, subtype = FORMATS[path.suffix[1:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, format=fmt, subtype=subtype)
    return path


def cut_in_half(path: Path, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out
