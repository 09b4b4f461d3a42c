"""The Fisher on a real tiny Wav2Vec2ForCTC: the per-utterance loss, sampled labels and draws, which parameters get
one, the mean of per-utterance squared gradients, one global normalisation, bad requests, and the Fisher file."""

from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

from forgetting import fisher as fisher_module
from forgetting.fisher import (
    FisherError,
    check_fisher_matches,
    estimate_fisher,
    fisher_by_layer,
    layer_of,
    load_fisher,
    sample_ctc_labels,
    save_fisher,
    utterance_ctc_losses,
)
from forgetting.io import file_sha256
from tests.unit.tiny import VOCAB, assert_same_fisher, collate, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_utterance_losses_are_the_training_loss_for_either_reduction(utts):
    batch = collate(utts[:3])
    for reduction in ("mean", "sum"):
        model = tiny_model(ctc_loss_reduction=reduction).eval()
        with torch.no_grad():
            out = model(**batch)
        ours = utterance_ctc_losses(model, out.logits, batch["attention_mask"], batch["labels"])
        expected = ours.mean() if reduction == "mean" else ours.sum()
        assert float(expected) == pytest.approx(float(out.loss), rel=1e-5)


def test_empty_target_is_valid_and_divides_by_one(model):
    frames = int(model._get_feat_extract_output_lengths(16000))
    logits = torch.randn(1, frames, VOCAB)
    loss = utterance_ctc_losses(model, logits, torch.ones(1, 16000, dtype=torch.long), torch.full((1, 1), -100))
    all_blank = -torch.log_softmax(logits.double(), -1)[0, :, 0].sum()
    assert torch.isfinite(loss).all() and float(loss) == pytest.approx(float(all_blank), rel=1e-9)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_sampled_fisher_averages_its_draws(model, utts, batch_size):
    # Every draw returns the utterance's reference labels: the sampled Fisher must then be the empirical one, which
    # catches targets_for ignoring `kind`, a lost `draws`, and draws summed instead of averaged, on either path.
    four, generator = utts[:4], torch.Generator().manual_seed(3)
    expected = [(u["labels"], int(model._get_feat_extract_output_lengths(len(u["input_values"])))) for u in four]
    expected = iter([e for e in expected for _ in range(2)])  # per utterance in order, 2 draws each

    def reference_labels(logits: torch.Tensor, blank: int, g: torch.Generator) -> torch.Tensor:
        labels, frames = next(expected)
        assert logits.shape == (frames, VOCAB) and blank == 0 and g is generator
        return labels.clone()  # what sample_ctc_labels returns: (label_len,) int64 on the CPU

    empirical = estimate_fisher(model, four, kind="empirical", batch_size=1)
    loader = four if batch_size == 1 else [collate(four[:2]), collate(four[2:])]
    with (mock.patch.object(fisher_module, "sample_ctc_labels", side_effect=reference_labels) as draw,
          mock.patch.object(fisher_module, "accumulate_batched", wraps=fisher_module.accumulate_batched) as batched_path):
        sampled = estimate_fisher(model, loader, kind="sampled", draws=2, batch_size=batch_size, generator=generator)
    assert draw.call_count == 4 * 2 and next(expected, None) is None
    assert batched_path.call_count == (0 if batch_size == 1 else 2)
    assert (sampled.kind, sampled.samples, sampled.draws) == ("sampled", 4, 2)
    assert_same_fisher(sampled.tensors, empirical.tensors)


def test_only_trainable_parameters_get_a_fisher(utts):
    model = tiny_model().train()
    model.freeze_feature_encoder()
    fisher = estimate_fisher(model, utts[:3], kind="empirical", batch_size=3).tensors
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert fisher.keys() == trainable.keys()
    assert not any(n.startswith("wav2vec2.feature_extractor.") for n in fisher)
    for name, f in fisher.items():
        assert f.shape == trainable[name].shape and f.dtype == torch.float32, name
        assert bool((f >= 0).all()) and bool(torch.isfinite(f).all()), name
    assert float(fisher["wav2vec2.masked_spec_embed"].abs().max()) == 0.0  # unused in eval mode
    assert float(fisher["lm_head.weight"].max()) > 0
    assert all(p.requires_grad for p in trainable.values()) and model.training  # both restored


def test_fisher_is_the_mean_of_per_utterance_squared_gradients(model, utts):
    pair = utts[:2]
    fisher = estimate_fisher(model, pair, kind="empirical").tensors
    model.eval()
    params = dict(model.named_parameters())
    grads = []
    for u in pair:
        batch = collate([u])
        logits = model(input_values=batch["input_values"], attention_mask=batch["attention_mask"]).logits
        loss = utterance_ctc_losses(model, logits, batch["attention_mask"], batch["labels"])[0]
        grads.append(dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True), strict=True)))
    name = "lm_head.weight"
    per_sample = (grads[0][name] ** 2 + grads[1][name] ** 2) / 2
    minibatch = ((grads[0][name] + grads[1][name]) / 2) ** 2
    assert torch.allclose(fisher[name], per_sample, rtol=1e-5, atol=0)
    assert float((fisher[name] - minibatch).norm() / fisher[name].norm()) > 0.01


