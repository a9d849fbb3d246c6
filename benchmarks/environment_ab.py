"""Whole training steps under several values of an environment variable that a library reads
when it loads (OPENBLAS_THREAD_TIMEOUT, GOMP_SPINCOUNT, ...), optionally with Winograd's batched
products both ways: on OpenBLAS's threads, or shared whole among the threads (perf.BATCHED_PRODUCTS_SHARED).

    python benchmarks/environment_ab.py OPENBLAS_THREAD_TIMEOUT 4,8,16,28 --batched --rounds 5
    python benchmarks/environment_ab.py GOMP_SPINCOUNT unset,3000,30000,100000 --models mini_xception,cnn8

Each value needs its own process: every round starts one process per value, in turn (noise
hits all alike), and each process times its model's steps (both batched ways with --batched,
taking turns). Prints the median step of each (value, way) over all rounds. A value "unset" leaves
the variable unset. OPENBLAS_THREAD_TIMEOUT: 28 is OpenBLAS's own default, fer/process.py sets
16 to train; GOMP_SPINCOUNT: numba's OpenMP threads spin this many rounds before they sleep.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from fer.process import set_environment

set_environment()      # the scripts' settings, for every variable but the one under test (fer/process.py)

ROOT = Path(__file__).resolve().parents[1]
BATCHED_WAYS = {"openblas": False, "shared": True}   # perf.BATCHED_PRODUCTS_SHARED


def child(model_name, steps, turns, batched):
    """In a process with the variable set: {way: [step ms, ...]} for one model."""
    sys.path.insert(0, str(ROOT))
    from minicnn import perf
    perf.enable()
    from benchmarks.models import batch, build
    from benchmarks.timing import training_step_ms

    model = build(model_name)
    x, y = batch(model, 64)
    ways = BATCHED_WAYS if batched else {"as set": perf.BATCHED_PRODUCTS_SHARED}
    setting, times = perf.BATCHED_PRODUCTS_SHARED, {way: [] for way in ways}
    for _ in range(turns):
        for way, shared in ways.items():
            perf.BATCHED_PRODUCTS_SHARED = shared
            times[way].append(training_step_ms(model, x, y, steps))
    perf.BATCHED_PRODUCTS_SHARED = setting
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variable", nargs="?", default="OPENBLAS_THREAD_TIMEOUT")
    parser.add_argument("values", nargs="?", default="4,8,16,28", help="comma-separated; unset: leave it unset")
    parser.add_argument("--models", default="cnn8,cnn4,mini_xception")
    parser.add_argument("--batched", action="store_true", help="time the batched products both ways")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3, help="timings of each way per process")
    parser.add_argument("--steps", type=int, default=2, help="steps per timing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.turns, args.batched)))
        return
    import numpy as np

    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}; batch 64, medians of "
          f"{args.rounds} rounds x {args.turns} timings of {args.steps} steps, ms a step", flush=True)
    values = args.values.split(",")
    ways = list(BATCHED_WAYS) if args.batched else ["as set"]
    for name in args.models.split(","):
        times = {(v, way): [] for v in values for way in ways}
        for _ in range(args.rounds):
            for value in values:
                env = {k: v for k, v in os.environ.items() if k != args.variable}
                if value != "unset":
                    env[args.variable] = value
                cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                       "--turns", str(args.turns)]
                out = subprocess.run(cmd + (["--batched"] if args.batched else []), env=env, capture_output=True,
                                     text=True, check=True).stdout
                for way, step_ms in json.loads(out.splitlines()[-1]).items():
                    times[value, way] += step_ms
        for value in values:
            cells = " / ".join(f"{np.median(times[value, way]):6.1f}" for way in ways)
            label = "(unset)" if value == "unset" else value
            print(f"{name:14s} {args.variable}={label:>8}: batched products {' / '.join(ways)}: {cells}", flush=True)


if __name__ == "__main__":
    main()
