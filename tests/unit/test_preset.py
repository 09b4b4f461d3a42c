"""The real-run preset: the same schema as params.yaml, the study's values, and only the corpus left to set."""

from pathlib import Path

import yaml

from forgetting.params import load_params

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "presets" / "thesis-cv-xlsr.yaml"


def flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and key != "config":  # model.config is free-form (read for "tiny" only)
            keys |= flat_keys(value, f"{prefix}{key}.")
    return keys


def test_preset_has_every_key_of_params_yaml_and_loads():
    preset = yaml.safe_load(PRESET.read_text(encoding="utf-8"))
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert flat_keys(preset) == flat_keys(shipped)
    load_params(PRESET)  # types and ranges, or a ParamsError naming the key


def test_preset_holds_the_study_configuration():
    params = load_params(PRESET)
    assert params.model.name == "facebook/wav2vec2-xls-r-300m" and params.model.config == {}
    assert (params.pretrain.lr, params.pretrain.epochs, params.pretrain.max_steps) == (3e-5, 10, None)
    assert (params.adapt.lr, params.adapt.epochs, params.adapt.max_steps) == (1e-5, 3, None)
    assert params.adapt.method == "ewc" and params.adapt.ewc_lambda == 0.4
    assert params.pretrain.effective_batch_size == params.adapt.effective_batch_size == 16
    assert params.pretrain.grad_accum_steps(1, "pretrain") == 1
    assert params.adapt.grad_accum_steps(1, "adapt") == 4
    assert (params.adapt.dropout, params.adapt.layerdrop, params.adapt.mask_time_prob) == (0.05, 0.05, 0.05)
    for run in (params.pretrain, params.adapt):
        assert run.fp16 and not run.bf16 and run.freeze_feature_encoder
        assert (run.eval_steps, run.early_stopping_patience) == (250, 3)
    assert params.importance.samples == 5000 and params.importance.loss == "log_likelihood"
    assert params.sample.language("de").n == 150000
    assert params.validate.workers == 0 and params.eval.batch_size == 16


def test_only_the_corpus_paths_are_machine_specific():
    """Everything validated (above) though the corpus is absent here; where it exists it must be a whole release."""
    data = load_params(PRESET).data
    assert not data.datasets and set(data.common_voice) == {"nl", "de"}
    for lang, source in data.common_voice.items():
        folder = Path(source.path)
        assert folder.is_absolute() and folder.name == lang and folder.parent.name.startswith("cv-corpus-")
        assert not folder.exists() or all((folder / f"{name}.tsv").is_file() for name in ("validated", "train", "dev", "test"))


def test_preset_documents_how_to_switch_to_it():
    header = PRESET.read_text(encoding="utf-8").split("\nseed:")[0]
    assert "cp presets/thesis-cv-xlsr.yaml params.yaml" in header and "data.common_voice" in header
