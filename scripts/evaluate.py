#!/usr/bin/env python
"""Evaluate a trained model file on FER2013: accuracy, macro-F1 and a per-class table.

    python scripts/evaluate.py --model weights/mini_xception.npz --data ../shared/fer2013/fer2013.csv.gz

Architecture, labels and preprocessing come from the model file. --split auto evaluates
PrivateTest when the file has it, else PublicTest. --model takes a run folder too (its
model.npz). --tta averages each face's probabilities over its mirror image (--tta shift: also
3-pixel shifts, 10 views). Exit code 1 on bad input.
"""
import argparse
import json
import sys
from pathlib import Path

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numpy as np  # noqa: E402

from fer import data as fer_data  # noqa: E402
from fer import evaluation  # noqa: E402
from fer.inference import load_fer_model  # noqa: E402
from minicnn import perf  # noqa: E402


def evaluate(model_path, data_path, split="auto", tta=False, skip_bad_rows=False, fast=True):
    """The evaluation report (a dict, see fer.evaluation.report) of a model file on one split;
    fast: through the compiled steps (minicnn/compiler/), else the textbook layers."""
    model, x, labels, names, split = scoring_inputs(model_path, data_path, split, skip_bad_rows, fast)
    predicted = evaluation.predict_probabilities(model, x, tta=tta).argmax(axis=1)
    return described(evaluation.report(labels, predicted, names), split, tta, model_path)


def evaluate_plain_and_flip(model_path, data_path, split="auto", skip_bad_rows=False, fast=True):
    """{False: evaluate(..., tta=False), True: evaluate(..., tta=True)}, the model run twice, not three times."""
    model, x, labels, names, split = scoring_inputs(model_path, data_path, split, skip_bad_rows, fast)
    reports = evaluation.plain_and_flip_reports(model, x, labels, names)
    return {tta: described(result, split, tta, model_path) for tta, result in reports.items()}


def described(result, split, tta, model_path):
    """The report with what it scored: split, views, model file and face count."""
    faces = int(sum(row["support"] for row in result["per_class"].values()))
    return {**result, "split": split, "tta": evaluation.tta_mode(tta), "model": str(model_path), "faces": faces}


def scoring_inputs(model_path, data_path, split, skip_bad_rows, fast):
    """(model, x, labels, class names, split): the model and its preprocessed faces of the split."""
    model, model_labels, preprocessing = load_fer_model(model_path, fast)
    meta = model.metadata
    data = fer_data.load(data_path, skip_bad_rows=skip_bad_rows)
    if split == "auto":
        split = "PrivateTest" if np.any(data.usage == "PrivateTest") else "PublicTest"
    rows = data.usage == split
    if not rows.any():
        raise ValueError(f"{data_path}: has no {split} rows")
    class_map = meta.get("class_map", "fer7")
    if class_map is None:    # converted with --labels that are no FER2013 class map
        raise ValueError(f"{model_path}: its labels {meta['labels']} are not FER2013 classes under any class map "
                         f"({', '.join(fer_data.CLASS_MAPS)}), so FER2013 rows cannot be scored against them")
    subset = fer_data.FerData(data.images[rows], data.labels[rows], data.usage[rows], data.source)
    images, labels, names = fer_data.apply_class_map(subset, class_map)
    if list(names) != model_labels:
        raise ValueError(f"{model_path}: model labels {model_labels} do not match class map {class_map} ({list(names)})")
    return model, preprocessing.apply(images), labels, names, split     # load_fer_model checked the input size


TTA_TITLES = {"none": "one view a face", "flip": "averaged with the mirror image",
              "shift": f"averaged over 10 views: mirror image and {evaluation.TTA_SHIFT}-pixel shifts"}


def main(argv=None):
    perf.enable()                  # threads, allocator, OpenMP, denormals (minicnn/perf.py)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model file (.npz) from train.py or convert_keras.py, "
                                                  "or a run folder of train.py (its model.npz)")
    p.add_argument("--data", required=True, help="FER2013 CSV (.csv/.csv.gz) or Kaggle image folder")
    p.add_argument("--split", default="auto", choices=["auto", "Training", "PublicTest", "PrivateTest"])
    p.add_argument("--tta", nargs="?", const="flip", default=False, choices=evaluation.TTA_MODES,
                   help="test-time augmentation: average over each face and its mirror image (flip, the "
                        f"default), or those moved {evaluation.TTA_SHIFT} pixels each way too (shift, 10 views)")
    p.add_argument("--out", help="also write confusion_matrix.png and .csv here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--no-fast", action="store_true",
                   help="run the textbook layers instead of the compiled steps (minicnn/compiler/: the same "
                        "numbers, faster)")
    args = p.parse_args(argv)
    try:
        for path, what in ((args.model, "model file"), (args.data, "data file or folder")):
            if not Path(path).exists():
                raise FileNotFoundError(f"{path}: no such {what}")
        result = evaluate(args.model, args.data, args.split, args.tta, args.skip_bad_rows, fast=not args.no_fast)
        if args.out:
            evaluation.write_confusion_csv(Path(args.out) / "confusion_matrix.csv", result)
            evaluation.plot_confusion(Path(args.out) / "confusion_matrix.png", result)
    except (OSError, ValueError) as e:     # DataError is a ValueError; OSError: an unreadable file or folder
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: result[k] for k in ("accuracy", "macro_f1", "per_class", "confusion", "labels",
                                                 "split", "tta", "faces")}, allow_nan=False))
    else:
        print(f"{args.model} on {args.split if args.split != 'auto' else result['split']} "
              f"({TTA_TITLES[result['tta']]})")
        print(evaluation.format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
