"""`Model`: a Network plus Keras' training API (compile, fit, evaluate, predict, save)."""
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from .. import backend, losses, optimizers, perf, saving
from ..callbacks import History, check_hooks
from ..compiler import compile_model, freeze
from ..compiler.plan import Plans
from ..layers.base import weights_set_count
from ..sequence import ArrayBatches, Sequence, count, take
from .network import Network
from .summary import summary_lines


class Model(Network):
    """`Model(inputs, outputs)`: the functional API. `metadata` is a free-form dict saved with the model."""

    def __init__(self, inputs=None, outputs=None, name=None):
        super().__init__(inputs, outputs, name)
        self.optimizer, self.loss, self.metrics = None, None, []
        self.jit_compile = False
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
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, jit_compile=False):
        """Keras' compile. jit_compile=True (or "auto"): the model runs as the compiler's fused steps
        (minicnn/compiler/), compiled the first time it runs; the same numbers, graph and files."""
        if jit_compile not in (True, False, "auto"):
            raise ValueError(f"{self.name}: jit_compile must be True, False or 'auto', received {jit_compile!r}")
        self.jit_compile = jit_compile in (True, "auto")
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics = ["accuracy" if m in ("acc", "accuracy") else m for m in (metrics or [])]
        unknown = [m for m in self.metrics if m != "accuracy"]
        if unknown:
            raise ValueError(f"{self.name}: unknown metrics {unknown}; minicnn knows 'accuracy'")

    def forward(self, x, training=False):
        """Network.forward on the steps to run: the graph's own layers under MINICNN_REFERENCE=1,
        else the compiled steps once jit_compile asks for them (compiled here, on first use). A
        backward may follow, so a frozen model (compiler.freeze) compiles its trainable steps again
        here: no gradient reaches a layer through its folded weights. predict, predict_on_batch and
        evaluate run the frozen steps. A small inference batch runs on one thread (perf.inference_threads)."""
        return self._forward(x, training, planned=False)

    def _predict_batch(self, x):
        """forward(x, training=False) where no backward follows (predict, evaluate): a small batch
        through frozen steps then runs as their inference plan for its shape (compiler/plan.py)."""
        return self._forward(x, False, planned=True)

    def _forward(self, x, training, planned):
        inputs = x if isinstance(x, (list, tuple)) else [x]
        with backend.reference_read_once():
            self._choose_steps(backward_may_follow=training or not planned)
            reference = backend.use_reference()
            with perf.inference_threads(inputs, training, reference=reference):
                if planned and self.steps_frozen and not reference and perf.small_batch(inputs):
                    return self.plans(self, inputs)
                return super().forward(x, training)

    def set_steps(self, steps, compiled=False, frozen=False):
        super().set_steps(steps, compiled, frozen)
        self.plans = Plans()          # a plan binds the steps' arrays: new steps, new plans

    def _choose_steps(self, backward_may_follow):
        if backend.use_reference():
            if self.steps_compiled:
                self.set_steps(self.graph_steps())
        elif self.steps_frozen and backward_may_follow:
            compile_model(self)             # no gradient reaches the layers through folded weights
        elif self.steps_frozen and self.weights_frozen != weights_set_count():
            freeze(self)                    # weights set since: fold them again
        elif self.jit_compile and self.steps and not self.steps_compiled:
            compile_model(self)

    def _require_compiled(self, what):
        if self.optimizer is None or self.loss is None:
            raise ValueError(f"{self.name}: call compile() before {what}()")

    def train_on_batch(self, x, y, sample_weight=None, class_weight=None):
        """One step: gradients of the loss on (x, y), then the optimizer. Returns [loss, accuracy]."""
        self._require_compiled("train_on_batch")
        if class_weight is not None:
            class_weight = class_weight_vector(class_weight, self.output_shape[-1], self.name)
        with backend.reference_read_once():          # the step's ops and updates ask hundreds of times
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
        if logits is not None:      # softmax output: the fused, overflow-free gradient p - y, before the softmax
            loss, dy = self.loss.from_logits(y, logits, sample_weight)
        else:
            loss, dy = self.loss(y, y_pred, sample_weight), self.loss.gradient(y, y_pred, sample_weight)
        self.input_grad = self.backward(dy, from_logits=logits is not None, input_gradient=input_gradient)
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

    def predict(self, x, batch_size=32, verbose=0, callbacks=None):
        """Outputs for x in inference mode, batch by batch.  x: (N, ...) -> (N, K); for a model of
        several inputs, x is a list of arrays, one per input, each of N samples.

        On a CPU, big batches are not faster: a batch of 32-64 keeps each layer's arrays in cache.
        """
        _require_positive_int(self.name, "predict", batch_size=batch_size)
        x = self._checked_input(x, "predict")
        callbacks = self._callbacks(callbacks)
        _each(callbacks, "on_predict_begin")
        outputs = []
        for i, start in enumerate(range(0, count(x), batch_size)):
            _each(callbacks, "on_predict_batch_begin", i)
            outputs.append(self._predict_batch(take(x, slice(start, start + batch_size))))
            _each(callbacks, "on_predict_batch_end", i, {"outputs": outputs[-1]})
        _each(callbacks, "on_predict_end")
        return np.concatenate(outputs) if outputs else np.zeros((0,) + self.output_shape[1:])

    def predict_on_batch(self, x):
        """Outputs for x as one batch in inference mode (Keras' predict_on_batch): predict without
        the batching and the callbacks."""
        return self._predict_batch(self._checked_input(x, "predict_on_batch"))

    def evaluate(self, x, y, batch_size=32, verbose=1, callbacks=None):
        """[loss, accuracy] (or the loss alone without metrics) over all of x, in inference mode,
        batch by batch: the loss is the mean over every sample, whatever the batch size."""
        self._require_compiled("evaluate")
        _require_positive_int(self.name, "evaluate", batch_size=batch_size)
        x, y = self._checked_data(x, y, "evaluate")
        results = self._evaluate_checked(x, y, batch_size, self._callbacks(callbacks))
        if verbose:
            print(_format_logs(results))
        return list(results.values()) if self.metrics else results["loss"]

    def _evaluate_checked(self, x, y, batch_size, callbacks):
        """evaluate's loop over data already checked: {metric name: value}."""
        _each(callbacks, "on_test_begin")
        totals, seen = np.zeros(2), 0
        for i, start in enumerate(range(0, len(y), batch_size)):
            _each(callbacks, "on_test_batch_begin", i)
            xb, yb = take(x, slice(start, start + batch_size)), y[start:start + batch_size]
            y_pred = self._predict_batch(xb)
            totals += np.array([self.loss(yb, y_pred), accuracy(yb, y_pred)]) * len(yb)
            seen += len(yb)
            _each(callbacks, "on_test_batch_end", i, self._logs(totals / seen))
        results = self._logs(totals / seen + [self._regularization_penalty(), 0.0])
        _each(callbacks, "on_test_end", results)
        return results

    def _logs(self, loss_and_accuracy):
        return {name: float(v) for name, v in zip(self.metrics_names, loss_and_accuracy)}

    @property
    def metrics_names(self):
        return ["loss"] + self.metrics

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0):
        """Train for `epochs`; x, y are arrays (or lists), or x is a `Sequence` of batches. Returns a History.

        Each epoch: for each batch, train_on_batch; then validation; then callbacks. Every
        argument and the whole data are checked before the first batch.
        class_weight: {class: weight} for every class, or "balanced" (w_k = N / (K * N_k)).
        """
        self._require_compiled("fit")
        batch_size = 32 if batch_size is None else batch_size
        _require_positive_int(self.name, "fit", batch_size=batch_size)
        _require_positive_int(self.name, "fit", minimum=0, epochs=epochs, initial_epoch=initial_epoch)
        if not 0 <= validation_split < 1:
            raise ValueError(f"{self.name}.fit: validation_split must be in [0, 1), received {validation_split!r}")
        batches, validation_data = self._fit_data(x, y, batch_size, shuffle, sample_weight, validation_split,
                                                  validation_data)
        class_weight = self._fit_class_weight(class_weight, batches)
        history = History()
        callbacks = self._callbacks([c for c in (callbacks or []) if not isinstance(c, History)] + [history])
        _each(callbacks, "set_params", {"epochs": epochs, "verbose": verbose, "steps": len(batches)})
        self.stop_training = False
        _each(callbacks, "on_train_begin")
        for epoch in range(initial_epoch, epochs):
            start = time.time()
            logs = self._fit_epoch(epoch, epochs, batches, class_weight, callbacks, verbose)
            if logs is None:
                break                                  # a NaN batch: no epoch-end checkpoint of bad weights
            if validation_data is not None:            # checked once, before the first epoch
                val = self._evaluate_checked(*validation_data, batch_size, callbacks)
                logs.update({f"val_{k}": v for k, v in val.items()})
            logs["lr"] = self.optimizer.learning_rate
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs} - {time.time() - start:.1f}s - {_format_logs(logs)}", flush=True)
            _each(callbacks, "on_epoch_end", epoch, logs)
            if self.stop_training:
                break
        if epochs > initial_epoch:
            self.optimizer.finalize_variable_values(self.trainable_weights)     # use_ema: the averages
        _each(callbacks, "on_train_end")
        return history

    def _fit_class_weight(self, class_weight, batches):
        """fit's class_weight as a vector by class (or None); "balanced" counts the labels of arrays."""
        if class_weight is None:
            return None
        labels = class_labels(batches.y) if isinstance(batches, ArrayBatches) else None
        classes = self.output_shape[-1] if hasattr(self, "output_layer") else None   # None: not built yet
        return class_weight_vector(class_weight, classes, f"{self.name}.fit", labels)

    def _fit_epoch(self, epoch, epochs, batches, class_weight, callbacks, verbose):
        """One epoch of training with its progress bar: the epoch's logs, or None when a batch's
        loss was not finite and stopped training."""
        _each(callbacks, "on_epoch_begin", epoch)
        batches.on_epoch_begin()
        with tqdm(total=len(batches), desc=f"Epoch {epoch + 1}/{epochs}", leave=False,
                  disable=not show_progress_bar(verbose)) as bar:
            logs, last_loss = self._train_epoch(batches, class_weight, callbacks, bar)
        batches.on_epoch_end()
        if self.stop_training and not np.isfinite(last_loss):
            return None
        return {k: float(v) for k, v in logs.items()}

    def _train_epoch(self, batches, class_weight, callbacks, bar):
        """train_on_batch on each batch in turn, until stop_training. Returns (the epoch's running
        mean of each metric, the last batch's loss)."""
        totals, seen = np.zeros(2), 0
        for i in range(len(batches)):
            _each(callbacks, "on_train_batch_begin", i)
            xb, yb, *wb = batches[i]
            weights = _sample_weights(yb, wb[0] if wb else None, class_weight)
            results = np.atleast_1d(self.train_on_batch(xb, yb, weights))
            totals[:len(results)] += results * len(yb)
            seen += len(yb)
            logs = dict(zip(self.metrics_names, totals[:len(results)] / seen))
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
            _each(callbacks, "on_train_batch_end", i, {**logs, "loss": float(results[0])})
            if self.stop_training:
                break
        return logs, float(results[0])

    # ---- checking what the user passed ---------------------------------------------------------
    def _fit_data(self, x, y, batch_size, shuffle, sample_weight, validation_split, validation_data):
        """(batches, validation (x, y) or None), every array checked whole before any batch is drawn."""
        if isinstance(x, Sequence):
            if validation_split:
                raise ValueError(f"{self.name}: validation_split needs arrays; with a Sequence pass validation_data")
            if len(x) == 0:
                raise ValueError(f"{self.name}.fit: received no data (the Sequence holds 0 batches)")
            batches = x
        else:
            x, y = self._checked_data(x, y, "fit")
            if sample_weight is not None:
                sample_weight = np.asarray(sample_weight, dtype=np.float64)
                if sample_weight.shape != (len(y),):
                    raise ValueError(f"{self.name}.fit: sample_weight must have shape ({len(y)},) (one weight "
                                     f"per sample), received shape {sample_weight.shape}")
            if validation_split and validation_data is None:
                cut = int(len(y) * (1 - validation_split))   # Keras takes the LAST samples, before shuffling
                if cut == 0:
                    raise ValueError(f"{self.name}.fit: validation_split={validation_split} leaves no training data")
                validation_data = (take(x, slice(cut, None)), y[cut:])
                x, y = take(x, slice(None, cut)), y[:cut]
                sample_weight = None if sample_weight is None else sample_weight[:cut]
            batches = ArrayBatches(x, y, batch_size, shuffle, sample_weight)
        if validation_data is not None:
            validation_data = self._checked_data(*validation_data[:2], "fit(validation_data)")
        return batches, validation_data

    def _checked_data(self, x, y, what):
        """(x, y) as arrays, with x of the model's input shape and y what the loss expects."""
        if x is None or y is None:
            raise ValueError(f"{self.name}.{what}: needs inputs x and targets y")
        x, y = self._checked_input(x, what), np.asarray(y)
        if count(x) == 0:
            raise ValueError(f"{self.name}.{what}: received no data (x holds 0 samples)")
        if y.ndim == 0 or len(y) != count(x):
            shapes = [a.shape for a in x] if isinstance(x, list) else x.shape
            raise ValueError(f"{self.name}.{what}: x and y must have the same length, received x.shape={shapes} "
                             f"and y.shape={y.shape}")
        check_targets(self.loss, y, self.output_shape[-1], f"{self.name}.{what}")
        return x, y

    def _checked_input(self, x, what):
        """x as an array (lists are taken as arrays), checked whole against the model's input shape;
        for a model of several inputs, a list of such arrays, one per input, of one length."""
        if len(getattr(self, "input_layers", ())) > 1:
            return self._checked_inputs(x, what)
        x = x if isinstance(x, np.ndarray) else np.asarray(x)
        if getattr(self, "pending", None) and x.ndim > 0:   # a Sequential that builds on its first batch
            self.build((None,) + x.shape[1:])
        if not hasattr(self, "output_layer"):
            raise ValueError(f"{self.name}: the model has no layers to run")
        return _checked_array(x, self.input_shape, f"{self.name}.{what}")

    def _checked_inputs(self, xs, what):
        """One array per input layer, each of its shape, all of one length."""
        if not isinstance(xs, (list, tuple)) or len(xs) != len(self.input_layers):
            raise ValueError(f"{self.name}.{what}: the model has {len(self.input_layers)} inputs "
                             f"({', '.join(layer.name for layer in self.input_layers)}): pass a list of "
                             f"{len(self.input_layers)} arrays, received {type(xs).__name__}")
        xs = [_checked_array(np.asarray(x), layer.input_shape, f"{self.name}.{what} ({layer.name})")
              for x, layer in zip(xs, self.input_layers)]
        if len({len(x) for x in xs}) > 1:
            raise ValueError(f"{self.name}.{what}: the input arrays must hold one number of samples, received "
                             f"shapes {[x.shape for x in xs]}")
        return xs

    def _callbacks(self, callbacks):
        """The callbacks, each checked for unknown on_* methods and given this model."""
        callbacks = list(callbacks or [])
        for c in callbacks:
            check_hooks(c)
            c.set_model(self)
        return callbacks

    # ---- files ---------------------------------------------------------------------------------
    def save_weights(self, path):
        saving.save_weights(self, path)

    def load_weights(self, path):
        saving.load_weights(self, path)

    def save(self, path, metadata=None, include_optimizer=False):
        """Architecture, weights, `metadata` (default: self.metadata) and the compile() settings in
        one file; the extension names the format (.npz, or .keras: a Keras 3 file without the compile
        settings; any other is refused, see saving.MODEL_FORMATS).

        include_optimizer=True also stores the optimizer's state (Adam's moments: the file grows
        to three times the weights), so training continues exactly after load_model. The default
        is False, unlike Keras: model files are for inference and publishing, and training runs
        resume from checkpoints that hold that state already.
        """
        saving.save_model(self, path, metadata, include_optimizer)


