"""Zero-cost proxies: score an untrained network in one forward/backward pass.

Four proxies from the zero-cost NAS literature, each a function ``(model, inputs, targets=None)
-> float`` where higher means more promising; all work on a deep copy, so the model is left as
it was. Weights means the parameters of dimension >= 2 (convolution and linear kernels):

* ``synflow`` (Tanaka et al. 2020; Abdelfattah et al. 2021): weights replaced by their absolute
  values, the network run in float64 and eval mode on an all-ones input of batch 1, and
  ``R = sum(output)``; score ``sum |theta * dR/dtheta|``. Data-free.
* ``naswot`` (Mellor et al. 2021): for a batch of ``N`` inputs, the binary code of every ReLU's
  input (positive or not) per sample; ``K[i, j]`` counts the units where samples ``i`` and ``j``
  agree, summed over ReLUs; score ``log |det K|`` (``-inf`` when two inputs look the same).
  Train mode, as in the paper.
* ``grad_norm``: the sum over weights of ``||dL/dtheta||_2`` for the cross-entropy loss ``L``.
* ``snip`` (Lee et al. 2019): ``sum |theta * dL/dtheta|``, connection sensitivity.

``grad_norm`` and ``snip`` need targets; without them they use random class labels from a fixed
generator (pass real inputs and targets where you have them; ``naswot`` is also more telling on
real data). :func:`prescreen` scores random candidates of a space and queues the best ones.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from torchslim.errors import ConfigError, UnsupportedOpError

__all__ = [
    "register_proxy",
    "list_proxies",
    "get_proxy",
    "synflow",
    "naswot",
    "grad_norm",
    "snip",
    "prescreen",
]

_logger = logging.getLogger(__name__)

ProxyFn = Callable[..., float]
_PROXIES: dict[str, ProxyFn] = {}


def register_proxy(name: str) -> Callable[[ProxyFn], ProxyFn]:
    """Decorator registering a proxy ``(model, inputs, targets=None) -> float`` (higher is
    better)."""

    def decorator(fn: ProxyFn) -> ProxyFn:
        if name in _PROXIES:
            raise ConfigError(f"a proxy named {name!r} is already registered")
        _PROXIES[name] = fn
        return fn

    return decorator


def list_proxies() -> list[str]:
    """Names of the registered zero-cost proxies."""
    return sorted(_PROXIES)


def get_proxy(proxy: str | ProxyFn) -> ProxyFn:
    """A proxy function by name, or the callable itself."""
    if callable(proxy):
        return proxy
    if proxy not in _PROXIES:
        raise ConfigError(f"unknown proxy {proxy!r}; known: {', '.join(list_proxies())}")
    return _PROXIES[proxy]


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _weights(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.dim() >= 2 and p.requires_grad]


def _sum_outputs(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out.sum()
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        parts = [_sum_outputs(o) for o in out]
        parts = [p for p in parts if p is not None]
        return sum(parts) if parts else None
    return None


@register_proxy("synflow")
def synflow(model: Any, inputs: Any, targets: Any = None) -> float:
    """SynFlow: ``sum |theta * dR/dtheta|`` with ``R`` the output sum of the |weights| network
    on an all-ones input (see the module docstring)."""
    import torch

    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    ones = tuple(
        torch.ones((1, *x.shape[1:]), dtype=torch.float64) if x.is_floating_point() else x[:1]
        for x in _as_tuple(inputs)
    )
    weights = _weights(net)
    total = _sum_outputs(net(*ones))
    if total is None or not weights:
        raise UnsupportedOpError("synflow needs a network with weights and tensor outputs")
    grads = torch.autograd.grad(total, weights, allow_unused=True)
    return float(
        sum(
            (w.detach() * g).abs().sum()
            for w, g in zip(weights, grads, strict=False)
            if g is not None
        )
    )


@register_proxy("naswot")
def naswot(model: Any, inputs: Any, targets: Any = None) -> float:
    """NASWOT: ``log |det K|`` of the ReLU activation-pattern kernel of a batch."""
    import torch

    net = copy.deepcopy(model).train()
    batch = _as_tuple(inputs)[0].shape[0]
    kernel = torch.zeros(batch, batch, dtype=torch.float64)
    relus = [m for m in net.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))]
    if not relus:
        raise UnsupportedOpError(
            "naswot reads ReLU activation patterns, and this network has no nn.ReLU/nn.ReLU6 "
            "module; use another proxy (synflow, snip, grad_norm)"
        )

    def hook(module: Any, args: Any, output: Any) -> None:
        codes = (args[0].detach().reshape(batch, -1) > 0).double()
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_hook(hook) for m in relus]
    try:
        with torch.no_grad():
            net(*_as_tuple(inputs))
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign != 0 else -math.inf


def _loss_grads(model: Any, inputs: Any, targets: Any) -> tuple[list[Any], tuple[Any, ...]]:
    import torch
    import torch.nn.functional as F

    net = copy.deepcopy(model).train()
    out = net(*_as_tuple(inputs))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UnsupportedOpError(
            "grad_norm and snip need a classifier with (batch, classes) logits; this network "
            f"returned {type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
        )
    if targets is None:
        generator = torch.Generator().manual_seed(0)
        targets = torch.randint(0, out.shape[1], (out.shape[0],), generator=generator)
    weights = _weights(net)
    loss = F.cross_entropy(out, targets)
    return weights, torch.autograd.grad(loss, weights, allow_unused=True)


@register_proxy("grad_norm")
def grad_norm(model: Any, inputs: Any, targets: Any = None) -> float:
    """Sum over weights of the L2 norm of the cross-entropy gradient."""
    weights, grads = _loss_grads(model, inputs, targets)
    return float(sum(g.norm() for g in grads if g is not None))


@register_proxy("snip")
def snip(model: Any, inputs: Any, targets: Any = None) -> float:
    """SNIP: ``sum |theta * dL/dtheta|`` for the cross-entropy loss."""
    weights, grads = _loss_grads(model, inputs, targets)
    return float(
        sum(
            (w.detach() * g).abs().sum()
            for w, g in zip(weights, grads, strict=False)
            if g is not None
        )
    )


def _random_batch(example: Any, batch_size: int, generator: Any) -> Any:
    import torch

    batch = tuple(
        torch.randn((batch_size, *x.shape[1:]), generator=generator, dtype=x.dtype)
        if x.is_floating_point()
        else x[:1].expand(batch_size, *x.shape[1:]).clone()
        for x in _as_tuple(example)
    )
    return batch if isinstance(example, (tuple, list)) else batch[0]


def prescreen(
    space: Any,
    proxy: str | ProxyFn = "synflow",
    *,
    n: int = 100,
    keep: int = 10,
    study: Any = None,
    seed: int | None = None,
    inputs: Any = None,
    targets: Any = None,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """Score ``n`` random candidates of ``space`` with ``proxy``; queue the best ``keep``.

    The space must build networks (:meth:`SearchSpace.build`). Without ``inputs``, each
    candidate sees a random batch of ``batch_size`` shaped like ``space.example_inputs()``.
    Candidates are drawn by Optuna's RandomSampler (seeded by ``seed``) and built with torch
    seeded per candidate, so a seed reproduces the scores.

    Args:
        study: When given, the best candidates are queued with ``study.enqueue_trial`` (with
            the proxy and score as user attributes) so that the search runs them first.

    Returns:
        The kept candidates, best first: ``{"params", "config", "score"}``.
    """
    import optuna
    import torch

    fn = get_proxy(proxy)
    name = proxy if isinstance(proxy, str) else getattr(proxy, "__name__", "proxy")
    if keep > n:
        raise ConfigError(f"prescreen keep={keep} is more than the n={n} candidates scored")
    with torch.random.fork_rng():
        torch.manual_seed(0 if seed is None else seed)
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        if inputs is None:
            inputs = _random_batch(space.example_inputs(), batch_size, generator)
        sampler = optuna.samplers.RandomSampler(seed=seed)
        scratch = optuna.create_study(sampler=sampler)
        scored, seen = [], set()
        for i in range(n):
            trial = scratch.ask()
            config = space.suggest(trial)
            key = tuple(sorted(trial.params.items()))
            if key in seen:
                continue
            seen.add(key)
            torch.manual_seed((0 if seed is None else seed) * 100_003 + i)
            try:
                model = space.build(config)
            except UnsupportedOpError as exc:
                raise ConfigError(
                    f"prescreen needs a space that builds networks: {exc}; drop the prescreen"
                ) from exc
            score = fn(model, inputs, targets)
            scored.append({"params": dict(trial.params), "config": config, "score": score})
    scored.sort(key=lambda c: -math.inf if math.isnan(c["score"]) else c["score"], reverse=True)
    best = scored[:keep]
    if study is not None:
        for c in best:
            study.enqueue_trial(
                c["params"],
                user_attrs={"prescreen": {"proxy": name, "score": c["score"]}},
                skip_if_exists=True,
            )
    if best:
        _logger.info(
            "prescreen: %d of %d candidates by %s (scores %.4g .. %.4g)%s",
            len(best),
            len(scored),
            name,
            best[0]["score"],
            best[-1]["score"],
            " queued" if study is not None else "",
        )
    return best
