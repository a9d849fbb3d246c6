"""Callbacks with Keras' names and semantics, called by `Model.fit`.

The methods are Keras': `fit` calls on_train_begin, then per epoch on_epoch_begin,
on_train_batch_begin / on_train_batch_end around every batch, the on_test_* methods while it
validates, on_epoch_end with the epoch's logs ({"loss", "accuracy", "val_loss", "val_accuracy",
"lr"}), and on_train_end; `evaluate` calls the on_test_* methods, `predict` the on_predict_*
ones. Keras 2's on_batch_begin / on_batch_end are what the train-batch methods call by default,
as in Keras. A method whose name starts with "on_" but is none of these is refused when `fit`,
`evaluate` or `predict` receives the callback: a misspelt hook would otherwise never run.
on_train_batch_end's logs hold the epoch's running means, except "loss": the batch's own, so a
NaN shows at once (TerminateOnNaN). A callback stops training by setting `model.stop_training = True`.
`get_state` / `set_state` let a checkpoint resume a run exactly: the state is (config, arrays),
JSON-able numbers and named arrays, as for optimizers (model files load without pickle).
"""
import csv
import math
import os

import numpy as np

from . import saving
from .layers import BatchNormalization, Dropout


class Callback:
    model = None
    params = {}          # fit's {"epochs", "verbose", "steps"}, as Keras gives them

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)           # Keras 2's name, as Keras keeps it

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass

    def get_state(self):
        """(config, arrays): JSON-able numbers, and name -> array, that restore this callback."""
        return {}, {}

    def set_state(self, config, arrays):
        pass


HOOKS = frozenset(name for name in vars(Callback) if name.startswith("on_"))


def check_hooks(callback):
    """Refuse a callback with an on_* method that no loop calls (a misspelt or unknown hook)."""
    unknown = sorted(name for name in dir(callback) if name.startswith("on_") and name not in HOOKS
                     and callable(getattr(callback, name)))
    if unknown:
        raise ValueError(f"{type(callback).__name__}: {', '.join(unknown)} is not a callback method minicnn "
                         f"calls; the methods are {', '.join(sorted(HOOKS))}")


class History(Callback):
    """`history.history["loss"]` etc.: one value per epoch."""

    def __init__(self):
        self.history, self.epoch = {}, []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def get_state(self):
        return {"history": self.history, "epoch": self.epoch}, {}

    def set_state(self, config, arrays):
        self.history, self.epoch = {k: list(v) for k, v in config["history"].items()}, list(config["epoch"])


class _Monitor(Callback):
    """Shared by the callbacks that watch one metric: 'min' for losses, 'max' for accuracies."""

    def __init__(self, monitor, mode="auto", min_delta=0.0):
        self.monitor, self.min_delta = monitor, abs(min_delta)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self.best = self.initial_best()
        self._restored = False

    def initial_best(self):
        """The best value before any epoch: one that every real value improves on."""
        return math.inf if self.mode == "min" else -math.inf

    def starts_afresh(self):
        """True at the start of a fit, except the first one after set_state (a resumed run)."""
        restored, self._restored = self._restored, False
        return not restored

    def improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def current(self, logs):
        """The monitored value. A metric missing from the logs is an error here, where Keras
        warns and skips: a checkpoint or early stop that silently never fires loses a run."""
        if self.monitor not in (logs or {}):
            raise KeyError(f"{type(self).__name__}: metric {self.monitor!r} is not in the logs "
                           f"({', '.join(logs or {})}); pass validation data to monitor val_ metrics")
        return float(logs[self.monitor])

    def get_state(self):
        return {"best": self.best}, {}

    def set_state(self, config, arrays):
        self.best = float(config["best"])
        self._restored = True


