"""A second corpus source: a Hugging Face audio dataset on disk (FLEURS, Multilingual LibriSpeech, ...), read with
`datasets`, as `save_to_disk` wrote it or as the Hub's parquet files.

`read_rows` reads the text and speaker columns of every row (and the `path` sub-field of the audio column, for the
clip's file extension) and gives them as `Utterance`s, so the sample stage filters, samples and splits them like
Common Voice rows; `write_clips` then writes the chosen rows' audio bytes, as stored, into a clips folder that
validate, training and eval read like Common Voice clips (soundfile + soxr, `forgetting/data/audio.py`).

`datasets` never decodes audio here: every audio column is cast to `Audio(decode=False)` (its decoder needs
torchcodec, which is not installed). Nothing is copied: a `save_to_disk` folder is memory-mapped (`load_from_disk`);
parquet files are streamed (`IterableDataset.from_parquet`, one row group at a time, only the columns asked for),
because a non-streaming parquet load would first convert the whole dataset into Arrow files under ~/.cache (streaming
leaves only empty `.lock` files there). The
audio path sub-field of parquet files is read with pyarrow, which can read one field of a struct column:
`datasets` reads whole columns, and the audio column's other field holds the audio bytes.
"""

from __future__ import annotations

import io
import posixpath
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import soundfile as sf
from datasets import Audio, Dataset, DatasetDict, IterableDataset, load_from_disk
from tqdm import tqdm

from forgetting.data.audio import UnsafePathError, safe_clip_path
from forgetting.data.corpus import Utterance, normalise_text
from forgetting.errors import InputError
from forgetting.io import replace_dir, temp_dir
from forgetting.schema import DatasetSource

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
SPLIT_NAME = re.compile(r"\w+(?:\.\w+)*")  # the names `datasets` allows for a split; no `/`, `-` or `..`
CLIP_NAME = re.compile(rf"(?P<split>{SPLIT_NAME.pattern})-(?P<row>\d{{8,}})(?P<ext>{'|'.join(map(re.escape, AUDIO_SUFFIXES))})")
# Rows per batch: the text pass holds only short strings; the audio passes hold the batch's audio bytes in memory.
TEXT_BATCH_ROWS, AUDIO_BATCH_ROWS = 1024, 8

# A split as stored: a memory-mapped save_to_disk split, or a parquet split's files in row order.
Rows = Dataset | list[Path]


class DatasetSourceError(InputError):
    """A dataset that cannot be read as a corpus; the message names the dataset folder, split, row and column."""


def _parquet_layout(path: Path) -> dict[str, list[Path]]:
    """The Hub's parquet layouts: `<split>.parquet`, `<split>-*.parquet` and `<split>/*.parquet`, in `path` or, when it
    has one, its `data/` subfolder. Each split's files in name order, which is row order (`train-00000-of-00002`)."""
    root = path / "data" if (path / "data").is_dir() else path
    layout: dict[str, list[Path]] = {}
    if root.is_dir():
        for file in sorted(root.glob("*.parquet")):
            layout.setdefault(file.stem.split("-")[0], []).append(file)
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if files := sorted(folder.glob("*.parquet")):
                layout.setdefault(folder.name, []).extend(files)
    return layout


