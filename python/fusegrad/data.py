"""``fusegrad.data``: ``Dataset``, ``TensorDataset``, ``Subset``, ``random_split`` and a ``DataLoader``
with shuffling, seed, drop_last."""
from __future__ import annotations

import math

import numpy as np

from . import _random
from ._checks import is_int
from .tensor import Tensor


class Dataset:
    """Base class of map-style datasets: define ``__getitem__(i)`` and ``__len__``."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__")


class Subset(Dataset):
    """The items of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __getitem__(self, i):
        if isinstance(i, (list, np.ndarray)):
            return self.dataset[[self.indices[j] for j in np.asarray(i).tolist()]]
        return self.dataset[self.indices[i]]

    def __len__(self):
        return len(self.indices)


def random_split(dataset, lengths, generator=None):
    """Split ``dataset`` into non-overlapping random ``Subset``s of the given lengths, or of
    fractions that sum to 1 (the remainder goes round-robin to the first splits, as in torch).
    The permutation comes from ``generator`` or the one ``fusegrad.manual_seed`` seeds."""
    n = len(dataset)
    lengths = list(lengths)
    if lengths and all(isinstance(x, float) for x in lengths) and math.isclose(sum(lengths), 1.0):
        if any(not 0 <= x <= 1 for x in lengths):
            raise ValueError(f"random_split: fractions must be in [0, 1], got {lengths}")
        sizes = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(sizes)):
            sizes[i % len(sizes)] += 1
        lengths = sizes
    if any(not is_int(x) or x < 0 for x in lengths) or sum(lengths) != n:
        raise ValueError(f"random_split: lengths {lengths} must be non-negative integers summing to the "
                         f"dataset's length {n} (or fractions summing to 1)")
    perm = _random.rng(generator).permutation(n)
    out, start = [], 0
    for k in lengths:
        out.append(Subset(dataset, perm[start:start + k]))
        start += k
    return out


class TensorDataset(Dataset):
    """Rows of equally long tensors/arrays; ``ds[i]`` is a tuple of the i-th rows."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset: needs at least one tensor")
        if any(np.ndim(getattr(t, "data", t)) == 0 for t in tensors):
            raise ValueError("TensorDataset: every tensor needs a first (row) dimension; got a 0-d one")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"TensorDataset: tensors have different lengths {[len(t) for t in tensors]}")
        self.tensors = tuple(t.data if isinstance(t, Tensor) else np.asarray(t) for t in tensors)

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        return tuple(Tensor(t[i]) for t in self.tensors)


class DataLoader:
    """Batches of a dataset: ``ceil(N / batch_size)`` per epoch (``floor`` with drop_last).
    With ``shuffle`` each epoch draws a new permutation from a generator seeded by ``seed``;
    a ``sampler`` (e.g. ``distributed.DistributedSampler``) gives the indices instead."""

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None, sampler=None,
                 generator=None):
        if not is_int(batch_size):
            raise TypeError(f"DataLoader: batch_size must be an integer, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: give shuffle or a sampler, not both (the sampler decides the order)")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.sampler = sampler
        # seed=None: each epoch's permutation comes from the generator fusegrad.manual_seed seeds
        self._rng = None if seed is None and generator is None else (
            _random.rng(generator) if generator is not None else np.random.default_rng(seed))

    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        if self.sampler is not None:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
        else:
            n = len(self.dataset)
            order = (self._rng or _random.rng()).permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if isinstance(self.dataset, TensorDataset):
                yield tuple(Tensor(t[idx]) for t in self.dataset.tensors)
            else:
                items = [self.dataset[int(i)] for i in idx]
                if not isinstance(items[0], (tuple, list)):     # one tensor per item: one batch tensor
                    yield Tensor(np.stack([np.asarray(getattr(it, "data", it)) for it in items]))
                    continue
                yield tuple(Tensor(np.stack([np.asarray(getattr(it[j], "data", it[j])) for it in items]))
                            for j in range(len(items[0])))
