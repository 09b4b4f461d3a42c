"""The params schema: the shipped file loads, and each kind of bad value is refused naming its key."""

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from forgetting.params import load_params, parse_params
from forgetting.schema import ParamsError

ROOT = Path(__file__).resolve().parents[2]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def with_change(path: str, value: object, raw: dict = RAW) -> dict:
    """A copy of params.yaml (or of `raw`) with the dotted key set (or removed when value is ...)."""
    raw = copy.deepcopy(raw)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


def test_shipped_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.adapt.ewc_lambda == RAW["adapt"]["ewc_lambda"]
    assert params.sample.language("nl").n == RAW["sample"]["nl"]["n"]
    assert params.model.config["hidden_size"] == RAW["model"]["config"]["hidden_size"]


def test_float_written_by_dvc_exp_run_is_accepted():
    # `dvc exp run -S adapt.lr=1e-5` writes 1e-05, which PyYAML reads as a string
    raw = yaml.safe_load(yaml.safe_dump(RAW).replace("lr: 0.001", "lr: 1e-05"))
    assert isinstance(raw["adapt"]["lr"], str)
    assert parse_params(raw).adapt.lr == pytest.approx(1e-5)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("adapt.ewc_lamda", 0.1, "adapt.ewc_lamda: unknown key"),
    ("adapt.ewc_lambda", ..., "adapt.ewc_lambda: missing"),
    ("adapt.ewc_lambda", -1.0, "adapt.ewc_lambda: must be >= 0"),
    ("adapt.lr", "fast", "adapt.lr: must be a number"),
    ("pretrain.batch_size", 2.5, "pretrain.batch_size: must be an integer"),
    ("pretrain.batch_size", 3, "pretrain.effective_batch_size: 8 is not a multiple of batch_size 3"),
    ("pretrain.fp16", "yes", "pretrain.fp16: must be true or false"),
    ("pretrain.epochs", 3, "pretrain.epochs: set exactly one of epochs and max_steps"),
    ("sample.nl.n", -5, "sample.nl.n: must be >= 1"),
    ("sample.split.test", 0.5, "sample.split: train + dev + test must be 1"),
    ("importance.fisher", "true", "importance.fisher: must be one of ['empirical', 'sampled']"),
    ("importance.loss", "mean", "importance.loss: must be one of ['log_likelihood', 'training_loss']"),
    ("adapt.method", "si", "adapt.method: must be one of ['ewc', 'mas', 'l2', 'lwf', 'lora']"),
    ("adapt.keep", "best", "adapt.keep: must be one of ['last', 'best_target_dev', 'best_average_dev']"),
    ("adapt.replay_fraction", 0.3, "adapt.replay_fraction: 0.3 x batch_size 8 = 2.4: must be a whole number"),
    ("adapt.replay_fraction", 1.0, "adapt.replay_fraction: must be in [0, 1)"),
    ("adapt.lora", {"rank": 0, "alpha": 1.0, "dropout": 0.0, "target_modules": ["q_proj"]}, "adapt.lora.rank: must be >= 1"),
    ("adapt.lora.target_modules", "q_proj", "adapt.lora.target_modules: must be a list"),
    ("adapt.lora.target_modules", [3], "adapt.lora.target_modules[0]: must be a string"),
    ("average.alpha", 1.5, "average.alpha: must be in [0, 1]"),
    ("eval.bootstrap", "seed", "eval.bootstrap: must be one of ['speaker', 'utterance']"),
    ("resources.nproc_per_node", 3, "pretrain.effective_batch_size: 8 is not a multiple of batch_size 8 x 3 process(es)"),
    ("resources.cpu_threads", 0, "resources.cpu_threads: must be >= 1 or null, got 0"),
    ("resources.cpu_threads", None, "resources.cpu_threads: must be set with reproducible_cpu"),
    ("data.common_voice.nl", ..., "data.common_voice: language 'nl' must be in exactly one of"),
    ("data.common_voice.fr", {"path": "cv/fr"}, "data.common_voice.fr: not a language of the pipeline"),
    ("data.datasets", {"nl": {"path": "x", "clips": "c", "audio": "audio", "sentence": "text", "client_id": None,
                              "split_names": {"train": "train", "dev": "validation", "test": "test"}, "splits": "grouped"}},
     "data.common_voice: language 'nl' must be in exactly one of data.common_voice, data.common_voice_official, "
     "data.datasets, is in"),
    ("data.common_voice_official", {"nl": {"path": "cv/nl"}}, "data.common_voice: language 'nl' must be in exactly one"),
    ("data.datasets", {"de": {"path": "x", "clips": "c", "audio": "audio", "sentence": "text", "client_id": None,
                              "split_names": {"train": "train", "dev": "validation", "test": "test"}, "splits": "release"}},
     "data.datasets.de.splits: must be one of ['grouped', 'official']"),
    ("sample.max_speaker_share", 0.0, "sample.max_speaker_share: must be in (0, 1]"),
    ("validate.max_seconds", 0.5, "validate.max_seconds: must exceed min_seconds"),
    ("demo.speakers", 1, "demo.speakers: must be >= 3"),
    ("seed", "0", "seed: must be an integer"),
])
def test_bad_value_is_refused_naming_the_key(key, value, message):
    with pytest.raises(ParamsError) as err:
        parse_params(with_change(key, value))
    assert message in str(err.value)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(with_change("eval.batch_size", 0)), encoding="utf-8")
    with pytest.raises(ParamsError, match=r"params\.yaml: eval\.batch_size: must be >= 1"):
        load_params(path)


