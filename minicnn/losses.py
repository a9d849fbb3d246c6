"""Cross-entropy losses, mean over the batch: L = -1/N * sum_n w_n * sum_k y_nk * log(p_nk).

When the model ends in softmax, `from_logits` computes the loss from the logits z with a
max-shifted log-sum-exp, log p = z - max(z) - log(sum(exp(z - max(z)))), and its gradient
dL/dz = w_n * (p - y) / N directly: finite for logits of +-1000, where dL/dp = -y/p would
overflow.
"""
import numpy as np

EPSILON = 1e-7   # Keras clips probabilities to [eps, 1 - eps] before the log


class CategoricalCrossentropy:
    """y_true one-hot (N, K); with sparse=True, integer labels (N,).

    label_smoothing: s in [0, 1) trains on targets y * (1 - s) + s / K, as Keras: the network
    is never pushed to infinite logits for one class, which overconfident labels would ask.
    """

    sparse = False

    def __init__(self, label_smoothing=0.0, name=None):
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), received {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.name = name or ("sparse_categorical_crossentropy" if self.sparse else "categorical_crossentropy")

    def get_config(self):
        """What `get` rebuilds this loss from (saved with a compiled model)."""
        return {"class_name": type(self).__name__, "label_smoothing": self.label_smoothing}

    def targets(self, y_true, num_classes, dtype):
        """The (N, K) target distribution: one-hot labels, smoothed by label_smoothing."""
        y = self.one_hot(y_true, num_classes, dtype)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        return y

    def one_hot(self, y_true, num_classes, dtype):
        if not self.sparse:
            y = np.asarray(y_true, dtype=dtype)
            if y.ndim != 2 or y.shape[1] != num_classes:
                raise ValueError(f"{self.name}: expected one-hot targets of shape (N, {num_classes}), "
                                 f"received shape {y.shape}")
            return y
        labels = np.asarray(y_true).reshape(-1).astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{self.name}: labels must be in 0..{num_classes - 1}, received {labels.min()}..{labels.max()}")
        return np.eye(num_classes, dtype=dtype)[labels]

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Mean loss from probabilities (clipped to [1e-7, 1 - 1e-7], as Keras)."""
        y = self.targets(y_true, y_pred.shape[-1], y_pred.dtype)
        per_sample = -(y * np.log(np.clip(y_pred, EPSILON, 1 - EPSILON))).sum(axis=-1)
        return _weighted_mean(per_sample, sample_weight)

    def gradient(self, y_true, y_pred, sample_weight=None):
        """dL/dp for outputs that are not a softmax (the clipped form, as the loss)."""
        y = self.targets(y_true, y_pred.shape[-1], y_pred.dtype)
        w = _weights(sample_weight, len(y), y_pred.dtype)
        return -(y / np.clip(y_pred, EPSILON, 1 - EPSILON)) * (w / len(y))[:, None]

    def from_logits(self, y_true, logits, sample_weight=None):
        """(mean loss, dL/dlogits) for a softmax output, fused and overflow-free."""
        y = self.targets(y_true, logits.shape[-1], logits.dtype)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        per_sample = -(y * log_p).sum(axis=-1)
        w = _weights(sample_weight, len(y), logits.dtype)
        dlogits = (np.exp(log_p) - y) * (w / len(y))[:, None]          # exp(log p) = softmax(logits)
        return _weighted_mean(per_sample, sample_weight), dlogits


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    sparse = True


def _weights(sample_weight, n, dtype):
    return np.ones(n, dtype) if sample_weight is None else np.asarray(sample_weight, dtype)


def _weighted_mean(per_sample, sample_weight):
    return float((per_sample * _weights(sample_weight, len(per_sample), per_sample.dtype)).mean())


def balanced_class_weights(labels, num_classes):
    """w_k = N / (K * N_k) for integer labels (N,): every class adds the same total weight to the loss."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return len(labels) / (num_classes * np.maximum(counts, 1))


def categorical_crossentropy(y_true, y_pred):
    return CategoricalCrossentropy()(y_true, y_pred)


def sparse_categorical_crossentropy(y_true, y_pred):
    return SparseCategoricalCrossentropy()(y_true, y_pred)


def get(identifier):
    """A loss object from itself, its name, its function (`losses.categorical_crossentropy`), as Keras
    takes, or its get_config() dict."""
    if isinstance(identifier, CategoricalCrossentropy):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        classes = {cls.__name__: cls for cls in (CategoricalCrossentropy, SparseCategoricalCrossentropy)}
        cls = classes.get(config.pop("class_name", None))
        if cls is None:
            raise ValueError(f"unknown loss class_name in {identifier}; known: {', '.join(classes)}")
        return cls(**config)
    known = {"categorical_crossentropy": CategoricalCrossentropy,
             "sparse_categorical_crossentropy": SparseCategoricalCrossentropy}
    name = getattr(identifier, "__name__", identifier) if callable(identifier) else identifier
    if name not in known:
        raise ValueError(f"unknown loss {identifier!r}; known: {', '.join(known)}")
    return known[name]()
