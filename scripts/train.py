#!/usr/bin/env python
"""Train a facial-expression model on FER2013 with minicnn.

    python scripts/train.py --model mini_xception --data ../shared/fer2013/fer2013.csv.gz
    python scripts/train.py --resume runs/mini_xception-20261122-101500 [--epochs 120] [--lr 1e-4] [--data CSV]
    python scripts/train.py --model mini_xception --data CSV --teacher weights/cnn4.npz [--distill 0.5]

A first try, a couple of minutes: --limit 3000 --epochs 2. After each epoch the run folder
has history.csv and curves.png, and the estimated time left for the whole run is printed.

Unset options take the defaults of the model's seed (see fer/models.py, DEFAULTS). A resumed
run keeps its saved settings; only --epochs, --lr, --data (the same file, found elsewhere) and
--no-fast can change, and config.json records each resume. Training runs the compiled steps
(minicnn/compiler/: the same numbers, faster); --no-fast runs the textbook layers. Resuming a
run whose training is over but whose test report was interrupted writes the report. One
process at a time trains a run. --teacher distills: the targets mix the true label with the
teachers' probabilities on each training face (fer/distill.py).
Exit codes: 0 done, 1 bad data or run folder (or in use), or an OS error such as a full disk
(with the resume command when a checkpoint exists), 2 bad arguments, 3 diverged (a NaN loss
or non-finite weights: the previous checkpoint is kept), 130 interrupted (resumable).
"""
import argparse
import math
import sys
from pathlib import Path

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

from fer import models  # noqa: E402
from fer.cli import non_negative_int, positive_int  # noqa: E402
from fer.runs import RunFailed, RunInUse, TrainingDiverged, TrainingInterrupted  # noqa: E402
from fer.training import TrainConfig, resume_config, train  # noqa: E402
from minicnn import perf  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=models.names(), help="architecture (fer.models)")
    p.add_argument("--data", help="FER2013 CSV (.csv or .csv.gz) or Kaggle image folder")
    p.add_argument("--classes", choices=["fer7", "fer6", "fer4"],
                   help="fer7: all seven expressions; fer6: without Disgust (seed 004); "
                        "fer4: Happy, Sad, Neutral, Surprise (seed 001); other faces are dropped")
    p.add_argument("--input-size", type=int, choices=[48, 64], help="faces are resized to this square")
    p.add_argument("--scale", choices=["unit", "symmetric", "standardize"],
                   help="pixels to [0, 1], to [-1, 1], or to zero mean and unit variance")
    p.add_argument("--epochs", type=positive_int, help="epochs in all (with --resume: the new target)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--optimizer", choices=["adam", "sgd", "rmsprop"])
    p.add_argument("--lr", type=float, help="initial learning rate (halved when val_loss plateaus); "
                                            "with --resume, the rate to continue with")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="flip, shift, rotation and zoom augmentation (default on)")
    p.add_argument("--class-weight", choices=["none", "balanced"])
    p.add_argument("--seed", type=non_negative_int,
                   help="seeds the weights, shuffling, augmentation and (without --split-seed) the split")
    p.add_argument("--split-seed", type=non_negative_int,
                   help="seeds the split (and --limit's faces) instead of --seed: runs of several seeds on "
                        "one validation slice, e.g. one a teacher was trained on")
    p.add_argument("--limit", type=positive_int, help="use a seeded random subset of N faces (quick runs)")
    p.add_argument("--val-fraction", type=unit_fraction,
                   help="validation share of Training when the file has no PrivateTest rows (default 0.1); "
                        "0: a final fit on all Training, keeping the last epoch (choose --epochs and "
                        "--lr-drops on a validated run first)")
    p.add_argument("--lr-patience", type=positive_int,
                   help="epochs without val_loss improvement before halving the lr")
    p.add_argument("--lr-drops", type=epoch_list, metavar="E1,E2,...",
                   help="halve the lr at the start of these epochs (counted from 1) instead of on plateaus")
    p.add_argument("--patience", type=positive_int,
                   help="early stopping: end the run after N epochs without a better val_accuracy")
    p.add_argument("--skip-bad-rows", action="store_true", default=None, help="skip and count malformed rows")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (with --optimizer sgd)")
    p.add_argument("--weight-decay", type=non_negative, help="decoupled weight decay per step, times the lr")
    p.add_argument("--label-smoothing", type=unit_fraction, help="train on targets y * (1 - s) + s / K")
    p.add_argument("--erasing", type=unit_fraction,
                   help="probability of random erasing per training face (with --augment)")
    p.add_argument("--precise-bn", type=non_negative_int, metavar="N",
                   help="re-estimate BatchNormalization statistics on N training faces before each validation "
                        "(default 8192; 0: off)")
    p.add_argument("--teacher", nargs="+", metavar="MODEL",
                   help="distillation: trained model files whose averaged probabilities the targets mix in "
                        "(fer/distill.py)")
    p.add_argument("--distill", type=open_fraction, metavar="A",
                   help="with --teacher: train on (1 - A) * label + A * teachers' probabilities (default 0.5)")
    p.add_argument("--ema", type=open_fraction, metavar="M",
                   help="validate, checkpoint and save the weights' moving average, average = M * average + "
                        "(1 - M) * weights after every step (Keras' use_ema; e.g. 0.999)")
    p.add_argument("--l2-regularization", type=non_negative, metavar="L2",
                   help="the kernels' L2 factor of a model that has one (mini_xception; its seed: 0.01)")
    p.add_argument("--out", help="parent folder of the run folder (default runs/)")
    p.add_argument("--no-fast", action="store_true", default=None,
                   help="train on the textbook layers instead of the compiled steps (minicnn/compiler/); "
                        "a resumed run keeps its setting unless this is given")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from checkpoints/last.npz")
    args = p.parse_args(argv)
    if args.distill is not None and not args.teacher:
        p.error("--distill needs --teacher (the model files to distill from)")
    if args.l2_regularization is not None and args.model and args.model not in models.l2_regularized_names():
        having = ", ".join(models.l2_regularized_names())
        p.error(f"--l2-regularization: {args.model} has no kernel regularizer (these have: {having})")
    if args.resume:
        fixed = [option for option in vars(args) if option not in RESUMABLE and getattr(args, option) is not None]
        if fixed:
            p.error(f"--resume continues the run with its saved settings; these cannot change: "
                    f"{', '.join('--' + o.replace('_', '-') for o in fixed)} (start a new run instead)")
    elif not (args.model and args.data):
        p.error("--model and --data are required (or --resume DIR)")
    if args.val_fraction == 0 and args.patience:
        p.error("--patience watches val_accuracy, and --val-fraction 0 leaves no validation faces")
    if args.lr is not None and not 0 < args.lr < math.inf:      # also refuses nan
        p.error(f"--lr must be a positive number, received {args.lr}")
    return args


