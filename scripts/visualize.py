#!/usr/bin/env python
"""Pictures of what a trained model sees in one face: filters, feature maps, saliency, probabilities.

    python scripts/visualize.py --image photo.jpg --out viz/          # the shipped weights/mini_xception.npz
    python scripts/visualize.py --model run/model.npz --data ../shared/fer2013/fer2013.csv.gz --index 42 \\
        --out viz/ --target Happy --smoothgrad

The face: with --image, the largest face the Haar cascade finds (the whole image when it
finds none); with --data, row N of the FER2013 CSV (counting from 0). It is fed to the
network through the model file's own preprocessing. Writes to DIR:

  filters.png        the first convolution's kernels, one panel per (input channel, filter)
  feature_maps.png   the outputs of --layers for the face (default: each block's output, taken
                     as the last layer at each spatial resolution), up to 16 channels per layer,
                     the most active ones
  saliency.png       the network input, |dS/dx| (S: the class score before the softmax, as in
                     Simonyan et al. 2014; --of probability for the softmax output) and the two
                     overlaid, for the top class and for --target; --smoothgrad adds SmoothGrad
                     (the root mean square gradient over 25 noisy copies of the face)
  probabilities.png  the model's class probabilities

Exit code 1 on bad input: a missing file, an unknown layer or label, an index out of range.
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure  # no pyplot: drawn with Agg, no GUI, no global state

import minicnn
from fer import data as fer_data
from fer.faces import add_detector_arguments, crop, detector_from_args
from fer.inference import load_fer_model
from minicnn.io import atomic_write
from minicnn.layers import Conv2D, DepthwiseConv2D, Dropout, InputLayer, SeparableConv2D

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "mini_xception.npz"

MAX_CHANNELS = 16     # feature maps shown per layer
MAX_KERNELS = 256     # filter panels shown
SMOOTHGRAD_SAMPLES = 25


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 1."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="minicnn model file or run folder (default: %(default)s, the shipped weights)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="an image file with a face (anything OpenCV reads)")
    source.add_argument("--data", type=Path, metavar="CSV", help="the FER2013 CSV (or image folder); needs --index")
    parser.add_argument("--index", type=int, metavar="N", help="row of --data to show, from 0")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the PNG files")
    parser.add_argument("--layers", metavar="NAMES", help="comma-separated layer names for feature_maps.png")
    parser.add_argument("--target", metavar="LABEL", help="a second class for saliency.png (name or index)")
    parser.add_argument("--smoothgrad", action="store_true", help="add SmoothGrad maps to saliency.png")
    parser.add_argument("--of", choices=minicnn.explain.SCORES, default="logit",
                        help="differentiate the class score before the softmax (logit, default) or the probability")
    add_detector_arguments(parser, photos=True)
    args = parser.parse_args(argv)
    if (args.data is None) != (args.index is None):
        parser.error("--index goes with --data (and --data needs --index)")
    return args


# ---- inputs ------------------------------------------------------------------------------------

def load_model(path):
    """(model, labels, Preprocessing) from a model file or run folder, by fer's one loader."""
    try:
        return load_fer_model(path)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None


def face_from_image(path, args):
    """(uint8 gray face crop, description): the largest detected face, else the whole image."""
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:   # missing, not an image, or a format this OpenCV cannot decode
        raise UsageError(f"cannot read image {path}")
    try:
        boxes = detector_from_args(args, photos=True).detect(gray)
    except RuntimeError as error:   # no Haar cascade in this OpenCV
        raise UsageError(str(error)) from None
    if not boxes:
        print(f"visualize.py: no face found in {path}; using the whole image", file=sys.stderr)
        return gray, f"{path.name} (whole image)"
    box = max(boxes, key=lambda b: b[2] * b[3])
    return crop(gray, box), f"{path.name} face at {list(box)}"


def face_from_data(path, index):
    """(uint8 48x48 face, description) of row `index` of a FER2013 CSV or image folder."""
    try:
        data = fer_data.load(path)
    except (OSError, ValueError) as error:    # FileNotFoundError, DataError
        raise UsageError(str(error)) from None
    if not 0 <= index < len(data):
        raise UsageError(f"--index {index} is out of range: {path} has rows 0..{len(data) - 1}")
    true_label = fer_data.EMOTIONS[data.labels[index]]
    return data.images[index], f"{path.name} row {index} ({data.usage[index]}, labelled {true_label})"


