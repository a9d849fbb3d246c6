"""A training run's folder on disk: created, locked, described, checkpointed and resumed.

A run folder holds:
    config.json              the arguments, seed, versions, data hash and split description
    model.npz                best-by-validation model: architecture, weights, labels, preprocessing
    checkpoints/last.npz     full state after the last finished epoch (weights, optimizer moments,
                             random generators, callback state): `--resume` continues from it
    history.csv, curves.png  loss and accuracy per epoch, training vs validation
    metrics.json, confusion_matrix.csv, confusion_matrix.png    the test split, at the end
                             (metrics.json last: it marks the report complete)
    .lock                    held (fcntl.flock) by the process training the run, which it names
Nothing non-finite is ever written: weights and optimizer state are checked before every
checkpoint, and a run whose weights overflow stops as a NaN loss does.
"""
import csv
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minicnn
from minicnn import backend, callbacks, io

from . import data as fer_data
from . import evaluation


class TrainingInterrupted(Exception):
    def __init__(self, run, checkpoint_path, during=None):
        if during:
            message = (f"interrupted during {during}; training is complete and {checkpoint_path} intact. "
                       f"Write the report with: python scripts/train.py --resume {run}")
        else:
            message = (f"interrupted; the last checkpoint {checkpoint_path} is intact. "
                       f"Resume with: python scripts/train.py --resume {run}")
        super().__init__(message)
        self.run = run


class TrainingDiverged(Exception):
    pass


class ResumeError(ValueError):
    """A run folder that cannot continue as asked."""


class RunInUse(Exception):
    """Another process holds the run folder's lock."""


class RunFailed(Exception):
    """An OS error (full disk, read-only folder, ...) during a run: one line, and the resume
    command when a checkpoint exists."""

    def __init__(self, error, run, checkpoint_path):
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        message = f"{error.strerror or error}{where}" if isinstance(error, OSError) and error.strerror else str(error)
        if checkpoint_path.exists():
            message += (f"; the last checkpoint {checkpoint_path} is intact. After fixing that, resume with: "
                        f"python scripts/train.py --resume {run}")
        super().__init__(message)
        self.run = run


# ---- the folder and its lock ---------------------------------------------------------------------

def checkpoint_file(run):
    return Path(run) / "checkpoints" / "last.npz"


def new_run_folder(out, model_name):
    """Create and return out/<model>-<date>-<time>, with -2, -3, ... when that name is taken
    (two runs started in the same second)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    base = f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        run = out / (base if n == 1 else f"{base}-{n}")
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise FileExistsError(f"{out}: no free run folder name for {base}")


def lock_run(run):
    """Lock `run` for this process's life with fcntl.flock on RUN/.lock, which holds our PID.

    Returns the open lock file (closing it releases the lock; so does the process's end,
    even by SIGKILL). RunInUse naming the other process when it is held.
    """
    try:
        import fcntl
    except ImportError:        # not POSIX (Windows): no lock
        return open(os.devnull)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    try:
        lock = open(run / ".lock", "a+")
    except OSError as error:
        raise OSError(error.errno, f"cannot lock the run folder ({error.strerror})", str(run / ".lock")) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise RunInUse(f"{run}: run in use by PID {holder} (wait for it to end, or stop it first)") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def remove_stale_temporary_files(run):
    """Delete the temp files of atomic writes a killed process left (`last.npz.x1y2.tmp`):
    under the run's lock, no writer can own them."""
    for folder in (run, run / "checkpoints"):
        for stale in folder.glob("*.*.tmp"):
            stale.unlink()
            print(f"removed {stale}, left by an interrupted write")


def probe_writable(*folders):
    """Fail now, not after the first epoch, when a folder cannot be written."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())


# ---- config.json and history.csv -----------------------------------------------------------------

THREAD_AND_BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT",
                             "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")


def read_run_config(run):
    """config.json of a run folder as a dict with "args"; errors name the file."""
    config_file = Path(run) / "config.json"
    if not Path(run).is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: not a run folder (no config.json)")
    try:
        saved = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file}: corrupt, not JSON ({error})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict):
        raise ValueError(f"{config_file}: no \"args\" entry: not a config.json written by scripts/train.py")
    return saved


def write_run_description(run, config, splits):
    """config.json of a new run: its settings, data hash, split, versions, environment and command."""
    description = {
        "args": dataclasses.asdict(config), "seed": config.seed, "split": splits.description,
        "data_sha256": fer_data.content_hash(config.data),      # a file's bytes or a folder's images
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "minicnn": minicnn.__version__, "platform": platform.platform()},
        # OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU halves float32 matmul speed: say what the run had
        "environment": _environment(), "command": _command()}
    evaluation.write_text(Path(run) / "config.json", json.dumps(description, indent=2))


def record_resume(config_file, config, epochs_done):
    """config.json takes the settings the run continues with (a new --epochs, --data) and a
    line in "resumed" with the command and thread environment: a run that changed machines
    or OpenBLAS settings halfway says so."""
    saved = json.loads(config_file.read_text())
    saved["args"] = dataclasses.asdict(config)
    if saved.get("data_sha256") is None:       # no hash recorded yet: record this data's from now on
        saved["data_sha256"] = fer_data.content_hash(config.data)
    saved.setdefault("resumed", []).append({"after_epoch": epochs_done, "command": _command(),
                                            "environment": _environment()})
    evaluation.write_text(config_file, json.dumps(saved, indent=2))


def _environment():
    return {k: os.environ.get(k) for k in THREAD_AND_BLAS_VARIABLES}


def _command():
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def truncate_history(path, epochs_done):
    """Drop rows of epochs after the checkpoint (written before an interruption hit)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if int(r[0]) < epochs_done]
    evaluation.write_text(path, "".join(",".join(r) + "\n" for r in kept))