class ModelCheckpoint(_Monitor):
    """Save the model (or its weights) after each epoch; with save_best_only, only on improvement.

    `filepath` may contain format fields: "weights.{epoch:02d}-{val_loss:.2f}.npz". As in Keras,
    the best value carries over from one fit to the next. Arguments in Keras' order.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto"):
        super().__init__(monitor, mode)
        # a name whose extension is no format minicnn writes fails now, not after the first epoch
        saving.writer_for(filepath, saving.WEIGHT_FORMATS if save_weights_only else saving.MODEL_FORMATS,
                          "weight" if save_weights_only else "model")
        self.filepath, self.save_best_only = filepath, save_best_only
        self.save_weights_only, self.verbose = save_weights_only, verbose

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = str(self.filepath).format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            value = self.current(logs)
            if not self.improved(value):
                return
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {value:.5f}, saving {path}")
            self.best = value
        (self.model.save_weights if self.save_weights_only else self.model.save)(path)


class EarlyStopping(_Monitor):
    """Stop when `monitor` has not improved for `patience` epochs; optionally restore the best weights.
    `baseline`: a value to beat from the start (Keras' meaning). Each fit starts counting afresh,
    as in Keras. Arguments in Keras' order."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False):
        self.baseline = baseline                 # before super().__init__, which calls initial_best()
        super().__init__(monitor, mode, min_delta)
        self.patience, self.restore_best_weights, self.verbose = patience, restore_best_weights, verbose
        self.wait, self.best_weights, self.stopped_epoch = 0, None, None

    def initial_best(self):
        return super().initial_best() if self.baseline is None else float(self.baseline)

    def on_train_begin(self, logs=None):
        if self.starts_afresh():
            self.best, self.wait, self.best_weights, self.stopped_epoch = self.initial_best(), 0, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = self.current(logs)
        if self.improved(value):
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"Epoch {epoch + 1}: early stopping")

    def get_state(self):
        """best_weights go in the arrays ("best_weights/0000", ... in get_weights() order), so a
        resumed run can still restore them when it stops."""
        config, arrays = super().get_state()
        arrays = {**arrays, **{f"best_weights/{i:04d}": a for i, a in enumerate(self.best_weights or [])}}
        return {**config, "wait": self.wait}, arrays

    def set_state(self, config, arrays):
        super().set_state(config, arrays)
        self.wait = int(config["wait"])
        keys = sorted(k for k in arrays if k.startswith("best_weights/"))
        self.best_weights = [np.array(arrays[k]) for k in keys] or None     # None: no improvement yet


