"""Channel ids and the equalities between them.

Every index of every dimension of a parameter or buffer gets a unique integer id when tracing first
meets it. Activations carry, per dimension, a vector of the ids their indices derive from (or
``None`` when the dimension derives from no parameter: batch, spatial, token dimensions, model
inputs). Ops record equalities ("these two ids must be removed together"); the connected components
of those equalities are the channels. Id 0 is the *pinned* id: a channel tied to it can never be
removed (it reaches a model input or output, or an op we cannot edit).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PINNED", "LabelSpace"]

PINNED = 0


class LabelSpace:
    """Allocates ids and collects ties between them; solves them into components at the end."""

    def __init__(self) -> None:
        self.size = 1  # id 0 is PINNED
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._used: list[np.ndarray] = []
        # components() is called once per split/merge record while they are resolved: keep the
        # last solution and fold in only the ties added since (ties are only ever added)
        self._parent: np.ndarray = np.zeros(1, dtype=np.int64)
        self._solved = 0

    def fresh(self, n: int) -> np.ndarray:
        """``n`` new ids."""
        ids = np.arange(self.size, self.size + n, dtype=np.int64)
        self.size += n
        return ids

    def tie(self, a: np.ndarray | None, b: np.ndarray | None) -> None:
        """Tie ``a[i]`` to ``b[i]`` for every ``i`` (``None`` stands for pinned ids)."""
        if a is None and b is None:
            return
        if a is None:
            a = np.zeros_like(b)
        elif b is None:
            b = np.zeros_like(a)
        a, b = np.broadcast_arrays(a, b)
        differ = a != b
        if differ.any():
            self._a.append(a[differ].ravel())
            self._b.append(b[differ].ravel())
        self.use(a)
        self.use(b)

    def pin(self, ids: np.ndarray | None) -> None:
        """Make every id in ``ids`` unremovable."""
        if ids is not None and ids.size:
            self.tie(ids, None)

    def use(self, ids: np.ndarray | None) -> None:
        """Record that an op rule understood these ids (parameter ids never used are pinned)."""
        if ids is not None and ids.size:
            self._used.append(np.asarray(ids).ravel())

    def used(self) -> np.ndarray:
        """Boolean mask over all ids: whether some rule used the id."""
        mask = np.zeros(self.size, dtype=bool)
        for ids in self._used:
            mask[ids] = True
        return mask

    def components(self) -> np.ndarray:
        """``root[id]``: the smallest id of each id's component (``PINNED`` for pinned ones).

        The returned array is read-only; it stays valid until the next tie."""
        parent = self._parent
        if len(parent) < self.size:
            parent = np.concatenate([parent, np.arange(len(parent), self.size, dtype=np.int64)])
        if self._solved < len(self._a):
            a = np.concatenate(self._a[self._solved :])
            b = np.concatenate(self._b[self._solved :])
            parent = parent.copy()
            while True:  # hook roots onto the smaller root, then compress paths; O(log n) rounds
                ra, rb = parent[a], parent[b]
                if np.array_equal(ra, rb):
                    break
                low = np.minimum(ra, rb)
                np.minimum.at(parent, ra, low)
                np.minimum.at(parent, rb, low)
                while True:
                    grand = parent[parent]
                    if np.array_equal(grand, parent):
                        break
                    parent = grand
            self._solved = len(self._a)
        parent.flags.writeable = False
        self._parent = parent
        return parent
