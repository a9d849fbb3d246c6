"""Training runs: data, model, the fit loop's callbacks, checkpoints that resume exactly, and reports.

A run folder holds:
    config.json              the arguments, seed, versions, data hash and split description
    model.npz                best-by-validation model: architecture, weights, labels, preprocessing
    checkpoints/last.npz     full state after the last finished epoch (weights, optimizer moments,
                             random generators, callback state): `--resume` continues from it
    history.csv, curves.png  loss and accuracy per epoch, training vs validation
    metrics.json, confusion_matrix.csv, confusion_matrix.png    the test split, at the end
The test split is touched only after training, by `report_test`: every choice (best
checkpoint, learning-rate drops) is made on the validation split.
"""
import csv
import dataclasses
import json
import os
import platform
import sys
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


class RunCheckpoint(minicnn.callbacks.Callback):
    """Writes checkpoints/last.npz (atomically) at the start and after every finished epoch."""

    def __init__(self, path, batches, stateful_callbacks):
        self.path, self.batches, self.stateful = Path(path), batches, stateful_callbacks

    def save(self, epochs_done):
        model = self.model
        opt_config, opt_arrays = model.optimizer.get_state(model.trainable_weights)
        arrays = {f"weight_{i:04d}": w.value for i, w in enumerate(io.all_weights(model))}
        arrays.update({f"optimizer/{k}": v for k, v in opt_arrays.items()})
        callback_configs = {}
        for i, c in enumerate(self.stateful):
            key = callback_key(i, c)
            callback_configs[key], callback_arrays = c.get_state()
            arrays.update({f"callbacks/{key}/{k}": v for k, v in callback_arrays.items()})
        meta = {**io.weights_meta(model), "epoch": epochs_done,
                "optimizer": opt_config, "rng": backend.rng().bit_generator.state,
                "batches": self.batches.get_state(),
                "callbacks": callback_configs}
        io.write_npz(self.path, arrays, meta)

    def on_train_begin(self, logs=None):
        if not self.path.exists():
            self.save(0)

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1)


def callback_key(index, callback):
    """A callback's key in the checkpoint: its position too, so two of one class never collide."""
    return f"{index}/{type(callback).__name__}"


def restore_checkpoint(path, model, batches, stateful_callbacks):
    """Load last.npz into the model, optimizer, generators and callbacks; returns the epochs done."""
    meta, arrays = io.read_npz(path)
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
    return int(meta["epoch"])


