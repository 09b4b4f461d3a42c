"""Weight averaging of a real tiny Wav2Vec2ForCTC's state dicts: bit for bit at α = 0 and α = 1 (signed zeros
included), the hand-computed mix in between, integer tensors from the adapted model, and mismatches named."""

import pytest
import torch

from forgetting.methods.averaging import average_weights
from tests.unit.tiny import tiny_model


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


@pytest.fixture(scope="module")
def pair() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """θ* of the tiny model and an 'adapted' copy moved by seeded noise; −0.0 entries in both, and a step counter."""
    anchor = tiny_model().state_dict()
    g = torch.Generator().manual_seed(4)
    adapted = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in anchor.items()}
    anchor["lm_head.bias"][:3] = -0.0  # lerp would turn these into +0.0 at α = 0
    # and these at α = 1 (lerp's scalar tail loop flips them; its vectorised body happens to keep the sign)
    anchor["lm_head.bias"][-3:], adapted["lm_head.bias"][-3:] = 0.5, -0.0
    anchor["steps"], adapted["steps"] = torch.tensor(3), torch.tensor(7)
    return anchor, adapted


def test_ends_give_either_model_bit_for_bit(pair):
    anchor, adapted = pair
    for alpha, expected in ((0.0, anchor), (1.0, adapted)):
        averaged = average_weights(anchor, adapted, alpha)
        assert averaged.keys() == expected.keys()
        for name, t in averaged.items():
            if name != "steps":
                assert t.dtype == expected[name].dtype and torch.equal(bits(t), bits(expected[name])), (alpha, name)
            assert t.data_ptr() not in (anchor[name].data_ptr(), adapted[name].data_ptr())  # new tensors
    assert bool(torch.signbit(average_weights(anchor, adapted, 0.0)["lm_head.bias"][:3]).all())
    assert bool(torch.signbit(average_weights(anchor, adapted, 1.0)["lm_head.bias"][-3:]).all())


def test_between_the_ends_is_the_weighted_mean_and_integers_come_from_the_adapted_model(pair):
    anchor, adapted = pair
    averaged = average_weights(anchor, adapted, 0.25)
    for name in anchor:
        if name == "steps":
            continue
        expected = (0.75 * anchor[name].double() + 0.25 * adapted[name].double()).float()
        torch.testing.assert_close(averaged[name], expected, rtol=0, atol=1e-7)
    assert int(averaged["steps"]) == 7


def test_mismatches_are_named(pair):
    anchor, adapted = pair
    with pytest.raises(KeyError, match=r"only in the pretrained model \['extra'\]"):
        average_weights({**anchor, "extra": torch.zeros(1)}, adapted, 0.5)
    extra = torch.randn(3)  # a tensor only the adapted model has (no θ*) is copied from it
    assert torch.equal(average_weights(anchor, {**adapted, "extra": extra}, 0.5)["extra"], extra)
    with pytest.raises(ValueError, match=r"lm_head.weight: pretrained \(45, 128\) torch.float32, adapted \(45, 127\)"):
        average_weights(anchor, {**adapted, "lm_head.weight": adapted["lm_head.weight"][:, :127]}, 0.5)
    with pytest.raises(ValueError, match=r"lm_head.bias: .* torch.float32, .* torch.float64"):
        average_weights(anchor, {**adapted, "lm_head.bias": adapted["lm_head.bias"].double()}, 0.5)
    with pytest.raises(ValueError, match=r"average.alpha must be in \[0, 1\], got 1.5"):
        average_weights(anchor, adapted, 1.5)
