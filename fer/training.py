"""Training runs: data, model, the fit loop's callbacks, checkpoints that resume exactly, and reports.

A run folder holds:
    config.json              the arguments, seed, versions, data hash and split description
    model.npz                best-by-validation model: architecture, weights, labels, preprocessing
    checkpoints/last.npz     full state after the last finished epoch (weights, optimizer moments,
                             random generators, callback state): `--resume` continues from it
    history.csv, curves.png  loss and accuracy per epoch, training vs validation
    metrics.json, confusion_matrix.csv, confusion_matrix.png    the test split, at the end
                             (metrics.json last: it marks the report complete)
    .lock                    held (fcntl.flock) by the process training the run, which it names
The test split is touched only after training, by `report_test`: every choice (best
checkpoint, learning-rate drops, early stopping) is made on the validation split.
Nothing non-finite is ever written: weights and optimizer state are checked before every
checkpoint and model write, and a run whose weights overflow stops as a NaN loss does.
"""
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minicnn
from minicnn import backend, callbacks, io, losses, optimizers
from minicnn.sequence import Sequence

from . import data as fer_data
from . import evaluation, models
from .augment import Augmenter
from .preprocess import Preprocessing


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as config.json so that --resume rebuilds the same run."""

    model: str
    data: str
    classes: str = "fer7"
    input_size: int = 48
    scale: str = "unit"
    epochs: int = 50
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    augment: bool = True
    class_weight: str = "none"
    seed: int = 0
    limit: int = 0
    out: str = "runs"
    val_fraction: float = 0.1
    lr_patience: int = 5
    lr_factor: float = 0.5
    skip_bad_rows: bool = False
    nesterov: bool = False          # with optimizer "sgd": Nesterov momentum
    weight_decay: float = 0.0       # decoupled: w -= lr * weight_decay * w each step (Keras 3)
    label_smoothing: float = 0.0    # targets y * (1 - s) + s / K
    erasing: float = 0.0            # chance of random erasing per face (with augment)
    patience: int = 0               # stop after this many epochs without a better val_accuracy (0: never)

    @classmethod
    def from_saved(cls, saved_args, where):
        """The config of config.json's "args" (`where` names the file for errors)."""
        unknown = set(saved_args) - {f.name for f in dataclasses.fields(cls)} - {"match_sharpness"}
        if unknown:
            raise ValueError(f"{where}: unknown settings {sorted(unknown)} (written by a newer version?)")
        if saved_args.get("match_sharpness"):
            raise ValueError(f"{where}: this run blurred its faces (match_sharpness), which is no longer "
                             f"supported; start a new run")
        saved_args = {k: v for k, v in saved_args.items() if k != "match_sharpness"}
        return cls(**saved_args)

    @classmethod
    def for_model(cls, model, data, **overrides):
        """The seed's defaults for `model` (fer.models.DEFAULTS), then `overrides` (None = keep)."""
        if model not in models.BUILDERS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(models.names())}")
        settings = {**models.DEFAULTS[model], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(model=model, data=str(data), **settings)


class FaceBatches(Sequence):
    """Training batches: reshuffled and re-augmented every epoch from seeded generators.

    images: uint8 (N, 48, 48) -> each batch: (preprocessing.apply(augment(faces)), labels).
    """

    def __init__(self, images, labels, preprocessing, batch_size, augmenter=None, seed=0, class_weights=None):
        self.images, self.labels, self.preprocessing = images, labels, preprocessing
        self.batch_size, self.augmenter = batch_size, augmenter
        self.class_weights = class_weights
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(images))

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def on_epoch_begin(self):
        self.order = self.rng.permutation(len(self.images))

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        faces = self.images[idx]
        if self.augmenter is not None:
            faces = self.augmenter(faces)
        labels = self.labels[idx]
        if self.class_weights is None:
            return self.preprocessing.apply(faces), labels
        return self.preprocessing.apply(faces), labels, self.class_weights[labels]

    def get_state(self):
        state = {"shuffle": self.rng.bit_generator.state}
        if self.augmenter is not None:
            state["augment"] = self.augmenter.get_state()
        return state

    def set_state(self, state):
        self.rng.bit_generator.state = state["shuffle"]
        if self.augmenter is not None:
            self.augmenter.set_state(state["augment"])


