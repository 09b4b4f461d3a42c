"""Per-utterance squared gradients on a real tiny Wav2Vec2ForCTC: the batched path equals the loop, group norm
batches equal lengths only, and a frozen feature encoder is not backpropagated through."""

from unittest import mock

import pytest
import torch

from forgetting import fisher as fisher_module
from forgetting.fisher import estimate_fisher
from forgetting.grad_sample import padding_is_safe
from tests.unit.tiny import assert_same_fisher, collate, tiny_model, utterances

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["empirical", "sampled"])
def test_batched_fisher_equals_looped(model, utts, kind):
    # The loop gets one utterance per dict, the batched path padded loader batches regrouped into threes.
    looped = estimate_fisher(model, utts, kind=kind, draws=2, batch_size=1, generator=torch.Generator().manual_seed(3))
    loader = [collate(utts[:2]), collate(utts[2:])]
    with mock.patch.object(fisher_module, "accumulate_batched", wraps=fisher_module.accumulate_batched) as batched_path:
        batched = estimate_fisher(model, loader, kind=kind, draws=2, batch_size=3,
                                  generator=torch.Generator().manual_seed(3))
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
