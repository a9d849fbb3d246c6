"""Knowledge distillation (Hinton, Vinyals and Dean 2015): the student trains on targets that mix
the true label with what trained teachers predict, so it also learns which other expressions a
face resembles (a fearful face that looks surprised), which one-hot labels cannot say.

    y = (1 - a) * one_hot(label) + a * mean over teachers of p_teacher(face)

The teachers' probabilities are computed once per run (offline distillation), flip-averaged, on
the training faces as inference sees them (no augmentation), and kept in the run folder
(RUN/teacher.npz, with the teachers' sha256), so a resumed run trains on exactly the targets it
started with.
"""
from pathlib import Path

import numpy as np

from minicnn.files import FORMAT, read_npz, write_npz

from . import evaluation
from .data import content_hash
from .inference import load_fer_model

TARGETS_FILE = "teacher.npz"


def teacher_probabilities(paths, faces, label_names, fast=True):
    """Mean over the teacher model files `paths` of their flip-averaged probabilities (N, K) on
    uint8 faces (N, 48, 48); each teacher applies its own preprocessing. ValueError naming the
    file when a teacher's labels are not `label_names`."""
    total = 0.0
    for path in paths:
        model, labels, preprocessing = load_fer_model(path, fast)
        if list(labels) != list(label_names):
            raise ValueError(f"{path}: a teacher must predict this run's classes {list(label_names)}, "
                             f"but it predicts {list(labels)}")
        total = total + evaluation.predict_probabilities(model, preprocessing.apply(faces), tta=True)
    return (total / len(paths)).astype(np.float32)


def mixed_targets(labels, teacher_p, weight):
    """(1 - weight) * one_hot(labels) + weight * teacher_p, rows summing to 1: (N,) ints, (N, K) -> (N, K)."""
    if not 0 < weight < 1:
        raise ValueError(f"the distillation weight must be in (0, 1), received {weight!r}")
    one_hot = np.eye(teacher_p.shape[1], dtype=np.float32)[labels]
    return (1 - weight) * one_hot + weight * teacher_p


def run_targets(run, paths, faces, label_names, fast=True):
    """The teachers' probabilities on the run's training faces, computed at the run's start and
    written to RUN/teacher.npz; a resumed run reads them back (its teachers' files may have changed
    or gone since: the targets stay those the run began with)."""
    path = Path(run) / TARGETS_FILE
    if path.exists():
        return saved_targets(path, (len(faces), len(label_names)))
    probabilities = teacher_probabilities(paths, faces, label_names, fast)
    meta = {"format": FORMAT, "teachers": [str(p) for p in paths], "teacher_sha256": [content_hash(p) for p in paths]}
    write_npz(path, {"probabilities": probabilities}, meta)
    return probabilities


def saved_targets(path, shape):
    """RUN/teacher.npz's probabilities, checked: the expected shape, finite rows that sum to 1.
    ValueError naming the file otherwise."""
    _, arrays = read_npz(path)
    if "probabilities" not in arrays:
        raise ValueError(f"{path}: no 'probabilities' array; not a file of teachers' targets")
    probabilities = np.asarray(arrays["probabilities"], dtype=np.float32)
    if probabilities.shape != shape:
        raise ValueError(f"{path}: probabilities of shape {probabilities.shape}, but this run's training "
                         f"split needs {shape}")
    if not np.isfinite(probabilities).all() or not np.allclose(probabilities.sum(axis=1), 1, atol=1e-3):
        raise ValueError(f"{path}: the rows are not probability distributions; delete it to recompute them")
    return probabilities
