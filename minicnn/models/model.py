"""`Model`: a Network plus Keras' training API (compile, fit, evaluate, predict, save)."""
import sys
import time

import numpy as np
from tqdm import tqdm

from .. import io, losses, optimizers
from ..callbacks import Callback, History
from ..layers import LAYER_CLASSES
from ..layers.base import SymbolicTensor
from ..sequence import ArrayBatches, Sequence
from .network import Network
from .summary import summary_lines


class Model(Network):
    """`Model(inputs, outputs)`: the functional API. `metadata` is a free-form dict saved with the model."""

    def __init__(self, inputs=None, outputs=None, name=None):
        super().__init__(inputs, outputs, name)
        self.optimizer, self.loss, self.metrics = None, None, []
        self.metadata = {}
        self.stop_training = False

    # ---- description ---------------------------------------------------------------------------
    def summary(self, print_fn=print):
        """Print the Keras 2 table of layers, output shapes and parameter counts."""
        self._require_built("summary")
        for line in summary_lines(self, sequential_style=self.is_chain()):
            print_fn(line)

    def get_config(self):
        self._require_built("get_config")
        return {"class_name": type(self).__name__, "name": self.name,
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config(),
                            "inbound": [s.name for s in self.inbound[layer]]} for layer in self.nodes],
                "input_layers": [layer.name for layer in self.input_layers],
                "output_layer": self.output_layer.name}

    def _require_built(self, what):
        if not self.nodes:
            raise ValueError(f"{self.name}: the model is not built yet; give the first layer an input_shape "
                             f"or call the model on data before {what}()")

    # ---- training ------------------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics = ["accuracy" if m in ("acc", "accuracy") else m for m in (metrics or [])]
        unknown = [m for m in self.metrics if m != "accuracy"]
        if unknown:
            raise ValueError(f"{self.name}: unknown metrics {unknown}; minicnn knows 'accuracy'")

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None):
        """One step: gradients of the loss on (x, y), then the optimizer. Returns [loss, accuracy]."""
        if self.optimizer is None:
            raise ValueError(f"{self.name}: call compile() before training")
        loss, y_pred = self.compute_gradients(x, y, _sample_weights(y, sample_weight, class_weight),
                                              input_gradient=False)
        self.optimizer.apply_gradients(self.trainable_weights)
        return self._results(loss, y, y_pred)

    def compute_gradients(self, x, y, sample_weight=None, training=True, input_gradient=True):
        """Forward, loss, backward: sets every weight's .grad and, with input_gradient, self.input_grad
        (dL/dx; a training step, like Keras', does without it). Returns (loss, y_pred)."""
        if self.loss is None:
            raise ValueError(f"{self.name}: call compile() with a loss first")
        y_pred = self.forward(x, training=training)
        logits = getattr(self.output_layer, "logits", None)
        if logits is not None:      # softmax output: the fused, overflow-free gradient p - y
            loss, dlogits = self.loss.from_logits(y, logits, sample_weight)
            self.input_grad = self.backward(dlogits, from_logits=True, input_gradient=input_gradient)
        else:
            loss = self.loss(y, y_pred, sample_weight)
            self.input_grad = self.backward(self.loss.gradient(y, y_pred, sample_weight), input_gradient=input_gradient)
        return loss + self._add_regularization(), y_pred

    def _add_regularization(self):
        """Add each regularizer's gradient to its weight's .grad; return the penalty for the loss."""
        penalty = 0.0
        for w in self.trainable_weights:
            if w.regularizer is not None and w.grad is not None:
                penalty += w.regularizer.loss(w.value)
                w.grad = w.grad + w.regularizer.gradient(w.value)
        return penalty

    def test_on_batch(self, x, y, sample_weight=None):
        y_pred = self.forward(x, training=False)
        loss = self.loss(y, y_pred, sample_weight) + self._regularization_penalty()
        return self._results(loss, y, y_pred)

    def _regularization_penalty(self):
        return sum(w.regularizer.loss(w.value) for w in self.trainable_weights if w.regularizer is not None)

    def _results(self, loss, y, y_pred):
        if not self.metrics:
            return float(loss)
        return [float(loss), accuracy(y, y_pred)]

    def predict(self, x, batch_size=32, verbose=0):
        """Outputs for x in inference mode, batch by batch.  x: (N, ...) -> (N, K).

        On a CPU, big batches are not faster: a batch of 32-64 keeps each layer's arrays in
        cache (cnn4 on 2,872 faces: 9-10 s at 32 or 64, 19 s at 256).
        """
        outputs = [self.forward(x[i:i + batch_size], training=False) for i in range(0, len(x), batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0,) + self.output_shape[1:])

    def evaluate(self, x, y, batch_size=32, verbose=1):
        """[loss, accuracy] (or the loss alone without metrics) over all of x, in inference mode."""
        if self.loss is None:
            raise ValueError(f"{self.name}: call compile() before evaluate()")
        y_pred = self.predict(x, batch_size)
        loss = self.loss(y, y_pred) + self._regularization_penalty()
        results = self._results(loss, y, y_pred)
        if verbose:
            print(_format_logs(dict(zip(self.metrics_names, np.atleast_1d(results)))))
        return results

    @property
    def metrics_names(self):
        return ["loss"] + self.metrics

    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose=1, callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0):
        """Train for `epochs`; x, y are arrays, or x is a `Sequence` of batches. Returns a History.

        Each epoch: for each batch, train_on_batch; then validation; then callbacks.
        """
        if isinstance(x, Sequence) and validation_split:
            raise ValueError(f"{self.name}: validation_split needs arrays; with a Sequence pass validation_data")
        if len(x) == 0:
            raise ValueError(f"{self.name}: fit received no training data")
        if validation_split and validation_data is None:
            cut = int(len(x) * (1 - validation_split))     # Keras takes the LAST samples, before shuffling
            x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
        batches = x if isinstance(x, Sequence) else ArrayBatches(x, y, batch_size, shuffle, sample_weight)
        history = History()
        callbacks = [c for c in (callbacks or []) if not isinstance(c, History)] + [history]
        for c in callbacks:
            c.set_model(self)
        self.stop_training = False
        _each(callbacks, "on_train_begin")
        for epoch in range(initial_epoch, epochs):
            _each(callbacks, "on_epoch_begin", epoch)
            batches.on_epoch_begin()
            start, totals, seen = time.time(), np.zeros(2), 0
            bar = tqdm(total=len(batches), desc=f"Epoch {epoch + 1}/{epochs}", leave=False,
                       disable=verbose != 1 or not sys.stdout.isatty())
            for i in range(len(batches)):
                xb, yb, *wb = batches[i]
                results = np.atleast_1d(self.train_on_batch(xb, yb, wb[0] if wb else None, class_weight))
                totals[:len(results)] += results * len(xb)
                seen += len(xb)
                logs = dict(zip(self.metrics_names, totals[:len(results)] / seen))
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
                _each(callbacks, "on_batch_end", i, {**logs, "loss": float(results[0])})
                if self.stop_training:
                    break
            bar.close()
            batches.on_epoch_end()
            if self.stop_training and not np.isfinite(results[0]):
                break                                  # a NaN batch: no epoch-end checkpoint of bad weights
            if validation_data is not None:
                val = np.atleast_1d(self.evaluate(*validation_data[:2], batch_size=batch_size, verbose=0))
                logs.update({f"val_{k}": float(v) for k, v in zip(self.metrics_names, val)})
            logs = {k: float(v) for k, v in logs.items()}
            logs["lr"] = self.optimizer.learning_rate
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs} - {time.time() - start:.1f}s - {_format_logs(logs)}", flush=True)
            _each(callbacks, "on_epoch_end", epoch, logs)
            if self.stop_training:
                break
        _each(callbacks, "on_train_end")
        return history

    # ---- files ---------------------------------------------------------------------------------
    def save_weights(self, path):
        io.save_weights(self, path)

    def load_weights(self, path):
        io.load_weights(self, path)

    def save(self, path, metadata=None):
        """Architecture, weights and `metadata` (default: self.metadata) in one .npz."""
        io.save_model(self, path, metadata)


