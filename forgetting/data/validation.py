"""The clip checks of the validate stage, run over a process pool: every sampled row's clip is decoded whole,
kept with its duration or rejected with a reason, and the counts must add up.

A clip's duration is the number of samples that actually decode, never the header's claim: libsndfile
returns a truncated MP3 without an error, just with fewer samples than its Xing header declares, so
`check_clip` decodes the whole clip and rejects such a clip as `truncated` (its audio no longer covers the
sentence). A truncated FLAC fails to decode (`unreadable`); a truncated WAV's header is corrected by
libsndfile from the file size, so it gets its true, shorter duration.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from forgetting.data.audio import UnsafePathError, safe_clip_path
from forgetting.data.corpus import Utterance
from forgetting.errors import InputError
from forgetting.io import atomic_write_text

# Stable reject reasons, the keys of the validate metrics, in the order they are checked.
REJECT_REASONS = ("unsafe_path", "missing", "unreadable", "empty", "truncated", "too_long", "too_short", "silent")

# A decoder may legitimately differ from the header by the padding of an MP3 frame or two (1152 samples each).
_TRUNCATION_TOLERANCE_FRAMES = 2 * 1152
_BLOCK_FRAMES = 65_536  # samples decoded at a time by check_clip, so memory stays bounded whatever the header says


@dataclass(frozen=True)
class ClipCheck:
    """The outcome of checking one clip: its decoded duration (s, to the millisecond), or a reason from REJECT_REASONS."""

    duration_s: float | None = None
    reason: str | None = None
    detail: str = ""


def check_clip(path: Path, min_seconds: float, max_seconds: float, min_rms: float) -> ClipCheck:
    """Decode the whole clip at `path` and check it against the duration bounds (s) and the RMS floor.

    RMS is over the mono mix, full scale = 1. Decoding stops early once a clip passes `max_seconds`.
    """
    if not path.exists():
        return ClipCheck(reason="missing", detail=f"no file {path}")
    frames, sum_squares = 0, 0.0
    try:
        with sf.SoundFile(path) as f:
            sr, header_frames = f.samplerate, f.frames
            while len(chunk := f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)):
                mono = chunk.mean(axis=1, dtype=np.float64)
                # Not np.dot: BLAS threads in every pool worker oversubscribe the cores (11x slower on 2 cores).
                sum_squares += float(np.square(mono).sum())
                frames += len(mono)
                if frames > max_seconds * sr:
                    return ClipCheck(reason="too_long", detail=f"over {max_seconds} s (stopped at {frames / sr:.2f} s)")
    except sf.SoundFileError as err:  # libsndfile's message is generic; the size tells an empty or cut file apart
        return ClipCheck(reason="unreadable", detail=f"{err} ({path.stat().st_size} bytes)")
    if frames == 0:
        return ClipCheck(reason="empty", detail="0 samples decoded")
    duration_s = frames / sr
    if header_frames - frames > _TRUNCATION_TOLERANCE_FRAMES:
        declared_s = header_frames / sr
        return ClipCheck(reason="truncated", detail=f"decoded {duration_s:.2f} s of the {declared_s:.2f} s its header declares")
    if duration_s < min_seconds:
        return ClipCheck(reason="too_short", detail=f"{duration_s:.3f} s < min {min_seconds} s")
    rms = (sum_squares / frames) ** 0.5
    if rms < min_rms:
        return ClipCheck(reason="silent", detail=f"RMS {rms:.2e} < min {min_rms}")
    return ClipCheck(duration_s=round(duration_s, 3))


def check_named_clip(clips_dir: Path, name: str, min_seconds: float, max_seconds: float, min_rms: float) -> ClipCheck:
    """`check_clip` on the clip a metadata row names; a name outside `clips_dir` is `unsafe_path`, never opened.

    Details name files relative to the clips folder (`clips/x.mp3`), so outputs do not depend on where the
    corpus or the repository lies.
    """
    try:
        path = safe_clip_path(clips_dir, name)
    except UnsafePathError as err:
        result = ClipCheck(reason="unsafe_path", detail=str(err))
    else:
        result = check_clip(path, min_seconds, max_seconds, min_rms)
    for prefix in sorted({str(clips_dir.resolve()), str(clips_dir)}, key=len, reverse=True):
        result = dataclasses.replace(result, detail=result.detail.replace(prefix, "clips"))
    return result


@dataclass(frozen=True)
class Reject:
    """A sampled row that validation refused, with the split it came from."""

    split: str
    utterance: Utterance
    reason: str
    detail: str


@dataclass(frozen=True)
class Validation:
    """Kept rows per split (in sampled order, with `duration_s` set) and every rejected row."""

    kept: dict[str, list[Utterance]]
    rejects: list[Reject]


def resolve_workers(workers: int) -> int:
    """Processes to use: `workers`, or every core available to this process when 0."""
    if workers:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def validate_splits(
    splits: Mapping[str, Sequence[Utterance]],
    clips_dir: Path,
    min_seconds: float,
    max_seconds: float,
    min_rms: float,
    workers: int,
    progress: bool = True,
) -> Validation:
    """Check the clip of every row of every split with `check_named_clip`, in `workers` processes (0 = all cores).

    One worker checks in this process, without a pool. The result does not depend on `workers`.
    """
    rows = [(split, u) for split, utterances in splits.items() for u in utterances]
    names = [u.path for _, u in rows]
    check = functools.partial(check_named_clip, clips_dir, min_seconds=min_seconds, max_seconds=max_seconds, min_rms=min_rms)
    workers = min(resolve_workers(workers), max(len(rows), 1))
    bar = {"total": len(names), "desc": "check clips", "unit": "clip", "disable": not progress}
    if workers == 1:
        results = [check(name) for name in tqdm(names, **bar)]
    else:
        # The pool forks all its workers at the first submit, before tqdm starts its monitor thread.
        with ProcessPoolExecutor(workers) as pool:
            checked = pool.map(check, names, chunksize=max(1, min(32, len(names) // (4 * workers))))
            results = list(tqdm(checked, **bar))
    kept: dict[str, list[Utterance]] = {split: [] for split in splits}
    rejects = []
    for (split, u), result in zip(rows, results, strict=True):
        if result.reason is None:
            kept[split].append(dataclasses.replace(u, duration_s=result.duration_s))
        else:
            rejects.append(Reject(split, u, result.reason, result.detail))
    return Validation(kept, rejects)


class ValidationError(InputError):
    """Validation results that no later stage may use: lost rows, or more rejects than the params allow."""


def validation_metrics(splits: Mapping[str, Sequence[Utterance]], validation: Validation) -> dict:
    """Counts per split (sampled, kept, rejected, hours kept), per reject reason, and the reject fraction.

    Raises ValidationError when a split's kept + rejected rows differ from its sampled rows, or when
    nothing was sampled.
    """
    per_split = {}
    for split, sampled in splits.items():
        kept = validation.kept[split]
        rejected = sum(r.split == split for r in validation.rejects)
        if len(kept) + rejected != len(sampled):
            raise ValidationError(f"{split}: {len(sampled)} rows sampled, but {len(kept)} kept + {rejected} rejected")
        hours = sum(u.duration_s or 0.0 for u in kept) / 3600
        per_split[split] = {"sampled": len(sampled), "kept": len(kept), "rejected": rejected, "hours_kept": round(hours, 4)}
    sampled_total = sum(s["sampled"] for s in per_split.values())
    if sampled_total == 0:
        raise ValidationError(f"no rows sampled in any split ({', '.join(splits)})")
    reasons = Counter(r.reason for r in validation.rejects)
    return {
        "splits": per_split,
        "sampled": sampled_total,
        "kept": sum(s["kept"] for s in per_split.values()),
        "rejected": len(validation.rejects),
        "hours_kept": round(sum(s["hours_kept"] for s in per_split.values()), 4),
        "rejects_by_reason": {reason: reasons[reason] for reason in REJECT_REASONS},
        "reject_fraction": round(len(validation.rejects) / sampled_total, 6),
    }


def check_reject_fraction(lang: str, validation: Validation, metrics: dict, max_reject_fraction: float) -> None:
    """Raise ValidationError naming the language, the counts and the most common reason with an example row
    when the reject fraction of `metrics` (from `validation_metrics`) exceeds `max_reject_fraction`."""
    if metrics["reject_fraction"] <= max_reject_fraction:
        return
    reason, count = Counter(r.reason for r in validation.rejects).most_common(1)[0]
    example = next(r for r in validation.rejects if r.reason == reason)
    raise ValidationError(
        f"validate {lang}: rejected {metrics['rejected']}/{metrics['sampled']} clips ({metrics['reject_fraction']:.1%}), "
        f"more than validate.max_reject_fraction = {max_reject_fraction}; most common reason: {reason} ({count}), "
        f"e.g. {example.split}.tsv line {example.utterance.line} ({example.utterance.path}): {example.detail}"
    )


REJECT_COLUMNS = ("split", "path", "client_id", "sentence", "reason", "detail")


def write_rejects_tsv(path: Path, rejects: Sequence[Reject]) -> None:
    """Every reject as a tab-separated, unquoted row of REJECT_COLUMNS; tabs and line breaks in `detail` become spaces."""
    lines = ["\t".join(REJECT_COLUMNS)]
    for r in rejects:
        detail = " ".join(r.detail.split())
        lines.append("\t".join((r.split, r.utterance.path, r.utterance.client_id, r.utterance.sentence, r.reason, detail)))
    atomic_write_text(path, "\n".join(lines) + "\n")
