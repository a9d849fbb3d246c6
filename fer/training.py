"""Training a fer model: open the run, fit, report.

`train` opens a run folder (new, or one to resume: fer/runs.py keeps its files, lock and
checkpoints), fits the seed's network on the training split with the callbacks a long run
needs, and writes the test report. The test split is touched only after training, by
`report_test`: every choice (best checkpoint, learning-rate drops, early stopping) is made on
the validation split. A final fit (val_fraction 0) trains on all of Training with the choices
made before (epochs, lr_drops) and keeps its last epoch.
"""
import dataclasses
import json
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from minicnn import backend, callbacks, io, losses, optimizers
from minicnn.sequence import ArrayBatches

from . import data as fer_data
from . import distill, evaluation, models
from .augment import Augmenter
from .inference import load_fer_model
from .preprocess import Preprocessing
from .runs import (ResumeError, Restored, RunCheckpoint, RunFailed, TrainingDiverged, TrainingInterrupted,
                   checkpoint_file, describe_names, lock_run, new_run_folder, plot_history,
                   probe_writable, read_run_config, record_resume, remove_stale_temporary_files, restore_run_state,
                   truncate_history, write_run_description)


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
    split_seed: Optional[int] = None   # draws the faces (--limit) and the val slice; None: seed
    limit: int = 0
    out: str = "runs"
    val_fraction: float = 0.1
    lr_patience: int = 5
    lr_factor: float = 0.5
    lr_drops: list = field(default_factory=list)   # epochs (from 1) that start at lr * lr_factor; []: on plateaus
    skip_bad_rows: bool = False
    nesterov: bool = False          # with optimizer "sgd": Nesterov momentum
    weight_decay: float = 0.0       # decoupled: w -= lr * weight_decay * w each step (Keras 3)
    label_smoothing: float = 0.0    # targets y * (1 - s) + s / K
    erasing: float = 0.0            # chance of random erasing per face (with augment)
    patience: int = 0               # stop after this many epochs without a better val_accuracy (0: never)
    precise_bn: int = 8192          # training faces that re-estimate BN statistics before each validation (0: off)
    fast: bool = True               # run the compiled steps (minicnn/compiler/); False: the textbook layers
    teacher: list = field(default_factory=list)   # model files whose probabilities the targets mix in (fer/distill.py)
    distill: float = 0.5            # with teachers: their share a of the targets (1 - a) * label + a * teachers
    ema: float = 0.0                # momentum of the weights' moving average, validated and saved (0: off)
    l2_regularization: Optional[float] = None   # the kernels' L2 factor of a model that has one (None: its seed's)

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


class FaceBatches(ArrayBatches):
    """Training batches: ArrayBatches of faces, reshuffled and re-augmented every epoch from seeded
    generators of their own, whose state a checkpoint keeps.

    images: uint8 (N, 48, 48) -> each batch: (preprocessing.apply(augment(faces)), targets[, weights]);
    targets: the integer labels (N,), or distributions over the classes (N, K) (distillation).
    """

    def __init__(self, images, labels, preprocessing, batch_size, augmenter=None, seed=0, class_weights=None,
                 targets=None):
        weights = None if class_weights is None else class_weights[labels]
        super().__init__(images, labels if targets is None else targets, batch_size, sample_weight=weights)
        self.preprocessing, self.augmenter = preprocessing, augmenter
        self.rng = np.random.default_rng(seed)

    def on_epoch_begin(self):
        self.order = self.rng.permutation(len(self.x))

    def __getitem__(self, index):
        faces, *rest = super().__getitem__(index)
        if self.augmenter is not None:
            faces = self.augmenter(faces)
        return (self.preprocessing.apply(faces), *rest)

    def get_state(self):
        state = {"shuffle": self.rng.bit_generator.state}
        if self.augmenter is not None:
            state["augment"] = self.augmenter.get_state()
        return state

    def set_state(self, state):
        self.rng.bit_generator.state = state["shuffle"]
        if self.augmenter is not None:
            self.augmenter.set_state(state["augment"])


