"""The Fisher on a real tiny Wav2Vec2ForCTC: the per-utterance loss of either definition, sampled labels and draws
(the same whatever the batching or the shard), which parameters get one, the mean of per-utterance squared
gradients, and bad requests. Its file and normalisation: test_importance.py."""

from unittest import mock

import pytest
import torch

from forgetting.methods import fisher as fisher_module
from forgetting.methods.fisher import estimate_fisher, fisher_sums, sample_ctc_labels, utterance_ctc_losses, utterance_generator
from tests.unit.tiny import VOCAB, assert_same_fisher, collate, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_utterance_losses_are_the_training_loss_for_either_reduction(utts):
    batch = collate(utts[:3])
    for reduction in ("mean", "sum"):
        model = tiny_model(ctc_loss_reduction=reduction).eval()
        with torch.no_grad():
            out = model(**batch)
        ours = utterance_ctc_losses(model, out.logits, batch["attention_mask"], batch["labels"], "training_loss")
        expected = ours.mean() if reduction == "mean" else ours.sum()
        assert float(expected) == pytest.approx(float(out.loss), rel=1e-5)


def test_log_likelihood_is_not_divided_by_the_label_length(utts):
    batch = collate(utts[:3])
    model = tiny_model(ctc_loss_reduction="mean").eval()
    with torch.no_grad():
        logits = model(**batch).logits
    lengths = (batch["labels"] != -100).sum(-1)
    likelihood = utterance_ctc_losses(model, logits, batch["attention_mask"], batch["labels"], "log_likelihood")
    training = utterance_ctc_losses(model, logits, batch["attention_mask"], batch["labels"], "training_loss")
    assert len(set(lengths.tolist())) > 1
    assert torch.allclose(likelihood / lengths, training, rtol=1e-12)


def test_the_two_fisher_losses_differ_by_exactly_the_squared_label_length(model, utts):
    # One utterance each: F_training = F_likelihood / |y|^2. Two: the mean of those, each by its own |y|^2.
    lengths = [len(u["labels"]) for u in utts[:2]]
    assert lengths[0] != lengths[1]
    alone = [fisher_sums(model, [u], kind="empirical", loss="log_likelihood")[0] for u in utts[:2]]
    both, count = fisher_sums(model, utts[:2], kind="empirical", loss="training_loss")
    assert count == 2
    expected = {name: alone[0][name] / lengths[0] ** 2 + alone[1][name] / lengths[1] ** 2 for name in both}
    assert_same_fisher(both, expected)
    likelihood = estimate_fisher(model, utts[:2], kind="empirical", loss="log_likelihood")
    assert likelihood.loss == "log_likelihood" and likelihood.kind == "empirical"


def test_empty_target_is_valid_and_divides_by_one(model):
    frames = int(model._get_feat_extract_output_lengths(16000))
    logits = torch.randn(1, frames, VOCAB)
    loss = utterance_ctc_losses(model, logits, torch.ones(1, 16000, dtype=torch.long), torch.full((1, 1), -100),
                                "training_loss")
    all_blank = -torch.log_softmax(logits.double(), -1)[0, :, 0].sum()
    assert torch.isfinite(loss).all() and float(loss) == pytest.approx(float(all_blank), rel=1e-9)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_sampled_fisher_averages_its_draws(model, utts, batch_size):
    # Every draw returns the utterance's reference labels: the sampled Fisher must then be the empirical one, which
    # catches targets_for ignoring `kind`, a lost `draws`, and draws summed instead of averaged, on either path.
    four = utts[:4]
    expected = [(u["labels"], int(model._get_feat_extract_output_lengths(len(u["input_values"])))) for u in four]
    expected = iter([e for e in expected for _ in range(2)])  # per utterance in order, 2 draws each

    def reference_labels(logits: torch.Tensor, blank: int, g: torch.Generator) -> torch.Tensor:
        labels, frames = next(expected)
        assert logits.shape == (frames, VOCAB) and blank == 0 and isinstance(g, torch.Generator)
        return labels.clone()  # what sample_ctc_labels returns: (label_len,) int64 on the CPU

    empirical = estimate_fisher(model, four, kind="empirical", batch_size=1)
    loader = four if batch_size == 1 else [collate(four[:2]), collate(four[2:])]
    with (mock.patch.object(fisher_module, "sample_ctc_labels", side_effect=reference_labels) as draw,
          mock.patch.object(fisher_module, "accumulate_batched", wraps=fisher_module.accumulate_batched) as batched_path):
        sampled = estimate_fisher(model, loader, kind="sampled", draws=2, batch_size=batch_size, seed=3)
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
        loss = utterance_ctc_losses(model, logits, batch["attention_mask"], batch["labels"], "log_likelihood")[0]
        grads.append(dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True), strict=True)))
    name = "lm_head.weight"
    per_sample = (grads[0][name] ** 2 + grads[1][name] ** 2) / 2
    minibatch = ((grads[0][name] + grads[1][name]) / 2) ** 2
    assert torch.allclose(fisher[name], per_sample, rtol=1e-5, atol=0)
    assert float((fisher[name] - minibatch).norm() / fisher[name].norm()) > 0.01


def test_sampled_draws_do_not_depend_on_batching_or_shards(model, utts):
    # Two processes, each with every other utterance (its positions in the chosen list), add up to one process's sums.
    whole, count = fisher_sums(model, utts[:4], kind="sampled", loss="log_likelihood", draws=2, seed=5)
    shards = [fisher_sums(model, utts[rank:4:2], kind="sampled", loss="log_likelihood", draws=2, seed=5,
                          positions=range(rank, 4, 2), batch_size=2) for rank in (0, 1)]
    assert count == shards[0][1] + shards[1][1] == 4
    assert_same_fisher({n: shards[0][0][n] + shards[1][0][n] for n in whole}, whole)
    other_seed, _ = fisher_sums(model, utts[:4], kind="sampled", loss="log_likelihood", draws=2, seed=6)
    assert float((other_seed["lm_head.weight"] - whole["lm_head.weight"]).norm()) > 0
    assert utterance_generator(5, 1).initial_seed() != utterance_generator(5, 2).initial_seed()


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
        loss = utterance_ctc_losses(model, logits[None], torch.ones(1, 16000, dtype=torch.long), labels[None],
                                    "log_likelihood")
        assert bool(torch.isfinite(loss).all()) and float(loss) > 0  # feasible: came from a frame path
    assert sample_ctc_labels(logits, 0, torch.Generator().manual_seed(0)).tolist() == draws[0].tolist()


def test_estimate_fisher_rejects_bad_requests(model, utts):
    with pytest.raises(ValueError, match="needs 9 utterances"):
        estimate_fisher(model, utts, kind="empirical", samples=9)
    with pytest.raises(ValueError, match="loss must be"):
        estimate_fisher(model, utts, kind="empirical", loss="mean")
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