def _open_splits(path: Path) -> dict[str, Rows]:
    """Every split of the dataset at `path` (a plain Dataset is the split "train"), nothing read yet."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            loaded = load_from_disk(str(path))  # memory-mapped, no copy
        except (OSError, ValueError, KeyError) as err:
            raise DatasetSourceError(f"{path}: not a readable save_to_disk folder ({err})") from err
        return dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
    if layout := _parquet_layout(path):
        return dict(layout)
    raise DatasetSourceError(f"{path}: no dataset: not a save_to_disk folder (no dataset_dict.json or state.json) and no "
                             f"parquet files named <split>.parquet, <split>-*.parquet or <split>/*.parquet in it or in its data/")


def _columns(rows: Rows, columns: list[str]) -> Dataset | IterableDataset:
    """Only `columns` of a split, read lazily; an audio column comes as {"bytes", "path"}, never decoded."""
    if isinstance(rows, Dataset):
        ds = rows.select_columns(columns)
    else:
        # Without pre_buffer=False pyarrow reads all of a file's row groups at once (datasets opens it as a Python file).
        ds = IterableDataset.from_parquet([str(f) for f in rows], columns=columns,
                                          fragment_scan_options=pds.ParquetFragmentScanOptions(pre_buffer=False))
    for name, feature in ds.features.items():
        if isinstance(feature, Audio):
            ds = ds.cast_column(name, Audio(decode=False))
    return ds


def _records(ds: Dataset | IterableDataset, batch_rows: int) -> Iterator[dict]:
    """The rows of `ds` one by one, read `batch_rows` at a time (row-by-row formatting is slow)."""
    for batch in ds.iter(batch_size=batch_rows):
        yield from (dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True))


def _check_columns(source: DatasetSource, split: str, rows: Rows) -> None:
    features = rows.features if isinstance(rows, Dataset) else IterableDataset.from_parquet([str(f) for f in rows]).features
    roles = {"audio": source.audio, "sentence": source.sentence, "client_id": source.client_id}
    missing = [f"{role} column {name!r}" for role, name in roles.items() if name is not None and name not in features]
    if missing:
        raise DatasetSourceError(f"{source.path} split {split!r}: no {', no '.join(missing)}; its columns are {list(features)}")
    if not isinstance(features[source.audio], Audio):
        raise DatasetSourceError(f"{source.path} split {split!r} column {source.audio!r}: {features[source.audio]}, "
                                 "expected an Audio feature")


def _audio_paths(rows: Rows, audio: str) -> Iterator[str | None]:
    """The `path` sub-field of the audio column, row by row, without reading the audio bytes."""
    if isinstance(rows, Dataset):
        chunks: Iterable = rows.data.column(audio).chunks  # memory-mapped: the bytes are not touched
    else:
        chunks = (batch.column(0) for f in rows for batch in pq.ParquetFile(f).iter_batches(columns=[f"{audio}.path"]))
    for chunk in chunks:
        yield from pc.struct_field(chunk, "path").to_pylist()


def _stored_audio(source: DatasetSource, split: str, rows: Rows, wanted: Sequence[int]) -> Iterator[tuple[int, bytes]]:
    """(row, stored audio bytes) for the rows `wanted` (sorted indices) of one split, in row order, a few at a time.

    A save_to_disk split reads only those rows; a parquet split is streamed up to the last of them.
    """
    if not wanted:
        return
    if isinstance(rows, Dataset):
        if wanted[-1] >= len(rows):
            raise DatasetSourceError(f"{_where(source, split, wanted[-1])}: no such row; the split has {len(rows)} rows")
        for row, record in zip(wanted, _records(_columns(rows.select(wanted), [source.audio]), AUDIO_BATCH_ROWS), strict=True):
            yield row, _audio_bytes(source, split, row, record[source.audio])
        return
    pending = iter(wanted)
    next_row, count = next(pending), 0
    for row, record in enumerate(_records(_columns(rows, [source.audio]), AUDIO_BATCH_ROWS)):
        count = row + 1
        if row == next_row:
            yield row, _audio_bytes(source, split, row, record[source.audio])
            if (next_row := next(pending, None)) is None:
                return
    raise DatasetSourceError(f"{_where(source, split, next_row)}: no such row; the split has {count} rows")


def _where(source: DatasetSource, split: str, row: int) -> str:
    return f"{source.path} split {split!r} row {row} column {source.audio!r}"


def _audio_bytes(source: DatasetSource, split: str, row: int, value: dict | None) -> bytes:
    """A row's stored audio bytes, or those of the file its `path` names inside the dataset folder."""
    where = _where(source, split, row)
    if value and value["bytes"]:
        return value["bytes"]
    name = value["path"] if value else None
    if not name:
        raise DatasetSourceError(f"{where}: no audio bytes and no path")
    try:
        return safe_clip_path(Path(source.path), name).read_bytes()
    except UnsafePathError as err:
        raise DatasetSourceError(f"{where}: no audio bytes, and its path {name!r} is not a file inside the dataset "
                                 f"folder ({err})") from err
    except OSError as err:
        raise DatasetSourceError(f"{where}: no audio bytes, and its path {name!r} cannot be read ({err})") from err


def _sniff_suffix(data: bytes, where: str) -> str:
    """The file suffix of audio bytes, from their header (libsndfile), for a row whose path has no known suffix."""
    try:
        info = sf.info(io.BytesIO(data))
    except sf.SoundFileError as err:
        raise DatasetSourceError(f"{where}: no audio file suffix in its path and libsndfile cannot read its bytes "
                                 f"({err})") from err
    suffix = {"WAV": ".wav", "FLAC": ".flac", "MP3": ".mp3", "OGG": ".opus" if info.subtype == "OPUS" else ".ogg"}
    if info.format not in suffix:
        raise DatasetSourceError(f"{where}: audio format {info.format} ({info.format_info}), expected one of "
                                 f"{', '.join(AUDIO_SUFFIXES)}")
    return suffix[info.format]