def read_history(path):
    """history.csv -> {"loss": [...], "val_accuracy": [...], ...}."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {}) if key != "epoch"}


def plot_history(run):
    evaluation.plot_curves(Path(run) / "curves.png", read_history(Path(run) / "history.csv"))


# ---- checkpoints ---------------------------------------------------------------------------------

def describe_names(names, shown=3):
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def callback_key(index, callback):
    """A callback's key in the checkpoint: its position too, so two of one class never collide."""
    return f"{index}/{type(callback).__name__}"


class RunCheckpoint(callbacks.Callback):
    """Writes checkpoints/last.npz (atomically) at the start and after every finished epoch.

    "stopped_early" in its JSON says early stopping ended the run at that epoch. Refuses to
    write non-finite values: the checkpoint before them is kept.
    """

    def __init__(self, path, batches, stateful_callbacks):
        self.path, self.batches, self.stateful = Path(path), batches, stateful_callbacks

    def save(self, epochs_done, stopped_early=False):
        model = self.model
        opt_config, opt_arrays = model.optimizer.get_state(model.trainable_weights)
        opt_arrays = {f"optimizer/{k}": v for k, v in opt_arrays.items()}
        bad = io.nonfinite({**io.named_weights(model), **opt_arrays})
        if bad:
            raise TrainingDiverged(f"after epoch {epochs_done}: non-finite values in {describe_names(bad)}, "
                                   f"not written to {self.path}")
        arrays = io.weight_arrays(model)
        arrays.update(opt_arrays)
        callback_configs = {}
        for i, c in enumerate(self.stateful):
            key = callback_key(i, c)
            callback_configs[key], callback_arrays = c.get_state()
            arrays.update({f"callbacks/{key}/{k}": v for k, v in callback_arrays.items()})
        meta = {**io.weights_meta(model), "epoch": epochs_done, "optimizer": opt_config,
                "rng": backend.rng().bit_generator.state, "batches": self.batches.get_state(),
                "callbacks": callback_configs}
        if stopped_early:
            meta["stopped_early"] = True
        io.write_npz(self.path, arrays, meta)

    def on_train_begin(self, logs=None):
        if not self.path.exists():
            self.save(0)

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1, stopped_early=self.model.stop_training)   # only EarlyStopping stops at an epoch's end


@dataclass
class Restored:
    epochs: int                  # epochs done
    stopped_early: bool = False  # early stopping ended the run there


def restore_checkpoint(path, model, batches, stateful_callbacks):
    """Load last.npz into the model, optimizer, generators and callbacks; returns the epochs done.

    ResumeError naming the file for a truncated, foreign or non-finite checkpoint.
    """
    return restore_run_state(path, model, batches, stateful_callbacks).epochs


def restore_run_state(path, model, batches, stateful_callbacks):
    """restore_checkpoint's work; returns Restored (epochs done, whether early stopping ended the run)."""
    meta, arrays = _read_checkpoint(path)
    try:
        io.assign_weights(model, meta, arrays, path)
        opt_arrays = {k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")}
        # the optimizer's arrays are numbered in the order of the trainable weights when saved:
        # that order, whatever the model's order is now
        order = [w for layer in io.file_layer_order(model, meta) for w in layer.trainable_weights]
        model.optimizer.set_state(order, meta["optimizer"], opt_arrays)
        backend.rng().bit_generator.state = meta["rng"]
        batches.set_state(meta["batches"])
        for i, c in enumerate(stateful_callbacks):
            prefix = f"callbacks/{callback_key(i, c)}/"
            c.set_state(meta["callbacks"][callback_key(i, c)],
                        {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        return Restored(int(meta["epoch"]), bool(meta.get("stopped_early", False)))
    except (KeyError, TypeError, ValueError) as error:     # a checkpoint of another run or version
        detail = str(error) if str(path) in str(error) else f"{path}: {type(error).__name__}: {error}"
        raise ResumeError(f"not a checkpoint of this run ({detail})") from None


def _read_checkpoint(path):
    """(meta, arrays) of last.npz; ResumeError for a file that is damaged or holds inf or NaN."""
    try:
        meta, arrays = io.read_npz(path)
    except ValueError as error:
        raise ResumeError(f"{error}; it cannot be resumed (its run folder still has model.npz)") from None
    bad = io.nonfinite({k: v for k, v in arrays.items() if k.startswith(("weight_", "optimizer/"))})
    if bad:
        raise ResumeError(f"{path}: holds non-finite values ({describe_names(bad)}): the run diverged; "
                          f"start a new run with a lower --lr")
    return meta, arrays
