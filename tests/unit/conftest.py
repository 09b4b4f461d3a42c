"""Fixtures of the unit tests: the params, a processor over Dutch and German sentences, a real tiny model and
seeded noise utterances."""

from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2ForCTC

from forgetting.data.corpus import normalise_text
from forgetting.params import load_params
from forgetting.training.model import build_processor
from tests.unit.tiny import SENTENCES, tiny_model, utterances, write_vocab


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model gains nothing from threads, and on a shared machine they only spin: one, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Wav2Vec2ForCTC:
    return tiny_model()


@pytest.fixture(scope="module")
def utts() -> list[dict[str, torch.Tensor]]:
    return utterances([1.0, 1.4, 1.1, 1.3, 1.0])


@pytest.fixture(scope="module")
def params():
    return load_params(Path(__file__).resolve().parents[2] / "params.yaml")


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory) -> Path:
    texts = [normalise_text(s) for sentences in SENTENCES.values() for s in sentences]
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.json", texts)


@pytest.fixture(scope="module")
def processor(vocab_path):
    return build_processor(vocab_path)

