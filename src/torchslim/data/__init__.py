"""Datasets: small offline datasets behind one interface that returns standard PyTorch Datasets.

``load_dataset("mnist5k", "train")`` returns a :class:`SlimDataset` of (float32 input, int64
label) pairs, ready for a :class:`torch.utils.data.DataLoader`. The built-ins (``digits``,
``mnist5k``, ``mnist1d``, ``synthetic``; see :mod:`torchslim.data._builtin`) never download;
``@register_dataset`` adds more.
"""

from torchslim.data import _builtin  # noqa: F401  (registers the built-in datasets)
from torchslim.data._registry import (
    SPLITS,
    SlimDataset,
    list_datasets,
    load_dataset,
    register_dataset,
)

__all__ = ["SPLITS", "SlimDataset", "list_datasets", "load_dataset", "register_dataset"]
