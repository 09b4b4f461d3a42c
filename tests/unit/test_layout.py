"""The path rules: where a language's metadata, clips, splits, weights and predictions lie."""

from pathlib import Path

from forgetting.layout import (
    LANGUAGES,
    MODELS,
    SOURCE,
    TARGET,
    clips_dir,
    corpus_metadata,
    predictions_name,
    split_file,
    weights_file,
)


def test_common_voice_layout():
    assert corpus_metadata("data/demo", "nl") == Path("data/demo/nl/validated.tsv")
    assert clips_dir(Path("/cv"), "de") == Path("/cv/de/clips")
    assert split_file(Path("data/validated/nl"), "dev") == Path("data/validated/nl/dev.tsv")


def test_model_and_prediction_files():
    assert weights_file(Path("models/adapted")) == Path("models/adapted/model.safetensors")
    assert predictions_name("pretrained", "nl") == "pretrained_nl.tsv"


def test_source_and_target_are_two_of_the_languages():
    assert {SOURCE, TARGET} == set(LANGUAGES) and SOURCE != TARGET and len(MODELS) == 2
