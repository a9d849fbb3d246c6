"""Whole training steps of one FER model with minicnn/ops modules as they are now and as they were at a revision.

    python benchmarks/revisions_ab.py mini_xception depthwise --base 4df16eb
    python benchmarks/revisions_ab.py mini_xception direct_conv separable --base HEAD~3 --rounds 11

Each named module is also loaded as it was at `--base` (from git, beside the current one), and
every numba entry point it shares with the current module (the `*_numba` functions the
dispatchers call) is swapped in and out round after round, in one process: the two versions
take turns, so noise hits both alike. Prints the median and least step time of each and the
ratio. A kernel that wins alone can lose in the step it sits in; this is the step.
"""
import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from minicnn import perf  # noqa: E402
from benchmarks.models import batch, build  # noqa: E402
from benchmarks.timing import STEPS_HELP, default_steps, training_step_ms  # noqa: E402


def module_at(name, revision, folder):
    """minicnn.ops.<name> as it was at `revision`, loaded from a copy in `folder` (its relative
    imports resolve inside minicnn.ops; numba caches its kernels beside the copy)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:minicnn/ops/{name}.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(folder) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"minicnn.ops._base_{name}", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "minicnn.ops"
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def swaps(names, revision, folder):
    """{"base": [(module, attribute, function)], "now": [...]}: the entry points to set for each version."""
    versions = {"base": [], "now": []}
    for name in names:
        now, base = importlib.import_module(f"minicnn.ops.{name}"), module_at(name, revision, folder)
        for attribute in sorted(vars(now)):
            if attribute.endswith("_numba") and callable(getattr(base, attribute, None)):
                versions["now"].append((now, attribute, getattr(now, attribute)))
                versions["base"].append((now, attribute, getattr(base, attribute)))
    return versions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a fer.models architecture: cnn4, cnn8, mini_xception, ...")
    parser.add_argument("modules", nargs="+", help="minicnn/ops module names, e.g. depthwise direct_conv")
    parser.add_argument("--base", required=True, help="the git revision to compare with, e.g. HEAD~1")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=0, help=STEPS_HELP)
    args = parser.parse_args()
    perf.enable()
    model = build(args.model)
    x, y = batch(model, 64)
    steps = args.steps or default_steps(args.model)
    with tempfile.TemporaryDirectory() as folder:
        versions = swaps(args.modules, args.base, folder)
        times = {version: [] for version in versions}
        for _ in range(args.rounds + 1):                   # the first round warms up (compiles)
            for version, entries in versions.items():
                for module, attribute, function in entries:
                    setattr(module, attribute, function)
                times[version].append(training_step_ms(model, x, y, steps))
    entries = ", ".join(attribute for _, attribute, _ in versions["now"])
    print(f"{args.model} training step, batch 64, {args.rounds} rounds of {steps} steps; {args.base} against now "
          f"for {entries}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"load {os.getloadavg()[0]:.2f}")
    base, now = (float(np.median(times[v][1:])) for v in ("base", "now"))
    for version in ("base", "now"):
        print(f"  {version:>4}: {np.median(times[version][1:]):8.2f} ms (least {min(times[version][1:]):8.2f})")
    print(f"  now is {base / now:.2f}x as fast")


if __name__ == "__main__":
    main()