def block_outputs(model):
    """Default feature-map layers: the last layer at each spatial resolution, largest first.

    A block of a CNN ends where the resolution drops (pooling, a strided conv), so this is
    each block's output before it shrinks. Dropout is skipped: at inference it only passes
    on what the layer before it computed.
    """
    last = {}
    for layer in model.nodes:
        if len(layer.output_shape) == 4 and not isinstance(layer, (InputLayer, Dropout)):
            last[layer.output_shape[1:3]] = layer.name        # later layers overwrite earlier ones
    return [last[hw] for hw in sorted(last, key=lambda hw: -hw[0] * hw[1])]


def chosen_layers(model, text):
    """The layer names of --layers ("a,b,c"), checked against the model; default: block_outputs."""
    names = block_outputs(model) if text is None else [name.strip() for name in text.split(",") if name.strip()]
    known = [layer.name for layer in model.nodes]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"unknown layer {', '.join(unknown)}; the model's layers: {', '.join(known)}")
    if not names:
        raise UsageError("no layers to show: give --layers, e.g. --layers " + ",".join(known[1:3]))
    return names


def target_index(labels, target):
    """A label name (any case) or its index -> the class index; None stays None."""
    if target is None:
        return None
    lowered = [label.lower() for label in labels]
    if target.lower() in lowered:
        return lowered.index(target.lower())
    if target.isdigit() and int(target) < len(labels):
        return int(target)
    raise UsageError(f"unknown --target {target!r}; the model's labels: {', '.join(labels)}")


# ---- figures -----------------------------------------------------------------------------------

def first_kernel(model):
    """(layer name, kernel (kh, kw, C, F)) of the first convolution, or (None, None)."""
    for layer in model.nodes:
        if isinstance(layer, Conv2D):
            return layer.name, layer.kernel.value
        if isinstance(layer, (DepthwiseConv2D, SeparableConv2D)):
            return layer.name, layer.depthwise_kernel.value      # (kh, kw, C, M): the spatial part
    return None, None


def filters_figure(model):
    """Each kernel[:, :, c, f] as a small image, on one shared colour scale centred at 0."""
    name, kernel = first_kernel(model)
    if kernel is None:
        return _message_figure("this model has no convolution")
    kh, kw, c, f = kernel.shape
    panels = [(ci, fi) for fi in range(f) for ci in range(c)][:MAX_KERNELS]
    cols = int(np.ceil(np.sqrt(len(panels))))
    rows = int(np.ceil(len(panels) / cols))
    width, height = 0.9 * cols + 1.4, 0.9 * rows + 0.9                # inches; 1.4 for the colour bar
    fig = Figure(figsize=(width, height))
    # Grids are laid out by hand: matplotlib's constrained layout takes seconds on hundreds of panels.
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={"hspace": 0.35, "wspace": 0.1})
    fig.subplots_adjust(left=0.02, right=1 - 1.3 / width, bottom=0.02, top=1 - 0.75 / height)
    limit = float(np.abs(kernel).max()) or 1.0               # one scale: kernels compare by strength
    for ax, (ci, fi) in zip(axes.flat, panels):
        image = ax.imshow(kernel[:, :, ci, fi], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"{fi}" if c == 1 else f"{fi}/in {ci}", fontsize=7, pad=2)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.colorbar(image, cax=fig.add_axes((1 - 1.1 / width, 0.1, 0.15 / width, 0.7)), label="weight")
    shown = "" if len(panels) == c * f else f", first {len(panels)} of {c * f}"
    fig.suptitle(f"{name}: {f} filters {kh}x{kw}, {c} input channel(s){shown}\nred > 0 > blue, one scale",
                 fontsize=9)
    return fig


