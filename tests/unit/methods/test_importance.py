"""The importance file and its checks, the one global normalisation, and the statistics by layer, on a real tiny
model's Fisher."""

import pytest
import torch
from safetensors.torch import save_file

from forgetting.io import file_sha256
from forgetting.methods.fisher import estimate_fisher
from forgetting.methods.importance import (
    ImportanceError,
    check_importance_matches,
    importance_by_layer,
    layer_of,
    load_importance,
    normalised,
    save_importance,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_normalisation_is_one_global_scale(model, utts):
    raw = estimate_fisher(model, utts[:2], kind="empirical")
    by_max = estimate_fisher(model, utts[:2], kind="empirical", normalize="max")
    by_mean = estimate_fisher(model, utts[:2], kind="empirical", normalize="mean")
    assert raw.scale == 1.0
    assert max(float(t.max()) for t in by_max.tensors.values()) == pytest.approx(1.0, rel=1e-6)
    entries = sum(t.numel() for t in by_mean.tensors.values())
    assert sum(float(t.double().sum()) for t in by_mean.tensors.values()) / entries == pytest.approx(1.0, rel=1e-6)
    for fisher in (by_max, by_mean):
        for name, t in raw.tensors.items():  # every tensor divided by the same number: layer ratios survive
            assert torch.allclose(fisher.tensors[name] * fisher.scale, t, rtol=1e-5, atol=1e-30), name


def test_fisher_file_round_trip(tmp_path, model, utts):
    fisher = estimate_fisher(model, utts[:2], kind="empirical", normalize="mean")
    path = tmp_path / "importance" / "importance.safetensors"
    save_importance(path, fisher.tensors, fisher.metadata(model_sha256="ab" * 32))
    tensors, metadata = load_importance(path)
    assert tensors.keys() == fisher.tensors.keys()
    assert all(torch.equal(tensors[n], fisher.tensors[n]) for n in tensors)
    assert metadata == {"kind": "empirical", "loss": "log_likelihood", "samples": "2", "draws": "1", "normalize": "mean",
                        "scale": repr(fisher.scale), "ctc_loss_reduction": "mean", "model_sha256": "ab" * 32}
    assert [p.name for p in path.parent.iterdir()] == ["importance.safetensors"]  # no temp file left behind
    first = path.read_bytes()
    for _ in range(3):  # same content, same bytes: DVC must not see a change
        save_importance(path, fisher.tensors, fisher.metadata(model_sha256="ab" * 32))
        assert path.read_bytes() == first
    with pytest.raises(TypeError, match="samples"):
        save_importance(path, fisher.tensors, {"samples": 2})


@pytest.mark.parametrize(("name", "layer"), [
    ("wav2vec2.encoder.layers.3.attention.q_proj.weight", "encoder.layers.3"),
    ("wav2vec2.feature_extractor.conv_layers.0.conv.weight", "feature_extractor.conv_layers.0"),
    ("wav2vec2.encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed"),
    ("lm_head.bias", "lm_head"),
    ("wav2vec2.masked_spec_embed", "masked_spec_embed"),
])
def test_layer_of(name, layer):
    assert layer_of(name) == layer


def test_importance_by_layer_sums_per_layer_in_model_order():
    fisher = {"wav2vec2.encoder.layers.0.fc.weight": torch.full((2, 3), 2.0),
              "wav2vec2.encoder.layers.0.fc.bias": torch.tensor([4.0, 0.0]),
              "lm_head.weight": torch.ones(2, 2)}
    layers = importance_by_layer(fisher)
    assert list(layers) == ["encoder.layers.0", "lm_head"]
    assert layers["encoder.layers.0"] == pytest.approx({"entries": 8, "sum": 16.0, "max": 4.0, "mean": 2.0, "share": 0.8})
    assert layers["lm_head"]["share"] == pytest.approx(0.2)


def test_a_cut_or_foreign_fisher_file_is_refused(tmp_path, model, utts):
    fisher = estimate_fisher(model, utts[:2], kind="empirical")
    path = tmp_path / "fisher.safetensors"
    save_importance(path, fisher.tensors, fisher.metadata("abc"))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ImportanceError, match=rf"{path}: not a complete importance file .*run `dvc repro importance`"):
        load_importance(path)
    save_file({"w": torch.ones(2)}, path)  # a safetensors file, but not the fisher stage's
    with pytest.raises(ImportanceError, match=r"no importance metadata \['kind', 'normalize', 'model_sha256'\]"):
        load_importance(path)


def test_a_fisher_of_another_model_is_refused(tmp_path, model, utts):
    fisher = estimate_fisher(model, utts[:2], kind="empirical")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"the pretrained weights")
    path = tmp_path / "fisher.safetensors"
    save_importance(path, fisher.tensors, fisher.metadata(file_sha256(weights)))
    check_importance_matches(path, load_importance(path)[1], weights, ["empirical"])
    weights.write_bytes(b"retrained weights")
    with pytest.raises(ImportanceError, match=rf"{path} was estimated for another model than {weights}: run `dvc repro "):
        check_importance_matches(path, load_importance(path)[1], weights, ["empirical"])
    weights.write_bytes(b"the pretrained weights")
    with pytest.raises(ImportanceError, match=r"holds a empirical importance, this method needs mas"):
        check_importance_matches(path, load_importance(path)[1], weights, ["mas"])


def test_normalised_refuses_what_no_penalty_could_use():
    with pytest.raises(ValueError, match="not finite"):
        normalised({"w": torch.tensor([1.0, float("nan")])}, 1, "mean", kind="mas", loss="", draws=1, ctc_loss_reduction="mean")
    with pytest.raises(ValueError, match="all gradients zero"):
        normalised({"w": torch.zeros(3)}, 2, "max", kind="mas", loss="", draws=1, ctc_loss_reduction="mean")
    sums = normalised({"w": torch.tensor([2.0, 6.0])}, 2, "none", kind="mas", loss="", draws=1, ctc_loss_reduction="mean")
    assert sums.tensors["w"].tolist() == [1.0, 3.0] and sums.scale == 1.0  # the mean over the utterances
