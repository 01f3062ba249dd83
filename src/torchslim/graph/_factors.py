"""Reshapes that split one channel dimension into several (attention heads, channel groups) or merge
several into one, module-level couplings, and the size attributes that follow pruning.

A reshape such as ``qkv.view(b, n, 3, heads, head_dim)`` splits a labelled dimension into factors.
Which factor is the removable unit cannot be decided when the reshape runs: the ``3`` factor is
later unbound (so it can never shrink), the head factor and the head-dim factor are both plausible.
Each factor therefore gets fresh ids and the reshape is *recorded*; once the whole model was traced,
:func:`resolve` walks the records in order and picks, per split, one factor that is still free (not
pinned by a later op): the *carrier*. Every source index in slice ``c`` of the carrier is tied to
unit ``c``; the other factors are pinned (they keep their size). Removing a unit then removes one
whole slice of the split, so the pruned tensor still reshapes into the same layout with a smaller
carrier. Merges (``(b, n, heads, head_dim) -> (b, n, heads * head_dim)``) are resolved the same way:
the output position ``(h, d)`` follows the one free input factor.

Carrier preference: with ``attention="heads"`` (default) a factor whose size is the issuing module's
head-count attribute (``num_heads``, ``heads``, …) wins, so whole heads go; with
``attention="head_dim"`` the per-head width (``head_dim``, …) wins. Otherwise a factor given as
``-1`` in the reshape (it adapts by itself), else the innermost one (``channel_shuffle`` computes
``channels // groups``, so the per-group width is what may shrink).

Size attributes: the reshape's target sizes often come from module attributes (``num_heads``,
``head_dim``, ``attn_dim``, torchvision ViT's ``hidden_dim``). Every labelled target dimension is a
:class:`SizeSite`; an integer attribute of the issuing module with a known name and a matching value
is updated by the plan to the number of indices that dimension keeps.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from torchslim.graph._labels import PINNED, LabelSpace

__all__ = [
    "SplitRecord",
    "MergeRecord",
    "SizeSite",
    "AttributeSite",
    "resolve",
    "module_rule",
    "attribute_sites",
    "COUNT_ATTRIBUTES",
    "WIDTH_ATTRIBUTES",
]

_logger = logging.getLogger(__name__)

#: Attributes holding a number of heads.
COUNT_ATTRIBUTES = frozenset(
    {
        "num_heads",
        "n_heads",
        "heads",
        "nheads",
        "n_head",
        "num_head",
        "num_attention_heads",
        "head_num",
    }
)
#: Attributes holding a per-head width.
HEAD_WIDTH_ATTRIBUTES = frozenset(
    {"head_dim", "dim_head", "head_size", "attention_head_size", "d_head", "d_k", "d_v"}
)
#: Attributes holding a width that a reshape uses (per-head widths included).
WIDTH_ATTRIBUTES = HEAD_WIDTH_ATTRIBUTES | frozenset(
    {
        "attn_dim",
        "all_head_size",
        "inner_dim",
        "embed_dim",
        "hidden_dim",
        "hidden_size",
        "d_model",
        "kdim",
        "vdim",
    }
)


@dataclasses.dataclass
class SplitRecord:
    """A reshape that split one labelled dimension into several factors.

    ``ids[c_1, …, c_m]`` is the source id at factor coordinates ``c``; ``factors[k]`` the fresh ids
    labelling factor ``k`` of the target; ``auto[k]`` whether the reshape gave that size as -1.
    """

    module: nn.Module | None
    ids: np.ndarray
    factors: list[np.ndarray]
    auto: list[bool]

    def resolve(self, space: LabelSpace, root: np.ndarray, attention: str) -> None:
        live = [k for k, f in enumerate(self.factors) if (root[f] != root[PINNED]).any()]
        if not live:
            space.pin(self.ids)
            return
        j = live[0] if len(live) == 1 else self._choose(live, attention)
        shape = [1] * self.ids.ndim
        shape[j] = -1
        space.tie(self.ids, self.factors[j].reshape(shape))
        for k, f in enumerate(self.factors):
            if k != j:
                space.pin(f)

    def _choose(self, live: list[int], attention: str) -> int:
        preferred = COUNT_ATTRIBUTES if attention == "heads" else HEAD_WIDTH_ATTRIBUTES
        values = _int_attributes(self.module, preferred)
        last = len(self.factors) - 1
        for k in live:
            if (k == last) == (attention == "heads"):
                continue  # heads come before the per-head width in a split, never last
            n = len(self.factors[k])
            if any(v == n or (attention == "heads" and n % v == 0) for v in values):
                return k
        for k in live:
            if self.auto[k]:
                return k
        return live[-1]


@dataclasses.dataclass
class MergeRecord:
    """A reshape that merged several labelled dimensions into one: output position ``i`` is
    position ``coords[l][i]`` of source dimension ``l`` (ids ``sources[l]``)."""

    out: np.ndarray
    sources: list[np.ndarray]
    coords: list[np.ndarray]

    def resolve(self, space: LabelSpace, root: np.ndarray, attention: str) -> None:
        live = [i for i, s in enumerate(self.sources) if (root[s] != root[PINNED]).any()]
        if len(live) == 1:
            (i,) = live
            space.tie(self.out, self.sources[i][self.coords[i]])
            return
        space.pin(self.out)
        for s in self.sources:
            space.pin(s)


def resolve(space: LabelSpace, records: list[Any], attention: str) -> None:
    """Resolve split and merge records in trace order (each sees the ties of those before)."""
    for rec in records:
        rec.resolve(space, space.components(), attention)


@dataclasses.dataclass
class SizeSite:
    """A labelled target dimension of a reshape issued by ``module`` (named ``name``)."""

    name: str
    module: nn.Module
    ids: np.ndarray
    #: for a factor of a split: whether it is the innermost one (a per-head width, never a head
    #: count); None for other reshapes
    inner: bool | None = None
    #: the reshape's requested shape and this dimension's position in it (a module may keep the
    #: whole shape as an attribute: timm's ``Scale`` has ``shape = (dim, 1, 1)``)
    shape: tuple[tuple[int, ...], int] | None = None


@dataclasses.dataclass(frozen=True)
class AttributeSite:
    """An integer attribute that sizes a reshape: after pruning it becomes
    ``value * kept / len(roots)``, where ``kept`` counts the roots not removed."""

    module: str
    attribute: str
    value: int
    roots: np.ndarray
    #: for a shape-tuple attribute: the whole tuple and the position of ``value`` in it
    template: tuple[int, ...] | None = None
    position: int = 0

    def new_value(self, removed: set[int]) -> int | None:
        if not removed:
            return self.value
        kept = int(sum(1 for r in self.roots.tolist() if r not in removed))
        if (kept * self.value) % len(self.roots):
            return None
        return kept * self.value // len(self.roots)


def _int_attribute(module: nn.Module, name: str) -> int | None:
    """The module's attribute ``name`` if it is a positive integer (a size), else None."""
    v = module.__dict__.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _int_attributes(module: nn.Module | None, names: frozenset[str]) -> list[int]:
    if module is None:
        return []
    return [v for v in (_int_attribute(module, name) for name in names) if v is not None]


