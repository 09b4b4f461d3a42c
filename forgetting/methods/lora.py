"""LoRA (Hu et al. 2021) through `peft`: low-rank adapters ΔW = (alpha/rank)·B·A beside the chosen linear layers,
the pretrained weights θ* frozen, so that θ* stays untouched by construction and only the adapters train. Before
evaluation the adapters are folded into the weights (W ← W + ΔW) and the peft wrapper is removed: evaluation, weight
averaging and the saved model see an ordinary Wav2Vec2ForCTC with exactly the pretrained model's state-dict keys.

peft keeps no default target modules for wav2vec2; `target_modules` names module suffixes (`q_proj` matches
`wav2vec2.encoder.layers.3.attention.q_proj`), and each name must match at least one module of the model (peft
itself only complains when none of them does).
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Wav2Vec2ForCTC


def add_lora(model: Wav2Vec2ForCTC, rank: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> PeftModel:
    """`model` with LoRA adapters of `rank` (scaling alpha/rank, `dropout` on the adapters' input) on every module
    whose name ends in one of `target_modules`. Every base parameter is frozen; only the adapters (B starts at 0, so
    the wrapped model computes exactly what `model` did) are trainable. The adapters are inserted into `model`
    itself, which the returned PeftModel wraps: keep no other reference to `model` for training."""
    if rank < 1:
        raise ValueError(f"adapt.lora.rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"adapt.lora.dropout must be in [0, 1), got {dropout}")
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in target_modules if not any(n == t or n.endswith(f".{t}") for n in names)]
    if not target_modules or unmatched:
        raise ValueError(f"adapt.lora.target_modules: {unmatched or 'empty'} match no module of the model; names end "
                         f"like {sorted({n.rsplit('.', 1)[-1] for n in names if '.' in n})}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    wrapped = get_peft_model(model, config)
    stray = [n for n, p in wrapped.named_parameters() if p.requires_grad and ".lora_" not in n]
    if stray:
        raise RuntimeError(f"peft left base parameters trainable: {stray}")
    return wrapped


def merge_lora(model: PeftModel) -> Wav2Vec2ForCTC:
    """The base model with each adapter folded into its weight (W + (alpha/rank)·B·A) and the adapter layers removed:
    an ordinary Wav2Vec2ForCTC whose state dict has the pretrained model's keys. A non-finite folded weight raises
    (peft's `safe_merge`). The parameters stay frozen, as `add_lora` left them."""
    merged = model.merge_and_unload(safe_merge=True)
    if not isinstance(merged, Wav2Vec2ForCTC):
        raise TypeError(f"folding the adapters gave a {type(merged).__name__}, expected a Wav2Vec2ForCTC")
    leftover = [key for key in merged.state_dict() if "lora_" in key or ".base_layer." in key]
    if leftover:
        raise RuntimeError(f"adapter tensors left after folding: {leftover}")
    return merged
