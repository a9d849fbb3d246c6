"""Synthetic webcam clips with ground truth: FER2013 PublicTest faces moving over a textured scene.

Each clip is 640x480 (by default) and knows, for every frame, where every face is. A clip
holds three faces of different sizes (80-200 px) that move: one is in view throughout and
grows as it comes nearer, one enters from the right edge, one leaves through the left edge.
The scene gets darker and then brighter again half-way, and a bar passes over one face.

Faces are drawn from PublicTest by a seeded random choice, never by asking a detector,
so a pipeline is measured on the faces it is given, not on faces it happens to like.

    faces = load_faces(csv_path, count=3, seed=0)
    clip = Clip.standard(faces, frames=300)
    for t in range(clip.frames):
        frame, truth = clip.render(t)      # BGR uint8 (480, 640, 3), [FaceTruth, ...]

The benchmark (benchmarks/webcam_pipeline.py) and tests/test_live.py both build their
videos here, and score a pipeline's per-frame output with `score`.
"""
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

WIDTH, HEIGHT = 640, 480
PUBLIC_TEST_START = 28709  # first PublicTest row of fer2013.csv: 28,709 Training rows come before it
MATCH_IOU = 0.3            # least IoU for a reported box to count as a face it overlaps


def load_faces(csv_path, count, seed=0, pool=400):
    """`count` PublicTest faces, (48, 48) uint8, chosen at random (seeded) among the first `pool`."""
    table = pd.read_csv(csv_path, skiprows=range(1, PUBLIC_TEST_START + 1), nrows=pool)
    if (table["Usage"] != "PublicTest").any():
        raise ValueError(f"{csv_path}: rows {PUBLIC_TEST_START + 1}.. are not all PublicTest")
    rows = np.random.default_rng(seed).choice(len(table), size=count, replace=False)
    return [np.array(table["pixels"][r].split(), dtype=np.uint8).reshape(48, 48) for r in rows]


@dataclass
class FaceTruth:
    """Where one face is on one frame. in_view: wholly inside the frame (partly hidden by the bar is still in view).

    visible: the part of `box` inside the frame (the box itself when in view), what a detector can see.
    """

    face: int
    box: tuple
    in_view: bool
    visible: tuple = None


@dataclass
class Path:
    """A face's straight path: box (x, y, size) at frame `start` and at frame `end`, still before and after."""

    start: int
    end: int
    begin: tuple
    finish: tuple

    def at(self, t):
        a = float(np.clip((t - self.start) / max(self.end - self.start, 1), 0.0, 1.0))
        x, y, size = (b + a * (f - b) for b, f in zip(self.begin, self.finish))
        return int(round(x)), int(round(y)), int(round(size))


