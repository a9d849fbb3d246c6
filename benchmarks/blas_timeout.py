"""Whole training steps under several OPENBLAS_THREAD_TIMEOUT values, and Winograd's batched
products on OpenBLAS's threads or shared whole among the threads (perf.BATCHED_PRODUCTS_SHARED).

    python benchmarks/blas_timeout.py --models cnn8,cnn4,mini_xception --timeouts 4,8,16,28 --rounds 5

OpenBLAS reads the timeout once, when NumPy loads it, so each value needs its own process: every
round starts one process per value, in turn (noise hits all alike), and each process times
its model's steps with the batched products both ways, taking turns. Prints the median step
of each (value, way) over all rounds. 28 is OpenBLAS's own default; fer/process.py sets 16.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAYS = {"openblas": False, "shared": True}   # perf.BATCHED_PRODUCTS_SHARED


def child(model_name, steps, turns):
    """In a process with the timeout set: {way: [step ms, ...]} for one model."""
    sys.path.insert(0, str(ROOT))
    from minicnn import perf
    perf.enable()
    from benchmarks.models import batch, build
    from benchmarks.timing import training_step_ms
    from minicnn.ops import gemm

    model = build(model_name)
    x, y = batch(model, 64)
    setting, times = perf.BATCHED_PRODUCTS_SHARED, {way: [] for way in WAYS}
    for _ in range(turns):
        for way, shared in WAYS.items():
            perf.BATCHED_PRODUCTS_SHARED = shared
            times[way].append(training_step_ms(model, x, y, steps))
    perf.BATCHED_PRODUCTS_SHARED = setting
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn8,cnn4,mini_xception")
    parser.add_argument("--timeouts", default="4,8,16,28")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3, help="timings of each way per process")
    parser.add_argument("--steps", type=int, default=2, help="steps per timing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.turns)))
        return
    import numpy as np

    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}; batch 64, medians of "
          f"{args.rounds} rounds x {args.turns} timings of {args.steps} steps, ms a step", flush=True)
    timeouts = args.timeouts.split(",")
    for name in args.models.split(","):
        times = {(t, way): [] for t in timeouts for way in WAYS}
        for _ in range(args.rounds):
            for timeout in timeouts:
                env = {**os.environ, "OPENBLAS_THREAD_TIMEOUT": timeout}
                out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                                      "--turns", str(args.turns)], env=env, capture_output=True, text=True,
                                     check=True).stdout
                for way, values in json.loads(out.splitlines()[-1]).items():
                    times[timeout, way] += values
        for t in timeouts:
            cells = " / ".join(f"{np.median(times[t, way]):6.1f}" for way in WAYS)
            print(f"{name:14s} OPENBLAS_THREAD_TIMEOUT={t:>2}: batched products {' / '.join(WAYS)}: {cells}",
                  flush=True)


if __name__ == "__main__":
    main()
