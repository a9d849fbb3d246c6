#!/usr/bin/env python
"""Train a facial-expression model on FER2013 with minicnn.

    python scripts/train.py --model mini_xception --data ../shared/fer2013/fer2013.csv.gz
    python scripts/train.py --resume runs/mini_xception-20261122-101500

Unset options take the defaults of the model's seed (see fer/models.py, DEFAULTS).
Exit codes: 0 done, 1 bad input, 3 the loss diverged, 130 interrupted (resumable).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fer import models  # noqa: E402
from fer.data import DataError  # noqa: E402
from fer.training import TrainConfig, TrainingDiverged, TrainingInterrupted, train  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=models.names(), help="architecture (fer.models)")
    p.add_argument("--data", help="FER2013 CSV (.csv or .csv.gz) or Kaggle image folder")
    p.add_argument("--classes", choices=["fer7", "fer6", "fer4"])
    p.add_argument("--input-size", type=int, choices=[48, 64])
    p.add_argument("--scale", choices=["unit", "symmetric", "standardize"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["adam", "sgd", "rmsprop"])
    p.add_argument("--lr", type=float, help="initial learning rate (halved when val_loss plateaus); "
                                            "with --resume, the rate to continue with")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="flip, shift, rotation and zoom augmentation (default on)")
    p.add_argument("--class-weight", choices=["none", "balanced"])
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="use a seeded random subset of N faces (quick runs)")
    p.add_argument("--val-fraction", type=float, help="validation share of Training when there is no PrivateTest")
    p.add_argument("--lr-patience", type=int, help="epochs without val_loss improvement before halving the lr")
    p.add_argument("--skip-bad-rows", action="store_true", default=None, help="skip and count malformed rows")
    p.add_argument("--match-sharpness", action=argparse.BooleanOptionalAction, default=None,
                   help="blur faces sharper than the median training face down to it, everywhere (default on: "
                        "the shared FER2013 Training faces are blurred, PublicTest and webcam faces are not)")
    p.add_argument("--out", help="parent folder of the run folder (default runs/)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from checkpoints/last.npz")
    args = p.parse_args(argv)
    if not args.resume and not (args.model and args.data):
        p.error("--model and --data are required (or --resume DIR)")
    return args


def config_from_args(args):
    if args.resume:
        config_file = Path(args.resume) / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"{config_file}: not a run folder (no config.json)")
        config = TrainConfig(**json.loads(config_file.read_text())["args"])
        if args.epochs:
            config.epochs = args.epochs
        return config
    overrides = {k: getattr(args, k) for k in ("classes", "input_size", "scale", "epochs", "batch_size", "optimizer",
                                                "lr", "augment", "class_weight", "seed", "limit", "out",
                                                "val_fraction", "lr_patience", "skip_bad_rows",
                                                "match_sharpness")}
    return TrainConfig.for_model(args.model, args.data, **overrides)


def main(argv=None):
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        if not args.resume and not Path(config.data).exists():
            raise FileNotFoundError(f"{config.data}: no such data file or folder")
    except (FileNotFoundError, ValueError, TypeError) as e:   # bad arguments or run folder: say so, exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        run = train(config, resume_dir=args.resume, resume_lr=args.lr if args.resume else None)
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (DataError, FileNotFoundError) as e:       # the data: anything else keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"run folder: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
