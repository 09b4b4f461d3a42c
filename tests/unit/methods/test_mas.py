"""MAS importance on a real tiny Wav2Vec2ForCTC: the output gₙ against hand-computed values and its closed-form
gradient, and Σₙ |∂gₙ/∂θ| of the looped and batched paths against a brute-force autograd computation."""

import pytest
import torch

from forgetting.methods.mas import estimate_mas, posterior_square_norms
from tests.unit.tiny import VOCAB, assert_same_fisher, collate, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_mas(model, utts) -> dict[str, torch.Tensor]:
    """Σₙ |∂gₙ/∂θ|, one utterance at a time, with gₙ written out: mean over its frames of Σ_v p_v² (float64)."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    for u in utts:
        logits = model(input_values=u["input_values"][None]).logits[0].double()
        posteriors = logits.exp() / logits.exp().sum(-1, keepdim=True)
        g = (posteriors * posteriors).sum() / logits.shape[0]
        grads = torch.autograd.grad(g, list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads, strict=True):
            if grad is not None:
                sums[name] += grad.abs()
    return sums


def test_output_is_the_mean_squared_posterior_norm_over_valid_frames(model):
    mask = torch.ones(2, 16_000, dtype=torch.long)
    mask[1, 9_600:] = 0
    frames = model._get_feat_extract_output_lengths(torch.tensor([16_000, 9_600])).tolist()
    logits = torch.randn(2, frames[0], VOCAB, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g = posterior_square_norms(model, logits, mask)
    values = g.detach()
    p = torch.softmax(logits.detach().double(), -1)
    for b in range(2):
        by_hand = sum(float((p[b, t] ** 2).sum()) for t in range(frames[b])) / frames[b]
        assert float(values[b]) == pytest.approx(by_hand, rel=1e-12)
    # ∂‖p‖²/∂z = 2·p ⊙ (p − ‖p‖²) per frame, over the utterance's valid frames; padded frames get nothing
    g.sum().backward()
    square_norm = (p**2).sum(-1, keepdim=True)
    expected = 2 * p * (p - square_norm) / torch.tensor(frames, dtype=torch.float64)[:, None, None]
    expected[1, frames[1]:] = 0
    torch.testing.assert_close(logits.grad.double(), expected, rtol=1e-5, atol=1e-9)
    assert frames[1] < frames[0] and bool((logits.grad[1, frames[1]:] == 0).all())


@pytest.mark.parametrize("batch_size", [1, 3])
def test_importance_equals_brute_force_autograd(model, utts, batch_size):
    # The loop gets one utterance per dict, the batched path padded batches regrouped into threes (3 then 2).
    expected = brute_force_mas(model, utts)
    batches = utts if batch_size == 1 else [collate(utts[:2]), collate(utts[2:])]
    model.train()
    sums, count = estimate_mas(model, batches, batch_size=batch_size)
    assert model.training  # eval during estimation, restored after
    assert count == 5
    assert_same_fisher(sums, expected)
    assert all(s.dtype == torch.float32 and bool((s >= 0).all()) for s in sums.values())
    assert max(float(s.max()) for s in sums.values()) > 0


def test_only_trainable_parameters_get_an_importance_and_a_frozen_encoder_is_skipped(utts):
    model = tiny_model()
    model.freeze_feature_encoder()
    looped, _ = estimate_mas(model, utts[:3], batch_size=1)
    batched, count = estimate_mas(model, [collate(utts[:3])], batch_size=3)
    assert looped.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("wav2vec2.feature_extractor.") for n in looped)
    assert count == 3
    assert_same_fisher(batched, looped)


def test_samples_takes_the_first_utterances_and_too_few_raise(model, utts):
    no_labels = [{"input_values": u["input_values"]} for u in utts]  # MAS needs none
    first_two, count = estimate_mas(model, no_labels, samples=2)
    expected = brute_force_mas(model, utts[:2])
    assert count == 2
    assert_same_fisher(first_two, expected)
    with pytest.raises(ValueError, match="MAS needs 6 utterances, the batches held 5"):
        estimate_mas(model, utts, samples=6)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        estimate_mas(model, utts, batch_size=0)
