"""How each ATen op couples the channel ids of its inputs and outputs.

A rule receives the :class:`Context` (which maps tensors to their per-dimension id vectors and
records ties) and the op's arguments and outputs, and returns the id vectors of the outputs. Ops
without a rule pin every id they touch: unknown code can make a model less prunable, never wrong.
Rules are registered per ATen overload packet with :func:`op_rule`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from torchslim.graph._factors import (
    HEAD_WIDTH_ATTRIBUTES,
    WIDTH_ATTRIBUTES,
    MergeRecord,
    SplitRecord,
    _int_attributes,
)

__all__ = ["Dims", "Context", "op_rule", "RULES", "pointwise", "unknown"]

Dims = tuple["np.ndarray | None", ...]
aten = torch.ops.aten


class Context(Protocol):
    def dims(self, t: torch.Tensor) -> Dims: ...
    def tie(self, a: np.ndarray | None, b: np.ndarray | None) -> None: ...
    def pin(self, ids: np.ndarray | None) -> None: ...
    def use(self, ids: np.ndarray | None) -> None: ...
    def fresh(self, n: int) -> np.ndarray: ...
    def record(self, rec: Any) -> None: ...
    def site(
        self, ids: np.ndarray, auto: bool = False, inner: bool | None = None, shape: Any = None
    ) -> None: ...
    def input_width(self) -> np.ndarray | None: ...


Rule = Callable[[Context, Any, tuple, dict, Any], Any]
RULES: dict[Any, Rule] = {}


def op_rule(*packets: Any) -> Callable[[Rule], Rule]:
    """Register a rule for ATen overload packets (``aten.convolution``) or overloads."""

    def decorator(fn: Rule) -> Rule:
        for p in packets:
            RULES[p] = fn
        return fn

    return decorator


def _tensors(tree: Any) -> list[torch.Tensor]:
    """Every tensor in nested tuples, lists and dicts of op arguments (a fast tree walk: this runs
    for every op the model executes)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []


def _pin_all(ctx: Context, t: torch.Tensor) -> None:
    for v in ctx.dims(t):
        ctx.pin(v)


def _none(t: torch.Tensor) -> Dims:
    return (None,) * t.dim()


