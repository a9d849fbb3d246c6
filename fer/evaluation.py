"""Scores and pictures of a classifier's predictions: accuracy, macro-F1, per-class table, confusion matrix.

    precision_k = TP_k / predicted_k     recall_k = TP_k / true_k     F1_k = 2 P R / (P + R)
    macro-F1 = mean over classes of F1_k (every class counts the same, however rare: Disgust too)
"""
import csv
import io as _io

import numpy as np
# Figures are drawn on their own Agg canvas, never through pyplot: importing this module leaves
# matplotlib's global backend alone (a notebook that imports it keeps showing its plots).
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from minicnn.io import atomic_write


# Faces per forward pass when predicting: a batch of 64 keeps each layer's arrays in cache, where
# bigger batches were slower (benchmarks/models.py times inference batches).
PREDICT_BATCH = 64


TTA_MODES = ("flip", "shift")
TTA_SHIFT = 3   # pixels a "shift" view moves the face: within the training augmentation's shifts


def predict_probabilities(model, x, batch_size=PREDICT_BATCH, tta=False):
    """Class probabilities (N, K), averaged over the test-time views of `tta_views`."""
    views = tta_views(x, tta)
    return sum(model.predict(view, batch_size=batch_size) for view in views) / len(views)


def plain_and_flip_reports(model, x, y_true, labels, batch_size=PREDICT_BATCH):
    """{False: report, True: report}: one view a face, and averaged with its mirror image (tta=True).
    The plain view's probabilities serve both, so the model runs twice, not three times."""
    plain, mirrored = (model.predict(view, batch_size=batch_size) for view in tta_views(x, "flip"))
    flip = sum([plain, mirrored]) / 2              # predict_probabilities' sum, to the bit
    return {False: report(y_true, plain.argmax(axis=1), labels), True: report(y_true, flip.argmax(axis=1), labels)}


def tta_views(x, tta):
    """The copies of a batch x (N, H, W, C) that test-time augmentation averages over.

    tta False: x alone. "flip" (or True): x and its mirror image. "shift": those two, each
    also moved TTA_SHIFT pixels up, down, left and right (edge pixels repeated), 10 views.
    """
    mode = tta_mode(tta)
    if mode == "none":
        return [x]
    flips = [x, np.ascontiguousarray(x[:, :, ::-1])]
    if mode == "flip":
        return flips
    return [moved for view in flips for moved in [view, *shifted_copies(view, TTA_SHIFT)]]


def tta_mode(tta):
    """The name of the views `tta` asks for: "none" (False), "flip" (True or "flip") or "shift"."""
    mode = {False: "none", True: "flip"}[tta] if isinstance(tta, bool) else tta
    if mode not in ("none", *TTA_MODES):
        raise ValueError(f"tta must be False, True or one of {', '.join(TTA_MODES)}, received {tta!r}")
    return mode


def shifted_copies(x, d):
    """x (N, H, W, C) moved d pixels down, up, right and left, the uncovered edge repeated."""
    padded = np.pad(x, ((0, 0), (d, d), (d, d), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    corners = [(0, d), (2 * d, d), (d, 0), (d, 2 * d)]   # (top, left) of each window into padded
    return [np.ascontiguousarray(padded[:, top:top + h, left:left + w]) for top, left in corners]


def confusion_matrix(y_true, y_pred, num_classes):
    """counts[i, j] = faces of true class i predicted as class j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def report(y_true, y_pred, labels):
    """{"accuracy", "macro_f1", "per_class": {label: {precision, recall, f1, support}}, "confusion", "labels"}."""
    confusion = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    per_class = {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for label, p, r, f, s in zip(labels, precision, recall, f1, actual)}
    return {"accuracy": float(tp.sum() / max(confusion.sum(), 1)), "macro_f1": float(f1.mean()),
            "per_class": per_class, "confusion": confusion.tolist(), "labels": list(labels)}


def format_report(result):
    """The per-class table and the two headline figures, as text."""
    lines = [f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for label, row in result["per_class"].items():
        lines.append(f"{label:<10} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>7.3f} "
                     f"{row['support']:>8d}")
    total = sum(row["support"] for row in result["per_class"].values())
    lines.append(f"accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   ({total} faces)")
    return "\n".join(lines)


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_confusion_csv(path, result):
    buffer = _io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true \\ predicted"] + result["labels"])
    for label, row in zip(result["labels"], result["confusion"]):
        writer.writerow([label] + row)
    write_text(path, buffer.getvalue())


def _new_figure(figsize):
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def plot_confusion(path, result, title="Confusion matrix (rows: true class, normalized)"):
    """Row-normalized confusion matrix with labels and the percentage in each cell."""
    counts = np.array(result["confusion"], dtype=float)
    normalized = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    labels = result["labels"]
    fig = _new_figure((1.0 * len(labels) + 2, 1.0 * len(labels) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{100 * normalized[i, j]:.0f}", ha="center", va="center",
                    color="white" if normalized[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(f"{title}\naccuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save_figure(fig, path)


def plot_curves(path, history):
    """Loss and accuracy per epoch, training vs validation. history: {"loss": [...], "val_loss": [...], ...}.

    Markers on every epoch (a one-epoch run is one point, not an empty line), integer epoch ticks.
    """
    fig = _new_figure((10, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "o-"), (f"val_{metric}", "s--")):
            values = history.get(key, [])
            if values:
                ax.plot(range(1, len(values) + 1), values, style, markersize=3,
                        label="validation" if key.startswith("val_") else "training")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    _save_figure(fig, path)
