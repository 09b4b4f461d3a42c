"""The continual-learning methods of the adapt stage, each as what it gives the training core: the model to train,
its regularisers, and how the kept model is turned into the one written. `adapt.method` picks one:

- `ewc`: the penalty (λ/2)·Σ F·(θ − θ*)², F the diagonal Fisher of the source task (`forgetting.methods.fisher`);
- `mas`: the same penalty with the MAS importance (`forgetting.methods.mas`);
- `l2`: the same penalty with F = 1;
- `lwf`: distillation towards the frozen pretrained model's frame posteriors (`forgetting.methods.distillation`);
- `lora`: low-rank adapters on the transformer's projections, the pretrained weights frozen, folded back in at the
  end (`forgetting.methods.lora`).
λ = 0 with `ewc` is plain fine-tuning through the same code. Experience replay (`forgetting.methods.replay`) and weight
averaging (`forgetting.methods.averaging`) combine with any of them and live outside this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from forgetting.layout import weights_file
from forgetting.methods.distillation import Distillation
from forgetting.methods.importance import ImportanceError, check_importance_matches, load_importance
from forgetting.methods.lora import add_lora, merge_lora
from forgetting.methods.penalty import EWCPenalty
from forgetting.schema import AdaptParams
from forgetting.training.model import load_trained
from forgetting.training.regulariser import Regulariser

IMPORTANCE_KINDS = {"ewc": ("empirical", "sampled"), "mas": ("mas",)}  # what each importance-weighted method reads


@dataclass(frozen=True)
class Method:
    """An adaptation method, ready for `forgetting.training.trainer.train_ctc`."""

    model: nn.Module  # the model to train: the pretrained one, or it wrapped with adapters
    regularisers: list[Regulariser]
    export: Callable[[nn.Module], nn.Module] | None  # the kept model -> an ordinary Wav2Vec2ForCTC (None: as it is)
    description: str  # for the stage's summary line


def build_method(params: AdaptParams, model: nn.Module, pretrained: Path, importance: Path) -> Method:
    """The method `params.method` on `model` (the pretrained model, loaded from `pretrained`, its training settings
    applied: the penalty anchors exactly the parameters that train). `importance` is the importance stage's file;
    ewc and mas check that it was estimated at these weights and is of their kind."""
    dtype = getattr(torch, params.ewc_dtype)
    if params.method in IMPORTANCE_KINDS:
        tensors, meta = load_importance(importance)
        check_importance_matches(importance, meta, weights_file(pretrained), IMPORTANCE_KINDS[params.method])
        try:
            penalty = EWCPenalty(model, tensors, params.ewc_lambda, dtype)
        except (KeyError, ValueError) as err:
            raise ImportanceError(f"{importance} does not fit the parameters adapt trains: {err}; run `dvc repro "
                                  "importance`") from err
        name = "Fisher" if params.method == "ewc" else "MAS importance"
        return Method(model, [penalty], None, f"{params.method} λ={params.ewc_lambda:g} ({meta['kind']} {name}, "
                                              f"normalised by {meta['normalize']})")
    if params.method == "l2":
        return Method(model, [EWCPenalty(model, None, params.ewc_lambda, dtype)], None, f"l2 λ={params.ewc_lambda:g}")
    if params.method == "lwf":
        teacher, _ = load_trained(pretrained)
        return Method(model, [Distillation(teacher, params.kd_weight, params.kd_temperature)], None,
                      f"lwf weight {params.kd_weight:g}, temperature {params.kd_temperature:g}")
    lora = params.lora
    wrapped = add_lora(model, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
    return Method(wrapped, [], merge_lora, f"lora rank {lora.rank}, alpha {lora.alpha:g} on {', '.join(lora.target_modules)}")
