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
from forgetting.schema import CommonVoiceSource, DatasetSource


def test_common_voice_layout():
    assert corpus_metadata("data/demo/nl") == Path("data/demo/nl/validated.tsv")
    assert corpus_metadata("/cv/de", "test") == Path("/cv/de/test.tsv")  # the release's official split
    assert clips_dir(CommonVoiceSource("/cv/de")) == Path("/cv/de/clips")
    assert split_file(Path("data/validated/nl"), "dev") == Path("data/validated/nl/dev.tsv")


def test_a_dataset_source_reads_the_clips_its_sample_stage_wrote():
    source = DatasetSource("/data/fleurs_nl", "data/clips/nl", "audio", "transcription", None,
                           {"train": "train", "dev": "validation", "test": "test"}, "official")
    assert clips_dir(source) == Path("data/clips/nl")


def test_model_and_prediction_files():
    assert weights_file(Path("models/adapted")) == Path("models/adapted/model.safetensors")
    assert predictions_name("pretrained", "nl") == "pretrained_nl.tsv"


def test_source_and_target_are_two_of_the_languages():
    assert {SOURCE, TARGET} == set(LANGUAGES) and SOURCE != TARGET and len(MODELS) == 2