def read_rows(source: DatasetSource) -> dict[str, list[Utterance]]:
    """Every row of each dataset split that `source.split_names` names, keyed by the dataset's split name, in row order.

    Row `r` of split `s` becomes `Utterance(path=f"{s}-{r:08d}{ext}", line=r, ...)`: the name of its clip in the clips
    folder; `ext` is the stored audio path's suffix when it is one of AUDIO_SUFFIXES, else it is read from the audio
    bytes' header (the only audio this reads). Without a speaker column each row is its own speaker, `f"{s}:{r}"`.
    There are no votes (None). A missing sentence is the empty text, which the sample filters drop and count.
    """
    splits = _open_splits(Path(source.path))
    unknown = sorted({name for name in source.split_names.values() if name not in splits})
    if unknown:
        raise DatasetSourceError(f"{source.path}: no split(s) {unknown} (splits {dict(source.split_names)}); the dataset has "
                                 f"splits {sorted(splits)}")
    text_columns = [source.sentence] + ([source.client_id] if source.client_id else [])
    out = {}
    for split in dict.fromkeys(source.split_names.values()):
        if not SPLIT_NAME.fullmatch(split):
            raise DatasetSourceError(f"{source.path}: split name {split!r} is not a valid split name (letters, digits, _ .)")
        rows = splits[split]
        _check_columns(source, split, rows)
        records = _records(_columns(rows, text_columns), TEXT_BATCH_ROWS)
        fields = []
        for row, (record, audio_path) in enumerate(zip(records, _audio_paths(rows, source.audio), strict=True)):
            speaker = f"{split}:{row}" if source.client_id is None else record[source.client_id]
            if speaker is None or speaker == "":
                raise DatasetSourceError(f"{source.path} split {split!r} row {row} column {source.client_id!r}: no speaker")
            suffix = posixpath.splitext(audio_path or "")[1].lower()
            fields.append((str(speaker), record[source.sentence] or "", suffix if suffix in AUDIO_SUFFIXES else None))
        sniffed = {row: _sniff_suffix(data, _where(source, split, row))
                   for row, data in _stored_audio(source, split, rows, [r for r, f in enumerate(fields) if f[2] is None])}
        out[split] = [Utterance(client_id=speaker, path=f"{split}-{row:08d}{suffix or sniffed[row]}", sentence=sentence,
                                text=normalise_text(sentence), line=row, up_votes=None, down_votes=None)
                      for row, (speaker, sentence, suffix) in enumerate(fields)]
    return out


def write_clips(source: DatasetSource, utterances: Iterable[Utterance], clips: Path, *, progress: bool = True) -> int:
    """Write the stored audio bytes of each utterance (from `read_rows`) to `clips/<u.path>`; the number of bytes written.

    The folder is filled as `<clips>.tmp` and renamed onto `clips` when complete: an error on the way leaves `clips`
    as it was. Memory holds a few clips at a time.
    """
    wanted: dict[str, dict[int, str]] = {}  # dataset split -> row -> clip name
    for u in utterances:
        match = CLIP_NAME.fullmatch(u.path)
        if match is None:
            raise DatasetSourceError(f"{source.path}: clip name {u.path!r} (client {u.client_id}) is not one that read_rows "
                                     f"gives: <split>-<row, 8 digits><one of {', '.join(AUDIO_SUFFIXES)}>")
        names = wanted.setdefault(match["split"], {})
        if int(match["row"]) in names:
            raise DatasetSourceError(f"{source.path} split {match['split']!r} row {int(match['row'])}: asked for twice "
                                     f"({names[int(match['row'])]}, {u.path})")
        names[int(match["row"])] = u.path
    splits = _open_splits(Path(source.path))
    if unknown := sorted(set(wanted) - set(splits)):
        raise DatasetSourceError(f"{source.path}: no split(s) {unknown}; the dataset has splits {sorted(splits)}")
    tmp = temp_dir(clips)
    written = 0
    try:
        with tqdm(total=sum(map(len, wanted.values())), desc=f"write {clips}", unit="clip", disable=not progress) as bar:
            for split, names in wanted.items():
                for row, data in _stored_audio(source, split, splits[split], sorted(names)):
                    safe_clip_path(tmp, names[row]).write_bytes(data)
                    written += len(data)
                    bar.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, clips)
    return written
