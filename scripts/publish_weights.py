#!/usr/bin/env python
"""Publish a finished training run as shipped weights: weights/NAME.npz, its confusion matrix, and
the model card text for weights/README.md (printed, to paste and edit).

    python scripts/publish_weights.py runs/mini_xception-20261122-013837 mini_xception --float16

--float16 stores the weights as float16 (half the size; they load into float32 layers) when
that changes no figure on the run's test split (accuracy and macro-F1, with and without
flip averaging); otherwise it publishes float32 and says so. Files are written atomically.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from fer import evaluation
from fer.cli import same_file
from fer.inference import load_fer_model
from fer.runs import read_history, read_run_config
from fer.training import TrainConfig, load_splits
from minicnn import io

ROOT = Path(__file__).resolve().parents[1]


def test_accuracy(model_path, splits):
    """{tta: evaluation.report(...)} on the test split, for tta False and True."""
    model, _, preprocessing = load_fer_model(model_path)      # refuses non-finite weights
    x = preprocessing.apply(splits.test[0])
    return evaluation.plain_and_flip_reports(model, x, splits.test[1], splits.label_names)


def half_is_as_good(half, splits, result):
    """True when the float16 file gives the same test figures (False when float16 overflows to inf)."""
    try:
        return same_figures(test_accuracy(half, splits), result)
    except ValueError:      # a weight beyond float16's range (65504) became inf
        return False


def same_figures(a, b):
    return all(a[tta][key] == b[tta][key] for tta in (False, True) for key in ("accuracy", "macro_f1"))


def card(name, run, config, history, result, size_mb, float16, test_name):
    recall = ", ".join(f"{k} {v['recall']:.3f}" for k, v in result[False]["per_class"].items())
    prep = config["args"]
    return f"""## `{name}.npz`
- architecture: `{prep['model']}` (fer/models.py), input {prep['input_size']}x{prep['input_size']} grayscale, scale `{prep['scale']}`; labels {', '.join(result[False]['labels'])}
- command: `{config.get('command') or 'python scripts/train.py --model ' + prep['model'] + ' --data ' + prep['data']}`
- epochs: {len(history.get('loss', []))}, wall time {sum(history.get('seconds', [])) / 3600:.2f} h on this 2-core machine{f"; resumed {len(config['resumed'])} time(s)" if config.get('resumed') else ''}; {config['split']}
- {chosen_epoch(history)}
- {test_name} (never used for any choice): accuracy {result[False]['accuracy']:.4f} ({result[True]['accuracy']:.4f} with flip averaging, `--tta`), macro-F1 {result[False]['macro_f1']:.4f} ({result[True]['macro_f1']:.4f})
- per-class recall: {recall}
- confusion matrix: `{name}_confusion.png`; file {size_mb:.1f} MB{' (float16 weights, same accuracy as float32)' if float16 else ''}
- limits: FER2013 faces are 48x48 web images; webcam faces differ in light, pose and sharpness
"""


def chosen_epoch(history):
    """The card's line on which epoch's weights the file holds: the best validation accuracy's, or
    the last epoch's in a final fit (a run without validation faces)."""
    val = history.get("val_accuracy", [])
    if not val:
        return (f"final fit, no validation faces: the last epoch's weights (epoch {len(history.get('loss', []))}) "
                f"are the file")
    best = int(np.nanargmax(val))
    return f"best validation accuracy {val[best]:.4f} at epoch {best + 1} (counted from 1): that epoch's weights are the file"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder from scripts/train.py")
    p.add_argument("name", help="published as weights/NAME.npz")
    p.add_argument("--float16", action="store_true", help="store float16 weights if that costs no accuracy")
    p.add_argument("--out", default=str(ROOT / "weights"), help="destination folder (default weights/)")
    args = p.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    try:
        return publish(run, out, args)
    except (OSError, ValueError) as error:     # a missing, unfinished, diverged or unreadable run
        print(f"error: {error}", file=sys.stderr)
        return 1


def publish(run, out, args):
    """main's work: write out/NAME.npz and its confusion matrix, print the card."""
    for needed in ("model.npz", "config.json", "history.csv", "metrics.json", "confusion_matrix.png"):
        if not (run / needed).exists():
            raise FileNotFoundError(f"{run / needed} is missing: {run} is not a finished run (if its training "
                                    f"or test report was interrupted: python scripts/train.py --resume {run})")
    target = out / f"{args.name}.npz"
    if same_file(target, run / "model.npz"):
        raise ValueError(f"{target} is the run's own model file: publish to another folder or name")
    config = read_run_config(run)
    splits = load_splits(TrainConfig.from_saved(config["args"], run / "config.json"))
    result = test_accuracy(run / "model.npz", splits)
    meta, arrays = io.read_npz(run / "model.npz")
    if args.float16:
        half_arrays = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in arrays.items()}
        with tempfile.TemporaryDirectory() as scratch:
            half = Path(scratch) / "half.npz"
            io.write_npz(half, half_arrays, meta)
            if half_is_as_good(half, splits, result):
                arrays = half_arrays
            else:
                args.float16 = False
                print("float16 changed the test figures: published float32 instead", file=sys.stderr)
    io.write_npz(target, arrays, meta)
    png = (run / "confusion_matrix.png").read_bytes()
    io.atomic_write(out / f"{args.name}_confusion.png", lambda f: f.write(png))
    print(card(args.name, run, config, read_history(run / "history.csv"), result,
               target.stat().st_size / 1e6, args.float16, splits.test_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