class EpochTimer(minicnn.callbacks.Callback):
    """Adds the epoch's wall time to the logs as "seconds" (so history.csv records it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = round(time.time() - self.start, 1)


class TimeLeft(minicnn.callbacks.Callback):
    """Prints the estimated time left for the whole run after each epoch: the median epoch of
    this session times the epochs still to go (the bar's estimate covers one epoch only)."""

    def __init__(self, epochs, patience=0):
        self.epochs, self.patience, self.seconds = epochs, patience, []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(logs["seconds"])
        left = self.epochs - (epoch + 1)
        if left > 0:
            bound = " at most (early stopping may end it sooner)" if self.patience else ""
            print(f"about {format_duration(left * statistics.median(self.seconds))} left for "
                  f"{left} more epoch{'s' * (left > 1)}{bound}", flush=True)


def format_duration(seconds):
    """3725 -> "1 h 02 min"; 95 -> "2 min"; 40 -> "40 s"."""
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{round(seconds)} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


class PlotCurves(minicnn.callbacks.Callback):
    """Redraws curves.png from history.csv after every epoch, so an interrupted run has its curves."""

    def __init__(self, run):
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        plot_history(self.run)


class FiniteWeights(minicnn.callbacks.Callback):
    """Stops the run when any weight is inf or NaN, before anything is saved.

    The loss can stay finite while the weights overflow (BatchNormalization's moving
    variance is not in the loss), so TerminateOnNaN alone misses it. Goes first in the
    callback list: it raises, so the callbacks after it (checkpoints) never see the epoch.
    """

    def on_epoch_end(self, epoch, logs=None):
        bad = nonfinite(model_arrays(self.model))
        if bad:
            raise TrainingDiverged(f"epoch {epoch + 1}: non-finite values in {describe_names(bad)} "
                                   f"(the loss was {logs.get('loss')}), terminating training")


def model_arrays(model):
    """name -> array of every weight (trainable or not)."""
    return {w.name: w.value for w in io.all_weights(model)}


def nonfinite(arrays):
    """The names of the float arrays holding an inf or NaN."""
    return [name for name, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]


def describe_names(names, shown=3):
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


class RunCheckpoint(minicnn.callbacks.Callback):
    """Writes checkpoints/last.npz (atomically) at the start and after every finished epoch.

    "stopped_early" in its JSON says early stopping ended the run at that epoch. Refuses to
    write non-finite values: the checkpoint before them is kept.
    """

    def __init__(self, path, batches, stateful_callbacks):
        self.path, self.batches, self.stateful = Path(path), batches, stateful_callbacks

    def save(self, epochs_done, stopped_early=False):
        model = self.model
        opt_config, opt_arrays = model.optimizer.get_state(model.trainable_weights)
        arrays = {f"weight_{i:04d}": w.value for i, w in enumerate(io.all_weights(model))}
        arrays.update({f"optimizer/{k}": v for k, v in opt_arrays.items()})
        bad = nonfinite({**model_arrays(model), **{f"optimizer/{k}": v for k, v in opt_arrays.items()}})
        if bad:
            raise TrainingDiverged(f"after epoch {epochs_done}: non-finite values in {describe_names(bad)}, "
                                   f"not written to {self.path}")
        callback_configs = {}
        for i, c in enumerate(self.stateful):
            key = callback_key(i, c)
            callback_configs[key], callback_arrays = c.get_state()
            arrays.update({f"callbacks/{key}/{k}": v for k, v in callback_arrays.items()})
        meta = {**io.weights_meta(model), "epoch": epochs_done,
                "optimizer": opt_config, "rng": backend.rng().bit_generator.state,
                "batches": self.batches.get_state(),
                "callbacks": callback_configs}
        if stopped_early:
            meta["stopped_early"] = True
        io.write_npz(self.path, arrays, meta)

    def on_train_begin(self, logs=None):
        if not self.path.exists():
            self.save(0)

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1, stopped_early=self.model.stop_training)   # only EarlyStopping stops at an epoch's end