# ---- callbacks of a long run ---------------------------------------------------------------------

class EpochTimer(callbacks.Callback):
    """Adds the epoch's wall time to the logs as "seconds" (so history.csv records it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = round(time.time() - self.start, 1)


class TimeLeft(callbacks.Callback):
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


class PlotCurves(callbacks.Callback):
    """Redraws curves.png from history.csv after every epoch, so an interrupted run has its curves."""

    def __init__(self, run):
        self.run = run

    def on_epoch_end(self, epoch, logs=None):
        plot_history(self.run)


class FiniteWeights(callbacks.Callback):
    """Stops the run when any weight is inf or NaN, before anything is saved.

    The loss can stay finite while the weights overflow (BatchNormalization's moving
    variance is not in the loss), so TerminateOnNaN alone misses it. Goes first in the
    callback list: it raises, so the callbacks after it (checkpoints) never see the epoch.
    """

    def on_epoch_end(self, epoch, logs=None):
        bad = io.nonfinite(io.named_weights(self.model))
        if bad:
            raise TrainingDiverged(f"epoch {epoch + 1}: non-finite values in {describe_names(bad)} "
                                   f"(the loss was {logs.get('loss')}), terminating training")


# ---- config and data -----------------------------------------------------------------------------

def load_splits(config):
    """FerData -> (optional --limit subset) -> Splits, as config says, drawn by the split seed."""
    data = fer_data.load(config.data, skip_bad_rows=config.skip_bad_rows)
    seed = config.seed if config.split_seed is None else config.split_seed
    if config.limit and config.limit < len(data):
        keep = np.sort(np.random.default_rng(seed).choice(len(data), config.limit, replace=False))
        data = dataclasses.replace(data, images=data.images[keep], labels=data.labels[keep], usage=data.usage[keep])
    return fer_data.split(data, config.classes, config.val_fraction, seed)


def check_splits(splits, config):
    """A run needs faces in all three splits (val may be empty in a final fit, val_fraction 0);
    say which is empty, or what needs validation faces, before hours of training."""
    needed = [("train", splits.train), ("test", splits.test)]
    if config.val_fraction > 0 or config.patience:
        needed.append(("val", splits.val))
    for name, (images, _) in needed:
        if len(images) == 0:
            why = " (early stopping watches val_accuracy)" if name == "val" and config.patience else ""
            raise fer_data.DataError(f"{config.data}: the {name} split is empty{why} ({splits.description})")


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


# ---- train: open the run, fit, report ------------------------------------------------------------

def train(config, resume_dir=None, extra_callbacks=(), verbose=1, resume_lr=None):
    """Run (or resume) a training run; returns the run folder (its files: fer/runs.py).

    resume_lr: on resume, continue with this learning rate instead of the checkpoint's (a run
    that diverged would otherwise replay the same batches at the same rate and diverge again).
    Resuming a run whose epochs are done but whose test report is missing writes the report.
    The run folder is locked (RUN/.lock) until this returns: a second process gets RunInUse.
    """
    with locked_run(config, resume_dir) as (run, splits):
        try:
            session = open_session(run, config, splits, resume=resume_dir is not None, resume_lr=resume_lr)
            if session.finished:
                return finish_done_run(session)
            fit(session, extra_callbacks, verbose)
            return write_report(session)
        except OSError as error:
            raise RunFailed(error, run, checkpoint_file(run)) from None


@contextmanager
def locked_run(config, resume_dir):
    """Yields (run folder, Splits) with the folder locked: resume_dir, or a new folder under
    config.out, made only once the data has loaded and split."""
    run = Path(resume_dir) if resume_dir else None
    lock = lock_run(run) if run else None
    try:
        if run and not checkpoint_file(run).exists():
            raise ResumeError(f"{checkpoint_file(run)}: no checkpoint to resume from")
        backend.set_seed(config.seed)
        splits = load_splits(config)
        check_splits(splits, config)
        if run is None:
            run = new_run_folder(Path(config.out), config.model)
            lock = lock_run(run)
        yield run, splits
    finally:
        if lock is not None:
            lock.close()


@dataclass
class Session:
    """What one process trains with: the run's folder, config and data, the model, its batches, and
    the callbacks whose state the checkpoint keeps."""

    run: Path
    config: TrainConfig
    splits: fer_data.Splits
    preprocessing: Preprocessing
    model: object
    batches: FaceBatches
    stateful: list                      # ModelCheckpoint, ReduceLROnPlateau or LearningRateScheduler[,
                                        # EarlyStopping][, SwapEMAWeights]
    checkpoint: RunCheckpoint
    early_stopping: Optional[callbacks.EarlyStopping] = None
    averages: Optional[callbacks.SwapEMAWeights] = None     # with ema: runs first among fit's callbacks
    restored: Optional[Restored] = None  # on resume: where the checkpoint left off
    initial_epoch: int = 0

    @property
    def finished(self):
        """A resumed run whose training is over: early stopping ended it, or its epochs are done."""
        return self.restored is not None and (self.restored.stopped_early or self.config.epochs <= self.restored.epochs)


def open_session(run, config, splits, resume, resume_lr):
    """The run's Session: new (config.json written), or resumed from its checkpoint (config.json
    records the resume, history.csv drops rows past the checkpoint)."""
    remove_stale_temporary_files(run)
    probe_writable(run, run / "checkpoints")
    session = build_session(run, config, splits)
    if not resume:
        write_run_description(run, config, splits)
        return session
    session.restored = restore_run_state(session.checkpoint.path, session.model, session.batches, session.stateful)
    if not session.finished:
        session.initial_epoch = continue_run(session, resume_lr)
    return session


def build_session(run, config, splits):
    """Preprocessing fitted on the training faces, the compiled model, the batches and the callbacks."""
    preprocessing = Preprocessing(config.input_size, config.scale).fit(splits.train[0])
    model = compiled_model(config, splits, preprocessing)
    augmenter = Augmenter(erasing_probability=config.erasing, seed=config.seed + 1) if config.augment else None
    weights = (losses.balanced_class_weights(splits.train[1], len(splits.label_names))
               if config.class_weight == "balanced" else None)
    batches = FaceBatches(*splits.train, preprocessing, config.batch_size, augmenter, config.seed + 2, weights,
                          targets=distilled_targets(run, config, splits))

    stateful = [model_checkpoint(run, splits), learning_rate_schedule(config, splits)]
    early = None
    if config.patience:      # only then: checkpoints of runs without it keep their callback keys
        early = callbacks.EarlyStopping("val_accuracy", patience=config.patience)
        stateful.append(early)
    averages = callbacks.SwapEMAWeights(swap_on_epoch=True) if config.ema else None
    if averages:            # last: the other callbacks keep their checkpoint keys
        stateful.append(averages)
    checkpoint = RunCheckpoint(checkpoint_file(run), batches, stateful)
    return Session(run, config, splits, preprocessing, model, batches, stateful, checkpoint, early, averages)


def model_checkpoint(run, splits):
    """RUN/model.npz: the best val_accuracy's weights, or the last epoch's in a final fit (no val faces)."""
    if len(splits.val[0]) == 0:
        return callbacks.ModelCheckpoint(str(run / "model.npz"))
    return callbacks.ModelCheckpoint(str(run / "model.npz"), monitor="val_accuracy", save_best_only=True)


def learning_rate_schedule(config, splits):
    """lr * lr_factor at the start of each epoch in lr_drops; without them, after lr_patience
    epochs of no better val_loss (the training loss in a final fit, which has no val faces)."""
    if config.lr_drops:
        starts = {epoch - 1 for epoch in config.lr_drops}           # fit counts epochs from 0
        return callbacks.LearningRateScheduler(lambda epoch, lr: lr * config.lr_factor if epoch in starts else lr)
    watched = "val_loss" if len(splits.val[0]) else "loss"
    return callbacks.ReduceLROnPlateau(watched, factor=config.lr_factor, patience=config.lr_patience, min_lr=1e-5)


def distilled_targets(run, config, splits):
    """The (N, K) training targets that mix in the teachers' probabilities, or None without teachers."""
    if not config.teacher:
        return None
    if not (run / distill.TARGETS_FILE).exists():
        print(f"distillation: the teachers' probabilities on {len(splits.train[0]):,} training faces, once for the "
              f"run, into {run / distill.TARGETS_FILE}", flush=True)
    probabilities = distill.run_targets(run, config.teacher, splits.train[0], splits.label_names, config.fast)
    return distill.mixed_targets(splits.train[1], probabilities, config.distill)


