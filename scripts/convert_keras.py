#!/usr/bin/env python
"""Convert a Keras model file (Keras 2 HDF5, or Keras 3 .keras) into a minicnn model file with FER
labels and preprocessing. The format is read from the file's content, not its name.

    python scripts/convert_keras.py ../shared/reference/mini_xception_keras.hdf5 weights/mini_xception_keras.npz

The output works with evaluate.py, predict.py and webcam.py. Labels default to FER2013's
seven emotions in dataset order, the input size to the Keras model's, the scaling to
"symmetric" ((x / 255 - 0.5) * 2, what the published mini-Xception was trained on).
Exit code 1 on bad input (missing file, not HDF5, a layer minicnn does not have, a dataset
stored outside the file), 2 on bad arguments (an output that is the input).
"""
import argparse
import sys

from fer.cli import same_file
from fer.data import CLASS_MAPS
from fer.preprocess import SCALES, Preprocessing
from minicnn.keras3 import is_keras3_file, load_keras3
from minicnn.keras_h5 import load_keras_h5


def convert(keras_path, out_path, labels=None, input_size=None, scale="symmetric", mean=None, std=None,
            class_map=None):
    """Load `keras_path`, attach the metadata fer's scripts read, save to `out_path`; returns the model."""
    if labels is None:
        class_map = class_map or "fer7"
        labels = list(CLASS_MAPS[class_map])
    elif class_map is None:    # name the class map these labels are, if any, so evaluate.py can use it
        class_map = next((name for name, names in CLASS_MAPS.items() if list(names) == labels), None)
    elif list(CLASS_MAPS[class_map]) != labels:
        raise ValueError(f"--labels {labels} are not the classes of --class-map {class_map} "
                         f"({list(CLASS_MAPS[class_map])})")
    model = load_keras3(keras_path) if is_keras3_file(keras_path) else load_keras_h5(keras_path)
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1:
        raise ValueError(f"{keras_path}: fer feeds square grayscale faces (None, S, S, 1); "
                         f"the model expects {shape}")
    if input_size is not None and input_size != shape[1]:
        raise ValueError(f"--input-size {input_size}, but the model's input is {shape[1]}x{shape[2]}")
    if model.output_shape[-1] != len(labels):
        raise ValueError(f"{keras_path}: the model has {model.output_shape[-1]} outputs, "
                         f"but {len(labels)} labels were given: {labels}")
    if scale == "standardize" and (mean is None or std is None):
        raise ValueError("--scale standardize needs --mean and --std (of x / 255 over the training pixels)")
    preprocessing = Preprocessing(input_size=shape[1], scale=scale, mean=mean, std=std)
    model.metadata = {"labels": list(labels), "class_map": class_map, "preprocessing": preprocessing.to_dict(),
                      "architecture": f"keras:{model.name}", "source": str(keras_path)}
    model.save(out_path)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("keras_file", help="Keras model file written by model.save(): Keras 2 .h5/.hdf5 or Keras 3 .keras")
    p.add_argument("out", help="minicnn model file to write (.npz)")
    p.add_argument("--labels", help="comma-separated class names in output order (default: those of --class-map, fer7: "
                   "FER2013's 7 emotions in dataset order)")
    p.add_argument("--class-map", choices=sorted(CLASS_MAPS), help="the FER class map the outputs follow")
    p.add_argument("--input-size", type=int, help="face size S (default: the model's input size)")
    p.add_argument("--scale", choices=SCALES, default="symmetric", help="pixel scaling (default: %(default)s)")
    p.add_argument("--mean", type=float, help="with --scale standardize: mean of x / 255")
    p.add_argument("--std", type=float, help="with --scale standardize: std of x / 255")
    args = p.parse_args(argv)
    if same_file(args.out, args.keras_file):
        p.error(f"the output {args.out} is the Keras file itself: writing it would destroy the input")
    labels = [name.strip() for name in args.labels.split(",")] if args.labels else None
    try:
        model = convert(args.keras_file, args.out, labels, args.input_size, args.scale, args.mean, args.std,
                        args.class_map)
    except (OSError, ValueError, ImportError) as e:     # OSError: an unwritable output too
        print(f"error: {e}", file=sys.stderr)
        return 1
    model.summary()
    print(f"wrote {args.out}: labels {', '.join(model.metadata['labels'])}; "
          f"preprocessing {model.metadata['preprocessing']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
