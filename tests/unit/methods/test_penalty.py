"""The EWC penalty on a real tiny Wav2Vec2ForCTC: zero at θ*, value and gradient against autograd and the closed
form, no per-step allocation, added onto the accumulated CTC gradient, l2 and λ = 0 through the same code, bfloat16,
name checks."""


import pytest
import torch
from transformers import Wav2Vec2ForCTC

from benchmarks.ewc import peak_extra_bytes
from forgetting.methods.penalty import EWCPenalty, ewc_penalty
from tests.unit.tiny import VOCAB, collate, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def perturbed(model: Wav2Vec2ForCTC, scale: float = 0.01) -> dict[str, torch.Tensor]:
    """Shift every weight by seeded noise; return the weights before (θ*)."""
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return anchor


def random_fisher(model: Wav2Vec2ForCTC) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters() if p.requires_grad}


def test_penalty_is_zero_at_the_anchor():
    model = tiny_model()
    penalty = EWCPenalty(model, random_fisher(model), lam=0.5)
    value = penalty.value(model)
    assert not value.requires_grad and float(value) == 0.0
    penalty.add_gradient(model)
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())


def test_penalty_value_and_gradient_match_autograd_and_closed_form():
    model, lam = tiny_model(), 0.7
    fisher = random_fisher(model)
    penalty = EWCPenalty(model, fisher, lam=lam)
    anchor = perturbed(model)
    value = penalty.value(model)
    penalty.add_gradient(model, scale=0.25)  # the loss scale the accumulated gradients carry (fp16)
    params = dict(model.named_parameters())
    reference = ewc_penalty(params, fisher, anchor, lam)
    assert float(value) == pytest.approx(float(reference.detach()), rel=1e-5)
    autograd = dict(zip(params, torch.autograd.grad(reference, list(params.values())), strict=True))
    for name, p in params.items():
        closed_form = lam * fisher[name] * (p.detach() - anchor[name])
        assert torch.allclose(p.grad, 0.25 * closed_form, rtol=1e-5, atol=1e-12), name
        assert torch.allclose(p.grad, 0.25 * autograd[name], rtol=1e-5, atol=1e-12), name


def test_penalty_allocates_nothing_parameter_sized_per_step():
    model = tiny_model()
    penalty = EWCPenalty(model, random_fisher(model), lam=0.5)
    perturbed(model)
    penalty.add_gradient(model)  # gradients exist from here on, as after the CTC backward pass

    def step() -> None:
        penalty.add_gradient(model)
        penalty.value(model)

    peak = peak_extra_bytes(step, torch.device("cpu"))
    assert 0 < peak < 4096 < max(p.numel() * 4 for p in model.parameters()), peak


def test_penalty_adds_to_the_accumulated_ctc_gradient_once(utts):
    model, lam = tiny_model(), 0.3
    fisher = random_fisher(model)
    penalty = EWCPenalty(model, fisher, lam=lam)
    anchor = perturbed(model)
    batch = collate(utts[:2])

    def accumulated_grads(with_penalty: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for half in (slice(0, 1), slice(1, 2)):  # two micro-batches, each loss divided by 2 as the Trainer does
            (model(**{k: v[half] for k, v in batch.items()}).loss / 2).backward()
        if with_penalty:  # once per optimiser step, after the micro-batches
            penalty.add_gradient(model)
        return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}

    model.eval()
    plain, with_ewc = accumulated_grads(False), accumulated_grads(True)
    for name, p in model.named_parameters():
        expected = plain[name] + lam * fisher[name] * (p.detach() - anchor[name])
        assert float((with_ewc[name] - expected).abs().max()) <= 1e-5 * float(expected.abs().max()), name


def test_zero_lambda_and_l2_use_the_same_path():
    model = tiny_model()
    zero = EWCPenalty(model, random_fisher(model), lam=0.0)
    l2 = EWCPenalty(model, None, lam=2.0)  # no Fisher: F = 1
    anchor = perturbed(model)
    value = zero.value(model)
    zero.add_gradient(model)
    assert float(value) == 0.0 and all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())
    model.zero_grad(set_to_none=True)
    value = l2.value(model)
    l2.add_gradient(model)
    ones = {n: torch.ones_like(a) for n, a in anchor.items()}
    reference = ewc_penalty(dict(model.named_parameters()), ones, anchor, 2.0)
    assert float(value) == pytest.approx(float(reference.detach()), rel=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 2.0 * (p.detach() - anchor[name]), rtol=1e-5, atol=1e-12), name
    workspace = 4 * max(p.numel() for p in model.parameters())  # float32, the largest parameter tensor
    assert l2.held_bytes() - workspace == (zero.held_bytes() - workspace) // 2


def test_bfloat16_storage_halves_memory_and_stays_close():
    model = tiny_model()
    fisher = random_fisher(model)
    full, half = EWCPenalty(model, fisher, 1.0), EWCPenalty(model, fisher, 1.0, dtype=torch.bfloat16)
    workspace = 4 * max(p.numel() for p in model.parameters())  # float32, the largest parameter tensor
    assert (half.held_bytes() - workspace) * 2 == full.held_bytes() - workspace
    perturbed(model, scale=0.1)
    grads = []
    for penalty in (full, half):
        model.zero_grad(set_to_none=True)
        penalty.add_gradient(model)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert float(half.value(model)) == pytest.approx(float(full.value(model)), rel=1e-2)
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-2


def test_penalty_rejects_a_fisher_that_does_not_match():
    model = tiny_model()
    fisher = random_fisher(model)
    with pytest.raises(KeyError, match=r"lm_head\.bias"):
        EWCPenalty(model, {n: f for n, f in fisher.items() if n != "lm_head.bias"}, 1.0)
    with pytest.raises(ValueError, match=r"lm_head\.weight has shape \(3, 3\)"):
        EWCPenalty(model, {**fisher, "lm_head.weight": torch.ones(3, 3)}, 1.0)
    with pytest.raises(KeyError, match="not_a_parameter"):
        EWCPenalty(model, {**fisher, "not_a_parameter": torch.ones(1)}, 1.0)
    with pytest.raises(ValueError, match=r"lm_head\.bias has negative"):
        EWCPenalty(model, {**fisher, "lm_head.bias": -torch.ones(VOCAB)}, 1.0)
    with pytest.raises(ValueError, match="lam"):
        EWCPenalty(model, fisher, -1.0)
    # A Fisher for a parameter frozen later is fine (its term is 0); a new trainable one without a Fisher is not.
    model.freeze_feature_encoder()
    EWCPenalty(model, fisher, 1.0)
    other = tiny_model(num_hidden_layers=4)
    with pytest.raises(KeyError, match=r"encoder\.layers\.3"):
        EWCPenalty(other, fisher, 1.0)
    # Freezing an anchored parameter afterwards would leave a gradient on a frozen parameter: refused.
    penalty = EWCPenalty(other, random_fisher(other), 1.0)
    other.freeze_feature_encoder()
    with pytest.raises(ValueError, match=r"feature_extractor\.conv_layers\.0"):
        penalty.add_gradient(other)
