"""A light IoU tracker: keeps an id per face across frames and smooths its emotion probabilities.

Faces move little between two frames, so a box is matched to the track whose last box it
overlaps most (greedy by IoU). Smoothing the probabilities along a track stops the label
from flickering between two close emotions from frame to frame.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)  # compared by identity: a track is one object, probs an array
class Track:
    """One face followed over frames.

    track_id: int, unique for the tracker's life, from 0 in order of appearance.
    box: (x, y, w, h) of the last matched detection.
    probs: smoothed class probabilities (K,) summing to 1, or None until first classified.
    age: updates the track has lived through, 1 in the update that created it.
    missed: updates in a row without a matching box (0 when seen this update).
    """

    track_id: int
    box: tuple
    probs: np.ndarray = None
    age: int = 1
    missed: int = 0


def iou(a, b):
    """Intersection over union of two (x, y, w, h) boxes, in [0, 1]."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter_w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    inter_h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def normalize(probs):
    """Probabilities as float64 (K,) summing to 1 (float32 model outputs drift by ~1e-7)."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum()


class IoUTracker:
    """Greedy IoU matching of boxes to tracks, with an exponential moving average of probabilities.

    Args:
        iou_threshold: least IoU between a box and a track's last box for a match.
        max_missed: a track unmatched for more than this many updates in a row is dropped.
        smooth: weight of the past in `new = smooth * old + (1 - smooth) * current`;
            0 turns smoothing off (each track shows exactly its latest probabilities).
    """

    def __init__(self, iou_threshold=0.3, max_missed=5, smooth=0.6):
        if not 0.0 <= smooth < 1.0:
            raise ValueError(f"IoUTracker: smooth must be in [0, 1), received {smooth}")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.smooth = smooth
        self.tracks = []
        self.next_id = 0

    def update(self, boxes, probs=None):
        """Match this frame's boxes to tracks; returns one Track per box, in the order of `boxes`.

        boxes: list of (x, y, w, h). probs: (len(boxes), K) probabilities, or None on a
        frame that was not classified: matched tracks then keep their smoothed probabilities.
        """
        boxes = [tuple(int(v) for v in box) for box in boxes]
        if probs is not None and len(probs) != len(boxes):
            raise ValueError(f"IoUTracker.update: {len(boxes)} boxes but {len(probs)} rows of probabilities")

        # Greedy matching: best IoU pair first, each track and each box used at most once.
        # Ties break by track then box order, so the result never depends on set ordering.
        pairs = []
        for t, track in enumerate(self.tracks):
            for b, box in enumerate(boxes):
                overlap = iou(track.box, box)
                if overlap > 0 and overlap >= self.iou_threshold:
                    pairs.append((-overlap, t, b))
        pairs.sort()
        track_of_box = {}
        used_tracks = set()
        for _, t, b in pairs:
            if t not in used_tracks and b not in track_of_box:
                used_tracks.add(t)
                track_of_box[b] = self.tracks[t]

        # Every old track ages and counts a miss; the matched ones are reset to 0 below.
        for track in self.tracks:
            track.age += 1
            track.missed += 1

        result = []
        for b, box in enumerate(boxes):
            track = track_of_box.get(b)
            if track is None:
                track = Track(track_id=self.next_id, box=box)
                self.next_id += 1
                self.tracks.append(track)
            track.box = box
            track.missed = 0
            if probs is not None:
                track.probs = self.smoothed(track.probs, probs[b])
            result.append(track)
        self.tracks = [track for track in self.tracks if track.missed <= self.max_missed]
        return result

    def smoothed(self, old, current):
        """EMA step `smooth * old + (1 - smooth) * current`, renormalized; `current` alone when no history."""
        current = normalize(current)
        if old is None:
            return current
        return normalize(self.smooth * old + (1.0 - self.smooth) * current)