def compiled_model(config, splits, preprocessing):
    """The run's network, compiled, with the metadata its model file carries."""
    backend.clear_session()
    model = models.build(config.model, len(splits.label_names), (config.input_size, config.input_size, 1),
                         l2_regularization=config.l2_regularization)
    loss_class = losses.CategoricalCrossentropy if config.teacher else losses.SparseCategoricalCrossentropy
    loss = loss_class(label_smoothing=config.label_smoothing)
    model.compile(make_optimizer(config), loss, metrics=["accuracy"], jit_compile=config.fast)
    model.metadata = {"labels": list(splits.label_names), "class_map": config.classes,
                      "preprocessing": preprocessing.to_dict(), "architecture": config.model,
                      "trained_with": dataclasses.asdict(config)}
    return model


def make_optimizer(config):
    averaging = {"use_ema": bool(config.ema), "ema_momentum": config.ema or 0.99}
    if config.optimizer == "sgd":     # seed 003's tflearn 'momentum' optimizer
        return optimizers.SGD(config.lr, momentum=0.9, nesterov=config.nesterov, weight_decay=config.weight_decay,
                              **averaging)
    return optimizers.get({"class_name": config.optimizer, "learning_rate": config.lr,
                           "weight_decay": config.weight_decay, **averaging})


