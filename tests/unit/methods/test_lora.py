"""LoRA through peft on a real tiny Wav2Vec2ForCTC: only the adapters train, every base weight stays bit-identical
through real AdamW steps, and the folded model is an ordinary one with W + (alpha/rank)·B·A that computes what the
wrapped one does."""

import dataclasses

import pytest
import torch
from transformers import Wav2Vec2ForCTC

from forgetting.methods.lora import add_lora, merge_lora
from forgetting.training.model import apply_training_config
from tests.unit.tiny import collate, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ["q_proj", "v_proj", "intermediate_dense"]
RANK, ALPHA = 4, 12.0


def test_only_adapters_train_base_weights_stay_bit_identical_and_the_fold_matches(utts):
    base = tiny_model()
    pretrained = {name: t.clone() for name, t in base.state_dict().items()}
    batch = collate(utts[:2])
    with torch.no_grad():
        before = base.eval()(**batch).logits
    model = add_lora(base, RANK, ALPHA, 0.1, TARGETS)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    adapted = [n for n, _ in base.named_modules() if n.rsplit(".", 1)[-1] in TARGETS]
    assert len(adapted) == 9  # 3 layers x 3 projections
    assert sorted(trainable) == sorted(f"base_model.model.{n}.lora_{ab}.default.weight" for n in adapted for ab in "AB")
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, before)  # B starts at 0: the wrapped model is the base one

    model.train()  # dropout in the model and on the adapters' input
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # frozen parameters have no grad
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    state = model.state_dict()
    for name, tensor in pretrained.items():
        wrapped = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias") \
            if any(f".{t}." in name for t in TARGETS) else name
        assert torch.equal(state[f"base_model.model.{wrapped}"], tensor), name
    assert all(float(p.abs().max()) > 0 for n, p in trainable.items() if ".lora_B." in n)  # the adapters moved

    model.eval()
    with torch.no_grad():
        wrapped_logits = model(**batch).logits
        deltas = {n: (ALPHA / RANK) * model.get_submodule(f"base_model.model.{n}").lora_B["default"].weight
                  @ model.get_submodule(f"base_model.model.{n}").lora_A["default"].weight for n in adapted}
    merged = merge_lora(model)
    assert type(merged) is Wav2Vec2ForCTC
    folded = merged.state_dict()
    assert list(folded) == list(pretrained)  # the pretrained model's keys, in its order
    for name, tensor in pretrained.items():
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and module in deltas:
            torch.testing.assert_close(folded[name], tensor + deltas[module], rtol=0, atol=1e-6)
            assert not torch.equal(folded[name], tensor)
        else:
            assert torch.equal(folded[name], tensor), name
    with torch.no_grad():
        merged_logits = merged.eval()(**batch).logits
    assert not torch.allclose(merged_logits, before, atol=1e-3)  # the adaptation survives the fold
    torch.testing.assert_close(merged_logits, wrapped_logits, rtol=0, atol=1e-5 * float(wrapped_logits.abs().max()))


def test_a_target_module_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match=r"adapt.lora.target_modules: \['query'\] match no module of the model"):
        add_lora(tiny_model(), RANK, ALPHA, 0.0, ["q_proj", "query"])


def test_the_run_dropout_leaves_the_lora_dropout_alone(params):
    model = add_lora(tiny_model(), rank=2, alpha=4.0, dropout=0.1, target_modules=["q_proj"])
    apply_training_config(model, dataclasses.replace(params.adapt, dropout=0.0))
    dropouts = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert {p for name, p in dropouts.items() if ".lora_dropout." in name} == {0.1}
    assert {p for name, p in dropouts.items() if ".lora_dropout." not in name} == {0.0}
