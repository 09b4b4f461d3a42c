"""Powers of per-utterance gradients, Σₙ meanₜ |∂ℓₙₜ/∂θ|ᵖ for the losses ℓₙₜ of utterance n and target t, p = 2
(squared: the Fisher, the default) or p = 1 (absolute: MAS): the one-at-a-time loop (the reference) and a batched
path that gives the same sums from one padded forward.

`torch.func.vmap(grad(...))` and Opacus' `GradSampleModule` both fail on transformers' `Wav2Vec2ForCTC`: vmap on the
attention-mask code (an `index_put_` it cannot batch) and on the built-in CTC loss (`.item()`, data-dependent control
flow); Opacus with "Output 0 of BackwardHookFunction is a view and is being modified inplace" (the model's in-place
masking; module full-backward hooks hit the same error). So the batched path uses *tensor* hooks registered inside
forward hooks: a forward hook keeps a module's input and hooks its
output; in backward that hook receives the output gradient of every utterance at once, and a closed form turns
(input, output gradient) into each utterance's parameter gradient, whose power is summed over the batch at once.
Covered: `nn.Linear`, `nn.Conv1d` (any stride, padding, dilation, groups; plain weight or `weight_norm`),
`nn.LayerNorm`, `nn.GroupNorm`: every parameter of Wav2Vec2ForCTC that the loss uses. Any other parameter the loss
reaches is done by the loop over the same utterances and targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.LayerNorm, nn.GroupNorm)
Power = Literal[1, 2]


def _check_power(power: int) -> None:
    if power not in (1, 2):
        raise ValueError(f"power must be 1 (absolute gradients) or 2 (squared gradients), got {power!r}")


def _power_(grads: Tensor, power: Power) -> Tensor:
    """|grads|ᵖ, in place."""
    return grads.square_() if power == 2 else grads.abs_()


def _param_roles(module: nn.Module) -> dict[str, nn.Parameter] | None:
    """The module's own parameters by role ("weight", "bias", "g", "v"), or None when no closed form applies."""
    roles: dict[str, nn.Parameter] = {}
    if isinstance(module, nn.Conv1d) and (isinstance(module.padding, str) or module.padding_mode != "zeros"):
        return None
    if parametrize.is_parametrized(module):
        if set(module.parametrizations) != {"weight"}:
            return None
        chain = module.parametrizations["weight"]
        if len(chain) != 1 or not isinstance(chain[0], _WeightNorm):
            return None
        roles["g"], roles["v"] = chain.original0, chain.original1
    elif module.weight is not None:
        roles["weight"] = module.weight
    if module.bias is not None:
        roles["bias"] = module.bias
    return roles


def _per_sample_grads(module: nn.Module, x: Tensor, grad: Tensor, roles: set[str]) -> dict[str, Tensor]:
    """Each utterance's gradient of the module's parameters, shape (batch, *param.shape), from the module input
    `x` (batch, ...) and the gradient of the loss sum with respect to the module output `grad` (batch, ...)."""
    batch = x.shape[0]
    out: dict[str, Tensor] = {}
    if isinstance(module, nn.Linear):
        g2, x2 = grad.reshape(batch, -1, grad.shape[-1]), x.reshape(batch, -1, x.shape[-1])
        if "weight" in roles:
            out["weight"] = torch.bmm(g2.transpose(1, 2), x2)
        if "bias" in roles:
            out["bias"] = g2.sum(1)
    elif isinstance(module, nn.Conv1d):
        if "bias" in roles:
            out["bias"] = grad.sum(2)
        if roles - {"bias"}:
            # Batch folded into the channel groups: one convolution-backward call gives every utterance's weight grad.
            c_out, c_in_group, kernel = module.out_channels, module.in_channels // module.groups, module.kernel_size[0]
            weight = torch.nn.grad.conv1d_weight(
                x.reshape(1, -1, x.shape[-1]), (batch * c_out, c_in_group, kernel), grad.reshape(1, -1, grad.shape[-1]),
                stride=module.stride, padding=module.padding, dilation=module.dilation, groups=batch * module.groups,
            ).view(batch, c_out, c_in_group, kernel)
            if parametrize.is_parametrized(module):  # W = g·v/‖v‖ (norm over all dims but `dim`): chain rule
                chain = module.parametrizations.weight
                g, v, dim = chain.original0, chain.original1, chain[0].dim
                norm = torch.norm_except_dim(v, 2, dim)
                direction = v / norm
                out["g"] = (weight * direction).sum(tuple(d + 1 for d in range(v.dim()) if d != dim), keepdim=True)
                out["v"] = (g / norm) * (weight - direction * out["g"])
            else:
                out["weight"] = weight
    else:  # LayerNorm over the trailing dims, GroupNorm over (channel group, time): affine per channel
        if isinstance(module, nn.LayerNorm):
            x_hat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
            sum_dims = tuple(range(1, x.dim() - len(module.normalized_shape)))
        else:
            x_hat = F.group_norm(x, module.num_groups, eps=module.eps)
            sum_dims = tuple(range(2, x.dim()))
        if "weight" in roles:
            out["weight"] = (grad * x_hat).sum(sum_dims) if sum_dims else grad * x_hat
        if "bias" in roles:
            out["bias"] = grad.sum(sum_dims) if sum_dims else grad.clone()  # the caller takes its power in place
    return out