RESUMABLE = ("resume", "epochs", "lr", "data", "no_fast")   # what --resume may change


def epoch_list(text):
    """"73,94,113" -> [73, 94, 113]: distinct positive epoch numbers, ascending."""
    try:
        epochs = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected epoch numbers separated by commas, e.g. 30,60; received {text!r}")
    if epochs[0] < 1:
        raise argparse.ArgumentTypeError(f"epochs are counted from 1; received {text!r}")
    return epochs


def non_negative(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, received {text}")
    return value


def open_fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), received {text}")
    return value


def unit_fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), received {text}")
    return value


def config_from_args(args):
    if args.resume:
        config = resume_config(args.resume, args.epochs, args.data)
        config.fast = config.fast and not args.no_fast
        return config
    overrides = {k: getattr(args, k) for k in ("classes", "input_size", "scale", "epochs", "batch_size", "optimizer",
                                                "lr", "augment", "class_weight", "seed", "split_seed", "limit", "out",
                                                "val_fraction", "lr_drops", "lr_patience", "patience", "skip_bad_rows",
                                                "nesterov", "weight_decay", "label_smoothing", "erasing", "precise_bn",
                                                "teacher", "distill", "ema", "l2_regularization")}
    return TrainConfig.for_model(args.model, args.data, fast=not args.no_fast, **overrides)


def main(argv=None):
    perf.enable()                  # threads, allocator, OpenMP, denormals (minicnn/perf.py)
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        if not args.resume:
            check_inputs_exist(config)
    except (OSError, ValueError, TypeError) as e:     # bad arguments or run folder: say so, exit 1
        print(f"error: {describe(e)}", file=sys.stderr)
        return 1
    try:
        run = train(config, resume_dir=args.resume, resume_lr=args.lr if args.resume else None)
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (RunInUse, RunFailed, OSError, ValueError) as e:
        # the data, run folder or disk (DataError and ResumeError are ValueErrors): one line, exit 1
        print(f"error: {describe(e)}", file=sys.stderr)
        return 1
    print(f"run folder: {run}")
    return 0


def check_inputs_exist(config):
    """FileNotFoundError for a missing data file or teacher, before a run folder is made."""
    if not Path(config.data).exists():
        raise FileNotFoundError(f"{config.data}: no such data file or folder")
    for teacher in config.teacher:
        if not Path(teacher).is_file():
            raise FileNotFoundError(f"{teacher}: no such teacher model file")


def describe(error):
    """One line for an exception: an OSError's reason and file rather than "[Errno 13] ..."."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
