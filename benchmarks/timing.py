"""How the kernel benchmarks time: medians of calls taking turns, on the wall clock or the CPU clock."""
import time

import numpy as np

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def median_ms(fns, repeats, clock="wall"):
    """Median time in ms of each function, taking turns so that noise hits all alike. clock="cpu"
    counts the process's CPU time (every thread's): on a machine whose other jobs take the cores,
    the work done rather than the wait for a core."""
    now = CLOCKS[clock]
    for fn in fns:
        fn()                                            # warm-up: compile / load caches
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = now()
            fn()
            t.append(now() - start)
    return [1e3 * float(np.median(t)) for t in times]


def with_setting(perf, name, value, function):
    """function, made to run with minicnn.perf.<name> = value (and the setting put back after)."""
    def run():
        saved = getattr(perf, name)
        setattr(perf, name, value)
        try:
            return function()
        finally:
            setattr(perf, name, saved)
    return run


def training_step_ms(model, x, y, steps):
    """Mean ms of `steps` training steps of `model` on (x, y), after one untimed step."""
    model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps * 1e3


STEPS_HELP = "steps per timing (default: 4 for mini_xception, else 2)"


def default_steps(model_name):
    """Training steps per timing in the whole-step A/Bs: mini-Xception's steps are short, so four."""
    return 4 if model_name == "mini_xception" else 2