class ReduceLROnPlateau(_Monitor):
    """lr = max(lr * factor, min_lr) when `monitor` has not improved for `patience` epochs.
    Each fit starts counting afresh, as in Keras. Arguments in Keras' order."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta)
        if factor >= 1.0:
            raise ValueError("ReduceLROnPlateau: factor must be < 1")
        self.factor, self.patience, self.min_lr = factor, patience, min_lr
        self.cooldown, self.verbose = cooldown, verbose
        self.wait, self.cooldown_counter = 0, 0

    def on_train_begin(self, logs=None):
        if self.starts_afresh():
            self.best, self.wait, self.cooldown_counter = self.initial_best(), 0, 0

    def on_epoch_end(self, epoch, logs=None):
        value = self.current(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            optimizer = self.model.optimizer
            if self.wait >= self.patience and optimizer.learning_rate > self.min_lr:
                optimizer.learning_rate = max(optimizer.learning_rate * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0
                if self.verbose:
                    print(f"Epoch {epoch + 1}: reducing learning rate to {optimizer.learning_rate:.3g}")

    def get_state(self):
        config, arrays = super().get_state()
        return {**config, "wait": self.wait, "cooldown_counter": self.cooldown_counter}, arrays

    def set_state(self, config, arrays):
        super().set_state(config, arrays)
        self.wait, self.cooldown_counter = int(config["wait"]), int(config["cooldown_counter"])


class LearningRateScheduler(Callback):
    """At each epoch's start, lr = schedule(epoch, lr) (epoch counted from 0), as in Keras:
    e.g. `lambda epoch, lr: lr * 0.5 if epoch in (30, 60) else lr` halves it before epochs 31 and 61.
    A schedule of the rate in force, not of the first rate, so a resumed run goes on from its own."""

    def __init__(self, schedule, verbose=0):
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        rate = float(self.schedule(epoch, float(optimizer.learning_rate)))
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"LearningRateScheduler: the schedule gave {rate!r} for epoch {epoch + 1}; "
                             f"a learning rate must be a positive number")
        if self.verbose and rate != optimizer.learning_rate:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {rate:.3g}")
        optimizer.learning_rate = rate


class SwapEMAWeights(Callback):
    """Evaluates the optimizer's moving averages of the weights (use_ema=True) instead of the
    weights being trained: puts them in for each validation and the trained weights back after it.
    swap_on_epoch=True also keeps them in from each epoch's end to the next one's start, so the
    callbacks after this one (a ModelCheckpoint) see them. Keras' callback; give it before those.
    The trained weights wait here meanwhile (and in its state, for a checkpoint), so the
    optimizer's averages stay the averages and fit's final finalize_variable_values is right."""

    def __init__(self, swap_on_epoch=False):
        self.swap_on_epoch, self.trained = swap_on_epoch, None     # trained: the values put aside

    @property
    def averages_in_model(self):
        return self.trained is not None

    def put_averages_in(self):
        optimizer, weights = self.model.optimizer, self.model.trainable_weights
        if not optimizer.use_ema:
            raise ValueError("SwapEMAWeights: the model's optimizer keeps no moving averages; compile it "
                             "with use_ema=True")
        self.trained = [w.value.copy() for w in weights]
        optimizer.finalize_variable_values(weights)

    def put_trained_back(self):
        for w, value in zip(self.model.trainable_weights, self.trained):
            w.value[...] = value
        self.trained = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.averages_in_model:
            self.put_trained_back()

    def on_epoch_end(self, epoch, logs=None):
        if self.swap_on_epoch and not self.averages_in_model:
            self.put_averages_in()

    def on_test_begin(self, logs=None):
        if not self.averages_in_model:
            self.put_averages_in()

    def on_test_end(self, logs=None):
        if self.averages_in_model and not self.swap_on_epoch:
            self.put_trained_back()

    def get_state(self):
        arrays = {f"trained/{i:04d}": value for i, value in enumerate(self.trained or [])}
        return {"averages_in_model": self.averages_in_model}, arrays

    def set_state(self, config, arrays):
        keys = sorted(k for k in arrays if k.startswith("trained/"))
        self.trained = [np.array(arrays[k]) for k in keys] if config["averages_in_model"] else None


class CSVLogger(Callback):
    """Append one row per epoch (epoch, then the logs' keys, sorted) to a CSV file."""

    def __init__(self, filename, separator=",", append=False):
        self.filename, self.separator, self.append = filename, separator, append
        self.keys = None

    def on_train_begin(self, logs=None):
        if not self.append and os.path.exists(self.filename):
            os.remove(self.filename)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.keys = self.keys or sorted(logs)
        new_file = not os.path.exists(self.filename) or os.path.getsize(self.filename) == 0
        with open(self.filename, "a", newline="") as f:
            writer = csv.writer(f, delimiter=self.separator)
            if new_file:
                writer.writerow(["epoch"] + self.keys)
            writer.writerow([epoch] + [logs.get(k, "") for k in self.keys])


class TerminateOnNaN(Callback):
    """Stop at the first batch whose loss is NaN or infinite, naming the epoch and batch."""

    def __init__(self):
        self.epoch, self.message = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.message = f"epoch {self.epoch + 1}, batch {batch + 1}: invalid loss {loss}, terminating training"
            print(self.message)
            self.model.stop_training = True


def recompute_batchnorm_statistics(model, x, batch_size=64):
    """Sets every BatchNormalization's moving mean and variance to the plain average of its batch
    statistics over `x` (whole batches only), with Dropout off, for the weights as they are now.

    Why: the moving averages trail the weights by ~1 / (1 - momentum) steps, and a Dropout in front
    of a BatchNormalization makes them measure inputs wider than inference sees ("precise BN":
    Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"; Li et al. 2019 on dropout's variance
    shift). Weights and random generators are untouched.
    """
    norms = [layer for layer in model.layers if isinstance(layer, BatchNormalization)]
    if not norms:
        return
    dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
    momenta, rates = [n.momentum for n in norms], [d.rate for d in dropouts]
    try:
        for d in dropouts:
            d.rate = 0.0                                     # identity, and no random draw
        for i, start in enumerate(range(0, len(x) - batch_size + 1, batch_size)):
            for n in norms:
                n.momentum = i / (i + 1)                     # moving = the mean of the i + 1 batches
            model.forward(x[start:start + batch_size], training=True)
    finally:
        for n, momentum in zip(norms, momenta):
            n.momentum = momentum
        for d, rate in zip(dropouts, rates):
            d.rate = rate


class PreciseBatchNorm(Callback):
    """Before each validation in `fit` (or at the epoch's end without one), recompute_batchnorm_statistics
    on `x`, so validation, checkpoints and the saved model use statistics of the final weights.

    x: inputs as the model receives them at inference (e.g. a fixed sample of training images).
    """

    def __init__(self, x, batch_size=64):
        if len(x) < batch_size:
            raise ValueError(f"PreciseBatchNorm: needs at least one batch of {batch_size} inputs, received {len(x)}")
        self.x, self.batch_size, self.pending = x, batch_size, False

    def on_epoch_begin(self, epoch, logs=None):
        self.pending = True

    def on_test_begin(self, logs=None):
        if self.pending:                                    # fit's validation, not a separate evaluate
            self.recompute()

    def on_epoch_end(self, epoch, logs=None):
        if self.pending:
            self.recompute()

    def recompute(self):
        recompute_batchnorm_statistics(self.model, self.x, self.batch_size)
        self.pending = False
