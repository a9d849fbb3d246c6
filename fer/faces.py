"""Face detection with OpenCV's Haar cascades (and dlib's HOG detector taking turns with them
on video), and the small image helpers around it.

Boxes are `(x, y, w, h)` tuples of ints in full-frame pixel coordinates, the layout
OpenCV's `detectMultiScale` returns. Frames are NumPy arrays as OpenCV reads them: BGR
`(H, W, 3)` uint8, or already gray `(H, W)`.
"""
from argparse import ArgumentTypeError, BooleanOptionalAction
from pathlib import Path

import cv2
import numpy as np

from fer.cli import non_negative_int, positive_int
from fer.tracking import iou

# The alt2 cascade (Lienhart's tree-based Gentle AdaBoost, 20x20) finds more faces than the default one at the same
# cost and without its false faces around a large face, at 3 neighbours (see FaceDetector's min_neighbors).
CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
MIN_NEIGHBORS = 3
# A frontal cascade finds a face upright to within about 15 degrees; searching the frame turned by
# 30 degrees each way as well covers heads tilted up to about 45 degrees, as people lean at a webcam.
TILTS = (-30, 30)
EXTRA_WIDTH = 320   # the extra searches' copy: they catch a face the main one misses, for the tracker to hold


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


class HogFaces:
    """dlib's HOG + linear SVM frontal face detector, searched the way a cascade is
    (`detectMultiScale`), so it can take a turn among the cascades' searches.

    Histograms of gradient directions see a face's outline and features where a Haar cascade's
    light-dark rectangles fail: a laughing face with its eyes shut, a face lit from one side. Its
    80-px window finds smaller faces only on an upsampled image: a `minSize` under 80 px upsamples once.
    Needs the dlib package (`pip install dlib-bin`); ImportError saying so otherwise.
    """

    WINDOW = 80

    def __init__(self):
        try:
            import dlib
        except ImportError:
            raise ImportError("the HOG face search needs dlib: pip install dlib-bin") from None
        self.detector = dlib.get_frontal_face_detector()

    def detectMultiScale(self, image, minSize=(0, 0), maxSize=None, **cascade_options):
        """Boxes (n, 4) float (x, y, w, h) of the faces in a 2-D uint8 image, of side minSize..maxSize."""
        upsample = 1 if minSize[0] < self.WINDOW else 0
        found = np.asarray([(r.left(), r.top(), r.width(), r.height())
                            for r in self.detector(image, upsample)], dtype=float).reshape(-1, 4)
        side = found[:, 2]
        keep = (side >= minSize[0]) & (side <= (maxSize[0] if maxSize else np.inf))
        return found[keep]


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
    """Frontal faces in a gray frame, found by Haar cascades on a downscaled copy.

    Args:
        min_face: smallest face side to report, in full-frame pixels.
        scale_factor: step between the cascade's image scales (1.1 = 10%). A coarser step is
            faster but skips face sizes that fall between two steps: the cascade then misses
            a face for frames on end (benchmarks/webcam_pipeline.py measures both).
        min_neighbors: overlapping hits a face needs; higher drops more false faces. alt2's
            stricter stages leave fewer hits on a face than the default cascade does (OpenCV's own
            face detection sample runs the alt cascades at 2), and the live tracker shows a face
            only from its second detection, so a one-frame false hit never reaches the screen.
        detect_width: run the cascade on a copy at most this wide (None: full size).
            The cascade's cost grows with the pixel count, so 640 -> 400 is about 2.5x
            faster; an 80-px face in a 640-px frame is 50 px in the copy, enough for the cascade
            to find it (at 320 px wide it found such a face on few frames).
        near_step: the scale step of `detect_near`, the look around a track's expected box that
            the live loop takes when the whole-frame pass missed it; None: never. The window is
            resized to the track's size, so its pyramid meets the face at scales the frame's skips.
        cascade: the main cascade's file (one of opencv-python's cv2.data.haarcascades).
        second_cascade: another cascade's file, or None. Cascades trained apart miss different
            faces (a dark face, glasses, a squint), so a face either one finds is found.
        second_neighbors: min_neighbors of the second cascade (None: min_neighbors). Cascades
            differ in how many overlapping hits a face collects, so each gets its own threshold.
        tilts: angles in degrees (e.g. (-30, 30)) at which the frame is also searched turned, for
            heads tilted sideways: a frontal cascade finds faces upright to within about 15 degrees.
        extra_width: every search but the main cascade upright (the HOG search, the turned ones, a
            second cascade) runs on a copy at most this wide (None: full size), never wider than
            detect_width's: they catch a face the main search misses for the tracker to hold, which
            a smaller copy does at less cost. HOG's 80-px window, upsampled once, then sees faces
            from 80 * width / (2 * extra_width) px (80 in a 640-px frame); the main search from min_face.
        hog: also search with dlib's HOG detector (HogFaces), which finds faces the cascades
            cannot (eyes shut in a laugh, one side lit); on video it is one of the searches that
            take turns. Needs dlib (a dependency of this package, `dlib-bin`).
        take_turns: each `detect` call runs one of the searches (see `search_in_turn`), so extra
            searches cost no time per frame, only delay; False runs them all on every call (still
            photos get one look only).

    The defaults suit video, where a tracker covers a frame's miss; still photos get one look
    only, so `FaceDetector.for_photos()` searches the full-size image.
    """

    def __init__(self, min_face=48, scale_factor=1.1, min_neighbors=MIN_NEIGHBORS, detect_width=400,
                 near_step=1.1, cascade=CASCADE_FILE, second_cascade=None, second_neighbors=None, tilts=TILTS,
                 extra_width=EXTRA_WIDTH, take_turns=True, hog=True):
        if scale_factor <= 1.0 or (near_step is not None and near_step <= 1.0):
            raise ValueError(f"FaceDetector: scale_factor and near_step must be > 1, "
                             f"received {scale_factor} and {near_step}")
        self.near_step = near_step
        self.min_face = min_face
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.detect_width = detect_width
        self.cascade = load_cascade(cascade)
        self.second_cascade = load_cascade(second_cascade) if second_cascade else None
        self.second_neighbors = min_neighbors if second_neighbors is None else second_neighbors
        self.tilts = tuple(tilts)
        self.extra_width = narrower(extra_width, detect_width)
        self.hog = HogFaces() if hog else None
        self.take_turns = take_turns
        self.turn = 0  # the search the next `detect` call runs, when take_turns

    @classmethod
    def for_photos(cls, min_face=48, scale_factor=1.1, min_neighbors=MIN_NEIGHBORS, detect_width=None, hog=False,
                   **searches):
        """A detector for still images: full resolution by default, every search at once, no tracking to
        lean on; the HOG search only when asked (on a full-size photo it costs seconds)."""
        return cls(min_face, scale_factor, min_neighbors, detect_width, near_step=None, take_turns=False, hog=hog,
                   **{"extra_width": detect_width, **searches})

    def searches(self):
        """(cascade, tilt in degrees, min_neighbors): each cascade upright, the HOG search (if on), then
        the main cascade at each tilt."""
        upright = [(self.cascade, 0, self.min_neighbors)]
        if self.second_cascade is not None:
            upright.append((self.second_cascade, 0, self.second_neighbors))
        if self.hog is not None:
            upright.append((self.hog, 0, None))
        return upright + [(self.cascade, tilt, self.min_neighbors) for tilt in self.tilts]

    def search_in_turn(self, searches):
        """The search of this turn: the main cascade upright on every other turn, where most faces are
        found, and the other searches in turn between (with no other search, the main one every turn)."""
        others = searches[1:]
        if not others or self.turn % 2 == 0:
            return searches[0]
        return others[(self.turn // 2) % len(others)]

    def copy_width(self, searcher, tilt):
        """The width of the copy a search runs on: detect_width for the main cascade upright, extra_width else."""
        return self.detect_width if searcher is self.cascade and not tilt else self.extra_width

    def detect(self, gray):
        """Faces in a 2-D uint8 frame (H, W): a list of (x, y, w, h), sorted by x, then y."""
        if gray.ndim != 2:
            raise ValueError(f"FaceDetector.detect: expected a 2-D gray frame, received shape {gray.shape}")
        searches = self.searches()
        if self.take_turns:
            searches, self.turn = [self.search_in_turn(searches)], self.turn + 1
        boxes, copies = [], {}                  # copies: width -> (copy, scale), made once a call
        for cascade, tilt, neighbors in searches:
            width = self.copy_width(cascade, tilt)
            if width not in copies:
                copies[width] = downscaled(gray, width)
            small, scale = copies[width]
            min_side = max(1, round(self.min_face * scale))
            found = search(cascade, small, tilt, scaleFactor=self.scale_factor, minNeighbors=neighbors,
                           minSize=(min_side, min_side))
            boxes += in_frame(found, scale, (0, 0), gray.shape)
        return sorted(distinct(boxes))

    def detect_near(self, gray, box, step=None, margin=0.5, side=48):
        """The face closest to `box` in a window around it, resized to the box; None if none.

        A face the whole-frame pass missed (its scale fell between two of the pyramid's steps)
        is looked for where a track expects it, at scale step `step` (default: near_step): the
        window is `margin` of the box's side wider on each side, resized so the box is `side` px,
        and only faces of 0.7-1.4 times the box's size are tried, so the look stays cheap.
        The searches are tried in order until one finds a face: a track keeps the face whichever
        search first found it.
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
        for cascade, tilt, neighbors in self.searches():
            found = search(cascade, window, tilt, scaleFactor=step or self.near_step,
                           minNeighbors=neighbors, minSize=(lo, lo), maxSize=(hi, hi))
            boxes = in_frame(found, scale, (x0, y0), gray.shape)
            if boxes:
                return max(boxes, key=lambda found_box: iou(found_box, box))
        return None


def narrower(width, other):
    """The smaller of two widths, None meaning no limit."""
    return other if width is None else width if other is None else min(width, other)


def downscaled(gray, width):
    """(copy, scale): `gray` resized to at most `width` px wide (None: as it is), and the factor applied.
    Downscale only, never upscale: upscaling adds no detail, only cost."""
    height, full_width = gray.shape
    if not width or full_width <= width:
        return gray, 1.0
    scale = width / full_width
    size = (max(1, round(full_width * scale)), max(1, round(height * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA), scale


def search(cascade, image, tilt, **options):
    """The cascade's boxes in `image`, as float (n, 4) (x, y, w, h) in its pixels.

    With a tilt, the image is turned by -tilt degrees about its centre first, so a face tilted
    by `tilt` stands upright for the cascade; each box found is turned back about its centre
    and reported upright, at the same size.
    """
    if not tilt:
        return np.asarray(cascade.detectMultiScale(image, **options), dtype=float).reshape(-1, 4)
    height, width = image.shape
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), -tilt, 1.0)
    turned = cv2.warpAffine(image, turn, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    found = np.asarray(cascade.detectMultiScale(turned, **options), dtype=float).reshape(-1, 4)
    back = cv2.invertAffineTransform(turn)  # (2, 3)
    centres = (found[:, :2] + found[:, 2:] / 2) @ back[:, :2].T + back[:, 2]  # (n, 2)
    return np.column_stack([centres - found[:, 2:] / 2, found[:, 2:]])


def in_frame(found, scale, origin, shape):
    """Boxes found in a copy scaled by `scale` of the part of the frame from `origin` (x, y) on,
    as int (x, y, w, h) in full-frame pixels, clamped to the frame of `shape` (H, W): a box
    the cascade reports running off the edge (or a tilted search turns out of it) is cut to it."""
    height, width = shape
    boxes = []
    for x, y, w, h in np.asarray(found, dtype=float).reshape(-1, 4) / scale:
        x0, y0 = max(0, int(round(origin[0] + x))), max(0, int(round(origin[1] + y)))
        x1, y1 = min(width, int(round(origin[0] + x + w))), min(height, int(round(origin[1] + y + h)))
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1 - x0, y1 - y0))
    return boxes


def distinct(boxes):
    """The boxes less any whose centre lies in a box kept before it: two searches that found one face."""
    kept = []
    for box in boxes:
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        if not any(x <= cx < x + w and y <= cy < y + h for x, y, w, h in kept):
            kept.append(box)
    return kept



# --- the scripts' shared detector flags -------------------------------------------------------

def add_detector_arguments(parser, photos):
    """The detector's flags, the same on predict.py, visualize.py and webcam.py.

    photos: True for still images (full resolution by default), False for video (400 px wide).
    """
    width = "full size" if photos else "400"
    group = parser.add_argument_group("face detection (OpenCV Haar cascade, dlib HOG)")
    group.add_argument("--min-face", type=positive_int, default=48,
                       help="smallest face side in pixels (default: 48)")
    group.add_argument("--scale-factor", type=_above_one, default=1.1,
                       help="step between the cascade's scales, > 1; larger is faster and misses more (default: 1.1)")
    group.add_argument("--min-neighbors", type=non_negative_int, default=MIN_NEIGHBORS,
                       help=f"hits a face needs; higher drops more false faces (default: {MIN_NEIGHBORS})")
    group.add_argument("--detect-width", type=non_negative_int, default=None if photos else 400,
                       help=f"detect on a copy at most this wide, 0 = full size (default: {width}); on video the "
                            f"extra searches (HOG, the frame turned for tilted heads) use a copy at most "
                            f"{EXTRA_WIDTH} px wide")
    group.add_argument("--hog", action=BooleanOptionalAction, default=not photos,
                       help=f"also search with dlib's HOG face detector (default: {'off' if photos else 'on'})")


def detector_from_args(args, photos):
    """The FaceDetector the flags of `add_detector_arguments` ask for."""
    width = args.detect_width or None
    if photos:
        return FaceDetector.for_photos(args.min_face, args.scale_factor, args.min_neighbors, width, hog=args.hog)
    return FaceDetector(args.min_face, args.scale_factor, args.min_neighbors, width, hog=args.hog)


def _above_one(text):
    value = float(text)
    if not value > 1.0 or not np.isfinite(value):
        raise ArgumentTypeError(f"must be a number > 1, received {text}")
    return value