class SquaredGradSampler:
    """Context manager that, for every backward pass through the model while it is active, adds
    `weight · Σ_b |∂loss_b/∂θ|ᵖ` into `sums[name]` for each covered parameter (float32, the parameter's shape);
    p = `power`: 2 (squared, the default, for the Fisher) or 1 (absolute, for MAS).

    Enter it once per batched forward. `covered` names the parameters it handles; `missed` lists covered parameters
    whose module output carried no gradient in the last forward (the hooks cannot see them then). A hooked module
    whose input carries no gradient (the model's input, or the output of a frozen feature encoder) gets a detached
    copy that requires grad instead; these are the `leaves` a backward pass must ask for. The gradient then flows
    through every hooked module and stops there: nothing is spent on gradients that no hook uses.
    """

    def __init__(self, model: nn.Module, sums: Mapping[str, Tensor], power: Power = 2) -> None:
        _check_power(power)
        self.model, self.sums, self.power = model, sums, power
        self.weight = 1.0
        self.missed: set[str] = set()
        self.leaves: list[Tensor] = []
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        owners: dict[str, int] = {}
        candidates: list[tuple[nn.Module, dict[str, str]]] = []
        for module in model.modules():
            roles = _param_roles(module) if isinstance(module, _SUPPORTED) else None
            if roles is None:
                continue
            named = {role: names[id(p)] for role, p in roles.items()}
            for name in named.values():
                owners[name] = owners.get(name, 0) + 1
            candidates.append((module, named))
        # A parameter shared between modules needs its per-utterance gradients summed before the power: not covered.
        self._modules = [
            (module, {role: n for role, n in named.items() if n in sums and owners[n] == 1}) for module, named in candidates
        ]
        self._modules = [(module, named) for module, named in self._modules if named]
        self.covered = {n for _, named in self._modules for n in named.values()}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._calls: dict[int, int] = {}

    def __enter__(self) -> SquaredGradSampler:
        self._calls.clear()
        self.missed.clear()
        self.leaves.clear()
        for module, named in self._modules:
            self._handles.append(module.register_forward_pre_hook(self._leaf_input))
            self._handles.append(module.register_forward_hook(self._make_forward_hook(named)))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _leaf_input(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        x = inputs[0]
        if not torch.is_grad_enabled() or x.requires_grad or not x.is_floating_point():
            return None
        leaf = x.detach().requires_grad_(True)
        self.leaves.append(leaf)
        return (leaf, *inputs[1:])

    def _make_forward_hook(self, named: dict[str, str]) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def forward_hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self._calls[id(module)] = self._calls.get(id(module), 0) + 1
            if self._calls[id(module)] > 1:
                raise RuntimeError(
                    f"{type(module).__name__} owning {sorted(named.values())} ran twice in one forward: per-utterance "
                    "gradients would need summing before their power; use batch_size=1"
                )
            if not output.requires_grad:
                self.missed.update(named.values())
                return
            x, version, roles = inputs[0].detach(), inputs[0]._version, set(named)

            def on_grad(grad: Tensor) -> None:
                if inputs[0]._version != version:
                    raise RuntimeError(f"input of {sorted(named.values())} was modified in place after its forward")
                per_sample = _per_sample_grads(module, x, grad.reshape(output.shape), roles)
                for role, name in named.items():
                    self.sums[name].add_(_power_(per_sample[role].float(), self.power).sum(0), alpha=self.weight)

            # A hook on a view never fires once the view is modified in place (the model masks the projection's
            # output that way): hook the base instead when the view is just a reshape of it.
            base = output._base
            reshape_of_base = base is not None and base.numel() == output.numel() and base.data_ptr() == output.data_ptr()
            (base if reshape_of_base and output.is_contiguous() else output).register_hook(on_grad)

        return forward_hook


# targets_for(b, logits (frames, vocab) of utterance b's valid frames) -> its target label sequences (≥ 1)
TargetsFn = Callable[[int, Tensor], list[Tensor]]
# loss_fn(logits (batch, frames, vocab), attention_mask (batch, samples), one target per utterance) -> (batch,) losses
LossFn = Callable[[Tensor, Tensor, list[Tensor]], Tensor]


def _padded(audio: Sequence[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """(input_values, attention_mask), both (batch, max samples), zero-padded on the right."""
    inputs = torch.nn.utils.rnn.pad_sequence(list(audio), batch_first=True).to(device)
    lengths = torch.tensor([len(a) for a in audio], device=device)
    return inputs, (torch.arange(inputs.shape[1], device=device) < lengths[:, None]).long()


def _valid_frames(model: nn.Module, mask: Tensor) -> list[int]:
    return model._get_feat_extract_output_lengths(mask.sum(-1)).tolist()


def padding_is_safe(model: nn.Module, audio: Sequence[Tensor]) -> bool:
    """Whether padding these utterances to one length leaves each one's gradient unchanged. Layer norm per frame
    and the attention mask make wav2vec2 safe; group norm in the feature encoder normalises over time, padding
    included, so such a model (wav2vec2-base style) batches only utterances of equal length."""
    return getattr(model.config, "feat_extract_norm", "layer") != "group" or len({len(a) for a in audio}) == 1


def accumulate_looped(model: nn.Module, audio: Sequence[Tensor], targets_for: TargetsFn, loss_fn: LossFn,
                      params: Mapping[str, nn.Parameter], sums: Mapping[str, Tensor], power: Power = 2) -> None:
    """Reference path: per utterance (audio (samples,) each) a batch-of-one forward, then per target one backward;
    adds the mean over its targets of the gradient's power |g|ᵖ (2: squared, 1: absolute) into `sums[name]`."""
    _check_power(power)
    device = next(model.parameters()).device
    names, tensors = list(params), list(params.values())
    for b, row in enumerate(audio):
        inputs, mask = _padded([row], device)
        logits = model(input_values=inputs, attention_mask=mask).logits
        targets = targets_for(b, logits[0, : _valid_frames(model, mask)[0]])
        for t, target in enumerate(targets):
            loss = loss_fn(logits, mask, [target])[0]
            grads = torch.autograd.grad(loss, tensors, retain_graph=t < len(targets) - 1, allow_unused=True)
            for name, grad in zip(names, grads, strict=True):
                if grad is None:
                    continue
                if power == 2:
                    sums[name].addcmul_(grad, grad, value=1.0 / len(targets))  # fused: no squared copy
                else:
                    sums[name].add_(grad.abs_(), alpha=1.0 / len(targets))


def accumulate_batched(sampler: SquaredGradSampler, audio: Sequence[Tensor], targets_for: TargetsFn, loss_fn: LossFn,
                       params: Mapping[str, nn.Parameter]) -> None:
    """Batched path, same sums as `accumulate_looped` (into `sampler.sums`, for `sampler.model`, of `sampler.power`):
    one padded forward with the attention mask, per target index one backward of the summed per-utterance losses
    (all utterances need the same number of targets). The caller checks `padding_is_safe`. Covered parameters are
    frozen during the pass: only their per-utterance gradients (from the hooks) are needed, not the batch-summed one;
    the sampler's leaves carry the gradient instead (so a frozen feature encoder is not backpropagated through)."""
    model, sums = sampler.model, sampler.sums
    inputs, mask = _padded(audio, next(model.parameters()).device)
    frozen = [params[name] for name in sampler.covered]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with sampler:
            logits = model(input_values=inputs, attention_mask=mask).logits
            targets = [targets_for(b, logits[b, :frames]) for b, frames in enumerate(_valid_frames(model, mask))]
            rest = [name for name in params if name not in sampler.covered]
            reached, draws = set(sampler.missed), len(targets[0])
            sampler.weight = 1.0 / draws
            for t in range(draws):
                total = loss_fn(logits, mask, [row[t] for row in targets]).sum()
                leaves = len(sampler.leaves)
                grads = torch.autograd.grad(total, [*sampler.leaves, *(params[n] for n in rest)],
                                            retain_graph=t < draws - 1, allow_unused=True)
                reached.update(name for name, grad in zip(rest, grads[leaves:], strict=True) if grad is not None)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    # A parameter the loss never reaches (e.g. masked_spec_embed in eval) has zero gradient for every utterance.
    if reached:
        accumulate_looped(model, audio, lambda b, _: targets[b], loss_fn, {n: params[n] for n in sorted(reached)}, sums,
                          sampler.power)