def show_progress_bar(verbose):
    """fit's bar shows with verbose=1 in a terminal or in Jupyter, where tqdm.auto draws a widget
    (stdout is no terminal there); a log file gets the epoch lines alone."""
    in_notebook = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)
    return verbose == 1 and (in_notebook or sys.stdout.isatty())


def _checked_array(x, expected, where):
    """x, or an error naming `where` unless it is a batch of the input shape `expected` (None: any size)."""
    if _shape_matches(x.shape, expected[1:]):
        raise ValueError(f"{where}: a batch is expected: add an axis with x[None] (the model's "
                         f"input shape is {expected}, received x.shape={x.shape})")
    if x.ndim != len(expected) or not _shape_matches(x.shape[1:], expected[1:]):
        raise ValueError(f"{where}: expected input of shape {expected}, received x.shape={x.shape}")
    return x


def _shape_matches(shape, expected):
    """True when shape has expected's rank and agrees wherever expected is not None."""
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _require_positive_int(model_name, method, minimum=1, **arguments):
    for name, value in arguments.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            raise ValueError(f"{model_name}.{method}: {name} must be {kind}, received {value!r}")


def check_targets(loss, y, num_classes, where):
    """y as the loss expects it, checked whole: integer labels in 0..K-1 for the sparse loss,
    one-hot rows (N, K) for categorical_crossentropy; the error says which one was received."""
    if loss.sparse:
        if y.ndim == 2 and y.shape[1] == num_classes > 1:
            raise ValueError(f"{where}: {loss.name} expects integer labels (N,), received one-hot targets "
                             f"of shape {y.shape}: use loss='categorical_crossentropy', or pass y.argmax(axis=1)")
        if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1) or y.dtype.kind not in "iuf":
            raise ValueError(f"{where}: {loss.name} expects integer labels of shape (N,) or (N, 1), "
                             f"received y.shape={y.shape} with dtype {y.dtype}")
        labels = y.reshape(-1)
        if y.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            raise ValueError(f"{where}: {loss.name} expects integer labels, received non-integer values")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"{where}: labels must be in 0..{num_classes - 1} (the model has {num_classes} "
                             f"outputs), received {labels.min():g}..{labels.max():g}")
        return
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and num_classes > 1):
        raise ValueError(f"{where}: {loss.name} expects one-hot targets (N, {num_classes}), received integer "
                         f"labels of shape {y.shape}: use loss='sparse_categorical_crossentropy', or pass "
                         f"np.eye({num_classes})[y]")
    if y.ndim != 2 or y.shape[1] != num_classes or y.dtype.kind not in "iufb":
        raise ValueError(f"{where}: {loss.name} expects one-hot targets of shape (N, {num_classes}), "
                         f"received y.shape={y.shape} with dtype {y.dtype}")


