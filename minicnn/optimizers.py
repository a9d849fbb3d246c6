"""Optimizers with Keras' names, update rules and defaults.

An optimizer keeps its per-weight slots (velocity, m, v) in a dict keyed by the Weight
object and updates `weight.value` in place, so layers keep seeing their own arrays.
    SGD      v = momentum * v - lr * g;  w += v            (nesterov: w += momentum * v - lr * g)
    RMSprop  s = rho * s + (1 - rho) * g**2;  w -= lr * g / (sqrt(s) + eps)
    Adam     m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g**2;
             w -= lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + eps)
weight_decay=d (Keras 3) shrinks every weight before its step, w -= lr * d * w, apart from the
gradient ("decoupled", as AdamW): with Adam, an L2 penalty's gradient would be rescaled per weight.
Keras 2's spellings work too: `lr=` for learning_rate, and `decay=d`, which trains step t
with lr / (1 + d * t) (t counted from 0).
use_ema=True (Keras 3) also keeps an exponential moving average of each weight after every step,
    average = ema_momentum * average + (1 - ema_momentum) * w      (the first step: average = w)
which `finalize_variable_values` (called by `fit` at its end) copies into the weights, and
every `ema_overwrite_frequency` steps too when that is set: the average of the last few hundred
steps generalizes better than the last step's weights (Polyak averaging).
"""
import numpy as np

from .ops.elementwise import adam_update_many


class Optimizer:
    slot_names = ()

    def __init__(self, learning_rate, lr=None, decay=0.0, weight_decay=None, use_ema=False, ema_momentum=0.99,
                 ema_overwrite_frequency=None):
        self.learning_rate = float(learning_rate if lr is None else lr)
        self.decay = float(decay)
        self.weight_decay = float(weight_decay or 0.0)
        self.use_ema, self.ema_momentum = bool(use_ema), float(ema_momentum)
        self.ema_overwrite_frequency = None if ema_overwrite_frequency is None else int(ema_overwrite_frequency)
        if self.use_ema and not 0 <= self.ema_momentum <= 1:
            raise ValueError(f"{type(self).__name__}: ema_momentum must be in [0, 1], received {ema_momentum!r}")
        self.iterations = 0
        self.slots = {}          # Weight -> {slot name: array}
        self.averages = {}       # Weight -> its moving average (use_ema)

    def apply_gradients(self, weights):
        """One step on every weight with a gradient (weights: the model's trainable_weights)."""
        lr = self.learning_rate / (1.0 + self.decay * self.iterations)
        self.iterations += 1
        stepped = [w for w in weights if w.grad is not None]
        for w in stepped:
            if w not in self.slots:
                self.slots[w] = {name: np.zeros_like(w.value) for name in self.slot_names}
            if self.weight_decay:
                w.value *= 1 - lr * self.weight_decay        # in place: no temporary per step
        self.update_many([w.value for w in stepped], [w.grad.astype(w.value.dtype, copy=False) for w in stepped],
                         [self.slots[w] for w in stepped], lr)
        if self.use_ema:
            self.update_averages(weights)

    def update(self, value, grad, slots, lr):
        """One step on `value` in place, at learning rate `lr`."""
        raise NotImplementedError

    def update_many(self, values, grads, slots, lr):
        """`update` on each value with its grad and slots (an optimizer may do them all at once)."""
        for value, grad, its_slots in zip(values, grads, slots):
            self.update(value, grad, its_slots, lr)

    # ---- moving averages of the weights (use_ema) ----------------------------------------------
    def update_averages(self, weights):
        """average = m * average + (1 - m) * w for every weight that has a gradient (the first time:
        average = w); every ema_overwrite_frequency steps, the weights take their averages."""
        m = self.ema_momentum
        for w in weights:
            if w.grad is None:
                continue
            average = self.averages.get(w)
            if average is None:
                self.averages[w] = w.value.copy()
            else:
                average *= m
                average += (1 - m) * w.value
        if self.ema_overwrite_frequency and self.iterations % self.ema_overwrite_frequency == 0:
            self.finalize_variable_values(weights)

    def finalize_variable_values(self, var_list):
        """The weights take their moving averages (with use_ema; otherwise nothing), as Keras'."""
        for w in var_list:
            if self.use_ema and w in self.averages:
                w.value[...] = self.averages[w]

    # ---- state, for checkpoints that resume exactly ------------------------------------------
    def get_state(self, weights):
        """Arrays and numbers that restore this optimizer for `weights` (in that order)."""
        arrays = {f"{i}/{name}": array for i, w in enumerate(weights) if w in self.slots
                  for name, array in self.slots[w].items()}
        arrays.update({f"{i}/ema": self.averages[w] for i, w in enumerate(weights) if w in self.averages})
        return {"iterations": self.iterations, "learning_rate": self.learning_rate}, arrays

    def set_state(self, weights, config, arrays):
        self.iterations, self.learning_rate = int(config["iterations"]), float(config["learning_rate"])
        self.slots, self.averages = {}, {}
        for i, w in enumerate(weights):
            keys = {name: f"{i}/{name}" for name in self.slot_names}
            if keys and all(k in arrays for k in keys.values()):
                self.slots[w] = {name: self.restored(arrays, k, w) for name, k in keys.items()}
            if f"{i}/ema" in arrays:
                self.averages[w] = self.restored(arrays, f"{i}/ema", w)

    def restored(self, arrays, key, w):
        """arrays[key] in w's dtype; ValueError naming both when its shape is not w's."""
        if arrays[key].shape != w.shape:
            raise ValueError(f"{type(self).__name__} state {key} has shape {arrays[key].shape}, "
                             f"but weight {w.name} has shape {w.shape}")
        return np.array(arrays[key], dtype=w.value.dtype)

    def get_config(self):
        return {"class_name": type(self).__name__, "learning_rate": self.learning_rate, "decay": self.decay,
                "weight_decay": self.weight_decay, "use_ema": self.use_ema, "ema_momentum": self.ema_momentum,
                "ema_overwrite_frequency": self.ema_overwrite_frequency}