def callback_key(index, callback):
    """A callback's key in the checkpoint: its position too, so two of one class never collide."""
    return f"{index}/{type(callback).__name__}"


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
    try:
        meta, arrays = io.read_npz(path)
    except ValueError as error:
        raise ResumeError(f"{error}; it cannot be resumed (its run folder still has model.npz)") from None
    bad = nonfinite({k: v for k, v in arrays.items() if k.startswith(("weight_", "optimizer/"))})
    if bad:
        raise ResumeError(f"{path}: holds non-finite values ({describe_names(bad)}): the run diverged; "
                          f"start a new run with a lower --lr")
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


def load_splits(config):
    """FerData -> (optional --limit subset) -> Splits, as config says."""
    data = fer_data.load(config.data, skip_bad_rows=config.skip_bad_rows)
    if config.limit and config.limit < len(data):
        keep = np.sort(np.random.default_rng(config.seed).choice(len(data), config.limit, replace=False))
        data = dataclasses.replace(data, images=data.images[keep], labels=data.labels[keep], usage=data.usage[keep])
    return fer_data.split(data, config.classes, config.val_fraction, config.seed)


def resume_config(run, epochs=None, data=None):
    """The TrainConfig to continue the run in folder `run`: its config.json, with a new target
    `epochs` and a new path `data` to the same data, if given.

    The data (the saved path, or `data`) must have the sha256 config.json recorded
    (fer.data.content_hash: a file's bytes, a folder's images), so a file edited in place or
    another copy is refused; a run saved without a hash says it cannot check.
    """
    config_file = Path(run) / "config.json"
    saved = read_run_config(run)
    config = TrainConfig.from_saved(saved["args"], config_file)
    if epochs is not None:
        config.epochs = epochs
    path = Path(data if data is not None else config.data)
    if not path.exists():
        if data is not None:
            raise FileNotFoundError(f"{data}: no such data file or folder")
        raise FileNotFoundError(f"{config.data}: the run's data is not there from this folder ({Path.cwd()}); "
                                f"give its path with --data")
    expected = saved.get("data_sha256")
    if expected is None:
        print(f"warning: {config_file} records no data hash (a run from before folders were hashed): "
              f"{path} cannot be checked", file=sys.stderr)
    elif data_hash(path) != expected:
        changed = "not the file this run trained on" if data is not None else "changed since this run started"
        raise ValueError(f"{path}: {changed} (sha256 {expected[:12]}... in {config_file})")
    config.data = str(path)
    return config


def data_hash(path):
    """fer.data.content_hash of `path`, or None when it is not FER2013 data at all."""
    try:
        return fer_data.content_hash(path)
    except fer_data.DataError:
        return None


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


def check_splits(splits, config):
    """A run needs faces in all three splits; say which is empty before hours of training."""
    for name, (images, _) in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if len(images) == 0:
            raise fer_data.DataError(f"{config.data}: the {name} split is empty ({splits.description})")


def make_optimizer(config):
    if config.optimizer == "sgd":     # seed 003's tflearn 'momentum' optimizer
        return optimizers.SGD(config.lr, momentum=0.9, nesterov=config.nesterov, weight_decay=config.weight_decay)
    return optimizers.get({"class_name": config.optimizer, "learning_rate": config.lr,
                           "weight_decay": config.weight_decay})


def train(config, resume_dir=None, extra_callbacks=(), verbose=1, resume_lr=None):
    """Run (or resume) a training run; returns the run folder. See the module docstring.

    resume_lr: on resume, continue with this learning rate instead of the checkpoint's (a run
    that diverged would otherwise replay the same batches at the same rate and diverge again).
    Resuming a run whose epochs are done but whose test report is missing writes the report.
    The run folder is locked (RUN/.lock) until this returns: a second process gets RunInUse.
    """
    run = Path(resume_dir) if resume_dir else None
    lock = lock_run(run) if run else None
    try:
        if run and not (run / "checkpoints" / "last.npz").exists():
            raise ResumeError(f"{run / 'checkpoints' / 'last.npz'}: no checkpoint to resume from")
        backend.set_seed(config.seed)
        splits = load_splits(config)
        check_splits(splits, config)
        if run is None:
            run = new_run_folder(Path(config.out), config.model)
            lock = lock_run(run)
        try:
            return _train_in(run, bool(resume_dir), config, splits, extra_callbacks, verbose, resume_lr)
        except OSError as error:
            raise RunFailed(error, run, run / "checkpoints" / "last.npz") from None
    finally:
        if lock is not None:
            lock.close()


