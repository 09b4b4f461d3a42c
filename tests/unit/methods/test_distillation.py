"""LwF's distillation term on real tiny Wav2Vec2ForCTC models: the KD against a hand-written KL with padded frames
masked, zero for identical models, its gradient in closed form, and an SGD step along it lowering it."""

import copy
import math

import pytest
import torch

from forgetting.methods.distillation import Distillation, distillation_loss
from tests.unit.tiny import audio_batch, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def kd_by_hand(student: torch.Tensor, teacher: torch.Tensor, frames: list[int], temperature: float) -> float:
    """T²·mean over valid frames of Σ_v q_v·log(q_v/p_v), q = teacher softmax, p = student softmax at T, in loops."""
    total, count = 0.0, 0
    for b, valid in enumerate(frames):
        for t in range(valid):
            zs, zt = (student[b, t].double() / temperature).tolist(), (teacher[b, t].double() / temperature).tolist()
            log_zs, log_zt = math.log(sum(map(math.exp, zs))), math.log(sum(map(math.exp, zt)))
            total += sum(math.exp(a - log_zt) * ((a - log_zt) - (s - log_zs)) for a, s in zip(zt, zs, strict=True))
            count += 1
    return temperature**2 * total / count


def frames_of(model, mask: torch.Tensor) -> list[int]:
    return model._get_feat_extract_output_lengths(mask.sum(-1)).tolist()


@pytest.fixture(scope="module")
def teacher_student():
    """A tiny teacher, and a student whose weights are the teacher's moved by seeded noise; both in eval mode."""
    teacher = tiny_model().eval()
    student = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
    return teacher, student


def test_loss_is_the_weighted_kl_over_valid_frames(teacher_student):
    teacher, student = teacher_student
    values, mask = audio_batch()  # the second utterance is padded from 0.6 s
    kd = Distillation(copy.deepcopy(teacher), weight=0.7, temperature=2.0)
    logits = student(input_values=values, attention_mask=mask).logits
    with torch.no_grad():
        teacher_logits = teacher(input_values=values, attention_mask=mask).logits
    frames = frames_of(student, mask)
    assert frames[1] < frames[0] == logits.shape[1]
    expected = 0.7 * kd_by_hand(logits.detach(), teacher_logits, frames, 2.0)
    loss = kd.loss(student, {"input_values": values, "attention_mask": mask}, logits)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # what the padded frames hold does not count
    garbage = logits.detach().clone()
    garbage[1, frames[1]:] = 100.0
    valid = torch.arange(logits.shape[1]) < torch.tensor(frames)[:, None]
    assert float(distillation_loss(garbage, teacher_logits, valid, 2.0)) == pytest.approx(expected / 0.7, rel=1e-5)


def test_loss_is_zero_when_student_and_teacher_are_the_same_model(teacher_student):
    teacher, _ = teacher_student
    student = copy.deepcopy(teacher)
    values, mask = audio_batch()
    logits = student(input_values=values, attention_mask=mask).logits
    kd = Distillation(copy.deepcopy(teacher).train(), weight=1.0, temperature=2.0)  # put in eval mode: no dropout
    loss = kd.loss(student, {"input_values": values, "attention_mask": mask}, logits)
    assert float(loss.detach()) == 0.0


def test_gradient_is_the_closed_form_and_an_sgd_step_along_it_lowers_the_kl(teacher_student):
    teacher, student = teacher_student
    student = copy.deepcopy(student)
    values, mask = audio_batch()
    inputs = {"input_values": values, "attention_mask": mask}
    kd = Distillation(copy.deepcopy(teacher).train(), weight=0.5, temperature=3.0)
    assert not kd.teacher.training and not any(p.requires_grad for p in kd.teacher.parameters())
    logits = student(**inputs).logits
    logits.retain_grad()
    before = kd.loss(student, inputs, logits)
    before.backward()
    # ∂(w·T²·mean KL)/∂z_student = w·T·(p_student − p_teacher)/|V| on a valid frame, 0 on a padded one
    frames = frames_of(student, mask)
    with torch.no_grad():
        teacher_logits = teacher(**inputs).logits
    p_student, p_teacher = (torch.softmax(z.detach().double() / 3.0, -1) for z in (logits, teacher_logits))
    expected = 0.5 * 3.0 * (p_student - p_teacher) / sum(frames)
    expected[1, frames[1]:] = 0.0
    torch.testing.assert_close(logits.grad.double(), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert all(p.grad is None for p in kd.teacher.parameters())
    # a small step θ − η·g lowers the loss by η·‖g‖² to first order
    grads = [p.grad for p in student.parameters() if p.grad is not None]  # masked_spec_embed is unused in eval mode
    lr, square_norm = 1e-3, float(sum(g.double().square().sum() for g in grads))
    with torch.no_grad():
        for p in student.parameters():
            if p.grad is not None:
                p.sub_(lr * p.grad)
        after = kd.loss(student, inputs, student(**inputs).logits)
    assert float(before.detach() - after) == pytest.approx(lr * square_norm, rel=0.05)


def test_bad_weight_or_temperature_is_refused(teacher_student):
    teacher, _ = teacher_student
    with pytest.raises(ValueError, match=r"adapt.kd_weight must be finite and >= 0, got -1.0"):
        Distillation(teacher, weight=-1.0, temperature=2.0)
    with pytest.raises(ValueError, match=r"adapt.kd_temperature must be finite and > 0, got 0.0"):
        Distillation(teacher, weight=1.0, temperature=0.0)
