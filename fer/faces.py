"""Face detection with OpenCV's Haar cascade, and the small image helpers around it.

Boxes are `(x, y, w, h)` tuples of ints in full-frame pixel coordinates, the layout
OpenCV's `detectMultiScale` returns. Frames are NumPy arrays as OpenCV reads them: BGR
`(H, W, 3)` uint8, or already gray `(H, W)`.
"""
from argparse import ArgumentTypeError
from pathlib import Path

import cv2
import numpy as np

from fer.tracking import iou

CASCADE_FILE = "haarcascade_frontalface_default.xml"


def to_gray(frame):
    """Return the frame as 2-D uint8 grayscale: (H, W, 3) BGR, (H, W, 4) BGRA or (H, W) in."""
    if frame.ndim == 2:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 1:
        return frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"to_gray: expected a (H, W), (H, W, 3) or (H, W, 4) image, received shape {frame.shape}")


def crop(gray, box):
    """Cut box `(x, y, w, h)` out of a 2-D gray frame: a (h, w) uint8 copy."""
    x, y, w, h = box
    # A copy, so the crop stays valid while the frame buffer is reused by the next read.
    return gray[y:y + h, x:x + w].copy()


def load_cascade(name=CASCADE_FILE):
    """Load one of the Haar cascades that ship with opencv-python 4.x."""
    path = Path(cv2.data.haarcascades) / name if hasattr(cv2, "data") else Path(name)
    cascade = cv2.CascadeClassifier(str(path)) if path.is_file() else None
    if cascade is None or cascade.empty():
        raise RuntimeError(
            f"Could not load the Haar cascade {path} (OpenCV {cv2.__version__}). It ships with "
            "opencv-python 4.x; OpenCV 5 dropped the Haar cascades, so install 'opencv-python>=4.8,<5'."
        )
    return cascade


