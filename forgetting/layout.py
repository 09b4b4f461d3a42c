"""Every path rule and file name that more than one module or stage uses, in one place.

The folders themselves are declared in `dvc.yaml` (outputs) and `params.yaml` (`data`) and reach the code as
arguments or params; this module only says what lies inside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

LANGUAGES = ("nl", "de")  # `dvc.yaml` loops over the same list (a test checks it)
SOURCE, TARGET = "nl", "de"  # learnt first (forgetting is measured on it), adapted to
SPLITS = ("train", "dev", "test")
MODELS = ("pretrained", "adapted")  # the eval stage's names of the models before and after adaptation
WEIGHTS_FILE = "model.safetensors"  # what `save_pretrained` writes in a model folder
CORPUS_METADATA = "validated.tsv"  # a Common Voice release's validated rows; its official splits are <split>.tsv


class Source(Protocol):
    """A language's source in `params.data`: a Common Voice-layout folder (`path`), or a dataset whose sampled clips
    the sample stage writes to `clips`."""

    path: str


def corpus_metadata(folder: str | Path, split: str | None = None) -> Path:
    """A Common Voice-layout language folder's metadata: `<folder>/validated.tsv`, or the release's official split
    `<folder>/<split>.tsv`."""
    return Path(folder) / (CORPUS_METADATA if split is None else f"{split}.tsv")


def corpus_clips(folder: str | Path) -> Path:
    """A Common Voice-layout language folder's clips: `<folder>/clips`."""
    return Path(folder) / "clips"


def clips_dir(source: Source) -> Path:
    """The folder that holds every clip the split files of a language name: `<path>/clips` of a Common Voice-layout
    folder, or a dataset source's own `clips` folder (written by the sample stage)."""
    clips = getattr(source, "clips", None)
    return Path(clips) if clips is not None else corpus_clips(source.path)


def split_file(folder: Path, split: str) -> Path:
    """A split's TSV in a sampled or validated folder: `<folder>/<split>.tsv`."""
    return Path(folder) / f"{split}.tsv"


def weights_file(model_dir: Path) -> Path:
    """The safetensors weights of a saved model folder."""
    return Path(model_dir) / WEIGHTS_FILE


def predictions_name(model: str, lang: str) -> str:
    """The file name of the eval stage's per-utterance predictions of `model` on `lang`, in its predictions folder."""
    return f"{model}_{lang}.tsv"