def _train_in(run, resume, config, splits, extra_callbacks, verbose, resume_lr):
    """train()'s work once the run folder is locked."""
    checkpoint_path = run / "checkpoints" / "last.npz"
    remove_stale_temporary_files(run)
    probe_writable(run, run / "checkpoints")
    preprocessing = Preprocessing(config.input_size, config.scale).fit(splits.train[0])
    x_val = preprocessing.apply(splits.val[0])

    model = compiled_model(config, splits, preprocessing)
    augmenter = Augmenter(erasing_probability=config.erasing, seed=config.seed + 1) if config.augment else None
    weights = (losses.balanced_class_weights(splits.train[1], len(splits.label_names))
               if config.class_weight == "balanced" else None)
    batches = FaceBatches(*splits.train, preprocessing, config.batch_size, augmenter, config.seed + 2, weights)

    best = callbacks.ModelCheckpoint(str(run / "model.npz"), monitor="val_accuracy", save_best_only=True)
    plateau = callbacks.ReduceLROnPlateau("val_loss", factor=config.lr_factor, patience=config.lr_patience, min_lr=1e-5)
    stop_on_nan = callbacks.TerminateOnNaN()
    stateful = [best, plateau]
    if config.patience:      # only then: checkpoints of runs without it keep their callback keys
        early = callbacks.EarlyStopping("val_accuracy", patience=config.patience)
        stateful.append(early)
    checkpoint = RunCheckpoint(checkpoint_path, batches, stateful)

    initial_epoch = 0
    if resume:
        restored = restore_run_state(checkpoint_path, model, batches, stateful)
        if restored.stopped_early or config.epochs <= restored.epochs:
            return finish_done_run(run, restored, config, splits, preprocessing, checkpoint_path)
        initial_epoch = continue_run(run, config, restored.epochs, model, resume_lr)
    else:
        evaluation.write_text(run / "config.json", json.dumps(run_description(config, splits), indent=2))
    print(splits.description)

    fit_callbacks = [FiniteWeights(), stop_on_nan, EpochTimer(), TimeLeft(config.epochs, config.patience),
                     *extra_callbacks, *stateful, callbacks.CSVLogger(str(run / "history.csv"), append=True),
                     PlotCurves(run), checkpoint]
    try:
        model.fit(batches, epochs=config.epochs, initial_epoch=initial_epoch, validation_data=(x_val, splits.val[1]),
                  batch_size=evaluation.PREDICT_BATCH, callbacks=fit_callbacks, verbose=verbose)
    except KeyboardInterrupt:
        raise TrainingInterrupted(run, checkpoint_path) from None
    except TrainingDiverged as error:
        raise TrainingDiverged(diverged_message(error, run, checkpoint_path, model)) from None
    if stop_on_nan.message:
        raise TrainingDiverged(diverged_message(stop_on_nan.message, run, checkpoint_path, model))
    if config.patience and early.stopped_epoch is not None:
        print(f"early stopping: no better val_accuracy in the last {config.patience} epochs; "
              f"stopped after epoch {early.stopped_epoch + 1}")
    return write_report(run, splits, preprocessing, checkpoint_path)


def compiled_model(config, splits, preprocessing):
    """The run's network, compiled, with the metadata its model file carries."""
    backend.clear_session()
    model = models.build(config.model, len(splits.label_names), (config.input_size, config.input_size, 1))
    loss = losses.SparseCategoricalCrossentropy(label_smoothing=config.label_smoothing)
    model.compile(make_optimizer(config), loss, metrics=["accuracy"])
    model.metadata = {"labels": list(splits.label_names), "class_map": config.classes,
                      "preprocessing": preprocessing.to_dict(), "architecture": config.model,
                      "trained_with": dataclasses.asdict(config)}
    return model


