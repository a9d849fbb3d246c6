"""Gradient checking: compare backward's gradients with central differences.

For a layer, the scalar checked is L = sum(forward(x) * G) with a fixed random G (never all
ones: for BatchNormalization that makes dL/dx identically zero, and the check would pass
whatever backward computes). Each entry's numerical gradient is
    dL/dtheta ~ (L(theta + h) - L(theta - h)) / (2h),   h = 1e-5,
and the error of a whole array is norm-wise: |a - n| / max(|a| + |n|, 1e-12) (L2 norms).
float64 only: in float32, rounding error (~1e-7 relative) swamps a difference quotient with
h = 1e-5, so a check would neither pass on correct code nor catch small bugs.
Randomness (dropout masks) is replayed: every evaluation restores the generators' states,
and BatchNormalization's moving statistics are restored afterwards.

Run `python -m minicnn.gradcheck [--layer NAME] [--seed N]`: one line per layer and mode, PASS or
FAIL at the tests' threshold, the worst entry of each failure, and exit status 1 on any failure.
"""
import argparse
import sys

import numpy as np

from . import backend

H = 1e-5


class CheckResult:
    """The error of one array's gradient: `error` (norm-wise) and the worst entry."""

    def __init__(self, name, analytic, numeric, index):
        self.name, self.analytic, self.numeric = name, analytic, numeric
        diff = np.linalg.norm(analytic - numeric)
        self.error = float(diff / max(np.linalg.norm(analytic) + np.linalg.norm(numeric), 1e-12))
        worst = int(np.argmax(np.abs(analytic - numeric))) if analytic.size else 0
        self.worst_index = index[worst] if index is not None else worst
        self.worst = (float(analytic.flat[worst]), float(numeric.flat[worst])) if analytic.size else (0.0, 0.0)

    def __repr__(self):
        return (f"{self.name}: relative error {self.error:.2e} (worst entry {self.worst_index}: "
                f"analytic {self.worst[0]:.6g}, numeric {self.worst[1]:.6g})")


def relative_error(analytic, numeric):
    return CheckResult("", np.asarray(analytic, float), np.asarray(numeric, float), None).error


class _Replay:
    """Captures the random generators' states so every forward draws the same masks."""

    def __init__(self, layers):
        self.generators = [backend.rng()] + [l.rng for l in layers if getattr(l, "rng", None) is not None]
        self.states = [g.bit_generator.state for g in self.generators]
        self.moving = [(w, w.value.copy()) for l in layers for w in l.non_trainable_weights]

    def rewind(self):
        for g, s in zip(self.generators, self.states):
            g.bit_generator.state = s

    def restore_moving(self):
        for w, value in self.moving:
            w.value[...] = value


def _require_float64(arrays):
    for a in arrays:
        if np.asarray(a).dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 arrays (backend.set_floatx('float64')), received {np.asarray(a).dtype}")


def numeric_gradient(f, array, indices=None):
    """Central differences of scalar f() with respect to entries `indices` (default: all) of
    `array`, which f must read: each entry is nudged in place by +-h and restored."""
    indices = np.arange(array.size) if indices is None else indices
    grads = np.empty(len(indices))
    flat = array.reshape(-1)
    for k, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + H
        plus = f()
        flat[i] = old - H
        minus = f()
        flat[i] = old
        grads[k] = (plus - minus) / (2 * H)
    return grads


def _indices(array, sample, rng):
    if sample is None or sample >= array.size:
        return np.arange(array.size)
    return np.sort(rng.choice(array.size, size=sample, replace=False))


def check_layer(layer, x, training=False, seed=0, sample=None):
    """Check dL/dx (one per input for Add) and every trainable weight of `layer` at x.

    Returns {name: CheckResult}, names "x" (or "x0", "x1", ...) and each weight's short name.
    `sample`: check only that many random entries per array (None: all).
    """
    xs = [np.array(a, dtype=np.float64) for a in (x if isinstance(x, (list, tuple)) else [x])]
    _require_float64(xs)
    multi = isinstance(x, (list, tuple))
    call = (lambda: layer.forward(list(xs), training=training)) if multi else (lambda: layer.forward(xs[0], training=training))
    rng = np.random.default_rng(seed)
    if not layer.built:
        shapes = [(None,) + a.shape[1:] for a in xs]
        layer.build(shapes if multi else shapes[0])
    replay = _Replay([layer])                   # before any forward: moving statistics untouched
    y = call()
    _require_float64([w.value for w in layer.weights])
    G = rng.standard_normal(y.shape)            # the fixed random upstream gradient

    def loss():
        replay.rewind()
        return float(np.sum(call() * G))

    replay.rewind()
    call()
    dx = layer.backward(G.copy())
    dxs = dx if multi else [dx]
    analytic = {(f"x{i}" if multi else "x"): (a, d) for i, (a, d) in enumerate(zip(xs, dxs))}
    analytic.update({w.name.split("/")[-1]: (w.value, w.grad.copy()) for w in layer.trainable_weights})
    results = {}
    for name, (array, grad) in analytic.items():
        idx = _indices(array, sample, rng)
        results[name] = CheckResult(name, np.asarray(grad).reshape(-1)[idx], numeric_gradient(loss, array, idx), idx)
    replay.restore_moving()
    return results


