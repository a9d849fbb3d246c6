"""A light IoU tracker: keeps one id per face across frames, through short detector misses.

Faces move little between two frames, so a box is matched to the track whose predicted box
it overlaps most (greedy by IoU). A face detector misses a face now and then (a blink of the
cascade, a hand in front, a change of light); a track that misses a detection is carried on
its last motion, so the face stays on screen with its id and label, and is matched again when
the detector finds it: a face seen long is carried through an occlusion, one seen briefly or
cut by the frame's edge (leaving it) ends soon. A box centred inside a shown face's box, or
where a face just went out of the frame, is (part of) that face, never a new one. A track is shown only from its `min_hits`-th detection, so a stray false
detection never flashes up. Smoothing the probabilities along
a track stops the label from flickering between two close emotions from frame to frame.
"""
from dataclasses import dataclass

import numpy as np

# Share of its motion a carried track keeps at each further missed update. A velocity learnt from
# a few jittery boxes could otherwise walk a still face's box away from it within a dozen frames.
COAST = 0.8
DUPLICATE_IOU = 0.5  # two boxes detected in one frame that overlap this much show the same face
# Least ratio of the narrower to the wider of two boxes on one face: the detector's scale steps and
# jitter change a face's box by less; a box on part of the face (an eye, a half cut by the edge) is narrower.
SAME_SIZE = 0.7


@dataclass(eq=False)  # compared by identity: a track is one object, probs an array
class Track:
    """One face followed over frames.

    track_id: int once confirmed (unique for the tracker's life, from 0 in order of
        confirmation, never reused), None while tentative.
    box: (x, y, w, h) this frame: the matched detection, or the prediction when missed.
    probs: smoothed class probabilities (K,) summing to 1, or None until first classified.
    age: updates the track has lived through, 1 in the update that created it.
    hits: detections matched to it so far.
    missed: updates in a row without a matching box (0 when detected this update).
    velocity: smoothed move of the box's centre (dx, dy) per update, from its detections.
    """

    track_id: int = None
    box: tuple = (0, 0, 0, 0)
    probs: np.ndarray = None
    age: int = 1
    hits: int = 1
    missed: int = 0
    velocity: tuple = (0.0, 0.0)
    anchor: tuple = None  # the last detected box, where predictions start from

    @property
    def detected(self):
        """True when a detection was matched to the track in the latest update."""
        return self.missed == 0

    @property
    def confirmed(self):
        return self.track_id is not None

    def predicted_box(self, ahead=1):
        """Where the face should be `ahead` updates after its latest one: the last detection, moved.

        Only the centre moves: a box's size is the detector's least steady output, and
        extrapolating it shrinks or swells a carried box within a few frames.
        """
        steps = self.missed + ahead
        # 1 + d + d^2 + ... over `steps` updates: the carried face slows down (see COAST).
        travel = steps if COAST == 1.0 else (1.0 - COAST ** steps) / (1.0 - COAST)
        x, y, w, h = self.anchor
        return int(round(x + travel * self.velocity[0])), int(round(y + travel * self.velocity[1])), w, h


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


def visible_fraction(box, frame_size):
    """Share of a box's area inside a (width, height) frame."""
    x, y, w, h = box
    width, height = frame_size
    inside = max(0, min(x + w, width) - max(x, 0)) * max(0, min(y + h, height) - max(y, 0))
    return inside / (w * h) if w * h > 0 else 0.0


def centre(box):
    x, y, w, h = box
    return x + w / 2, y + h / 2


def inside(point, box):
    """True when an (x, y) point lies inside an (x, y, w, h) box."""
    x, y, w, h = box
    return x <= point[0] < x + w and y <= point[1] < y + h


def same_face(a, b):
    """Two boxes of about one size (SAME_SIZE), each centred inside the other: one face, moved or re-found."""
    return (min(a[2], b[2]) >= SAME_SIZE * max(a[2], b[2]) and inside(centre(a), b) and inside(centre(b), a))


def distance(a, b):
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


