"""Per-utterance gradient powers on a real tiny Wav2Vec2ForCTC: the batched path equals the loop (squared and
absolute), group norm batches equal lengths only, and a frozen feature encoder is not backpropagated through."""

from unittest import mock

import pytest
import torch

from forgetting.methods import fisher as fisher_module
from forgetting.methods.fisher import estimate_fisher, utterance_ctc_losses
from forgetting.methods.grad_sample import SquaredGradSampler, accumulate_batched, accumulate_looped, padding_is_safe
from tests.unit.tiny import assert_same_fisher, collate, tiny_model, utterances

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["empirical", "sampled"])
def test_batched_fisher_equals_looped(model, utts, kind):
    # The loop gets one utterance per dict, the batched path padded loader batches regrouped into threes.
    looped = estimate_fisher(model, utts, kind=kind, draws=2, batch_size=1, seed=3)
    loader = [collate(utts[:2]), collate(utts[2:])]
    with mock.patch.object(fisher_module, "accumulate_batched", wraps=fisher_module.accumulate_batched) as batched_path:
        batched = estimate_fisher(model, loader, kind=kind, draws=2, batch_size=3, seed=3)
    assert batched_path.call_count == 2  # groups of 3 and 2
    assert_same_fisher(batched.tensors, looped.tensors)
    assert looped.samples == batched.samples == 5
    assert looped.draws == (2 if kind == "sampled" else 1)


def test_group_norm_model_batches_equal_lengths_only(utts):
    model = tiny_model(feat_extract_norm="group", do_stable_layer_norm=False)
    equal = utterances([1.5, 1.5, 1.5], seed=7)
    assert padding_is_safe(model, [u["input_values"] for u in equal])
    assert not padding_is_safe(model, [u["input_values"] for u in utts[:2]])
    looped = estimate_fisher(model, equal, kind="empirical", batch_size=1)
    with mock.patch.object(fisher_module, "accumulate_batched", wraps=fisher_module.accumulate_batched) as batched_path:
        batched = estimate_fisher(model, equal, kind="empirical", batch_size=3)
        estimate_fisher(model, utts[:2], kind="empirical", batch_size=2)  # unequal lengths: the loop
    assert batched_path.call_count == 1
    assert_same_fisher(batched.tensors, looped.tensors)


def test_batched_fisher_does_not_backpropagate_through_a_frozen_feature_encoder(utts):
    model = tiny_model()
    model.freeze_feature_encoder()
    looped = estimate_fisher(model, utts[:3], kind="empirical", batch_size=1)
    carries_grad = []
    hook = model.wav2vec2.feature_extractor.register_forward_hook(lambda m, i, out: carries_grad.append(out.requires_grad))
    try:
        batched = estimate_fisher(model, utts[:3], kind="empirical", batch_size=3)
    finally:
        hook.remove()
    assert carries_grad == [False]
    assert_same_fisher(batched.tensors, looped.tensors)


def test_absolute_gradients_batched_equal_looped_equal_brute_force(model, utts):
    # Two targets per utterance (its labels, then reversed): the sums hold meanₜ |∂ℓₙₜ/∂θ|, not |meanₜ ∂ℓₙₜ/∂θ|.
    three = utts[:3]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    targets = [[u["labels"], u["labels"].flip(0)] for u in three]
    audio = [u["input_values"] for u in three]

    def loss_fn(logits, mask, rows):
        labels = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=-100)
        return utterance_ctc_losses(model, logits, mask, labels, "log_likelihood")

    model.eval()
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for u, pair in zip(three, targets, strict=True):
        for labels in pair:
            out = model(input_values=u["input_values"][None])
            loss = utterance_ctc_losses(model, out.logits, torch.ones(1, len(u["input_values"]), dtype=torch.long),
                                        labels[None], "log_likelihood")[0]
            for name, grad in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True), strict=True):
                if grad is not None:
                    expected[name] += grad.abs() / 2
    looped = {n: torch.zeros_like(p) for n, p in params.items()}
    accumulate_looped(model, audio, lambda b, _: targets[b], loss_fn, params, looped, power=1)
    sampler = SquaredGradSampler(model, {n: torch.zeros_like(p) for n, p in params.items()}, power=1)
    accumulate_batched(sampler, audio, lambda b, _: targets[b], loss_fn, params)
    assert_same_fisher(looped, expected)
    assert_same_fisher(sampler.sums, expected)


def test_power_other_than_one_or_two_is_refused(model):
    with pytest.raises(ValueError, match=r"power must be 1 .* or 2 .*, got 3"):
        SquaredGradSampler(model, {}, power=3)
