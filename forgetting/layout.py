"""Every path rule and file name that more than one module or stage uses, in one place.

The folders themselves are declared in `dvc.yaml` (outputs) and `params.yaml` (`data.corpus`) and reach the code
as arguments; this module only says what lies inside them.
"""

from __future__ import annotations

from pathlib import Path

LANGUAGES = ("nl", "de")  # `dvc.yaml` loops over the same list (a test checks it)
SOURCE, TARGET = "nl", "de"  # learnt first (forgetting is measured on it), adapted to
SPLITS = ("train", "dev", "test")
MODELS = ("pretrained", "adapted")  # the eval stage's names of the models before and after adaptation
WEIGHTS_FILE = "model.safetensors"  # what `save_pretrained` writes in a model folder
CORPUS_METADATA = "validated.tsv"


def corpus_metadata(corpus: str | Path, lang: str) -> Path:
    """A Common Voice-layout corpus's metadata file of `lang`: `<corpus>/<lang>/validated.tsv`."""
    return Path(corpus) / lang / CORPUS_METADATA


def clips_dir(corpus: str | Path, lang: str) -> Path:
    """The folder that holds every clip the metadata of `lang` names: `<corpus>/<lang>/clips`."""
    return Path(corpus) / lang / "clips"


def split_file(folder: Path, split: str) -> Path:
    """A split's TSV in a sampled or validated folder: `<folder>/<split>.tsv`."""
    return Path(folder) / f"{split}.tsv"


def weights_file(model_dir: Path) -> Path:
    """The safetensors weights of a saved model folder."""
    return Path(model_dir) / WEIGHTS_FILE


def predictions_name(model: str, lang: str) -> str:
    """The file name of the eval stage's per-utterance predictions of `model` on `lang`, in its predictions folder."""
    return f"{model}_{lang}.tsv"