class Clip:
    """Faces on paths over a textured background, with a brightness change and an occluding bar.

    faces: (48, 48) uint8 images. paths: one Path per face. dim: (first, last) frame of the
    brightness dip (gain down to `dim_gain` and back). bar: (face index, first, last frame)
    during which a flat bar covers the left quarter of that face.
    """

    def __init__(self, faces, paths, frames, dim=None, dim_gain=0.55, bar=None, seed=0,
                 width=WIDTH, height=HEIGHT):
        if len(faces) != len(paths):
            raise ValueError(f"Clip: {len(faces)} faces but {len(paths)} paths")
        self.faces, self.paths, self.frames = faces, paths, frames
        self.dim, self.dim_gain, self.bar = dim, dim_gain, bar
        self.width, self.height = width, height
        self.scene = textured_background(width, height, seed)

    @classmethod
    def standard(cls, faces, frames=300, seed=0, face_scale=1.0):
        """The benchmark's scene for three faces, scaled to `frames` (at least 30); face_scale
        multiplies every face's side (80-200 px at 1)."""
        if len(faces) != 3:
            raise ValueError(f"Clip.standard: expected 3 faces, received {len(faces)}")
        f = frames - 1
        side = lambda px: max(1, int(round(px * face_scale)))  # noqa: E731
        paths = [
            Path(0, f, (300, 150, side(80)), (200, 60, side(150))),                      # in view, nearing
            Path(int(0.15 * f), int(0.55 * f), (WIDTH, 40, side(120)), (420, 60, side(120))),  # enters right
            Path(int(0.5 * f), f, (40, 270, side(200)), (-side(230), 260, side(200))),   # leaves left
        ]
        return cls(faces, paths, frames, dim=(int(0.2 * f), int(0.45 * f)), bar=(0, int(0.6 * f), int(0.75 * f)),
                   seed=seed)

    def gain(self, t):
        """Brightness factor of frame t: 1, down to dim_gain in the middle of `dim`, back to 1."""
        if self.dim is None or not self.dim[0] <= t <= self.dim[1]:
            return 1.0
        a = (t - self.dim[0]) / max(self.dim[1] - self.dim[0], 1)
        return 1.0 - (1.0 - self.dim_gain) * (1.0 - abs(2.0 * a - 1.0))

    def render(self, t):
        """Frame t as BGR uint8 (height, width, 3) and the truth for each face on it."""
        frame = self.scene.copy()
        truth = []
        for k, (face, path) in enumerate(zip(self.faces, self.paths)):
            x, y, size = path.at(t)
            paste(frame, face, x, y, size)
            inside = x >= 0 and y >= 0 and x + size <= self.width and y + size <= self.height
            visible = x < self.width and y < self.height and x + size > 0 and y + size > 0
            if visible:
                x0, y0 = max(x, 0), max(y, 0)
                part = (x0, y0, min(x + size, self.width) - x0, min(y + size, self.height) - y0)
                truth.append(FaceTruth(k, (x, y, size, size), inside, part))
            if self.bar and self.bar[0] == k and self.bar[1] <= t <= self.bar[2]:
                cv2.rectangle(frame, (x, y - 10), (x + size // 4, y + size + 10), (90, 110, 120), cv2.FILLED)
        gain = self.gain(t)
        if gain != 1.0:
            frame = cv2.convertScaleAbs(frame, alpha=gain)
        return frame, truth

    def write(self, path, fps=30):
        """Write the clip as an mp4v video; returns the truth, one list per frame."""
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (self.width, self.height))
        if not writer.isOpened():
            raise OSError(f"could not open {path} for writing an mp4v video")
        truths = []
        for t in range(self.frames):
            frame, truth = self.render(t)
            writer.write(frame)
            truths.append(truth)
        writer.release()
        return truths


def textured_background(width, height, seed):
    """A colour gradient with soft blotches (blurred noise): a room more than a studio wall."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([60 + 80 * xx / width, 90 + 0 * xx, 150 - 60 * yy / height], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 16)
    noise *= 14 / max(float(noise.std()), 1e-6)
    return np.clip(base + noise[:, :, None], 0, 255).astype(np.uint8)


def paste(frame, face, x, y, size):
    """A gray face enlarged to size x size with its top-left at (x, y), clipped to the frame, in place."""
    big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, width), min(y + size, height)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = big[y0 - y:y1 - y, x0 - x:x1 - x, None]


# --- scoring ------------------------------------------------------------------------------------

@dataclass
class Score:
    """A pipeline's output held against the truth, over a clip.

    recall: face-frames in view that were reported / face-frames in view.
    false_per_frame: reported boxes that overlap no face (in view or partly out) / frames.
    id_switches: times a face's reported id differs from the id it was last reported with.
    never_found: faces in view on some frame but never reported; never_found_frames: their
    face-frames in view. `found_recall` leaves them out: the share a pipeline keeps of the
    faces its detector can see at all. before_found: face-frames in view before a face's first
    report (the detector's latency); `kept_recall` leaves those out too: the share reported
    once a face has been found, which is the tracker's part.
    """

    face_frames: int = 0
    reported: int = 0
    false_faces: int = 0
    frames: int = 0
    id_switches: int = 0
    never_found: int = 0
    never_found_frames: int = 0
    before_found: int = 0

    @property
    def recall(self):
        return self.reported / max(self.face_frames, 1)

    @property
    def found_recall(self):
        return self.reported / max(self.face_frames - self.never_found_frames, 1)

    @property
    def kept_recall(self):
        return self.reported / max(self.face_frames - self.never_found_frames - self.before_found, 1)

    @property
    def false_per_frame(self):
        return self.false_faces / max(self.frames, 1)

    def add(self, other):
        for name in ("face_frames", "reported", "false_faces", "frames", "id_switches", "never_found",
                     "never_found_frames", "before_found"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def score(truths, reports):
    """Score per-frame reports against per-frame truth.

    truths: one list of FaceTruth per frame. reports: one list of (track_id, box) per frame.
    Each frame's boxes are matched to faces greedily by IoU (>= MATCH_IOU) with the part of
    each face inside the frame.
    """
    result = Score(frames=len(truths))
    last_id, in_view, reported = {}, {}, {}
    for truth, report in zip(truths, reports):
        pairs = sorted((-iou(face.visible or face.box, box), f, r) for f, face in enumerate(truth)
                       for r, (_, box) in enumerate(report) if iou(face.visible or face.box, box) >= MATCH_IOU)
        face_of, used = {}, set()
        for _, f, r in pairs:
            if f not in face_of and r not in used:
                face_of[f] = r
                used.add(r)
        result.false_faces += len(report) - len(used)
        for f, face in enumerate(truth):
            result.face_frames += face.in_view
            in_view[face.face] = in_view.get(face.face, 0) + face.in_view
            if f not in face_of:
                result.before_found += face.in_view and face.face not in reported
                continue
            result.reported += face.in_view
            reported[face.face] = reported.get(face.face, 0) + face.in_view
            track_id = report[face_of[f]][0]
            if last_id.get(face.face, track_id) != track_id:
                result.id_switches += 1
            last_id[face.face] = track_id
    unseen = [face for face, count in in_view.items() if count and not reported.get(face)]
    result.never_found = len(unseen)
    result.never_found_frames = sum(in_view[face] for face in unseen)
    result.before_found -= result.never_found_frames
    return result


def iou(a, b):
    """Intersection over union of two (x, y, w, h) boxes."""
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - w * h
    return w * h / union if union > 0 else 0.0