def _period(roots: np.ndarray) -> int:
    """The shortest period with which ``roots`` repeats (its length if it does not)."""
    n = len(roots)
    for p in range(1, n // 2 + 1):
        if n % p == 0 and (roots.reshape(-1, p) == roots[:p]).all():
            return p
    return n


def attribute_sites(sites: list[SizeSite], root: np.ndarray) -> list[AttributeSite]:
    """Match size sites to the issuing modules' size attributes. Sites that cannot change (all
    their ids pinned) say nothing and are skipped."""
    found: list[AttributeSite] = []
    seen: set[tuple[str, str, bytes]] = set()
    for site in sites:
        roots = root[site.ids]
        if (roots == root[PINNED]).all():
            continue
        n = len(roots)
        period = _period(roots)
        heads = set(_int_attributes(site.module, COUNT_ATTRIBUTES))
        # a width repeating per sample of a batch is no width; one repeating per head is
        periodic = period < n and n // period not in heads
        for attr in sorted(COUNT_ATTRIBUTES | WIDTH_ATTRIBUTES):
            # head counts size the outer factors of a split, per-head widths the innermost
            if (site.inner is not False and attr in COUNT_ATTRIBUTES) or (
                site.inner is False and attr in HEAD_WIDTH_ATTRIBUTES
            ):
                continue
            v = _int_attribute(site.module, attr)
            if v is None:
                continue
            if v == n and not (periodic and attr in WIDTH_ATTRIBUTES):
                use = roots
            elif attr in COUNT_ATTRIBUTES and n % v == 0 and n > v:
                # (batch * heads) dimensions: the same heads repeat for every sample
                tiles = roots.reshape(-1, v)
                if not (tiles == tiles[:1]).all():
                    continue
                use = tiles[0]
            else:
                continue
            key = (site.name, attr, use.tobytes())
            if key not in seen:
                seen.add(key)
                found.append(AttributeSite(site.name, attr, v, use))
        if site.shape is not None:
            shape, position = site.shape
            for attr, v in site.module.__dict__.items():
                if (
                    isinstance(v, (tuple, list))
                    and all(type(e) is int for e in v)
                    and tuple(v) == shape
                    and shape[position] == n
                ):
                    found.append(AttributeSite(site.name, attr, n, roots, tuple(v), position))
    return found


def attribute_updates(sites: list[AttributeSite], removed: set[int]) -> dict[str, dict[str, list]]:
    """``{module: {attribute: [old, new]}}`` for the attributes that change; attributes whose
    sites disagree are left alone (the pruned model's verification then tells)."""
    proposals: dict[tuple[str, str], set[Any]] = {}
    old: dict[tuple[str, str], Any] = {}
    for s in sites:
        key = (s.module, s.attribute)
        new = s.new_value(removed)
        old[key] = s.value if s.template is None else list(s.template)
        if s.template is not None and new is not None:
            new = (*s.template[: s.position], new, *s.template[s.position + 1 :])
        proposals.setdefault(key, set()).add(new)
    out: dict[str, dict[str, list]] = {}
    for (module, attr), news in sorted(proposals.items()):
        before = old[(module, attr)]
        if news == {tuple(before) if isinstance(before, list) else before}:
            continue
        if len(news) == 1 and None not in news:
            new = news.pop()
            out.setdefault(module, {})[attr] = [
                before,
                list(new) if isinstance(new, tuple) else new,
            ]
        else:
            _logger.debug("size attribute %s.%s: conflicting new values %s", module, attr, news)
    return out


# --- module rules: couplings a module's code implies but its ops do not show ----------------------

ModuleRule = Callable[[Any, nn.Module, tuple], None]
_MODULE_RULES: dict[type, ModuleRule] = {}


def module_rule(module: nn.Module) -> ModuleRule | None:
    for t in type(module).__mro__:
        if t in _MODULE_RULES:
            return _MODULE_RULES[t]
    return None


def _mha(ctx: Any, module: nn.MultiheadAttention, args: tuple) -> None:
    """``nn.MultiheadAttention`` sizes its heads from the query's width (``embed_dim``): the
    projections' inner width must stay equal to it, index for index."""
    if not args:
        return
    query = ctx.dims(args[0])[-1]
    e = module.embed_dim
    if module._qkv_same_embed_dim:
        rows = ctx.dims(module.in_proj_weight)[0]
        for s in range(3):
            ctx.tie(query, None if rows is None else rows[s * e : (s + 1) * e])
    else:
        for w in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight):
            ctx.tie(query, ctx.dims(w)[0])


_MODULE_RULES[nn.MultiheadAttention] = _mha


def _rnn(ctx: Any, module: nn.RNNBase, args: tuple) -> None:
    """One ``hidden_size`` for every layer and direction: their hidden units are tied by index."""
    recurrent = [
        getattr(module, n) for n in module._flat_weights_names if n.startswith("weight_hh")
    ]
    first = ctx.dims(recurrent[0])[1]
    for w in recurrent[1:]:
        ctx.tie(first, ctx.dims(w)[1])
    if getattr(module, "proj_size", 0):
        for w in recurrent:
            ctx.pin(ctx.dims(w)[1])


_MODULE_RULES[nn.RNNBase] = _rnn
