"""Random rotation, shift, zoom and flip of face batches, as Keras' ImageDataGenerator, and
random erasing (Zhong et al. 2017): a random rectangle of noise, so no one region decides.

Each image gets one affine warp (cv2.warpAffine) that does all four at once, so a
batch of 64 48x48 faces costs about a millisecond. The random stream is the
augmenter's own and can be saved and restored, so an interrupted training run
resumes with exactly the batches it would have seen.
"""
import copy

import cv2
import numpy as np

# Keras fill modes (scipy.ndimage names) -> the OpenCV border that fills the same way.
BORDERS = {
    "nearest": cv2.BORDER_REPLICATE,  # aaaa|abcd|dddd
    "constant": cv2.BORDER_CONSTANT,  # 0000|abcd|0000 (Keras cval=0)
    "reflect": cv2.BORDER_REFLECT,  # dcba|abcd|dcba
    "wrap": cv2.BORDER_WRAP,  # abcd|abcd|abcd
}

ERASE_AREA = (0.02, 0.33)  # share of the image an erased rectangle covers (torchvision's defaults)
ERASE_RATIO = (0.3, 3.3)  # its height / width


class Augmenter:
    """Random affine augmentation of image batches, with Keras ImageDataGenerator meanings.

    rotation_range: degrees, angle uniform in [-r, r]. width_shift_range,
    height_shift_range: fractions of the width / height, shift uniform in [-f, f].
    zoom_range: zoom factors for x and y each uniform in [1 - z, 1 + z] (above 1 shows
    more of the image, as in Keras). horizontal_flip: mirror with probability 0.5.
    fill_mode: how pixels from outside the image are filled, one of BORDERS.
    erasing_probability: chance that an image gets one rectangle of uniform noise over
    ERASE_AREA of its area, with aspect ratio (height / width) in ERASE_RATIO, as torchvision's
    RandomErasing: the network must not lean on any one part of the face.
    seed: for the augmenter's own numpy Generator.
    """

    def __init__(
        self,
        rotation_range=10.0,
        width_shift_range=0.1,
        height_shift_range=0.1,
        zoom_range=0.1,
        horizontal_flip=True,
        fill_mode="nearest",
        erasing_probability=0.0,
        seed=None,
    ):
        for name, value, limit in [
            ("rotation_range", rotation_range, 180),
            ("width_shift_range", width_shift_range, 1),
            ("height_shift_range", height_shift_range, 1),
            ("zoom_range", zoom_range, 1),
        ]:
            if not 0 <= value < limit:
                raise ValueError(f"Augmenter: {name} must be in [0, {limit}), received {value!r}")
        if not 0 <= erasing_probability <= 1:
            raise ValueError(f"Augmenter: erasing_probability must be in [0, 1], received {erasing_probability!r}")
        if fill_mode not in BORDERS:
            raise ValueError(f"Augmenter: fill_mode must be one of {', '.join(BORDERS)}, received {fill_mode!r}")
        self.rotation_range = float(rotation_range)
        self.width_shift_range = float(width_shift_range)
        self.height_shift_range = float(height_shift_range)
        self.zoom_range = float(zoom_range)
        self.horizontal_flip = bool(horizontal_flip)
        self.fill_mode = fill_mode
        self.erasing_probability = float(erasing_probability)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __call__(self, images):
        """A randomly warped copy of a batch: uint8 (N, H, W) or float (N, H, W, 1) in, same out.

        The input is never modified.
        """
        images = np.asarray(images)
        channels_last = images.ndim == 4 and images.shape[3] == 1
        if not (images.ndim == 3 or channels_last) or images.dtype not in (np.uint8, np.float32, np.float64):
            raise ValueError(
                f"Augmenter: expected uint8 (N, H, W) or float (N, H, W, 1), received {images.dtype} {images.shape}"
            )
        planes = images[..., 0] if channels_last else images  # (N, H, W) view
        n, height, width = planes.shape
        matrices = self._draw_matrices(n, height, width)

        out = np.empty_like(images)
        out_planes = out[..., 0] if channels_last else out
        border = BORDERS[self.fill_mode]
        for i in range(n):
            out_planes[i] = cv2.warpAffine(
                planes[i],
                matrices[i],
                (width, height),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,  # matrices map output to input pixels
                borderMode=border,
                borderValue=0,
            )
        if self.erasing_probability:
            self._erase(out_planes)
        return out

    def _erase(self, planes):
        """Random erasing in place on (N, H, W): each image, with erasing_probability, gets one
        rectangle of uniform noise, over 0-255 for uint8 faces, else over the batch's value range."""
        rng = self._rng
        n, height, width = planes.shape
        chosen = rng.random(n) < self.erasing_probability
        area = rng.uniform(*ERASE_AREA, n) * height * width
        ratio = np.exp(rng.uniform(*np.log(ERASE_RATIO), n))
        h = np.clip(np.round(np.sqrt(area * ratio)), 1, height).astype(int)
        w = np.clip(np.round(np.sqrt(area / ratio)), 1, width).astype(int)
        top = (rng.random(n) * (height - h + 1)).astype(int)
        left = (rng.random(n) * (width - w + 1)).astype(int)
        uint8 = planes.dtype == np.uint8
        low, high = (0.0, 255.0) if uint8 else (float(planes.min()), float(planes.max()))
        for i in np.flatnonzero(chosen):
            noise = rng.uniform(low, high, (h[i], w[i]))
            planes[i, top[i]:top[i] + h[i], left[i]:left[i] + w[i]] = noise.round() if uint8 else noise

    def _draw_matrices(self, n, height, width):
        """n random 2x3 maps from output pixel (x, y) to the input pixel it samples: (n, 2, 3).

        As Keras: input = c + R Z F (p - c) + R t, for output pixel p, image centre c,
        rotation R, zoom Z = diag(zx, zy), flip F = diag(+-1, 1) and shift t.
        """
        rng = self._rng
        angle = np.deg2rad(rng.uniform(-self.rotation_range, self.rotation_range, n))
        shift_x = rng.uniform(-self.width_shift_range, self.width_shift_range, n) * width
        shift_y = rng.uniform(-self.height_shift_range, self.height_shift_range, n) * height
        zoom_x, zoom_y = rng.uniform(1 - self.zoom_range, 1 + self.zoom_range, (2, n))
        flip = np.where(rng.random(n) < 0.5, -1.0, 1.0) if self.horizontal_flip else np.ones(n)

        cos, sin = np.cos(angle), np.sin(angle)
        a = np.stack([cos * zoom_x * flip, -sin * zoom_y, sin * zoom_x * flip, cos * zoom_y], axis=1)
        a = a.reshape(n, 2, 2)  # R Z F
        centre = np.array([(width - 1) / 2, (height - 1) / 2])  # Keras' size / 2 - 0.5
        rotated_shift = np.stack([cos * shift_x - sin * shift_y, sin * shift_x + cos * shift_y], axis=1)  # R t
        offset = centre + rotated_shift - a @ centre  # (n, 2)
        return np.concatenate([a, offset[:, :, np.newaxis]], axis=2)  # (n, 2, 3)

    def get_state(self) -> dict:
        """The random generator's state, a JSON-able dict (save it with a checkpoint)."""
        return copy.deepcopy(self._rng.bit_generator.state)

    def set_state(self, state):
        """Restore a state from get_state(): the next batches repeat exactly."""
        self._rng.bit_generator.state = copy.deepcopy(state)

    def to_dict(self) -> dict:
        """The settings, JSON-able: Augmenter(**to_dict()) builds the same augmenter."""
        return {
            "rotation_range": self.rotation_range,
            "width_shift_range": self.width_shift_range,
            "height_shift_range": self.height_shift_range,
            "zoom_range": self.zoom_range,
            "horizontal_flip": self.horizontal_flip,
            "fill_mode": self.fill_mode,
            "erasing_probability": self.erasing_probability,
            "seed": self.seed,
        }
