"""``lrp``: layer-wise relevance propagation (Yeom et al., "Pruning by Explaining", Pattern
Recognition 2021).

A channel's relevance is the relevance of its feature map, summed over the map and averaged over
the calibration samples. Relevance starts at the logit of each sample's target class (its label,
or the predicted class) and flows back by the chosen rule. It is computed as gradient x input
with modified backward passes (as zennit does): forward hooks rewrite each layer's output as
``z_mod + (z - z_mod).detach()`` (the same value, a modified gradient), so the relevance at any
tensor ``a`` is ``a * d(logit)/da``, and residual adds, concatenations and any parameter-free
linear op (flatten, mean pooling) split relevance in proportion to their inputs automatically.

Rules per layer type (in eval mode):

- convolution, linear: the chosen rule. ``epsilon``: ``R_i = x_i * sum_j w_ji R_j / (z_j + eps)``
  (bias included in ``z``, so a bias absorbs relevance). ``alpha_beta`` (``alpha - beta = 1``):
  positive and negative contributions ``x_i w_ji`` get ``alpha`` and ``-beta`` of ``R_j`` in
  proportion to their share of the positive (negative) total; biases are left out.
- average pooling (modules): a linear map with positive weights, under the chosen rule.
  Max pooling: winner takes all (its plain gradient).
- batch norm: under ``epsilon``, the epsilon rule for the per-channel affine map
  ``y = a x + b``; for a preceding bias-free convolution this is what merging the norm into it
  gives. Under ``alpha_beta``, relevance passes through unchanged (alpha-beta ignores biases, and
  merging a positive scale into the convolution leaves its shares unchanged). Conserved exactly
  when the norm has no bias (``beta = 0`` and ``running_mean = 0``), or always under alpha-beta.
- ReLU and LeakyReLU pass relevance by their plain gradient; other activation modules (GELU,
  SiLU, Hardswish, …, not in-place) get a pass rule. Everything else (functional activations,
  layer norm, attention) propagates its plain gradient: gradient x input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import ConfigError
from torchslim.importance._base import check_choice, register_importance
from torchslim.importance._calibration import (
    ChannelStatistic,
    calibrating,
    calibration_batches,
    channel_axis,
    first_tensor,
    model_device,
)

__all__ = ["LRP", "RULES"]

RULES = ("epsilon", "alpha_beta", "alpha2beta1", "alpha1beta0")

_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_PASS = (
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Softplus,
    nn.Tanh,
)


@register_importance("lrp")
class LRP(ChannelStatistic):
    """Relevance of each channel's feature map, summed over the map, averaged over samples.

    Args:
        rule: ``"epsilon"``, ``"alpha_beta"`` (with ``alpha``, ``beta``), or the shortcuts
            ``"alpha2beta1"`` and ``"alpha1beta0"``.
        epsilon: The epsilon rule's stabiliser (0: plain LRP-0).
        alpha: Share of positive contributions (``alpha - beta`` must be 1).
        beta: Share of negative contributions.
        target: Where relevance starts: ``"label"`` (the batch's targets), ``"pred"`` (the
            predicted class), or ``"auto"`` (labels when the batches have them, else predicted).
        reduction: How the producers of a group combine: ``"mean"``, ``"sum"`` or ``"max"``.
        normalize: Scale each producer's scores by their ``"mean"``, ``"max"`` or ``"sum"`` first.
    """

    def __init__(
        self,
        rule: str = "epsilon",
        epsilon: float = 1e-6,
        alpha: float = 2.0,
        beta: float = 1.0,
        target: str = "auto",
        reduction: str = "mean",
        normalize: str | None = None,
    ) -> None:
        super().__init__(reduction, normalize)
        check_choice("rule", rule, RULES)
        check_choice("target", target, ("auto", "label", "pred"))
        if rule in ("alpha2beta1", "alpha1beta0"):
            alpha, beta = (2.0, 1.0) if rule == "alpha2beta1" else (1.0, 0.0)
            rule = "alpha_beta"
        if rule == "alpha_beta" and (beta < 0 or abs(alpha - beta - 1) > 1e-9):
            raise ConfigError(f"alpha - beta must be 1 with beta >= 0; got {alpha=}, {beta=}")
        if epsilon < 0:
            raise ConfigError(f"epsilon must be >= 0, got {epsilon}")
        self.rule, self.epsilon, self.alpha, self.beta = rule, epsilon, alpha, beta
        self.target = target

    def _collect(self, graph: Any, data: Any, batches: int | None, loss_fn: Any) -> None:
        model = graph.model
        taps: list[tuple[str, torch.Tensor]] = []
        with calibrating(model) as handles, torch.enable_grad():
            for name, module in model.named_modules():
                hook = self._rule(module)
                if hook is not None:
                    handles.append(module.register_forward_hook(hook))
                if name in self._producers:
                    handles.append(module.register_forward_hook(_tap(self._producers[name], taps)))
            for inputs, targets in calibration_batches(data, batches, model_device(model)):
                try:
                    self._backward(inputs.call(model), targets, taps)
                finally:
                    taps.clear()

    def _backward(self, outputs: Any, targets: Any, taps: list) -> None:
        logits = first_tensor(outputs)
        if not taps or not logits.requires_grad:
            return
        start = F.one_hot(self._classes(logits, targets), logits.shape[-1]).to(logits.dtype)
        grads = torch.autograd.grad(logits, [t for _, t in taps], start, allow_unused=True)
        relevance: dict[str, torch.Tensor] = {}
        for (name, t), g in zip(taps, grads, strict=True):
            if g is not None:
                r = (t.detach() * g).movedim(self._producers[name].axis % t.dim(), 1)
                r = r.sum([d for d in range(r.dim()) if d != 1])
                relevance[name] = relevance[name] + r if name in relevance else r
        samples = logits.shape[0] if logits.dim() > 1 else 1
        for name, r in relevance.items():
            self.accumulate(name, r, samples)

    def _classes(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        labelled = (
            isinstance(targets, torch.Tensor)
            and not targets.is_floating_point()
            and targets.shape == logits.shape[:-1]
        )
        if self.target == "label" and not labelled:
            raise ConfigError(
                "lrp with target='label' needs (inputs, targets) batches whose integer targets "
                f"match the logits {tuple(logits.shape)} without their class axis; or use "
                "target='pred'"
            )
        if labelled and self.target != "pred":
            return targets.long()
        return logits.detach().argmax(-1)

    def _rule(self, module: nn.Module) -> Callable[..., Any] | None:
        epsilon = self.rule == "epsilon"
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if epsilon:
                return _epsilon(self.epsilon)
            linear = _linear_map(module)
            return _alpha_beta(self.alpha, self.beta, lambda x: _signed_parts(x, module, linear))
        if isinstance(module, _POOLS):
            if epsilon:
                return _epsilon(self.epsilon)
            return _alpha_beta(self.alpha, self.beta, lambda x: _pooled_parts(x, module))
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return _epsilon(self.epsilon) if epsilon else _pass
        if isinstance(module, _PASS) and not getattr(module, "inplace", False):
            return _pass
        return None


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, 0 where ``den`` is 0."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1.0, den))


def _same_value(z: torch.Tensor, modified: torch.Tensor) -> torch.Tensor:
    """The value of ``z`` with the gradient of ``modified``."""
    return modified + (z - modified).detach()


def _usable(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad


def _epsilon(eps: float) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, z: Any) -> Any:
        if not _usable(z):
            return None
        zd = z.detach()
        return _same_value(z, z * _ratio(zd, zd + eps * torch.where(zd >= 0, 1.0, -1.0)))

    return hook


def _alpha_beta(alpha: float, beta: float, parts: Callable[..., Any]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, z: Any) -> Any:
        if not _usable(z) or not args or not isinstance(args[0], torch.Tensor):
            return None
        pos, neg = parts(args[0])
        zd = z.detach()
        modified = alpha * pos * _ratio(zd, pos.detach())
        if beta:
            modified = modified - beta * neg * _ratio(zd, neg.detach())
        return _same_value(z, modified)

    return hook


def _pass(module: nn.Module, args: Any, y: Any) -> Any:
    """Relevance passes unchanged: ``R_x = R_y``."""
    if not _usable(y) or not args or not isinstance(args[0], torch.Tensor) or args[0] is y:
        return None
    x = args[0]
    return _same_value(y, x * _ratio(y.detach(), x.detach()))


def _linear_map(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w)
    return lambda x, w: module._conv_forward(x, w, None)


def _signed_parts(x: torch.Tensor, module: nn.Module, linear: Callable[..., Any]) -> tuple:
    """Sums of the positive and of the negative contributions ``x_i w_ji`` (no bias)."""
    w = module.weight.detach()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    return linear(xp, wp) + linear(xn, wn), linear(xp, wn) + linear(xn, wp)


def _pooled_parts(x: torch.Tensor, module: nn.Module) -> tuple:
    # forward() bypasses the module's hooks
    return module.forward(x.clamp(min=0)), module.forward(x.clamp(max=0))


def _tap(producer: Any, taps: list) -> Callable[..., Any]:
    """Record the producer's output for the backward pass. Downstream code gets a copy, so
    in-place ops after the module (``ReLU(inplace=True)``) cannot change what was recorded."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if channel_axis(output, producer) is None:
            return None
        t = output.view_as(output) if output.requires_grad else output.detach().requires_grad_()
        taps.append((producer.module, t))
        return t.clone()

    return hook