def test_a_dataset_source_is_typed_and_checked():
    source = {"path": "/data/fleurs_nl", "clips": "data/clips/nl", "audio": "audio", "sentence": "transcription",
              "client_id": None, "split_names": {"train": "train", "dev": "validation", "test": "test"},
              "splits": "official"}
    raw = with_change("data.common_voice.nl", ...)
    params = parse_params(with_change("data.datasets", {"nl": source}, raw))
    assert params.data.source("nl").clips == "data/clips/nl" and params.data.source("de").path == "data/demo/de"
    assert (params.data.splits("nl"), params.data.splits("de")) == ("official", "grouped")
    with pytest.raises(ParamsError, match=r"data\.datasets\.nl\.split_names: must map each of \['train', 'dev', 'test'\]"):
        parse_params(with_change("data.datasets", {"nl": {**source, "split_names": {"train": "train"}}}, raw))


def test_grad_accum_steps_accounts_for_processes():
    params = parse_params(with_change("adapt.effective_batch_size", 32))
    assert params.adapt.grad_accum_steps(1, "adapt") == 4
    assert params.adapt.grad_accum_steps(2, "adapt") == 2
    with pytest.raises(ParamsError, match=r"adapt\.effective_batch_size"):
        params.adapt.grad_accum_steps(3, "adapt")



def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    """Every dotted key of params.yaml, sections and leaves (model.config's inner keys excluded: they go to
    Wav2Vec2Config, which checks them)."""
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict) and dotted != "model.config":
            keys += leaf_keys(value, f"{dotted}.")
    return keys


KEYS = leaf_keys(RAW)
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                   st.just(...))  # ... removes the key


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3), st.booleans())
def test_fuzz_params_load_or_name_the_key(changes, unknown):
    raw = RAW
    for key, value in changes:
        try:
            raw = with_change(key, value, raw)
        except (KeyError, TypeError):  # an earlier change removed or replaced this key's parent
            continue
    if unknown:
        raw = {**raw, "sampel": 1}
    try:
        params = parse_params(raw)
    except ParamsError as err:
        key = str(err).split(":")[0]
        assert any(key == k or key.startswith(f"{k}.") for k in [*KEYS, "sampel", "params.yaml"]), str(err)
    else:
        assert params.adapt.ewc_lambda >= 0 and params.seed >= 0 and not unknown
