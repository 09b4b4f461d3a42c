"""EWC maths on a real tiny Wav2Vec2ForCTC: Fisher (per-utterance, batched == looped, sampled labels, normalisation),
the penalty (value, gradient, scaling, l2, λ = 0, name checks) and the Fisher file."""

import math
from unittest import mock

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from benchmarks.ewc import peak_extra_bytes
from stages import ewc
from stages.ewc import (
    EWCPenalty,
    estimate_fisher,
    ewc_penalty,
    load_fisher,
    sample_ctc_labels,
    save_fisher,
    utterance_ctc_losses,
)
from stages.grad_sample import padding_is_safe

VOCAB = 45
TINY = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, conv_dim=[64] * 7,
            conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2], feat_extract_norm="layer",
            do_stable_layer_norm=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=VOCAB,
            pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True)


def tiny_model(**overrides) -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    return Wav2Vec2ForCTC(Wav2Vec2Config(**{**TINY, **overrides}))


def utterances(lengths_s: list[float], seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Seeded noise plus a sine per utterance, normalised; random label sequences of 3-10 ids (no blank)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for seconds in lengths_s:
        n = int(seconds * 16000)
        t = torch.arange(n) / 16000
        x = 0.3 * torch.randn(n, generator=g) + torch.sin(2 * math.pi * (150 + 300 * torch.rand(1, generator=g)) * t)
        labels = torch.randint(1, VOCAB, (int(torch.randint(3, 11, (1,), generator=g)),), generator=g)
        out.append({"input_values": (x - x.mean()) / x.std(), "labels": labels})
    return out


def collate(utts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What the training loader yields: audio zero-padded with an attention mask, labels padded with -100."""
    audio = [u["input_values"] for u in utts]
    return {"input_values": pad_sequence(audio, batch_first=True),
            "attention_mask": pad_sequence([torch.ones(len(a), dtype=torch.long) for a in audio], batch_first=True),
            "labels": pad_sequence([u["labels"] for u in utts], batch_first=True, padding_value=-100)}


def assert_same_fisher(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float = 1e-5) -> None:
    """Max |a-b| / max |b| over all entries, and per tensor ‖a-b‖/‖b‖, within `rel`. A tensor whose exact Fisher is
    zero (key-projection biases: softmax is shift invariant) holds only rounding noise; it is held to the global bound."""
    assert a.keys() == b.keys()
    top = max(float(t.abs().max()) for t in b.values())
    assert max(float((a[n] - b[n]).abs().max()) for n in b) <= rel * top
    for name in b:
        if float(b[name].norm()) > 1e-9 * top:
            assert float((a[name] - b[name]).norm() / b[name].norm()) <= rel, name


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from threads, and on a shared machine they only spin: one, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Wav2Vec2ForCTC:
    return tiny_model()


@pytest.fixture(scope="module")
def utts() -> list[dict[str, torch.Tensor]]:
    return utterances([1.0, 1.4, 1.1, 1.3, 1.0])


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


@pytest.mark.parametrize("kind", ["empirical", "sampled"])
def test_batched_fisher_equals_looped(model, utts, kind):
    # The loop gets one utterance per dict, the batched path padded loader batches regrouped into threes.
    looped = estimate_fisher(model, utts, kind=kind, draws=2, batch_size=1, generator=torch.Generator().manual_seed(3))
    loader = [collate(utts[:2]), collate(utts[2:])]
    with mock.patch.object(ewc, "accumulate_batched", wraps=ewc.accumulate_batched) as batched_path:
        batched = estimate_fisher(model, loader, kind=kind, draws=2, batch_size=3,
                                  generator=torch.Generator().manual_seed(3))
    assert batched_path.call_count == 2  # groups of 3 and 2
    assert_same_fisher(batched.tensors, looped.tensors)
    assert looped.samples == batched.samples == 5
    assert looped.draws == (2 if kind == "sampled" else 1)


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
    with (mock.patch.object(ewc, "sample_ctc_labels", side_effect=reference_labels) as draw,
          mock.patch.object(ewc, "accumulate_batched", wraps=ewc.accumulate_batched) as batched_path):
        sampled = estimate_fisher(model, loader, kind="sampled", draws=2, batch_size=batch_size, generator=generator)
    assert draw.call_count == 4 * 2 and next(expected, None) is None
    assert batched_path.call_count == (0 if batch_size == 1 else 2)
    assert (sampled.kind, sampled.samples, sampled.draws) == ("sampled", 4, 2)
    assert_same_fisher(sampled.tensors, empirical.tensors)


def test_group_norm_model_batches_equal_lengths_only(utts):
    model = tiny_model(feat_extract_norm="group", do_stable_layer_norm=False)
    equal = utterances([1.5, 1.5, 1.5], seed=7)
    assert padding_is_safe(model, [u["input_values"] for u in equal])
    assert not padding_is_safe(model, [u["input_values"] for u in utts[:2]])
    looped = estimate_fisher(model, equal, kind="empirical", batch_size=1)
    with mock.patch.object(ewc, "accumulate_batched", wraps=ewc.accumulate_batched) as batched_path:
        batched = estimate_fisher(model, equal, kind="empirical", batch_size=3)
        estimate_fisher(model, utts[:2], kind="empirical", batch_size=2)  # unequal lengths: the loop
    assert batched_path.call_count == 1
    assert_same_fisher(batched.tensors, looped.tensors)


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
    value = penalty(model)
    assert value.requires_grad and float(value.detach()) == 0.0
    value.backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())


def test_penalty_value_and_gradient_match_autograd_and_closed_form():
    model, lam = tiny_model(), 0.7
    fisher = random_fisher(model)
    penalty = EWCPenalty(model, fisher, lam=lam)
    anchor = perturbed(model)
    value = penalty(model)
    (0.25 * value).backward()  # grad_output 0.25: loss scaling / gradient accumulation
    params = dict(model.named_parameters())
    reference = ewc_penalty(params, fisher, anchor, lam)
    assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    autograd = dict(zip(params, torch.autograd.grad(reference, list(params.values())), strict=True))
    for name, p in params.items():
        closed_form = lam * fisher[name] * (p.detach() - anchor[name])
        assert torch.allclose(p.grad, 0.25 * closed_form, rtol=1e-5, atol=1e-12), name
        assert torch.allclose(p.grad, 0.25 * autograd[name], rtol=1e-5, atol=1e-12), name


def test_penalty_allocates_nothing_parameter_sized_per_step():
    model = tiny_model()
    penalty = EWCPenalty(model, random_fisher(model), lam=0.5)
    perturbed(model)
    penalty(model).backward()  # gradients exist from here on, as after the CTC backward pass
    peak = peak_extra_bytes(lambda: penalty(model).backward(), torch.device("cpu"))
    assert 0 < peak < 4096 < max(p.numel() * 4 for p in model.parameters()), peak


def test_penalty_adds_to_the_ctc_gradient_once_per_micro_batch(utts):
    model, lam = tiny_model(), 0.3
    fisher = random_fisher(model)
    penalty = EWCPenalty(model, fisher, lam=lam)
    anchor = perturbed(model)
    batch = collate(utts[:2])

    def accumulated_grads(with_penalty: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for half in (slice(0, 1), slice(1, 2)):  # two micro-batches, each loss divided by 2 as the Trainer does
            loss = model(**{k: v[half] for k, v in batch.items()}).loss
            ((loss + penalty(model)) / 2 if with_penalty else loss / 2).backward()
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
    value = zero(model)
    value.backward()
    assert float(value.detach()) == 0.0 and all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())
    model.zero_grad(set_to_none=True)
    value = l2(model)
    value.backward()
    ones = {n: torch.ones_like(a) for n, a in anchor.items()}
    reference = ewc_penalty(dict(model.named_parameters()), ones, anchor, 2.0)
    assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
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
        value = penalty(model)
        value.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert float(value.detach()) == pytest.approx(float(full(model).detach()), rel=1e-2)
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
        penalty(other)


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
