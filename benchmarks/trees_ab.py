"""Whole training steps of one FER model, the checkout as it is now against its tree at a revision.

    python benchmarks/trees_ab.py cnn8 --base HEAD~2
    python benchmarks/trees_ab.py mini_xception --base 4df16eb --rounds 9 --steps 5

revisions_ab.py swaps minicnn/ops modules inside one process; a change anywhere else (the
compiler's stages, a model, the optimizer, a setting in minicnn/perf.py) needs the whole tree.
This writes `--base`'s tree (git archive) and the checkout's files as they are now, uncommitted
edits included, into a temporary folder, then times each tree in processes of its own, taking
turns (base, now, base, now, ...), so that noise hits both alike. Each compiles its kernels
afresh there: numba checks a cached kernel against its own file only, so a checkout's cache can
hold kernels built from another file's older constants or inlined loops. A first process per
tree warms up (compiles) and is not counted. Prints the median and least step time of each, and
the ratio. Children inherit the environment: set OPENBLAS_CORETYPE (or unset it) for both.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.timing import STEPS_HELP, default_steps  # noqa: E402

CHILD = """
import json, sys
sys.path.insert(0, {tree!r})
from fer import process
(getattr(process, "set_environment", None) or process.set_blas_environment)()   # its older name
from minicnn import perf
perf.enable()
import numpy as np
from benchmarks.models import batch, build
from benchmarks.timing import training_step_ms
model = build({model!r})
x, y = batch(model, 64)
print(json.dumps(float(np.median([training_step_ms(model, x, y, {steps}) for _ in range(3)]))))
"""


def write_tree(revision, folder):
    """The files of `revision` written into folder (git archive); a clear error outside a git checkout."""
    archive = Path(folder) / "tree.tar"
    run = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), revision],
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"trees_ab.py: cannot read revision {revision!r} from {ROOT}: {run.stderr.strip()}")
    tree = Path(folder) / "base"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def copy_checkout(folder):
    """The checkout's files as they are now (tracked and untracked, not ignored) copied into folder."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    tree = Path(folder) / "now"
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():                  # a deleted, not yet committed file is listed but absent
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tree / name)
    return tree


def step_ms(tree, model, steps):
    """Median ms of a training step of `model` in a fresh process importing minicnn from `tree`."""
    code = CHILD.format(tree=str(tree), model=model, steps=steps)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if run.returncode != 0:
        sys.exit(f"trees_ab.py: the {model} step in {tree} failed:\n{run.stderr.strip()}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a fer.models architecture: cnn4, cnn8, mini_xception, ...")
    parser.add_argument("--base", required=True, help="the git revision to compare with, e.g. HEAD~1")
    parser.add_argument("--rounds", type=int, default=7, help="timed processes per tree")
    parser.add_argument("--steps", type=int, default=0, help=STEPS_HELP)
    args = parser.parse_args()
    steps = args.steps or default_steps(args.model)
    with tempfile.TemporaryDirectory() as folder:
        trees = {"base": write_tree(args.base, folder), "now": copy_checkout(folder)}
        times = {version: [] for version in trees}
        for _ in range(args.rounds + 1):                   # the first round warms up (compiles)
            for version, tree in trees.items():
                times[version].append(step_ms(tree, args.model, steps))
    print(f"{args.model} training step, batch 64, {args.rounds} processes of 3 x {steps} steps per tree; "
          f"{args.base} against now; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"load {os.getloadavg()[0]:.2f}")
    for version in trees:
        print(f"  {version:>4}: {np.median(times[version][1:]):8.2f} ms (least {min(times[version][1:]):8.2f})")
    base, now = (float(np.median(times[v][1:])) for v in trees)
    print(f"  now is {base / now:.2f}x as fast")


if __name__ == "__main__":
    main()
