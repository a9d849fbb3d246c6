"""Whole training steps of one FER model under two or more values of one minicnn.perf setting.

    python benchmarks/settings_ab.py mini_xception TALL_PRODUCT_MIN_ROWS 16384 1e99
    python benchmarks/settings_ab.py cnn8 DIRECT_CONV_MAX_FILTERS 8 32 --rounds 11
    python benchmarks/settings_ab.py cnn4 LANE_KERNELS 0 1 --face --rounds 21

A kernel timed alone can win where the step it sits in does not (its threads wake OpenBLAS's,
or evict what the next kernel reads), so every threshold in minicnn/perf.py is settled here:
one compiled model, one batch of 64, the values taking turns round after round in one process
(noise hits all alike), the median and the least of each printed with the ratio to the first.
The compiler's per-shape choices are cleared at each switch, so a setting that picks a method
(Winograd, direct) takes effect. `--face` times one face's inference instead, as the webcam runs
it (the one-face process settings): a process per value with a frozen model planned under its
value, the processes taking turns, the mean of FACES faces a round.
"""
import argparse
import os
import subprocess
import sys

from fer.process import set_environment

# before NumPy and numba load (fer/process.py)
set_environment(one_face="--face" in sys.argv or "--face-worker" in sys.argv)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import minicnn  # noqa: E402
from minicnn import perf  # noqa: E402
from minicnn.compiler.stages import ConvStage  # noqa: E402
from benchmarks.models import Minicnn, batch, build  # noqa: E402
from benchmarks.timing import STEPS_HELP, default_steps, training_step_ms  # noqa: E402

FACES = 20          # faces a round with --face


def value(text):
    """An int where the text is one, else a float (1e99: a threshold never reached)."""
    number = float(text)
    return int(number) if number.is_integer() and abs(number) < 2**62 else number


def set_setting(model, name, setting):
    """perf.<name> = setting, and the conv stages' method choices forgotten."""
    setattr(perf, name, setting)
    for step, _ in getattr(model, "steps", None) or []:
        for stage in getattr(step, "stages", []):
            if isinstance(stage, ConvStage):
                stage.methods.clear()


def training_rounds(args):
    """{value: [ms of a training step, a round]}."""
    model = build(args.model)
    x, y = batch(model, 64)
    steps = args.steps or default_steps(args.model)
    times = {v: [] for v in args.values}
    for setting in args.values:                      # warm-up: compile every method once
        set_setting(model, args.setting, setting)
        model.train_on_batch(x, y)
    for _ in range(args.rounds):
        for setting in args.values:
            set_setting(model, args.setting, setting)
            times[setting].append(training_step_ms(model, x, y, steps))
    return times, f"training step, batch 64, {args.rounds} rounds of {steps} steps"


def face_rounds(args):
    """{value: [ms of a face, a round]}: a process per value, as the webcam runs alone (in one
    process, OpenBLAS's threads, spinning after one model's products, would take the cores from the
    next model's), each with its frozen model planned under its value; the processes take turns."""
    workers = {setting: subprocess.Popen([sys.executable, os.path.abspath(__file__), "--face-worker", args.model,
                                          args.setting, repr(setting)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True) for setting in args.values}
    for worker in workers.values():
        worker.stdout.readline()                        # ready: planned and warm
    times = {v: [] for v in args.values}
    for _ in range(args.rounds):
        for setting, worker in workers.items():
            worker.stdin.write(f"{FACES}\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError(f"the face worker for {setting!r} died; run it alone to see why")
            times[setting].append(float(line))
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()
    return times, f"one face, {args.rounds} rounds of {FACES} faces, a process per value"


def face_worker(model_name, setting, text):
    """The worker side of face_rounds: perf.<setting> = value, then ms per face for each count read."""
    perf.enable()
    setattr(perf, setting, value(text))
    runner = Minicnn(model_name, 1, "compiled", frozen=True)
    for _ in range(3):
        runner.infer_one()                              # the plan, made under this value
    print("ready", flush=True)
    for line in sys.stdin:
        print(1e3 * runner.run("infer_one", int(line)), flush=True)


def main():
    if sys.argv[1:2] == ["--face-worker"]:
        return face_worker(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a fer.models architecture: cnn4, cnn8, mini_xception, ...")
    parser.add_argument("setting", help="a minicnn.perf name, e.g. TALL_PRODUCT_MIN_ROWS")
    parser.add_argument("values", nargs="+", type=value)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=0, help=STEPS_HELP)
    parser.add_argument("--face", action="store_true", help="one face's inference instead of training steps")
    args = parser.parse_args()
    if not hasattr(perf, args.setting):
        parser.error(f"minicnn.perf has no setting {args.setting!r}")
    if args.setting in perf.READ_AT_IMPORT:
        parser.error(f"minicnn.perf.{args.setting} is read when the kernels compile, so it cannot change inside "
                     f"one process: edit it in minicnn/perf.py and compare with benchmarks/trees_ab.py, "
                     f"which compiles afresh")
    perf.enable()
    times, what = face_rounds(args) if args.face else training_rounds(args)
    env = {k: os.environ.get(k, "(unset)")
           for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_THREAD_TIMEOUT")}
    print(f"{args.model} {what}; minicnn "
          f"{minicnn.__version__}; {' '.join(f'{k}={v}' for k, v in env.items())}; load {os.getloadavg()[0]:.2f}")
    first = float(np.median(times[args.values[0]]))
    for setting, ts in times.items():
        median = float(np.median(ts))
        print(f"  {args.setting} = {setting!r:>14}: {median:8.2f} ms (least {min(ts):8.2f}), "
              f"{first / median:.2f}x the first")


if __name__ == "__main__":
    main()
