"""Grayscale faces -> network input: one resize and one scaling, shared by every caller.

Training, evaluation and the webcam all call `Preprocessing.apply`, and a model file
stores `Preprocessing.to_dict()`, so the same face always becomes the same tensor.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

SCALES = ("unit", "symmetric", "standardize")


@dataclass(frozen=True)
class Preprocessing:
    """Resize faces to input_size x input_size, then scale pixel values x in 0..255.

    scale "unit": x / 255 in [0, 1]; "symmetric": (x / 255 - 0.5) * 2 in [-1, 1];
    "standardize": (x / 255 - mean) / std, with mean and std of x / 255 over the
    training pixels (seed 003): `Preprocessing(scale="standardize").fit(train_images)`.
    """

    input_size: int = 48
    scale: str = "unit"
    mean: float | None = None
    std: float | None = None

    def __post_init__(self):
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
            raise ValueError(f"Preprocessing: input_size must be an integer >= 8, received {self.input_size!r}")
        if self.scale not in SCALES:
            raise ValueError(f"Preprocessing: scale must be one of {', '.join(SCALES)}, received {self.scale!r}")
        if self.scale != "standardize" and (self.mean is not None or self.std is not None):
            raise ValueError(f"Preprocessing: mean and std are only used by scale 'standardize', not {self.scale!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("Preprocessing: give both mean and std, or neither (fit finds them)")
        if self.std is not None and not self.std > 0:
            raise ValueError(f"Preprocessing: std must be > 0, received {self.std!r}")

    def fit(self, images) -> Preprocessing:
        """A copy with mean and std of x / 255 over all pixels of uint8 training images.

        Only scale "standardize" uses them; other scales return an unchanged copy.
        Fit on the training set only: statistics from val or test leak into training.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.size == 0:
            raise ValueError(f"Preprocessing.fit: expected non-empty uint8 images, received {images.dtype} {images.shape}")
        if self.scale != "standardize":
            return dataclasses.replace(self)
        # A histogram of the 256 grey levels gives exact float64 statistics without a
        # float copy of the whole training set.
        counts = np.bincount(images.ravel(), minlength=256)
        levels = np.arange(256) / 255.0
        mean = float(counts @ levels / counts.sum())
        std = float(np.sqrt(counts @ (levels - mean) ** 2 / counts.sum()))
        return dataclasses.replace(self, mean=mean, std=std)

    def apply(self, faces) -> np.ndarray:
        """Faces -> float32 (N, S, S, 1) network input, S = input_size.

        faces: uint8 (N, h, w) or (N, h, w, 1), or a list of 2-D uint8 crops of any
        sizes (the webcam's faces). Each is resized to S x S with cv2.resize, INTER_AREA
        when shrinking both sides and INTER_LINEAR otherwise (no resize when already
        S x S), then scaled as the class docstring says.
        """
        if self.scale == "standardize" and self.mean is None:
            raise ValueError("Preprocessing: scale 'standardize' needs mean and std: call fit(train_images) first")
        x = self.resize(faces).astype(np.float32) / np.float32(255)
        if self.scale == "symmetric":
            x = (x - np.float32(0.5)) * np.float32(2)
        elif self.scale == "standardize":
            x = (x - np.float32(self.mean)) / np.float32(self.std)
        return x[..., np.newaxis]  # (N, S, S, 1)

    def resize(self, faces) -> np.ndarray:
        """faces (see apply) -> uint8 (N, S, S), each resized to S x S."""
        size = self.input_size
        crops = _as_crops(faces)
        if isinstance(crops, np.ndarray) and crops.shape[1:] == (size, size):
            return crops  # already the right size: no per-face loop
        pixels = np.empty((len(crops), size, size), np.uint8)
        for i, crop in enumerate(crops):
            pixels[i] = _resize(crop, size)
        return pixels

    def to_dict(self) -> dict:
        """The settings as a JSON-able dict (stored in model files)."""
        mean, std = (None if value is None else float(value) for value in (self.mean, self.std))  # np.float32 -> float
        return {"input_size": int(self.input_size), "scale": self.scale, "mean": mean, "std": std}

    @classmethod
    def from_dict(cls, d) -> Preprocessing:
        """Rebuild from to_dict(); unknown keys are an error, missing ones take defaults.

        A model that was trained to see every face blurred ("match_sharpness": true) cannot be
        used as it was meant to: it is refused, with the advice to retrain.
        """
        d = dict(d)
        if d.pop("match_sharpness", False):
            raise ValueError("Preprocessing.from_dict: the model was trained on blurred faces (match_sharpness), "
                             "which is no longer supported: retrain it with scripts/train.py")
        d.pop("sharpness", None)
        unknown = set(d) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Preprocessing.from_dict: unknown keys {sorted(unknown)}")
        return cls(**d)


def _as_crops(faces):
    """faces -> uint8 array (N, h, w) or a list of uint8 (h, w) crops; ValueError otherwise."""
    if isinstance(faces, (list, tuple)):
        crops = [np.asarray(face) for face in faces]
        crops = [crop[..., 0] if crop.ndim == 3 and crop.shape[2] == 1 else crop for crop in crops]
        for i, crop in enumerate(crops):
            if crop.ndim != 2 or crop.dtype != np.uint8 or crop.size == 0:
                raise ValueError(f"Preprocessing.apply: face {i} must be a 2-D uint8 crop, received {crop.dtype} {crop.shape}")
        return crops
    faces = np.asarray(faces)
    if faces.ndim == 4 and faces.shape[3] == 1:
        faces = faces[..., 0]
    if faces.ndim != 3 or faces.dtype != np.uint8:
        raise ValueError(f"Preprocessing.apply: expected uint8 (N, h, w) or (N, h, w, 1), received {faces.dtype} {faces.shape}")
    return faces


def _resize(crop, size):
    """One uint8 (h, w) crop -> uint8 (size, size)."""
    height, width = crop.shape
    if (height, width) == (size, size):
        return crop
    # INTER_AREA averages the pixels it merges (no aliasing) but is blocky when it
    # enlarges, so enlarging (on either side) uses INTER_LINEAR.
    interpolation = cv2.INTER_AREA if height >= size and width >= size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interpolation)

