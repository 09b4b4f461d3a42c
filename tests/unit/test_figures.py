"""Per-layer Fisher statistics and the figures drawn from stage results."""

import pytest
import torch

from stages.figures import fisher_by_layer, layer_of, plot_adapt_curves, plot_error_rates, plot_fisher_by_layer, read_curve


@pytest.mark.parametrize(("name", "layer"), [
    ("wav2vec2.encoder.layers.3.attention.q_proj.weight", "encoder.layers.3"),
    ("wav2vec2.feature_extractor.conv_layers.0.conv.weight", "feature_extractor.conv_layers.0"),
    ("wav2vec2.encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed"),
    ("lm_head.bias", "lm_head"),
    ("wav2vec2.masked_spec_embed", "masked_spec_embed"),
])
def test_layer_of(name, layer):
    assert layer_of(name) == layer


def test_fisher_by_layer_sums_per_layer_in_model_order():
    fisher = {"wav2vec2.encoder.layers.0.fc.weight": torch.full((2, 3), 2.0),
              "wav2vec2.encoder.layers.0.fc.bias": torch.tensor([4.0, 0.0]),
              "lm_head.weight": torch.ones(2, 2)}
    layers = fisher_by_layer(fisher)
    assert list(layers) == ["encoder.layers.0", "lm_head"]
    assert layers["encoder.layers.0"] == pytest.approx({"entries": 8, "sum": 16.0, "max": 4.0, "mean": 2.0, "share": 0.8})
    assert layers["lm_head"]["share"] == pytest.approx(0.2)


def test_figures_are_png(tmp_path):
    plot_fisher_by_layer(fisher_by_layer({"lm_head.weight": torch.ones(2)}), "title", tmp_path / "f.png")
    curves = tmp_path / "metrics"
    for split, name, values in (("train", "ctc_loss", [3.0, 1.0]), ("train", "penalty", [0.0, 0.2]), ("eval", "wer", [0.9, 0.5])):
        (curves / split).mkdir(parents=True, exist_ok=True)
        (curves / split / f"{name}.tsv").write_text(f"step\t{name}\n" + "".join(f"{i + 1}\t{v}\n" for i, v in enumerate(values)))
    assert read_curve(curves / "train" / "penalty.tsv", "penalty") == ([1, 2], [0.0, 0.2])
    assert read_curve(curves / "eval" / "missing.tsv", "loss") == ([], [])
    plot_adapt_curves(curves, tmp_path / "c.png")
    for name in ("f.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_error_rate_figure(tmp_path):
    rates = {"pretrained": {"nl": {"wer": 0.4, "cer": 0.1, "wer_ci_low": 0.3, "wer_ci_high": 0.5},
                            "de": {"wer": 0.9, "cer": 0.5, "wer_ci_low": 0.8, "wer_ci_high": 1.0}}}
    plot_error_rates(rates, tmp_path / "figures" / "error_rates.png")
    png = (tmp_path / "figures" / "error_rates.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
