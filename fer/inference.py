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
    def from_file(cls, path):
        """Load a model saved by minicnn, with the labels and preprocessing in its metadata."""
        import minicnn  # here, so code that passes its own model object never needs it

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            model = minicnn.load_model(path)
            metadata = model.metadata
            labels = metadata["labels"]
            preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
        except Exception as error:  # a corrupt or foreign file fails in many ways; name the file
            raise ValueError(f"{path} is not a usable minicnn model file ({type(error).__name__}: {error})") from error
        return cls(model, labels, preprocessing)

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
