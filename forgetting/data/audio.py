"""Audio: decoding (soundfile) and resampling (soxr) to 16 kHz, and clip paths that cannot leave their clips folder.

Decoding goes through libsndfile (MP3, FLAC, WAV, Ogg), not the `datasets` Audio feature, which needs
torchcodec and FFmpeg. Every array here is float32 mono (full scale = 1), shape `(samples,)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from forgetting.errors import InputError

TARGET_SR = 16_000  # Hz, what wav2vec2 models expect


class UnsafePathError(InputError):
    """A metadata row names a file outside its clips folder."""


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """Decode a whole file to float32 mono (channels averaged), shape `(samples,)`, and its rate in Hz."""
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return audio.mean(axis=1, dtype=np.float32), sr


def resample(audio: np.ndarray, sr_in: int, sr_out: int = TARGET_SR) -> np.ndarray:
    """`audio` (samples,) at `sr_in` Hz resampled to `sr_out` Hz with soxr (high quality); unchanged when equal."""
    if sr_in == sr_out:
        return audio
    return soxr.resample(audio, sr_in, sr_out).astype(np.float32, copy=False)


def load_clip_16k(path: Path) -> np.ndarray:
    """A clip decoded and resampled to 16 kHz float32 mono, shape `(samples,)`."""
    audio, sr = decode_audio(path)
    return resample(audio, sr, TARGET_SR)


def safe_clip_path(clips_dir: Path, name: str) -> Path:
    """The real path of `clips_dir / name`, or UnsafePathError when it is not a file name inside `clips_dir`.

    Symlinks are followed before the check, so an absolute name, `..` and a symlink pointing out of the
    folder are all refused.
    """
    root = clips_dir.resolve()
    try:
        resolved = (root / name).resolve()
    except (OSError, RuntimeError, ValueError) as err:  # symlink loop (RuntimeError before 3.13), NUL byte
        raise UnsafePathError(f"{name!r} cannot be resolved inside {root}: {err}") from err
    if resolved == root or not resolved.is_relative_to(root):
        raise UnsafePathError(f"{name!r} resolves outside the clips folder {root}")
    return resolved