def class_labels(y):
    """Targets as class indices (N,): from labels (N,) or (N, 1), as Keras takes them, or one-hot (N, K)."""
    y = np.asarray(y)
    return y.argmax(axis=-1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)


def accuracy(y_true, y_pred):
    """Fraction of rows whose arg-max prediction is the true class."""
    return float((y_pred.argmax(axis=-1) == class_labels(y_true)).mean())


def _sample_weights(y, sample_weight, class_weight):
    """Per-sample loss weights: sample_weight times class_weight[label] (Keras' combination)."""
    if class_weight is None:
        return sample_weight
    weights = np.array([class_weight[int(label)] for label in class_labels(y)], dtype=np.float64)
    return weights if sample_weight is None else weights * sample_weight


def _each(callbacks, method, *args):
    for c in callbacks:
        getattr(c, method)(*args)


def _format_logs(logs):
    return " - ".join(f"{k}: {v:.4g}" if k == "lr" else f"{k}: {v:.4f}" for k, v in logs.items())


def model_from_config(config):
    """Rebuild a Model or Sequential from `get_config()` output (as stored in model files)."""
    from .sequential import Sequential

    layers, tensors = {}, {}
    for spec in config["layers"]:
        cls = LAYER_CLASSES.get(spec["class_name"])
        if cls is None:
            raise ValueError(f"unknown layer class {spec['class_name']!r} in model config")
        layer = cls.from_config(dict(spec["config"]))
        layers[layer.name] = layer
        if spec["inbound"]:
            inputs = [tensors[name] for name in spec["inbound"]]
            tensors[layer.name] = layer(inputs if len(inputs) > 1 else inputs[0])
        else:
            tensors[layer.name] = SymbolicTensor(layer.output_shape, layer)
    inputs = [tensors[name] for name in config["input_layers"]]
    outputs = tensors[config["output_layer"]]
    if config["class_name"] == "Sequential":
        model = Sequential(name=config["name"])
        model.set_graph(inputs, outputs)
        return model
    return Model(inputs, outputs, name=config["name"])