def continue_run(session, resume_lr):
    """Record the resume in config.json, drop history rows past the checkpoint, set the rate;
    returns the epoch to start from."""
    run, config, model, epochs_done = session.run, session.config, session.model, session.restored.epochs
    record_resume(run / "config.json", config, epochs_done)
    truncate_history(run / "history.csv", epochs_done)
    if resume_lr is not None:
        model.optimizer.learning_rate = float(resume_lr)
    print(f"Resuming {run} after epoch {epochs_done} of {config.epochs}, "
          f"learning rate {model.optimizer.learning_rate:.3g}")
    return epochs_done


def fit(session, extra_callbacks=(), verbose=1):
    """model.fit over the epochs left, validated on the val split (if any); TrainingInterrupted on Ctrl-C,
    TrainingDiverged (with the command to go on at a lower rate) on a NaN loss or weights."""
    run, config, model, splits = session.run, session.config, session.model, session.splits
    print(splits.description)
    stop_on_nan = callbacks.TerminateOnNaN()
    averages = [session.averages] if session.averages else []      # first: what follows sees the averages
    fit_callbacks = [*averages, *precise_batchnorm(session), FiniteWeights(), stop_on_nan, EpochTimer(),
                     TimeLeft(config.epochs, config.patience), *extra_callbacks,
                     *[c for c in session.stateful if c is not session.averages],
                     callbacks.CSVLogger(str(run / "history.csv"), append=True), PlotCurves(run), session.checkpoint]
    try:
        model.fit(session.batches, epochs=config.epochs, initial_epoch=session.initial_epoch,
                  validation_data=validation_data(session), batch_size=evaluation.PREDICT_BATCH,
                  callbacks=fit_callbacks, verbose=verbose)
    except KeyboardInterrupt:
        raise TrainingInterrupted(run, session.checkpoint.path) from None
    except TrainingDiverged as error:
        raise TrainingDiverged(diverged_message(error, session)) from None
    if stop_on_nan.message:
        raise TrainingDiverged(diverged_message(stop_on_nan.message, session))
    early = session.early_stopping
    if early is not None and early.stopped_epoch is not None:
        print(f"early stopping: no better val_accuracy in the last {config.patience} epochs; "
              f"stopped after epoch {early.stopped_epoch + 1}")