def check_model(model, x, y, training=True, seed=0, sample=20, sample_weight=None):
    """Check the gradients of the model's compiled loss (the path train_on_batch uses) at (x, y).

    Returns {name: CheckResult} for "x" and every trainable weight (full names).
    """
    x = np.array(x, dtype=np.float64)
    _require_float64([x] + [w.value for w in model.weights])
    rng = np.random.default_rng(seed)
    replay = _Replay(model.nodes)

    def loss():
        replay.rewind()
        return float(model.compute_gradients(x, y, sample_weight, training=training)[0])

    loss()
    analytic = {"x": (x, np.array(model.input_grad))}
    analytic.update({w.name: (w.value, w.grad.copy()) for w in model.trainable_weights})
    results = {}
    for name, (array, grad) in analytic.items():
        idx = _indices(array, sample, rng)
        results[name] = CheckResult(name, grad.reshape(-1)[idx], numeric_gradient(loss, array, idx), idx)
    replay.restore_moving()
    return results


def spaced_input(shape, seed=0, gap=0.05):
    """Distinct values at least `gap` apart and never 0, so +-h crosses no ReLU kink or max-pool tie."""
    n = int(np.prod(shape))
    values = (np.random.default_rng(seed).permutation(n) - n / 2 + 0.25) * gap   # fractions .25/.75: never 0
    return values.reshape(shape)


def example_cases():
    """One small case per layer class: name -> (layer factory, input shape(s)). Used by the tests
    (a layer class without a case fails them) and by `python -m minicnn.gradcheck`."""
    from . import layers as L

    return {
        "Conv2D": (lambda: L.Conv2D(2, (2, 3), strides=(2, 1), padding="same"), (2, 5, 4, 3)),
        "DepthwiseConv2D": (lambda: L.DepthwiseConv2D((3, 2), padding="same", depth_multiplier=2), (2, 4, 5, 2)),
        "SeparableConv2D": (lambda: L.SeparableConv2D(3, (3, 3), strides=2, padding="same"), (2, 6, 5, 2)),
        "BatchNormalization": (lambda: L.BatchNormalization(), (3, 2, 2, 3)),
        "MaxPooling2D": (lambda: L.MaxPooling2D((3, 3), strides=2, padding="same"), (2, 5, 6, 2)),
        "AveragePooling2D": (lambda: L.AveragePooling2D((3, 3), strides=2, padding="same"), (2, 5, 6, 2)),
        "GlobalAveragePooling2D": (lambda: L.GlobalAveragePooling2D(), (2, 3, 3, 2)),
        "Dropout": (lambda: L.Dropout(0.5, seed=1), (2, 3, 3, 2)),
        "Dense": (lambda: L.Dense(3), (2, 4)),
        "Flatten": (lambda: L.Flatten(), (2, 2, 3, 2)),
        "Activation": (lambda: L.Activation("tanh"), (2, 5)),
        "ReLU": (lambda: L.ReLU(), (2, 5)),
        "Softmax": (lambda: L.Softmax(), (2, 5)),
        "Add": (lambda: L.Add(), [(2, 3, 3, 4)] * 3),
    }


THRESHOLD = 1e-7    # a check passes when the norm-wise relative error is at most this (the tests' bound)
MODES = {"training": True, "inference": False}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m minicnn.gradcheck",
        description="Check every layer's backward pass against central differences, in float64. Each layer "
                    "runs in training mode (batch statistics, dropout masks) and in inference mode; a check "
                    f"passes when the relative error |a - n| / (|a| + |n|) of every gradient is <= {THRESHOLD:g}.")
    parser.add_argument("--layer", action="append", choices=sorted(example_cases()), metavar="NAME",
                        help="check only this layer class (repeat for several); one of: "
                             + ", ".join(sorted(example_cases())))
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights, the inputs and the upstream gradient (default 0)")
    return parser.parse_args(argv)


def check_example(name, training, seed):
    """The worst CheckResult of layer class `name`'s example case (see example_cases)."""
    make, shape = example_cases()[name]
    backend.set_seed(seed)                                  # the weights' initial values
    x = [spaced_input(s, seed=seed + i) for i, s in enumerate(shape)] if isinstance(shape, list) \
        else spaced_input(shape, seed=seed)
    results = check_layer(make(), x, training=training, seed=seed)
    return max(results.values(), key=lambda r: r.error)


def main(argv=None):
    """Print each layer's worst relative error with PASS or FAIL; return 1 when any check fails."""
    args = parse_args(argv)
    backend.set_floatx("float64")
    print(f"{'layer':<24}{'mode':<11}{'worst error':>11}  {'result':<6}  array")
    failures = []
    names = args.layer or list(example_cases())
    for name in names:
        for mode, training in MODES.items():
            worst = check_example(name, training, args.seed)
            passed = worst.error <= THRESHOLD
            print(f"{name:<24}{mode:<11}{worst.error:>11.2e}  {'PASS' if passed else 'FAIL':<6}  {worst.name}")
            if not passed:
                failures.append(f"{name} ({mode}) {worst!r}")
    checks = len(names) * len(MODES)
    if failures:
        print(f"\n{len(failures)} of {checks} checks FAILED (threshold {THRESHOLD:g}):")
        print("\n".join(failures))
        return 1
    print(f"\nall {checks} checks passed (relative error <= {THRESHOLD:g}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