def _outputs_none(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return _none(out)
    if isinstance(out, (tuple, list)):
        return [_none(o) if isinstance(o, torch.Tensor) else None for o in out]
    return None


def _for_outputs(out: Any, dims: Dims, shape: Sequence[int]) -> Any:
    """``dims`` for every output tensor of ``shape`` (the op's result), none for the others
    (statistics, masks, indices)."""
    if not isinstance(out, (tuple, list)):
        return dims
    return [
        dims
        if isinstance(o, torch.Tensor) and tuple(o.shape) == tuple(shape)
        else (_none(o) if isinstance(o, torch.Tensor) else None)
        for o in out
    ]


def unknown(ctx: Context, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """No rule: pin every id of every input, outputs derive from nothing."""
    for t in _tensors((args, kwargs)):
        _pin_all(ctx, t)
    return _outputs_none(out)


def _merge(ctx: Context, vectors: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Tie vectors of one dimension together; the result labels the output dimension."""
    labelled = [v for v in vectors if v is not None]
    if not labelled:
        return None
    base = labelled[0]
    if len(labelled) < len(vectors):  # an input without ids shares this dimension: pin it
        ctx.pin(base)
    for v in labelled[1:]:
        ctx.tie(base, v)
    ctx.use(base)
    return base


def _broadcast(ctx: Context, tensors: Sequence[torch.Tensor], shape: Sequence[int]) -> list:
    """Tie the dimensions that broadcasting aligns (dimensions of size 1 being expanded don't)."""
    nd = len(shape)
    per_dim: list[list[np.ndarray | None]] = [[] for _ in range(nd)]
    for t in tensors:
        offset = nd - t.dim()
        for i, vec in enumerate(ctx.dims(t)):
            d = i + offset
            if d < 0 or (t.shape[i] == 1 and shape[d] != 1):
                continue
            per_dim[d].append(vec)
    return [_merge(ctx, vs) if vs else None for vs in per_dim]


def pointwise(ctx: Context, func: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    """Element-wise ops with broadcasting (add, mul, relu, where, …)."""
    first = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(first, torch.Tensor):
        return unknown(ctx, func, args, kwargs, out)
    dims = tuple(_broadcast(ctx, _tensors((args, kwargs)), first.shape))
    return _for_outputs(out, dims, first.shape)


@op_rule(
    aten.clone,
    aten.contiguous,
    aten.detach,
    aten.alias,
    aten.lift_fresh,
    aten.lift_fresh_copy,
    aten._to_copy,
    aten.to,
    aten._softmax,
    aten._log_softmax,
    aten.softmax,
    aten.log_softmax,
    aten.native_dropout,
    aten.dropout,
    aten.fill_,
    aten.zero_,
    aten.cumsum,
)
def same(ctx, func, args, kwargs, out):
    """Output dimensions are the first input's (extra outputs such as dropout masks too)."""
    dims = ctx.dims(args[0])
    for v in dims:
        ctx.use(v)
    return _for_outputs(out, dims, args[0].shape)


_ELEMENTWISE = (
    "hardswish",
    "hardsigmoid",
    "silu",
    "gelu",
    "elu",
    "leaky_relu",
    "hardtanh",
    "softplus",
    "mish",
    "relu6",
    "_prelu_kernel",
    "prelu",
    "threshold",
    "clamp",
    "clamp_min",
    "clamp_max",
    "where",
    "masked_fill",
    "lerp",
    "addcmul",
    "addcdiv",
    "log_sigmoid_forward",
    "celu",
    "selu",
    "rrelu_with_noise",
    "hardswish_",
    "hardsigmoid_",
    "silu_",
    "gelu_",
    "elu_",
    "leaky_relu_",
    "hardtanh_",
    "relu_",
    "clamp_",
    "sigmoid_",
    "tanh_",
    "threshold_",
    "mish_",
)
for _name in _ELEMENTWISE:
    if hasattr(aten, _name):
        RULES[getattr(aten, _name)] = pointwise


@op_rule(aten.copy_)
def copy_(ctx, func, args, kwargs, out):
    return pointwise(ctx, func, args[:2], {}, out)


# --- shape ops --------------------------------------------------------------------------------


@op_rule(aten.permute)
def permute(ctx, func, args, kwargs, out):
    dims = ctx.dims(args[0])
    order = [d % len(dims) for d in args[1]]
    return tuple(dims[d] for d in order)


@op_rule(aten.transpose, aten.transpose_)
def transpose(ctx, func, args, kwargs, out):
    dims = list(ctx.dims(args[0]))
    if not dims:
        return ()
    a, b = args[1] % len(dims), args[2] % len(dims)
    dims[a], dims[b] = dims[b], dims[a]
    return tuple(dims)


@op_rule(aten.t, aten.numpy_T)
def t(ctx, func, args, kwargs, out):
    return tuple(reversed(ctx.dims(args[0])))


@op_rule(aten.expand)
def expand(ctx, func, args, kwargs, out):
    src, dims = args[0], ctx.dims(args[0])
    lead = out.dim() - src.dim()
    result = [None] * lead
    for i, v in enumerate(dims):
        result.append(None if src.shape[i] == 1 and out.shape[lead + i] != 1 else v)
    return tuple(result)


@op_rule(aten.unsqueeze)
def unsqueeze(ctx, func, args, kwargs, out):
    dims = list(ctx.dims(args[0]))
    dims.insert(args[1] % (len(dims) + 1), None)
    return tuple(dims)


@op_rule(aten.squeeze)
def squeeze(ctx, func, args, kwargs, out):
    src, dims = args[0], ctx.dims(args[0])
    if len(args) > 1:
        chosen = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        chosen = {d % max(src.dim(), 1) for d in chosen}
    else:
        chosen = set(range(src.dim()))
    kept = []
    for i, v in enumerate(dims):
        if i in chosen and src.shape[i] == 1:
            ctx.pin(v)
        else:
            kept.append(v)
    return tuple(kept)


def _slice_vec(v: np.ndarray | None, size: int, start, end, step) -> np.ndarray | None:
    if v is None:
        return None
    return v[range(size)[slice(start, end, step)]]


@op_rule(aten.slice)
def slice_(ctx, func, args, kwargs, out):
    src = args[0]
    dim = (args[1] if len(args) > 1 else 0) % src.dim()
    start = args[2] if len(args) > 2 else None
    end = args[3] if len(args) > 3 else None
    step = args[4] if len(args) > 4 else 1
    dims = list(ctx.dims(src))
    sliced = _slice_vec(dims[dim], src.shape[dim], start, end, step)
    if sliced is not None and len(sliced) != src.shape[dim]:
        # The bounds may be literals or computed from the runtime shape; either way a pruned input
        # would move them, so a labelled dimension that is cut into pieces is kept whole for now.
        ctx.pin(dims[dim])
    dims[dim] = sliced
    return tuple(dims)


@op_rule(aten.narrow)
def narrow(ctx, func, args, kwargs, out):
    src, dim, start, length = args[0], args[1] % args[0].dim(), args[2], args[3]
    start = int(start) % src.shape[dim] if start < 0 else int(start)
    return slice_(ctx, func, (src, dim, start, start + length, 1), {}, out)


@op_rule(aten.select)
def select(ctx, func, args, kwargs, out):
    dims = list(ctx.dims(args[0]))
    ctx.pin(dims.pop(args[1] % len(dims)))  # picking one index by position: keep them all
    return tuple(dims)


@op_rule(aten.split, aten.split_with_sizes, aten.unsafe_split, aten.unsafe_split_with_sizes)
def split(ctx, func, args, kwargs, out):
    """Equal pieces (``chunk``) lose the same indices each: index ``i`` of every piece is one
    channel, so the pruned tensor still splits into equal pieces. Unequal pieces (literal sizes)
    are kept whole."""
    src = args[0]
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % src.dim()
    dims = ctx.dims(src)
    sizes = [piece.shape[dim] for piece in out]
    if len(out) > 1 and dims[dim] is not None:
        if len(set(sizes)) == 1:
            pieces = dims[dim].reshape(len(out), sizes[0])
            for p in pieces[1:]:
                ctx.tie(pieces[0], p)
        else:
            ctx.pin(dims[dim])
    result, offset = [], 0
    for piece in out:
        part = list(dims)
        part[dim] = None if dims[dim] is None else dims[dim][offset : offset + piece.shape[dim]]
        offset += piece.shape[dim]
        result.append(tuple(part))
    return result


@op_rule(aten.unbind)
def unbind(ctx, func, args, kwargs, out):
    dims = list(ctx.dims(args[0]))
    dim = (args[1] if len(args) > 1 else 0) % len(dims)
    ctx.pin(dims[dim])
    dims.pop(dim)
    return [tuple(dims) for _ in out]


@op_rule(aten.cat)
def cat(ctx, func, args, kwargs, out):
    tensors = [t for t in args[0] if not (t.dim() == 1 and t.shape[0] == 0)]  # legacy empties
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    result = []
    for d in range(out.dim()):
        if d == dim:
            parts = [ctx.dims(t)[d] for t in tensors]
            if all(p is None for p in parts):
                result.append(None)
            else:
                vec = np.concatenate(
                    [
                        np.zeros(t.shape[d], np.int64) if p is None else p
                        for p, t in zip(parts, tensors, strict=True)
                    ]
                )
                ctx.use(vec)
                result.append(vec)
        else:
            result.append(_merge(ctx, [ctx.dims(t)[d] for t in tensors]))
    return tuple(result)


@op_rule(aten.stack)
def stack(ctx, func, args, kwargs, out):
    tensors = list(args[0])
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    rest = [_merge(ctx, [ctx.dims(t)[d] for t in tensors]) for d in range(tensors[0].dim())]
    rest.insert(dim, None)
    return tuple(rest)


@op_rule(aten.constant_pad_nd)
def constant_pad_nd(ctx, func, args, kwargs, out):
    src, pad = args[0], list(args[1])
    dims = list(ctx.dims(src))
    for i in range(len(pad) // 2):
        d = src.dim() - 1 - i
        before, after = pad[2 * i], pad[2 * i + 1]
        v = dims[d]
        if v is None or (before == 0 and after == 0):
            continue
        if before < 0 or after < 0:
            v = v[max(-before, 0) : len(v) - max(-after, 0)]
        dims[d] = np.concatenate(
            [np.zeros(max(before, 0), np.int64), v, np.zeros(max(after, 0), np.int64)]
        )
    return tuple(dims)


def _blocks(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair up runs of source and target dimensions whose sizes multiply to the same number."""
    blocks, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        bi, bj, pi, pj = [], [], 1, 1
        if i < len(src):
            bi.append(i)
            pi *= src[i]
            i += 1
        if j < len(dst):
            bj.append(j)
            pj *= dst[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(src):
                bi.append(i)
                pi *= src[i]
                i += 1
            elif pj < pi and j < len(dst):
                bj.append(j)
                pj *= dst[j]
                j += 1
            else:
                return None
        # size-1 dimensions that follow belong to this block too
        while i < len(src) and src[i] == 1 and (j >= len(dst) or dst[j] != 1):
            bi.append(i)
            i += 1
        while j < len(dst) and dst[j] == 1 and (i >= len(src) or src[i] != 1):
            bj.append(j)
            j += 1
        blocks.append((bi, bj))
    return blocks


@op_rule(aten.view, aten._unsafe_view, aten.reshape, aten._reshape_alias)
def view(ctx, func, args, kwargs, out):
    """Reshapes. A labelled dimension merged with unlabelled ones (flatten) or split off unlabelled
    ones keeps its ids; one split into several labelled factors (attention heads, channel groups)
    or several merged into one is recorded and resolved after tracing (see ``_factors``)."""
    src = args[0]
    dims = ctx.dims(src)
    blocks = _blocks(list(src.shape), list(out.shape))
    if blocks is None:
        return unknown(ctx, func, args, kwargs, out)
    requested = list(args[1]) if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
    auto = [len(requested) == out.dim() and requested[k] == -1 for k in range(out.dim())]
    result: list[np.ndarray | None] = [None] * out.dim()
    for bi, bj in blocks:
        labelled = [i for i in bi if dims[i] is not None and src.shape[i] > 1]
        for i in bi:
            if dims[i] is not None and src.shape[i] == 1:
                ctx.pin(dims[i])
        if not labelled:
            continue
        src_shape = [src.shape[k] for k in bi]
        out_shape = [out.shape[k] for k in bj]
        if len(labelled) > 1:
            _merge_view(ctx, dims, bi, bj, labelled, src_shape, out_shape, result, auto)
            continue
        (i,) = labelled
        axis = bi.index(i)
        grid = np.broadcast_to(
            dims[i].reshape([-1 if k == axis else 1 for k in range(len(bi))]), src_shape
        ).reshape(out_shape)
        # the target dimensions along which the ids vary are the factors of the labelled one
        carriers = [
            k
            for k in range(grid.ndim)
            if grid.shape[k] > 1 and not (grid == grid.take([0], axis=k)).all()
        ]
        if not carriers:
            ctx.pin(dims[i])
            continue
        index = tuple(slice(None) if k in carriers else 0 for k in range(grid.ndim))
        small = np.ascontiguousarray(grid[index])
        if len(carriers) == 1:
            k = carriers[0]
            result[bj[k]] = small
            ctx.use(small)
            ctx.site(small, auto[bj[k]], shape=(tuple(requested), bj[k]))
            continue
        factors = [ctx.fresh(grid.shape[k]) for k in carriers]
        for k, f in zip(carriers, factors, strict=True):
            result[bj[k]] = f
            ctx.site(f, auto[bj[k]], inner=k == carriers[-1])
        ctx.use(dims[i])
        _tie_inner_width(ctx, small, factors)
        ctx.record(SplitRecord(ctx.module, small, factors, [auto[bj[k]] for k in carriers]))
    return tuple(result)


def _tie_inner_width(ctx, ids: np.ndarray, factors: list[np.ndarray]) -> None:
    """Heads sized from the input's width (``x.view(b, n, 3, heads, c // heads)`` with ``c`` the
    width of the module's input): when the module has no per-head width attribute that could size
    the split, its inner width must stay equal to its input's, index for index."""
    width = ctx.input_width()
    if width is None or len(width) < 2 or ids.size % len(width):
        return
    sizes = {len(f) for f in factors}
    if sizes & set(_int_attributes(ctx.module, HEAD_WIDTH_ATTRIBUTES)):
        return
    copies = ids.size // len(width)
    if copies > 3 or int(np.prod([len(f) for f in factors[1:]])) != len(width):
        return
    for row in ids.reshape(copies, len(width)):
        ctx.tie(width, row)


def _merge_view(ctx, dims, bi, bj, labelled, src_shape, out_shape, result, auto) -> None:
    """Several labelled source dimensions merged into one target dimension: record it."""
    wide = [k for k, n in enumerate(out_shape) if n > 1]
    if len(wide) != 1:  # merged into several target dimensions: keep them whole
        for i in labelled:
            ctx.pin(dims[i])
        return
    (k,) = wide
    position = np.indices(src_shape).reshape(len(bi), -1)  # source coordinates, in flat order
    merged = ctx.fresh(out_shape[k])
    sources = [dims[i] for i in labelled]
    coords = [position[bi.index(i)] for i in labelled]
    for v in sources:
        ctx.use(v)
    result[bj[k]] = merged
    ctx.site(merged, auto[bj[k]])
    ctx.record(MergeRecord(merged, sources, coords))


# --- reductions -------------------------------------------------------------------------------


def _reduce(ctx, src: torch.Tensor, reduced: Sequence[int] | None, keepdim: bool) -> Dims:
    dims = ctx.dims(src)
    if reduced is None or len(reduced) == 0:
        chosen = set(range(src.dim()))
    else:
        chosen = {d % max(src.dim(), 1) for d in reduced}
    result = []
    for i, v in enumerate(dims):
        if i in chosen:
            if keepdim:
                result.append(None)
        else:
            ctx.use(v)
            result.append(v)
    return tuple(result)


@op_rule(
    aten.sum,
    aten.mean,
    aten.amax,
    aten.amin,
    aten.prod,
    aten.logsumexp,
    aten.any,
    aten.all,
    aten.nansum,
)
def reduce_(ctx, func, args, kwargs, out):
    src = args[0]
    reduced = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(reduced, int):
        reduced = [reduced]
    if isinstance(reduced, torch.dtype):  # sum(x, dtype)
        reduced = None
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return _reduce(ctx, src, reduced, bool(keepdim))


@op_rule(aten.max, aten.min, aten.argmax, aten.argmin, aten.median)
def reduce_indexed(ctx, func, args, kwargs, out):
    src = args[0]
    if len(args) == 1 and "dim" not in kwargs:
        if isinstance(out, torch.Tensor):
            return _reduce(ctx, src, None, False)
    if len(args) > 1 and isinstance(args[1], torch.Tensor):  # max(a, b): element-wise
        return pointwise(ctx, func, args, kwargs, out)
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    dims = _reduce(ctx, src, None if dim is None else [dim], bool(keepdim))
    return [dims, dims] if isinstance(out, (tuple, list)) else dims


@op_rule(aten.var, aten.std, aten.var_mean, aten.std_mean)
def variance(ctx, func, args, kwargs, out):
    src = args[0]
    reduced = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim")
    if isinstance(reduced, int):
        reduced = [reduced]
    keepdim = kwargs.get("keepdim", args[3] if len(args) > 3 else False)
    dims = _reduce(ctx, src, reduced, bool(keepdim))
    return [dims, dims] if isinstance(out, (tuple, list)) else dims


@op_rule(aten.linalg_vector_norm)
def vector_norm(ctx, func, args, kwargs, out):
    reduced = args[2] if len(args) > 2 else kwargs.get("dim")
    keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
    return _reduce(ctx, args[0], reduced, bool(keepdim))


# --- layers -----------------------------------------------------------------------------------


@op_rule(aten.mm)
def mm(ctx, func, args, kwargs, out):
    a, b = ctx.dims(args[0]), ctx.dims(args[1])
    ctx.tie(a[1], b[0])
    ctx.use(a[0])
    ctx.use(b[1])
    return (a[0], b[1])


@op_rule(aten.addmm)
def addmm(ctx, func, args, kwargs, out):
    dims = mm(ctx, func, args[1:3], {}, out)
    bias = args[0]
    merged = _broadcast_with(ctx, bias, dims, out.shape)
    return merged


def _broadcast_with(ctx, extra: torch.Tensor, dims: Dims, shape) -> Dims:
    """Tie an added tensor (a bias) to already-computed output dimensions."""
    result = list(dims)
    offset = len(shape) - extra.dim()
    for i, v in enumerate(ctx.dims(extra)):
        d = i + offset
        if extra.shape[i] == 1 and shape[d] != 1:
            continue
        result[d] = _merge(ctx, [result[d], v]) if result[d] is not None or v is not None else None
    return tuple(result)


@op_rule(aten.bmm)
def bmm(ctx, func, args, kwargs, out):
    a, b = ctx.dims(args[0]), ctx.dims(args[1])
    batch = _merge(ctx, [a[0], b[0]])
    ctx.tie(a[2], b[1])
    ctx.use(a[1])
    ctx.use(b[2])
    return (batch, a[1], b[2])


@op_rule(aten.baddbmm)
def baddbmm(ctx, func, args, kwargs, out):
    return _broadcast_with(ctx, args[0], bmm(ctx, func, args[1:3], {}, out), out.shape)


@op_rule(aten.convolution)
def convolution(ctx, func, args, kwargs, out):
    x, w, b = args[0], args[1], args[2]
    transposed, groups = bool(args[6]), int(args[8])
    xd, wd = ctx.dims(x), ctx.dims(w)
    for v in wd[2:]:
        ctx.pin(v)  # kernel taps
    cin = x.shape[1]
    if transposed:
        w_in, w_out = wd[0], wd[1]
    else:
        w_out, w_in = wd[0], wd[1]
    if groups == 1:
        ctx.tie(xd[1], w_in)
        out_vec = w_out
    elif groups == cin and not transposed and w.shape[1] == 1:  # depthwise (channel multiplier m)
        m = w.shape[0] // cin
        if xd[1] is None:
            ctx.pin(w_out)
        else:
            ctx.tie(np.repeat(xd[1], m), w_out)
        ctx.pin(w_in)
        out_vec = w_out
    elif not transposed and cin % groups == 0 and w.shape[0] % groups == 0:
        # grouped: every group loses the same input and output positions, so the groups stay
        # equal and ``groups`` keeps its value
        per_in, per_out = cin // groups, w.shape[0] // groups
        if xd[1] is None:
            ctx.pin(w_in)
        else:
            rows = xd[1].reshape(groups, per_in)
            for r in rows:
                ctx.tie(r, w_in)
        cols = w_out.reshape(groups, per_out)
        for c in cols[1:]:
            ctx.tie(cols[0], c)
        out_vec = w_out
    else:  # grouped transposed convolution: channels are kept whole
        ctx.pin(xd[1])
        ctx.pin(w_in)
        ctx.pin(w_out)
        out_vec = w_out
    if b is not None:
        ctx.tie(out_vec, ctx.dims(b)[0])
    ctx.use(out_vec)
    return (xd[0], out_vec, *([None] * (out.dim() - 2)))


def _channel_norm(ctx, x, params, out, channel_dim: int = 1):
    xd = ctx.dims(x)
    vec = xd[channel_dim] if x.dim() > channel_dim else None
    for p in params:
        if p is not None and p.dim() == 1 and p.shape[0] == x.shape[channel_dim]:
            vec = _merge(ctx, [vec, ctx.dims(p)[0]]) if vec is not None else ctx.dims(p)[0]
            if xd[channel_dim] is None:
                ctx.pin(vec)
    ctx.use(vec)
    dims = list(xd)
    dims[channel_dim] = vec
    dims = tuple(dims)
    return _for_outputs(out, dims, x.shape)


@op_rule(
    aten.native_batch_norm,
    aten._native_batch_norm_legit,
    aten._native_batch_norm_legit_no_training,
    aten._native_batch_norm_legit_functional,
    aten.cudnn_batch_norm,
    aten.miopen_batch_norm,
    aten.batch_norm,
)
def batch_norm(ctx, func, args, kwargs, out):
    params = [a for a in args[1:5] if isinstance(a, torch.Tensor)]
    return _channel_norm(ctx, args[0], params, out)


@op_rule(aten.native_layer_norm)
def layer_norm(ctx, func, args, kwargs, out):
    x, shape = args[0], list(args[1])
    k = len(shape)
    xd = list(ctx.dims(x))
    for p in args[2:4]:
        if isinstance(p, torch.Tensor):
            for i, v in enumerate(ctx.dims(p)):
                d = x.dim() - k + i
                xd[d] = _merge(ctx, [xd[d], v])
    for d in range(x.dim() - k, x.dim()):
        ctx.use(xd[d])
    dims = tuple(xd)
    return [dims, _none(out[1]), _none(out[2])]


@op_rule(aten.native_group_norm)
def group_norm(ctx, func, args, kwargs, out):
    """Statistics are shared within a group: every group loses the same positions, so the groups
    stay equal (``num_groups`` keeps its value)."""
    x, groups = args[0], int(args[6])
    channels = x.shape[1]
    params = [a for a in args[1:3] if isinstance(a, torch.Tensor)]
    result = _channel_norm(ctx, x, params, out[0])
    vec = result[1]
    if vec is not None and groups > 1 and channels % groups == 0 and groups != channels:
        rows = vec.reshape(groups, channels // groups)
        for r in rows[1:]:
            ctx.tie(rows[0], r)
    return [result, _none(out[1]), _none(out[2])]


@op_rule(aten.embedding)
def embedding(ctx, func, args, kwargs, out):
    weight, indices = args[0], args[1]
    wd = ctx.dims(weight)
    ctx.use(wd[1])
    return (*ctx.dims(indices), wd[1])


def _spatial(n: int) -> Rule:
    def rule(ctx, func, args, kwargs, out):
        x = args[0]
        dims = ctx.dims(x)
        keep = x.dim() - n
        for v in dims[:keep]:
            ctx.use(v)
        result = (*dims[:keep], *([None] * n))
        if isinstance(out, (tuple, list)):
            return [result for _ in out]
        return result

    return rule


for _n, _ops in {
    1: (
        "max_pool1d",
        "max_pool1d_with_indices",
        "avg_pool1d",
        "adaptive_avg_pool1d",
        "adaptive_max_pool1d",
        "_adaptive_avg_pool1d",
        "upsample_nearest1d",
        "upsample_linear1d",
        "reflection_pad1d",
        "replication_pad1d",
    ),
    2: (
        "max_pool2d",
        "max_pool2d_with_indices",
        "avg_pool2d",
        "adaptive_avg_pool2d",
        "_adaptive_avg_pool2d",
        "adaptive_max_pool2d",
        "upsample_nearest2d",
        "upsample_bilinear2d",
        "_upsample_nearest_exact2d",
        "upsample_bicubic2d",
        "reflection_pad2d",
        "replication_pad2d",
        "mkldnn_max_pool2d",
    ),
    3: (
        "max_pool3d",
        "max_pool3d_with_indices",
        "avg_pool3d",
        "adaptive_avg_pool3d",
        "_adaptive_avg_pool3d",
        "adaptive_max_pool3d",
        "upsample_nearest3d",
        "upsample_trilinear3d",
        "reflection_pad3d",
        "replication_pad3d",
    ),
}.items():
    for _name in _ops:
        if hasattr(aten, _name):
            RULES[getattr(aten, _name)] = _spatial(_n)


@op_rule(
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_attention_math,
    aten.scaled_dot_product_attention,
    aten._scaled_dot_product_cudnn_attention,
)
def sdpa(ctx, func, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    qd, kd, vd = ctx.dims(q), ctx.dims(k), ctx.dims(v)
    lead = [_merge(ctx, [qd[i], kd[i], vd[i]]) for i in range(q.dim() - 2)]
    ctx.tie(qd[-1], kd[-1])
    ctx.tie(kd[-2], vd[-2])
    for t in _tensors((args[3:], kwargs)):  # masks and biases, broadcast against the logits
        md = ctx.dims(t)
        offset = len(lead) - (t.dim() - 2)
        for i in range(t.dim() - 2):
            if offset + i >= 0 and t.shape[i] != 1:
                lead[offset + i] = _merge(ctx, [lead[offset + i], md[i]])
        _pin_all(ctx, t)
    ctx.use(vd[-1])
    result = (*lead, qd[-2], vd[-1])
    if isinstance(out, (tuple, list)):
        return [
            result if i == 0 else (_none(o) if isinstance(o, torch.Tensor) else None)
            for i, o in enumerate(out)
        ]
    return result


@op_rule(aten.zeros, aten.ones, aten.full, aten.empty, aten.new_zeros, aten.new_ones)
def factory(ctx, func, args, kwargs, out):
    """A new tensor whose last dimension is sized by a width attribute of the module creating it
    (an RNN's zero initial state, ``torch.zeros(b, self.hidden_size)``) may shrink with it: that
    dimension gets fresh ids (and a size site), so what it meets is not pinned."""
    if not isinstance(out, torch.Tensor) or not out.dim() or out.shape[-1] < 2:
        return _outputs_none(out)
    if out.shape[-1] not in _int_attributes(ctx.module, WIDTH_ATTRIBUTES):
        return _none(out)
    ids = ctx.fresh(out.shape[-1])
    ctx.site(ids)
    return (*([None] * (out.dim() - 1)), ids)


@op_rule(aten.mkldnn_rnn_layer)
def rnn_layer(ctx, func, args, kwargs, out):
    """One layer and direction of an LSTM (CPU kernel): hidden unit ``h`` is row ``g*H + h`` of
    every gate ``g`` of both weight matrices and biases, column ``h`` of the recurrent matrix, and
    feature ``h`` of the output and the states."""
    x, w_ih, w_hh = args[0], args[1], args[2]
    biases = [b for b in args[3:5] if isinstance(b, torch.Tensor) and b.dim() == 1]
    hidden = int(args[10])
    gates = w_ih.shape[0] // hidden
    units = ctx.dims(w_hh)[1]
    ctx.tie(ctx.dims(x)[-1], ctx.dims(w_ih)[1])
    for t in (w_ih, w_hh, *biases):
        rows = ctx.dims(t)[0]
        for g in range(gates):
            ctx.tie(rows[g * hidden : (g + 1) * hidden], units)
    for state in args[5:7]:
        if isinstance(state, torch.Tensor) and ctx.dims(state)[-1] is not None:
            ctx.tie(ctx.dims(state)[-1], units)
    ctx.use(units)
    result = []
    for o in out:
        if isinstance(o, torch.Tensor) and o.dim() and o.shape[-1] == hidden:
            result.append((*([None] * (o.dim() - 1)), units))
        else:
            result.append(_none(o) if isinstance(o, torch.Tensor) else None)
    return result


@op_rule(aten.repeat)
def repeat(ctx, func, args, kwargs, out):
    src, repeats = args[0], list(args[1])
    dims = ctx.dims(src)
    lead = len(repeats) - src.dim()
    result: list[np.ndarray | None] = [None] * lead
    for i, v in enumerate(dims):
        r = repeats[lead + i]
        result.append(v if v is None or r == 1 else np.tile(v, r))
        ctx.use(v)
    return tuple(result)


@op_rule(aten.as_strided, aten.as_strided_)
def as_strided(ctx, func, args, kwargs, out):
    """A restride that keeps the shape and the strides of every dimension of size > 1 is a layout
    change only (pooling to 1x1 in channels-last does this); anything else is unknown."""
    src, size, stride = args[0], list(args[1]), list(args[2])
    offset = args[3] if len(args) > 3 else kwargs.get("storage_offset")
    if func.overloadpacket is aten.as_strided_:
        # rules run after the op, so the old strides are gone: only a restride of a tensor with at
        # most one dimension longer than 1 is certainly a layout change
        same = size == list(src.shape) and sum(n > 1 for n in size) <= 1
    else:
        same = (
            size == list(src.shape)
            and (offset is None or offset == src.storage_offset())
            and all(n == 1 or a == b for n, a, b in zip(size, stride, src.stride(), strict=True))
        )
    if not same:
        return unknown(ctx, func, args, kwargs, out)
    return ctx.dims(src)