def continue_run(run, config, epochs_done, model, resume_lr):
    """Record the resume in config.json, drop history rows past the checkpoint, set the rate;
    returns the epoch to start from."""
    record_resume(run / "config.json", config, epochs_done)
    _truncate_history(run / "history.csv", epochs_done)
    if resume_lr is not None:
        model.optimizer.learning_rate = float(resume_lr)
    print(f"Resuming {run} after epoch {epochs_done} of {config.epochs}, "
          f"learning rate {model.optimizer.learning_rate:.3g}")
    return epochs_done


def diverged_message(reason, run, checkpoint_path, model):
    return (f"{reason}; the last good checkpoint {checkpoint_path} is kept. To go on at a lower rate: "
            f"python scripts/train.py --resume {run} --lr {model.optimizer.learning_rate / 10:.3g}")


def finish_done_run(run, restored, config, splits, preprocessing, checkpoint_path):
    """--resume of a run whose training is over: write its test report if an interruption
    (or an older version) left it unwritten, else say how to train more."""
    if not (run / "metrics.json").exists():
        print(f"{run} has finished training after {restored.epochs} epochs; writing its test report")
        return write_report(run, splits, preprocessing, checkpoint_path)
    if restored.stopped_early:
        raise ResumeError(f"{run} stopped early after epoch {restored.epochs} (no better val_accuracy in "
                          f"{config.patience} epochs) and has its test report; start a new run to train more")
    raise ResumeError(f"{run} has trained {restored.epochs} epochs already; to train more, "
                      f"resume with --epochs above {restored.epochs}")


def write_report(run, splits, preprocessing, checkpoint_path):
    """curves.png and the test report; an interruption here leaves a run --resume can finish."""
    try:
        plot_history(run)
        report_test(run, splits, preprocessing)
    except KeyboardInterrupt:
        raise TrainingInterrupted(run, checkpoint_path, during="its test report") from None
    return run


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


THREAD_AND_BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                             "OMP_NUM_THREADS")


def run_description(config, splits):
    return {"args": dataclasses.asdict(config), "seed": config.seed, "split": splits.description,
            "data_sha256": fer_data.content_hash(config.data),      # a file's bytes or a folder's images
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "minicnn": minicnn.__version__, "platform": platform.platform()},
            # OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU halves float32 matmul speed: say what the run had
            "environment": _environment(), "command": _command()}


def record_resume(config_file, config, epochs_done):
    """config.json takes the settings the run continues with (a new --epochs, --data) and a
    line in "resumed" with the command and thread environment: a run that changed machines
    or OpenBLAS settings halfway says so."""
    saved = json.loads(config_file.read_text())
    saved["args"] = dataclasses.asdict(config)
    if saved.get("data_sha256") is None:       # runs on folders from before folders were hashed
        saved["data_sha256"] = fer_data.content_hash(config.data)
    saved.setdefault("resumed", []).append({"after_epoch": epochs_done, "command": _command(),
                                            "environment": _environment()})
    evaluation.write_text(config_file, json.dumps(saved, indent=2))


def _environment():
    return {k: os.environ.get(k) for k in THREAD_AND_BLAS_VARIABLES}


def _command():
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def _truncate_history(path, epochs_done):
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


def report_test(run, splits, preprocessing):
    """Evaluate the best model on the test split: metrics.json and the confusion matrix files."""
    model = minicnn.load_model(Path(run) / "model.npz")
    x_test, y_test = preprocessing.apply(splits.test[0]), splits.test[1]
    results = {}
    for tta in (False, True):
        predicted = evaluation.predict_probabilities(model, x_test, tta=tta).argmax(axis=1)
        results["tta" if tta else "plain"] = evaluation.report(y_test, predicted, splits.label_names)
    result = {**results["plain"], "tta": {k: results["tta"][k] for k in ("accuracy", "macro_f1")},
              "split": "test", "split_description": splits.description}
    evaluation.write_confusion_csv(Path(run) / "confusion_matrix.csv", result)
    evaluation.plot_confusion(Path(run) / "confusion_matrix.png", result)
    # last: a run with metrics.json has its whole report (resume writes a missing one)
    evaluation.write_text(Path(run) / "metrics.json", json.dumps(result, indent=2, allow_nan=False))
    print(evaluation.format_report(result))
    print(f"with horizontal-flip averaging: accuracy {result['tta']['accuracy']:.4f}, "
          f"macro-F1 {result['tta']['macro_f1']:.4f}")
    return result