def class_weight_vector(class_weight, num_classes, where, labels=None):
    """Per-class loss weights (K,) from Keras' {class: weight} (every class 0..K-1, as Keras asks),
    or "balanced": w_k = N / (K * N_k), so every class adds the same total weight to the loss.
    num_classes=None (a model not built yet): the dict's keys must be 0..len(class_weight)-1."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str) and class_weight == "balanced":
        if labels is None:
            raise ValueError(f"{where}: class_weight='balanced' counts the labels of arrays x, y; "
                             f"with a Sequence pass a dict {{class: weight}}")
        return losses.balanced_class_weights(labels, num_classes)
    if not isinstance(class_weight, dict):
        raise ValueError(f"{where}: class_weight must be a dict {{class: weight}} or 'balanced', "
                         f"received {type(class_weight).__name__} {class_weight!r:.60}")
    num_classes = len(class_weight) if num_classes is None else num_classes
    classes = set(range(num_classes))
    missing, unknown = sorted(classes - set(class_weight)), [k for k in class_weight if k not in classes]
    if missing:
        raise ValueError(f"{where}: class_weight needs a weight for every class 0..{num_classes - 1}, as a "
                         f"dict {{class: weight}}; missing: {missing}")
    if unknown:
        raise ValueError(f"{where}: class_weight has keys that are not a class of the model (0..{num_classes - 1}): "
                         f"{', '.join(map(repr, unknown))}")
    try:
        weights = np.array([float(class_weight[k]) for k in range(num_classes)])
    except (TypeError, ValueError):
        weights = np.array([np.nan])
    if not np.all(np.isfinite(weights) & (weights >= 0)):
        raise ValueError(f"{where}: class weights must be numbers, finite and >= 0, received {class_weight}")
    return weights


def class_labels(y):
    """Targets as class indices (N,): from labels (N,) or (N, 1), as Keras takes them, or one-hot (N, K)."""
    y = np.asarray(y)
    return y.argmax(axis=-1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)


def accuracy(y_true, y_pred):
    """Fraction of rows whose arg-max prediction is the true class."""
    return float((y_pred.argmax(axis=-1) == class_labels(y_true)).mean())


def _sample_weights(y, sample_weight, class_weight):
    """Per-sample loss weights: sample_weight times class_weight[label] (Keras' combination).
    class_weight: a dict {class: weight} or a vector indexed by class."""
    if class_weight is None:
        return sample_weight
    labels = class_labels(y).astype(np.int64)
    if isinstance(class_weight, dict):
        weights = np.array([class_weight[label] for label in labels], dtype=np.float64)
    else:
        weights = np.asarray(class_weight, dtype=np.float64)[labels]
    return weights if sample_weight is None else weights * sample_weight


def _each(callbacks, method, *args):
    for c in callbacks:
        getattr(c, method)(*args)


def _format_logs(logs):
    return " - ".join(f"{k}: {v:.4g}" if k == "lr" else f"{k}: {v:.4f}" for k, v in logs.items())