def balanced_class_weights(labels, num_classes):
    """w_k = N / (K * N_k): every class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    return (len(labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)


def load_splits(config):
    """FerData -> (optional --limit subset) -> Splits, as config says."""
    data = fer_data.load(config.data, skip_bad_rows=config.skip_bad_rows)
    if config.limit and config.limit < len(data):
        keep = np.sort(np.random.default_rng(config.seed).choice(len(data), config.limit, replace=False))
        data = dataclasses.replace(data, images=data.images[keep], labels=data.labels[keep], usage=data.usage[keep])
    return fer_data.split(data, config.classes, config.val_fraction, config.seed)


def resume_config(run, epochs=None, data=None):
    """The TrainConfig to continue the run in folder `run`: its config.json, with a new target
    `epochs` and a new path `data` to the same data file (checked by its sha256), if given."""
    config_file = Path(run) / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file}: not a run folder (no config.json)")
    saved = json.loads(config_file.read_text())
    config = TrainConfig.from_saved(saved["args"], config_file)
    if epochs is not None:
        config.epochs = epochs
    if data is not None:
        if saved.get("data_sha256") and not (Path(data).is_file() and
                                             fer_data.content_hash(data) == saved["data_sha256"]):
            raise ValueError(f"{data}: not the file this run trained on (sha256 {saved['data_sha256'][:12]}... "
                             f"in {config_file})")
        config.data = str(data)
    if not Path(config.data).exists():
        raise FileNotFoundError(f"{config.data}: the run's data is not there from this folder ({Path.cwd()}); "
                                f"give its path with --data")
    return config


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
    """
    run = Path(resume_dir) if resume_dir else Path(config.out) / f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    checkpoint_path = run / "checkpoints" / "last.npz"
    if resume_dir and not checkpoint_path.exists():
        raise FileNotFoundError(f"{checkpoint_path}: no checkpoint to resume from")
    backend.set_seed(config.seed)
    splits = load_splits(config)
    check_splits(splits, config)
    preprocessing = Preprocessing(config.input_size, config.scale).fit(splits.train[0])
    x_val = preprocessing.apply(splits.val[0])

    backend.clear_session()
    model = models.build(config.model, len(splits.label_names), (config.input_size, config.input_size, 1))
    loss = losses.SparseCategoricalCrossentropy(label_smoothing=config.label_smoothing)
    model.compile(make_optimizer(config), loss, metrics=["accuracy"])
    model.metadata = {"labels": list(splits.label_names), "class_map": config.classes,
                      "preprocessing": preprocessing.to_dict(), "architecture": config.model,
                      "trained_with": dataclasses.asdict(config)}

    augmenter = Augmenter(erasing_probability=config.erasing, seed=config.seed + 1) if config.augment else None
    weights = balanced_class_weights(splits.train[1], len(splits.label_names)) if config.class_weight == "balanced" else None
    batches = FaceBatches(*splits.train, preprocessing, config.batch_size, augmenter, config.seed + 2, weights)

    best = callbacks.ModelCheckpoint(str(run / "model.npz"), monitor="val_accuracy", save_best_only=True)
    plateau = callbacks.ReduceLROnPlateau("val_loss", factor=config.lr_factor, patience=config.lr_patience, min_lr=1e-5)
    stop_on_nan = callbacks.TerminateOnNaN()
    stateful = [best, plateau]
    checkpoint = RunCheckpoint(checkpoint_path, batches, stateful)

    initial_epoch = 0
    if resume_dir:
        initial_epoch = restore_checkpoint(checkpoint_path, model, batches, stateful)
        if config.epochs <= initial_epoch:
            raise ResumeError(f"{run} has trained {initial_epoch} epochs already; to train more, "
                             f"resume with --epochs above {initial_epoch}")
        record_resume(run / "config.json", config, initial_epoch)
        _truncate_history(run / "history.csv", initial_epoch)
        if resume_lr is not None:
            model.optimizer.learning_rate = float(resume_lr)
        print(f"Resuming {run} after epoch {initial_epoch} of {config.epochs}, "
              f"learning rate {model.optimizer.learning_rate:.3g}")
    else:
        run.mkdir(parents=True, exist_ok=False)
        evaluation.write_text(run / "config.json", json.dumps(run_description(config, splits), indent=2))
    print(splits.description)

    fit_callbacks = [stop_on_nan, EpochTimer(), *extra_callbacks, best, plateau,
                     callbacks.CSVLogger(str(run / "history.csv"), append=True), checkpoint]
    try:
        model.fit(batches, epochs=config.epochs, initial_epoch=initial_epoch, validation_data=(x_val, splits.val[1]),
                  batch_size=evaluation.PREDICT_BATCH, callbacks=fit_callbacks, verbose=verbose)
    except KeyboardInterrupt:
        raise TrainingInterrupted(run, checkpoint_path) from None
    if stop_on_nan.message:
        raise TrainingDiverged(f"{stop_on_nan.message}; the last good checkpoint {checkpoint_path} is kept")
    plot_history(run)
    report_test(run, splits, preprocessing)
    return run


class TrainingInterrupted(Exception):
    def __init__(self, run, checkpoint_path):
        super().__init__(f"interrupted; the last checkpoint {checkpoint_path} is intact. "
                         f"Resume with: python scripts/train.py --resume {run}")
        self.run = run


class TrainingDiverged(Exception):
    pass


class ResumeError(ValueError):
    """A run folder that cannot continue as asked."""


THREAD_AND_BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                             "OMP_NUM_THREADS")


def run_description(config, splits):
    return {"args": dataclasses.asdict(config), "seed": config.seed, "split": splits.description,
            "data_sha256": fer_data.content_hash(config.data) if Path(config.data).is_file() else None,
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
    evaluation.write_text(Path(run) / "metrics.json", json.dumps(result, indent=2))
    evaluation.write_confusion_csv(Path(run) / "confusion_matrix.csv", result)
    evaluation.plot_confusion(Path(run) / "confusion_matrix.png", result)
    print(evaluation.format_report(result))
    print(f"with horizontal-flip averaging: accuracy {result['tta']['accuracy']:.4f}, "
          f"macro-F1 {result['tta']['macro_f1']:.4f}")
    return result