class SGD(Optimizer):
    slot_names = ("velocity",)

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **keras2):
        super().__init__(learning_rate, **keras2)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def update(self, value, grad, slots, lr):
        if self.momentum == 0:
            value -= lr * grad
            return
        v = slots["velocity"]
        v *= self.momentum
        v -= lr * grad
        if self.nesterov:
            value += self.momentum * v - lr * grad
        else:
            value += v

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    slot_names = ("rms",)

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, **keras2):
        super().__init__(learning_rate, **keras2)
        self.rho, self.epsilon = float(rho), float(epsilon)

    def update(self, value, grad, slots, lr):
        s = slots["rms"]
        s *= self.rho
        s += (1 - self.rho) * grad * grad
        value -= lr * grad / (np.sqrt(s) + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class Adam(Optimizer):
    slot_names = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **keras2):
        super().__init__(learning_rate, **keras2)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def update(self, value, grad, slots, lr):
        self.update_many([value], [grad], [slots], lr)

    def update_many(self, values, grads, slots, lr):
        t = self.iterations
        lr_t = lr * np.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        # the update of the docstring, in place; ops/elementwise.py has it as NumPy lines
        adam_update_many(values, grads, [s["m"] for s in slots], [s["v"] for s in slots], lr_t, self.beta_1,
                         self.beta_2, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


def get(identifier):
    """An Optimizer, its name ("sgd", "adam", "rmsprop") with Keras defaults, or its config dict."""
    classes = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        name = str(config.pop("class_name", "")).lower()
        if name not in classes:
            raise ValueError(f"unknown optimizer class_name {name!r} in {identifier}; known: sgd, adam, rmsprop")
        return classes[name](**config)
    if str(identifier).lower() not in classes:
        raise ValueError(f"unknown optimizer {identifier!r}; known: sgd, adam, rmsprop")
    return classes[str(identifier).lower()]()