def test_sampled_labels_are_valid_ctc_targets(model):
    # A peaked path a a _ a b b _ _ c: repeats inside a run collapse, a blank separates a repeated label.
    path = torch.tensor([5, 5, 0, 5, 7, 7, 0, 0, 9])
    peaked = torch.full((len(path), VOCAB), -60.0).scatter(1, path[:, None], 60.0)
    assert sample_ctc_labels(peaked, 0, torch.Generator().manual_seed(0)).tolist() == [5, 5, 7, 9]
    assert sample_ctc_labels(torch.full((6, VOCAB), -60.0).index_fill(1, torch.tensor([0]), 60.0), 0,
                             torch.Generator()).numel() == 0
    frames = int(model._get_feat_extract_output_lengths(16000))
    logits = 2 * torch.randn(frames, VOCAB, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    draws = [sample_ctc_labels(logits, 0, g) for _ in range(50)]
    assert len({tuple(d.tolist()) for d in draws}) > 1
    for labels in draws:
        assert labels.dtype == torch.long and 0 < len(labels) <= frames
        assert bool(((labels > 0) & (labels < VOCAB)).all())
        loss = utterance_ctc_losses(model, logits[None], torch.ones(1, 16000, dtype=torch.long), labels[None])
        assert bool(torch.isfinite(loss).all()) and float(loss) > 0  # feasible: came from a frame path
    assert sample_ctc_labels(logits, 0, torch.Generator().manual_seed(0)).tolist() == draws[0].tolist()


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


def test_estimate_fisher_rejects_bad_requests(model, utts):
    with pytest.raises(ValueError, match="needs 9 utterances"):
        estimate_fisher(model, utts, kind="empirical", samples=9)
    with pytest.raises(ValueError, match="Generator"):
        estimate_fisher(model, utts, kind="sampled")
    with pytest.raises(ValueError, match="normalize"):
        estimate_fisher(model, utts, kind="empirical", normalize="per_tensor")
    with pytest.raises(ValueError, match="labels"):
        estimate_fisher(model, [{"input_values": utts[0]["input_values"]}], kind="empirical")
    infeasible = {"input_values": utts[0]["input_values"][:4000], "labels": torch.arange(1, 31)}  # 12 frames, 30 labels
    with pytest.raises(ValueError, match="not finite"):
        estimate_fisher(tiny_model(ctc_zero_infinity=False), [infeasible], kind="empirical")
    left_padded = collate(utts[:2])
    left_padded["attention_mask"] = left_padded["attention_mask"].flip(-1)
    with pytest.raises(ValueError, match="right padding"):
        estimate_fisher(model, [left_padded], kind="empirical")


def test_fisher_file_round_trip(tmp_path, model, utts):
    fisher = estimate_fisher(model, utts[:2], kind="empirical", normalize="mean")
    path = tmp_path / "fisher" / "fisher.safetensors"
    save_fisher(path, fisher.tensors, fisher.metadata(model_sha256="ab" * 32))
    tensors, metadata = load_fisher(path)
    assert tensors.keys() == fisher.tensors.keys()
    assert all(torch.equal(tensors[n], fisher.tensors[n]) for n in tensors)
    assert metadata == {"kind": "empirical", "samples": "2", "draws": "1", "normalize": "mean",
                        "scale": repr(fisher.scale), "ctc_loss_reduction": "mean", "model_sha256": "ab" * 32}
    assert [p.name for p in path.parent.iterdir()] == ["fisher.safetensors"]  # no temp file left behind
    first = path.read_bytes()
    for _ in range(3):  # same content, same bytes: DVC must not see a change
        save_fisher(path, fisher.tensors, fisher.metadata(model_sha256="ab" * 32))
        assert path.read_bytes() == first
    with pytest.raises(TypeError, match="samples"):
        save_fisher(path, fisher.tensors, {"samples": 2})


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


def test_a_cut_or_foreign_fisher_file_is_refused(tmp_path, model, utts):
    fisher = estimate_fisher(model, utts[:2], kind="empirical")
    path = tmp_path / "fisher.safetensors"
    save_fisher(path, fisher.tensors, fisher.metadata("abc"))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(FisherError, match=rf"{path}: not a complete Fisher file .*run `dvc repro fisher`"):
        load_fisher(path)
    save_file({"w": torch.ones(2)}, path)  # a safetensors file, but not the fisher stage's
    with pytest.raises(FisherError, match=r"no Fisher metadata \['kind', 'normalize', 'model_sha256'\]"):
        load_fisher(path)


def test_a_fisher_of_another_model_is_refused(tmp_path, model, utts):
    fisher = estimate_fisher(model, utts[:2], kind="empirical")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"the pretrained weights")
    path = tmp_path / "fisher.safetensors"
    save_fisher(path, fisher.tensors, fisher.metadata(file_sha256(weights)))
    check_fisher_matches(path, load_fisher(path)[1], weights)
    weights.write_bytes(b"retrained weights")
    with pytest.raises(FisherError, match=rf"{path} was estimated for another model than {weights}: run `dvc repro fisher`"):
        check_fisher_matches(path, load_fisher(path)[1], weights)