class FaceDetector:
    """Frontal faces in a gray frame, found by the Haar cascade on a downscaled copy.

    Args:
        min_face: smallest face side to report, in full-frame pixels.
        scale_factor: step between the cascade's image scales (1.1 = 10%). A coarser step is
            faster but skips face sizes that fall between two steps: the cascade then misses
            a face for frames on end (benchmarks/webcam_pipeline.py measures both).
        min_neighbors: overlapping hits a face needs; higher drops more false faces.
        detect_width: run the cascade on a copy at most this wide (None: full size).
            The cascade's cost grows with the pixel count, so 640 -> 320 is about 4x
            faster, and the smallest face it sees, 24 px, is 48 px in the full frame.
        near_step: the finer scale step of `detect_near`, the look around a track's expected
            box that the live loop takes when the whole-frame pass missed it; None: never.

    The defaults suit video, where a tracker covers a frame's miss; still photos get one look
    only, so `FaceDetector.for_photos()` searches the full-size image.
    """

    def __init__(self, min_face=48, scale_factor=1.1, min_neighbors=5, detect_width=320, near_step=1.05):
        if scale_factor <= 1.0 or (near_step is not None and near_step <= 1.0):
            raise ValueError(f"FaceDetector: scale_factor and near_step must be > 1, "
                             f"received {scale_factor} and {near_step}")
        self.near_step = near_step
        self.min_face = min_face
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.detect_width = detect_width
        self.cascade = load_cascade()

    @classmethod
    def for_photos(cls, min_face=48, scale_factor=1.1, min_neighbors=5, detect_width=None):
        """A detector for still images: full resolution by default, no tracking to lean on."""
        return cls(min_face, scale_factor, min_neighbors, detect_width, near_step=None)

    def detect(self, gray):
        """Faces in a 2-D uint8 frame (H, W): a list of (x, y, w, h), sorted by x, then y."""
        if gray.ndim != 2:
            raise ValueError(f"FaceDetector.detect: expected a 2-D gray frame, received shape {gray.shape}")
        height, width = gray.shape
        # Downscale only, never upscale: upscaling adds no detail, only cost.
        scale = 1.0
        if self.detect_width and width > self.detect_width:
            scale = self.detect_width / width
        small = gray
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        min_side = max(1, round(self.min_face * scale))
        found = self.cascade.detectMultiScale(
            small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
        )

        boxes = []
        for x, y, w, h in np.asarray(found, dtype=float).reshape(-1, 4) / scale:
            # Back to full-frame pixels, clamped: the cascade may report a box that runs off the edge.
            x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
            x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1 - x0, y1 - y0))
        return sorted(boxes)

    def detect_near(self, gray, box, step=None, margin=0.5, side=48):
        """The face closest to `box` in a window around it, searched at a fine scale step; None if none.

        A face the whole-frame pass missed (its scale fell between two of the pyramid's steps)
        is looked for where a track expects it, at scale step `step` (default: near_step): the
        window is `margin` of the box's side wider
        on each side, resized so the box is `side` px, and only faces of 0.7-1.4 times the box's
        size are tried, so the fine step stays cheap.
        """
        height, width = gray.shape
        x, y, w, h = box
        pad = int(round(margin * max(w, h)))
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(width, x + w + pad), min(height, y + h + pad)
        if x1 - x0 < w // 2 or y1 - y0 < h // 2 or min(w, h) < 1:
            return None
        scale = min(1.0, side / max(w, h))
        window = gray[y0:y1, x0:x1]
        if scale < 1.0:
            size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
            window = cv2.resize(window, size, interpolation=cv2.INTER_AREA)
        lo, hi = max(24, round(0.7 * max(w, h) * scale)), round(1.4 * max(w, h) * scale)
        if hi < lo:
            return None
        found = self.cascade.detectMultiScale(window, scaleFactor=step or self.near_step, minNeighbors=self.min_neighbors,
                                              minSize=(lo, lo), maxSize=(hi, hi))
        boxes = [(int(round(x0 + fx / scale)), int(round(y0 + fy / scale)), int(round(fw / scale)),
                  int(round(fh / scale))) for fx, fy, fw, fh in np.asarray(found).reshape(-1, 4)]
        return max(boxes, key=lambda found_box: iou(found_box, box), default=None)



# --- the scripts' shared detector flags -------------------------------------------------------

def add_detector_arguments(parser, photos):
    """The detector's flags, the same on predict.py, visualize.py and webcam.py.

    photos: True for still images (full resolution by default), False for video (320 px wide).
    """
    width = "full size" if photos else "320"
    group = parser.add_argument_group("face detection (OpenCV Haar cascade)")
    group.add_argument("--min-face", type=_at_least(1, int), default=48,
                       help="smallest face side in pixels (default: 48)")
    group.add_argument("--scale-factor", type=_above_one, default=1.1,
                       help="step between the cascade's scales, > 1; larger is faster and misses more (default: 1.1)")
    group.add_argument("--min-neighbors", type=_at_least(0, int), default=5,
                       help="hits a face needs; higher drops more false faces (default: 5)")
    group.add_argument("--detect-width", type=_at_least(0, int), default=None if photos else 320,
                       help=f"detect on a copy at most this wide, 0 = full size (default: {width})")


def detector_from_args(args, photos):
    """The FaceDetector the flags of `add_detector_arguments` ask for."""
    width = args.detect_width or None
    if photos:
        return FaceDetector.for_photos(args.min_face, args.scale_factor, args.min_neighbors, width)
    return FaceDetector(args.min_face, args.scale_factor, args.min_neighbors, width)


def _at_least(low, kind):
    def parse(text):
        value = kind(text)
        if value < low:
            raise ArgumentTypeError(f"must be >= {low}, received {value}")
        return value
    return parse


def _above_one(text):
    value = float(text)
    if not value > 1.0 or not np.isfinite(value):
        raise ArgumentTypeError(f"must be a number > 1, received {text}")
    return value