def feature_maps_figure(activations, description):
    """One row per layer: its MAX_CHANNELS most active channels for the face, each on its own scale."""
    cols = min(MAX_CHANNELS, max(a.shape[-1] for a in activations.values()))
    fig = Figure(figsize=(1.0 * cols, 1.3 * len(activations) + 0.5))
    axes = fig.subplots(len(activations), cols, squeeze=False, gridspec_kw={"hspace": 0.3, "wspace": 0.05})
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.6 / fig.get_figheight())
    for row, (name, a) in zip(axes, activations.items()):
        a = a[0]                                              # the one face
        for ax in row:
            ax.set_axis_off()
        row[0].set_title(f"{name}: {a.shape}", loc="left", fontsize=9, pad=3)   # runs on over the row
        if a.ndim == 1:                                       # a Dense layer: one strip of units
            row[0].imshow(a[None, :], cmap="viridis", aspect="auto")
            continue
        strongest = np.argsort(-a.mean(axis=(0, 1)))[:cols]  # the channels this face excites most
        for ax, channel in zip(row, strongest):
            ax.imshow(a[:, :, channel], cmap="viridis", interpolation="nearest")
            ax.text(0.03, 0.97, str(channel), transform=ax.transAxes, color="white", fontsize=7, va="top",
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    fig.suptitle(f"feature maps (channel number in the corner, most active first): {description}", fontsize=10)
    return fig


def magnitude(gradient):
    """|dS/dx| of one sample (H, W, C) as a (H, W) map: the largest over channels (Simonyan)."""
    return np.abs(gradient).max(axis=-1)


def normalized(saliency):
    """Scale to [0, 1] by the 99th percentile, so a few extreme pixels do not wash the map out."""
    top = np.percentile(saliency, 99) or float(saliency.max()) or 1.0
    return np.clip(saliency / top, 0, 1)


def saliency_figure(face, rows, description, of):
    """rows: (title, {column title: (H, W) saliency}); columns: face, each map, the last map overlaid."""
    n_cols = 2 + len(rows[0][1])
    fig = Figure(figsize=(2.6 * n_cols, 2.8 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for ax_row, (title, maps) in zip(axes, rows):
        ax_row[0].imshow(face, cmap="gray")
        ax_row[0].set_title(f"input: {title}", fontsize=9)
        for ax, (map_title, saliency) in zip(ax_row[1:], maps.items()):
            ax.imshow(normalized(saliency), cmap="inferno", vmin=0, vmax=1)
            ax.set_title(map_title, fontsize=9)
        ax_row[-1].imshow(face, cmap="gray")
        last = list(maps.values())[-1]                        # SmoothGrad when there is one
        ax_row[-1].imshow(normalized(last), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax_row[-1].set_title("overlaid", fontsize=9)
        for ax in ax_row:
            ax.set_axis_off()
    score = "class score before softmax" if of == "logit" else "class probability"
    fig.suptitle(f"|d({score})/d(pixel)|\n{description}", fontsize=10)   # two lines: fits a 3-panel figure
    return fig


def probabilities_figure(probs, labels, highlight, description):
    """Horizontal bars, the top class (and the --target class) in a strong colour."""
    fig = Figure(figsize=(6, 0.45 * len(labels) + 1.2), layout="constrained")
    ax = fig.subplots()
    colors = ["tab:orange" if i in highlight else "tab:gray" for i in range(len(labels))]
    y = np.arange(len(labels))
    ax.barh(y, probs, color=colors)
    for i, p in enumerate(probs):
        ax.text(min(p, 0.85) + 0.01, i, f"{p:.3f}", va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()                                         # first label on top, as in the list
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_title(description, fontsize=9)
    return fig


def _message_figure(text):
    fig = Figure(figsize=(4, 1.5))
    fig.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def save_png(fig, path):
    """Write fig to path atomically: readers never see half a PNG."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


# ---- the run -----------------------------------------------------------------------------------

def visualize(args):
    """Everything main does but argument parsing; returns the paths written."""
    model, labels, preprocessing = load_model(args.model)
    layer_names = chosen_layers(model, args.layers)
    target = target_index(labels, args.target)
    face, description = face_from_image(args.image, args) if args.image else face_from_data(args.data, args.index)

    x = preprocessing.apply([face])                           # (1, S, S, 1), as training saw faces
    if x.shape[1:] != tuple(model.input_shape[1:]):
        raise UsageError(f"{args.model}: the model expects inputs {model.input_shape}, its preprocessing "
                         f"gives {x.shape}")
    probs = model.predict(x)[0]
    top = int(np.argmax(probs))
    classes = [top] + ([target] if target is not None and target != top else [])

    rows = []
    for c in classes:
        role = "top class" if c == top else "--target"
        maps = {"gradient": magnitude(minicnn.input_gradient(model, x, c, of=args.of)[0])}
        if args.smoothgrad:
            squares = minicnn.smoothgrad(model, x, c, n=SMOOTHGRAD_SAMPLES, of=args.of)[0]   # mean (dS/dx)^2
            maps["SmoothGrad (RMS)"] = magnitude(np.sqrt(squares))      # back in gradient units
        rows.append((f"{labels[c]} ({role}, p={probs[c]:.2f})", maps))

    figures = {
        "filters.png": filters_figure(model),
        "feature_maps.png": feature_maps_figure(minicnn.get_activations(model, x, layer_names), description),
        "saliency.png": saliency_figure(x[0, :, :, 0], rows, description, args.of),
        "probabilities.png": probabilities_figure(probs, labels, classes, description),
    }
    written = [args.out / name for name in figures]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for path, fig in zip(written, figures.values()):
            save_png(fig, path)
    except OSError as error:
        raise UsageError(f"cannot write to {args.out}: {error}") from None
    print(f"{description}: predicted {labels[top]} (p={probs[top]:.3f})")
    return written


def main(argv=None):
    args = parse_args(argv)
    try:
        written = visualize(args)
    except UsageError as error:
        print(f"visualize.py: error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