def validation_data(session):
    """(x, y) of the val faces as the model takes them, or None when there are none (a final fit)."""
    faces, labels = session.splits.val
    if len(faces) == 0:
        return None
    if session.config.teacher:      # the loss takes distributions: the labels as one-hot rows
        labels = np.eye(len(session.splits.label_names), dtype=np.float32)[labels]
    return session.preprocessing.apply(faces), labels


def precise_batchnorm(session):
    """[PreciseBatchNorm] on a seeded sample of `precise_bn` training faces, as inference sees them
    (no augmentation), or [] when the option is off: see minicnn.callbacks.PreciseBatchNorm."""
    config, faces = session.config, session.splits.train[0]
    count = min(config.precise_bn, len(faces)) // config.batch_size * config.batch_size
    if count == 0:
        return []
    sample = np.random.default_rng(config.seed + 3).choice(len(faces), count, replace=False)
    return [callbacks.PreciseBatchNorm(session.preprocessing.apply(faces[np.sort(sample)]), config.batch_size)]


def diverged_message(reason, session):
    return (f"{reason}; the last good checkpoint {session.checkpoint.path} is kept. To go on at a lower rate: "
            f"python scripts/train.py --resume {session.run} --lr {session.model.optimizer.learning_rate / 10:.3g}")


def finish_done_run(session):
    """--resume of a run whose training is over: write its test report if an interruption
    (or an older version) left it unwritten, else say how to train more."""
    run, restored = session.run, session.restored
    if not (run / "metrics.json").exists():
        print(f"{run} has finished training after {restored.epochs} epochs; writing its test report")
        return write_report(session)
    if restored.stopped_early:
        raise ResumeError(f"{run} stopped early after epoch {restored.epochs} (no better val_accuracy in "
                          f"{session.config.patience} epochs) and has its test report; start a new run to train more")
    raise ResumeError(f"{run} has trained {restored.epochs} epochs already; to train more, "
                      f"resume with --epochs above {restored.epochs}")


def write_report(session):
    """curves.png and the test report; an interruption here leaves a run --resume can finish."""
    try:
        plot_history(session.run)
        report_test(session.run, session.splits, session.config.fast)
    except KeyboardInterrupt:
        raise TrainingInterrupted(session.run, session.checkpoint.path, during="its test report") from None
    return session.run


def report_test(run, splits, fast=True):
    """Evaluate the run's best model file on the test split: metrics.json and the confusion matrix files."""
    model, _, preprocessing = load_fer_model(run, fast)
    x_test, y_test = preprocessing.apply(splits.test[0]), splits.test[1]
    results = evaluation.plain_and_flip_reports(model, x_test, y_test, splits.label_names)
    result = {**results[False], "tta": {k: results[True][k] for k in ("accuracy", "macro_f1")},
              "split": "test", "split_description": splits.description}
    evaluation.write_confusion_csv(Path(run) / "confusion_matrix.csv", result)
    evaluation.plot_confusion(Path(run) / "confusion_matrix.png", result)
    # last: a run with metrics.json has its whole report (resume writes a missing one)
    evaluation.write_text(Path(run) / "metrics.json", json.dumps(result, indent=2, allow_nan=False))
    print(evaluation.format_report(result))
    print(f"with horizontal-flip averaging: accuracy {result['tta']['accuracy']:.4f}, "
          f"macro-F1 {result['tta']['macro_f1']:.4f}")
    return result
