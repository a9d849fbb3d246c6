"""Batches for `Model.fit`: a Keras-style `Sequence`, and the one `fit` makes from arrays."""
import numpy as np

from . import backend


class Sequence:
    """What `fit` iterates over: `len(seq)` batches, `seq[i] -> (x, y)` or `(x, y, sample_weight)`.

    As `keras.utils.Sequence`; minicnn also calls `on_epoch_begin()` before each epoch, where
    the batch order is drawn. `fit` reads the batches in order, once each, so a run resumed
    from an epoch checkpoint (with the generators' states restored) draws exactly what the
    uninterrupted run drew, including augmentation drawn in `__getitem__`.
    """

    def __len__(self):
        raise NotImplementedError

    def __getitem__(self, index):
        raise NotImplementedError

    def on_epoch_begin(self):
        pass

    def on_epoch_end(self):
        pass


def count(x):
    """The number of samples of x: an array (N, ...), or a list of them, one per model input."""
    return len(x[0]) if isinstance(x, list) else len(x)


def take(x, index):
    """x[index] (a slice or an index array) of an array, or of each array of a list of them."""
    return [a[index] for a in x] if isinstance(x, list) else x[index]


class ArrayBatches(Sequence):
    """Mini-batches of arrays x: (N, ...) (or a list of them, one per model input), y: (N, ...),
    reshuffled each epoch from `backend.rng()`.

    The caller's arrays are never reordered in place: each batch is gathered by index.
    """

    def __init__(self, x, y, batch_size=32, shuffle=True, sample_weight=None):
        if count(x) != len(y):
            raise ValueError(f"x and y must have the same length, received {count(x)} and {len(y)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, received {batch_size!r}")
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.batch_size, self.shuffle = int(batch_size), shuffle
        self.order = np.arange(len(y))

    def __len__(self):
        return -(-len(self.y) // self.batch_size)

    def on_epoch_begin(self):
        if self.shuffle:
            self.order = backend.rng().permutation(len(self.y))

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        if self.sample_weight is None:
            return take(self.x, idx), self.y[idx]
        return take(self.x, idx), self.y[idx], self.sample_weight[idx]
