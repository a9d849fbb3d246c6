"""Emotion probabilities for face crops, through the same preprocessing training used.

The model file carries its labels and its `Preprocessing` in `model.metadata`, so the
webcam and image prediction feed the network exactly the tensor evaluation feeds it.
"""
from pathlib import Path

import numpy as np

from fer.preprocess import Preprocessing


class EmotionClassifier:
    """A model plus its class names and preprocessing.

    model: has `predict(x, batch_size)`, x float32 (N, S, S, 1) -> probabilities (N, K).
    labels: the K class names, in the model's output order.
    preprocessing: has `apply(faces)`, a list of 2-D uint8 crops -> float32 (N, S, S, 1).
    """

    def __init__(self, model, labels, preprocessing):
        self.model = model
        self.labels = list(labels)
        self.preprocessing = preprocessing

    @classmethod
    def from_file(cls, path, fast=True):
        """Load a model file (or a run folder's model.npz) with `load_fer_model`'s checks."""
        return cls(*load_fer_model(path, fast))

    def prepare(self, crops):
        """The exact tensor fed to the model: float32 (N, S, S, 1) from a list of 2-D uint8 crops."""
        return self.preprocessing.apply(list(crops))

    def classify(self, crops):
        """Probabilities (N, K), float64, for a list of N 2-D uint8 face crops.

        All faces of a frame go through the network as one batch: one call per frame
        instead of one per face.
        """
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)))
        probs = np.asarray(self.model.predict(self.prepare(crops), batch_size=len(crops)), dtype=np.float64)
        if probs.shape != (len(crops), len(self.labels)):
            raise ValueError(
                f"EmotionClassifier: expected probabilities of shape {(len(crops), len(self.labels))} "
                f"for {len(self.labels)} labels, received {probs.shape}"
            )
        return probs


def load_fer_model(path, fast=True):
    """(model, labels, Preprocessing) from a minicnn model file with fer's metadata, or from a
    run folder of scripts/train.py (its model.npz). The one loader every script uses.
    fast: the model runs as the compiler's frozen inference steps (minicnn.compiler.freeze: fused
    steps, each BatchNormalization folded into the convolution before it), else as its textbook
    layers; both give the same probabilities.

    The metadata is checked against the network before any face is fed: one label per
    output, the preprocessing's face size equal to the model's (S, S, 1) input, and every
    weight finite (a diverged run's file would predict NaN). FileNotFoundError for a missing
    file, ValueError naming the file for anything else.
    """
    import minicnn  # here, so code that passes its own model object never needs it
    from minicnn import io
    from minicnn.compiler import freeze

    path = model_file(path)
    try:
        model = minicnn.load_model(path, compile=False)     # inference needs no optimizer
    except ValueError as error:      # read_npz and load_model name the file and what is wrong
        raise ValueError(f"{path} is not a usable minicnn model file ({error})") from None
    labels, preprocessing = _fer_metadata(path, model.metadata)
    if model.output_shape[-1] != len(labels):
        raise ValueError(f"{path}: {len(labels)} labels {labels} for a model with {model.output_shape[-1]} outputs")
    face = (preprocessing.input_size, preprocessing.input_size, 1)
    if tuple(model.input_shape[1:]) != face:
        raise ValueError(f"{path}: the preprocessing makes {face[0]}x{face[1]} grayscale faces {face}, "
                         f"but the model takes inputs {tuple(model.input_shape[1:])}")
    bad = [w.name for w in io.all_weights(model) if not np.isfinite(w.value).all()]
    if bad:
        raise ValueError(f"{path}: weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold inf or NaN "
                         f"(a diverged training run); the file cannot predict")
    model.jit_compile = fast            # Keras' attribute: a model that trains compiles again
    if fast:
        freeze(model)                   # inference steps, BatchNormalization folded in (minicnn/compiler/freeze.py)
    return model, labels, preprocessing


def model_file(path):
    """`path` itself, or the model.npz of a run folder; FileNotFoundError when there is none."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.npz").is_file():
            raise FileNotFoundError(f"model file not found: {path} is a folder without model.npz "
                                    f"(give a model file or a run folder of scripts/train.py)")
        return path / "model.npz"
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def _fer_metadata(path, metadata):
    """(labels, Preprocessing) from a model file's metadata; ValueError naming the file."""
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: its metadata is not a JSON object")
    missing = [key for key in ("labels", "preprocessing") if key not in metadata]
    if missing:
        raise ValueError(f"{path}: the model file has no {' or '.join(missing)} metadata; train it with "
                         f"scripts/train.py or convert it with scripts/convert_keras.py")
    labels = metadata["labels"]
    if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)):
        raise ValueError(f"{path}: its labels metadata is not a list of class names: {labels!r}")
    try:
        preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: bad preprocessing metadata ({type(error).__name__}: {error})") from None
    return list(labels), preprocessing


def emotion_record(probs, labels):
    """JSON-ready summary of one face's (K,) probabilities, renormalized to sum to 1.

    {"emotions": {label: prob, ...}, "top_emotion": label, "score": prob of the top label}
    """
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    top = int(np.argmax(probs))
    return {
        "emotions": {label: float(p) for label, p in zip(labels, probs)},
        "top_emotion": labels[top],
        "score": float(probs[top]),
    }
