"""Learning without Forgetting (Li and Hoiem 2017) as frame-level distillation: the frozen pretrained model (the
teacher) gives frame posteriors on every target batch, and the adapted model (the student) is pulled towards them.

KD = T² · (1/|V|)·Σ_{(b,t)∈V} KL(softmax(z_teacher/T) ‖ softmax(z_student/T)), V the valid frames of the batch (frames
past an utterance's end are masked), T the temperature. The mean is over the frames of the whole batch, as CTC
training here treats a batch as one sample of frames; the T² keeps the gradient's scale independent of T (Hinton et
al. 2015: ∂KD/∂z_student = T·(p_student − p_teacher)/|V| on a valid frame). The term added to the CTC loss is
`weight`·KD. KL(teacher ‖ student) is the direction of Hinton et al.: the student must cover every token the teacher
gives mass to, the blank included.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Wav2Vec2ForCTC

from forgetting.curves import TRAIN_KD_LOSS
from forgetting.training.regulariser import Regulariser


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """T²·mean over the valid frames of KL(softmax(teacher/T) ‖ softmax(student/T)), a float32 scalar.

    `student_logits`, `teacher_logits`: (batch, frames, vocab); `valid`: (batch, frames) bool, True on real frames.
    Computed in float32 whatever the logits' dtype (fp16 log-probabilities lose the small posteriors)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if valid.shape != student_logits.shape[:2]:
        raise ValueError(f"valid-frame mask {tuple(valid.shape)} does not match logits {tuple(student_logits.shape)}")
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_frame = F.kl_div(student, teacher, reduction="none", log_target=True).sum(-1)  # (batch, frames)
    frames = valid.sum().clamp_min(1)
    return per_frame.masked_fill(~valid, 0.0).sum() / frames * temperature**2


class Distillation(Regulariser):
    """LwF's loss term `weight`·KD (see module docstring) against a frozen teacher, added to every micro-batch.

    The teacher is kept in eval mode (no dropout, no SpecAugment masking) with every parameter frozen, and runs under
    `torch.no_grad()` on the student's inputs; it moves to the student's device on first use. It holds a full copy of
    the model's weights: pass a copy of the pretrained model, not the model being trained."""

    curve = TRAIN_KD_LOSS

    def __init__(self, teacher: Wav2Vec2ForCTC, weight: float, temperature: float) -> None:
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"adapt.kd_weight must be finite and >= 0, got {weight}")
        if not temperature > 0 or temperature == float("inf"):
            raise ValueError(f"adapt.kd_temperature must be finite and > 0, got {temperature}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.temperature = float(weight), float(temperature)

    def loss(self, model: nn.Module, inputs: Mapping[str, Tensor], logits: Tensor) -> Tensor:
        """`weight`·KD of the student's `logits` (batch, frames, vocab) against the teacher's on the same `inputs`."""
        if self.teacher.device != logits.device:  # the Trainer moved the student after construction
            self.teacher.to(logits.device)
        mask = inputs.get("attention_mask")
        with torch.no_grad():
            teacher_logits = self.teacher(input_values=inputs["input_values"], attention_mask=mask).logits
        if mask is None:
            valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        else:
            valid = model._get_feature_vector_attention_mask(logits.shape[1], mask)
        return self.weight * distillation_loss(logits, teacher_logits, valid, self.temperature)

    def add_gradient(self, model: nn.Module, scale: float) -> None:
        """Nothing: the gradient comes with the loss term through autograd."""

    def value(self, model: nn.Module) -> None:
        """None: the `kd_loss` terms of the micro-batches are logged instead."""
        return None
