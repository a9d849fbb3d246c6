"""The time a compiled training step spends outside its kernels: Python, small NumPy calls, allocation.

    python benchmarks/outside_kernels.py                          # mini_xception, cnn8, cnn4
    python benchmarks/outside_kernels.py --models cnn8 --repeats 9

Times whole training steps at batch 64, then replaces every numba kernel (each ops module's
`*_kernel`, Winograd's kernels for each tiling) and every BLAS product with a call that does
nothing, and times the steps again. The kernels write into arrays their callers made, so the
step runs on through numbers that mean nothing: what is left is the step's own cost around its
kernels, which no faster kernel removes. The library is left without kernels, so each model is
timed in a process of its own.
"""
import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.timing import STEPS_HELP, default_steps  # noqa: E402


def does_nothing(*args, **kwargs):
    """A kernel's stand-in: its outputs keep what they held."""
    return None


def product_buffer(a, b, out=None):
    """A product's stand-in: its output array, unwritten."""
    return np.empty(a.shape[:-1] + b.shape[-1:], np.result_type(a, b)) if out is None else out


def remove_kernels():
    """Every numba kernel and BLAS product of minicnn.ops replaced by a stand-in (for good)."""
    from numba.core.dispatcher import Dispatcher

    import minicnn.ops as ops
    from minicnn.ops import gemm, winograd

    for module_info in pkgutil.iter_modules(ops.__path__):
        module = importlib.import_module(f"minicnn.ops.{module_info.name}")
        for name, value in list(vars(module).items()):
            if isinstance(value, Dispatcher) and name.endswith("_kernel"):
                setattr(module, name, does_nothing)
    for name in ("matmul_single_thread", "matmul_reference", "batched_matmul_threads", "batched_matmul_reference"):
        setattr(gemm, name, product_buffer)
    for key, (tiling, kernels) in list(winograd._KERNELS.items()):    # made by the steps timed before
        winograd._KERNELS[key] = (tiling, winograd.Kernels(*[does_nothing] * len(kernels)))


def child(model_name, repeats, steps):
    """In the subprocess: [step ms, step ms without kernels], medians of `repeats` timings."""
    from fer.process import set_environment

    set_environment()
    from minicnn import perf

    perf.enable()
    from benchmarks.models import batch, build
    from benchmarks.timing import training_step_ms

    model = build(model_name)
    x, y = batch(model, 64)
    whole = np.median([training_step_ms(model, x, y, steps) for _ in range(repeats)])
    remove_kernels()
    with np.errstate(all="ignore"):                    # the numbers are whatever the buffers held
        outside = np.median([training_step_ms(model, x, y, steps) for _ in range(repeats)])
    print(json.dumps([float(whole), float(outside)]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mini_xception,cnn8,cnn4", help="comma-separated fer.models names")
    parser.add_argument("--repeats", type=int, default=5, help="timings per model (medians)")
    parser.add_argument("--steps", type=int, default=None, help=STEPS_HELP)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.repeats, args.steps)
    print(f"compiled training step at batch 64, medians of {args.repeats} timings; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    for name in args.models.split(","):
        steps = args.steps or default_steps(name)
        run = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats),
                              "--steps", str(steps)], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"outside_kernels.py: the {name} step failed:\n{run.stderr.strip()}")
        whole, outside = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{name:14s} step {whole:8.2f} ms   outside its kernels {outside:6.2f} ms ({outside / whole:.0%})")


if __name__ == "__main__":
    main()