def clip_box(box, frame_size):
    """The part of a box inside a (width, height) frame."""
    x, y, w, h = box
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(frame_size[0], x + w), min(frame_size[1], y + h)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class IoUTracker:
    """Greedy IoU matching of boxes to predicted tracks, with carried misses and smoothed probabilities.

    Args:
        iou_threshold: least IoU between a box and a track's predicted box for a match.
        max_missed: a track is carried (shown on its predicted box) for at most this many
            updates in a row without a detection, then dropped: the default spans a hand or a
            passer-by in front of a face at webcam rates. A track carries at most as many updates
            as it has detections, so a face seen long outlasts an occlusion while a briefly seen
            one (a likely false face) ends soon.
        short_missed: the carry of a track seen briefly, or whose predicted box is no longer
            wholly inside the frame (a face leaving it: the detector loses faces cut by the edge).
        merge_parts: a box whose centre lies inside a shown track's box without matching it is
            that face: re-associated to the track when of about its size with the track's centre
            inside it too (the face moved while carried), otherwise dropped (a part of it).
        min_hits: detections a track needs before it is shown and gets an id (1 shows every
            detection at once, as a detector alone would).
        smooth: weight of the past in `new = smooth * old + (1 - smooth) * current`;
            0 turns smoothing off (each track shows exactly its latest probabilities).
        motion: weight of the newest step in the velocity average; 0 carries boxes in place.
        carry_before_look: updates a shown track is carried on its motion before `to_look_for`
            asks for a closer look near it: a face detected on the last frame is still about where
            its track predicts, and a look costs more than all the tracker's own work; 0 asks at once.
    """

    def __init__(self, iou_threshold=0.3, max_missed=60, min_hits=2, smooth=0.6, motion=0.3, short_missed=5,
                 merge_parts=True, carry_before_look=1):
        if not 0.0 <= smooth < 1.0:
            raise ValueError(f"IoUTracker: smooth must be in [0, 1), received {smooth}")
        if min_hits < 1 or min(max_missed, short_missed, carry_before_look) < 0:
            raise ValueError(f"IoUTracker: min_hits must be >= 1, max_missed, short_missed and carry_before_look "
                             f">= 0, received {min_hits}, {max_missed}, {short_missed} and {carry_before_look}")
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.short_missed = short_missed
        self.merge_parts = merge_parts
        self.min_hits = min_hits
        self.smooth = smooth
        self.motion = motion
        self.carry_before_look = carry_before_look
        self.tracks = []
        self.exits = []  # shown tracks that ended cut by the frame's edge, still moving out (see `carry`)
        self.next_id = 0

    def shown(self):
        """The confirmed tracks, detected this update or carried: what the screen and the log show."""
        return [track for track in self.tracks if track.confirmed]

    def unmatched(self, boxes):
        """Live tracks whose predicted box no box in `boxes` matches: where a closer look may pay."""
        return [track for track in self.tracks
                if all(iou(track.predicted_box(), box) < self.iou_threshold for box in boxes)]

    def to_look_for(self, boxes):
        """The unmatched tracks worth a closer look this frame: the tentative ones (more detections
        show them) and the shown ones carried for at least carry_before_look updates."""
        return [track for track in self.unmatched(boxes)
                if not track.confirmed or track.missed >= self.carry_before_look]

    def update(self, boxes, probs=None, frame_size=None):
        """Match this frame's boxes to tracks; returns the shown tracks (see `shown`).

        boxes: list of (x, y, w, h). probs: (len(boxes), K) probabilities, or None on a
        frame that was not classified: tracks then keep their smoothed probabilities, as do
        carried tracks. frame_size: (width, height); a carried track whose predicted box is
        mostly outside the frame has left it and is dropped.
        """
        boxes = [tuple(int(v) for v in box) for box in boxes]
        if probs is not None and len(probs) != len(boxes):
            raise ValueError(f"IoUTracker.update: {len(boxes)} boxes but {len(probs)} rows of probabilities")
        track_of_box = self.match(boxes)
        parts = self.merge_parts_of_faces(boxes, track_of_box) if self.merge_parts else set()
        seen = set()
        for b, box in enumerate(boxes):
            if b in parts:
                continue
            track = track_of_box.get(b)
            if track is None:
                track = Track(box=box, anchor=box, age=0, hits=0)
                self.tracks.append(track)
            self.see(track, box)
            seen.add(id(track))
            if probs is not None:
                track.probs = self.smoothed(track.probs, probs[b])
        self.carry([track for track in self.tracks if id(track) not in seen], frame_size)
        self.move_exits()
        self.drop_duplicates()
        for track in self.tracks:  # in order of first detection, so ids follow the order faces appeared
            if track.track_id is None and track.hits >= self.min_hits:
                track.track_id = self.next_id
                self.next_id += 1
        return self.shown()

    def match(self, boxes):
        """Greedy matching, best IoU pair first; each track and each box used at most once.

        Ties break by track then box order, so the result never depends on set ordering.
        Returns {box index: Track}.
        """
        pairs = []
        for t, track in enumerate(self.tracks):
            predicted = track.predicted_box()
            for b, box in enumerate(boxes):
                overlap = iou(predicted, box)
                if overlap > 0 and overlap >= self.iou_threshold:
                    pairs.append((-overlap, t, b))
        pairs.sort()
        track_of_box, used = {}, set()
        for _, t, b in pairs:
            if t not in used and b not in track_of_box:
                used.add(t)
                track_of_box[b] = self.tracks[t]
        return track_of_box

    def merge_parts_of_faces(self, boxes, track_of_box):
        """Unmatched boxes centred inside a shown track's predicted box: the same face, or a part of it.

        Re-associates a box to an unmatched shown track it shows (`same_face`; nearest centres
        first, into track_of_box); returns the indices of the other boxes
        centred inside a shown track's box or where a face is leaving the frame (`exits`):
        parts of a face, to drop.
        """
        predicted = {id(track): track.predicted_box() for track in self.tracks if track.confirmed}
        exits = [track.predicted_box() for track in self.exits]
        taken = {id(track) for track in track_of_box.values()}
        pairs = sorted((distance(centre(box), centre(predicted[id(track)])), b, t)
                       for t, track in enumerate(self.tracks) if id(track) in predicted and id(track) not in taken
                       for b, box in enumerate(boxes) if b not in track_of_box
                       and same_face(box, predicted[id(track)]))
        for _, b, t in pairs:
            if b not in track_of_box and id(self.tracks[t]) not in taken:
                taken.add(id(self.tracks[t]))
                track_of_box[b] = self.tracks[t]
        return {b for b, box in enumerate(boxes) if b not in track_of_box
                and any(inside(centre(box), other) for other in [*predicted.values(), *exits])}

    def see(self, track, box):
        """A detection matched to the track: move it there and learn its motion."""
        if track.hits > 0:
            steps = track.missed + 1
            step = [(centre(box)[i] - centre(track.anchor)[i]) / steps for i in (0, 1)]
            track.velocity = tuple(self.motion * s + (1 - self.motion) * v for s, v in zip(step, track.velocity))
        track.age += 1
        track.box = track.anchor = box
        track.hits += 1
        track.missed = 0

    def drop_duplicates(self):
        """Two tracks detected on one face this update (boxes overlapping by DUPLICATE_IOU): the younger goes.

        The detector can report one face twice (the whole-frame pass and the look near a
        track, or two scales); two faces never overlap that much.
        """
        kept = []
        for track in self.tracks:  # oldest first: tracks are appended as they start
            if track.detected and any(other.detected and iou(other.box, track.box) >= DUPLICATE_IOU for other in kept):
                continue
            kept.append(track)
        self.tracks = kept

    def carry(self, tracks, frame_size):
        """Tracks without a detection this update move on their motion, or are dropped."""
        dropped = set()
        for track in tracks:
            track.age += 1
            track.missed += 1
            track.box = track.predicted_box(ahead=0)
            visible = 1.0 if frame_size is None else visible_fraction(track.box, frame_size)
            if frame_size is not None and visible >= 0.5:
                track.box = clip_box(track.box, frame_size)
            if visible < 0.5 or track.missed > self.missed_limit(track, visible):
                dropped.add(id(track))
                if track.confirmed and visible < 1.0:  # the detector finds parts of a face going out
                    self.exits.append(track)
        self.tracks = [track for track in self.tracks if id(track) not in dropped]

    def move_exits(self):
        """Faces that left through the frame's edge move on, unseen, for up to max_missed updates."""
        for track in self.exits:
            track.missed += 1
        self.exits = [track for track in self.exits if track.missed <= self.max_missed]

    def missed_limit(self, track, visible):
        """Updates in a row a track may go undetected: as many as its detections, within the limits.

        A long-seen face is worth carrying through an occlusion; a briefly seen box may have
        been a false face, and a box cut by the frame's edge is a face leaving, which the
        detector will not find again there.
        """
        if visible < 1.0:
            return min(self.short_missed, self.max_missed)
        return min(self.max_missed, max(self.short_missed, track.hits))

    def smoothed(self, old, current):
        """EMA step `smooth * old + (1 - smooth) * current`, renormalized; `current` alone when no history."""
        current = normalize(current)
        if old is None:
            return current
        return normalize(self.smooth * old + (1.0 - self.smooth) * current)
