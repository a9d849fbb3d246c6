#!/usr/bin/env python
"""Export a minicnn model file to ONNX (onnxruntime, phones, browsers) or to Keras 3 (.keras).

    python scripts/export.py weights/mini_xception.npz mini_xception.onnx
    python scripts/export.py weights/mini_xception.npz mini_xception.keras

The format follows OUT's extension. The ONNX model takes minicnn's input as it is, NHWC float32
(N, S, S, 1) after the file's preprocessing, and returns the class probabilities (N, K); the
labels and preprocessing are in its metadata_props as JSON ("labels", "preprocessing").
MODEL is a model file or a run folder of scripts/train.py, read by fer's one loader (labels,
preprocessing and finite weights checked; a preprocessing fer no longer supports is refused: the
exported model could not be fed as it was trained). Exit code 1 on bad input, with one line
`error: ...`.
"""
import argparse
import os
import sys

from fer.cli import same_file
from fer.inference import load_fer_model, model_file

FORMATS = (".onnx", ".keras")


def export(model_path, out_path):
    """Read `model_path`, write `out_path` in the format its extension names; returns the model."""
    extension = os.path.splitext(str(out_path))[1].lower()
    if extension not in FORMATS:
        raise ValueError(f"{out_path}: name the output .onnx or .keras (the extension picks the format)")
    if same_file(model_file(model_path), out_path):
        raise ValueError(f"{out_path}: the output would overwrite the input")
    model, _, _ = load_fer_model(model_path)
    if extension == ".onnx":
        from minicnn.onnx import export_onnx
        export_onnx(model, out_path)
    else:
        model.save(out_path)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="minicnn model file (.npz or .keras) or a run folder of scripts/train.py")
    p.add_argument("out", help="file to write: .onnx or .keras")
    args = p.parse_args(argv)
    try:
        model = export(args.model, args.out)
    except (OSError, ValueError, ImportError) as e:      # OSError: an unwritable output too
        print(f"error: {e}", file=sys.stderr)
        return 1
    labels = model.metadata.get("labels")
    print(f"wrote {args.out}: {model.name}, input {model.input_shape} NHWC, output {model.output_shape}"
          + (f", labels {', '.join(labels)}" if labels else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
