"""The live loop: read a frame, find faces, classify them, track and smooth, draw, then show / save / log.

    source -> to_gray -> FaceDetector.detect (whole frame, every Nth frame)
                         + FaceDetector.detect_near (around tracks missed, IoUTracker.to_look_for)
           -> crops -> EmotionClassifier.classify (every Nth frame)
           -> IoUTracker.update (ids, faces carried through misses, smoothed probabilities)
           -> annotate -> window / .mp4 / .jsonl

Kept apart from argparse (scripts/webcam.py) so tests and the benchmark drive it directly.
Frames are BGR uint8 (H, W, 3) as OpenCV reads them; boxes are (x, y, w, h).
"""
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fer.faces import crop, to_gray
from fer.inference import emotion_record
from fer.tracking import normalize

# BGR colours for the FER2013 labels; other label sets cycle through PALETTE.
EMOTION_COLORS = {
    "Angry": (40, 40, 220),
    "Disgust": (40, 140, 40),
    "Fear": (160, 60, 160),
    "Happy": (0, 215, 255),
    "Sad": (200, 120, 40),
    "Surprise": (0, 140, 255),
    "Neutral": (200, 200, 200),
}
PALETTE = [(40, 40, 220), (40, 160, 40), (200, 120, 40), (0, 215, 255), (160, 60, 160), (0, 140, 255), (200, 200, 200)]
STAGES = ("read", "detect", "classify", "track", "draw", "write", "show")


class SourceError(RuntimeError):
    """A camera or video file that cannot be opened; the message says what to try."""


class FrameSource:
    """A camera (int index) or a video file (path), read one BGR frame at a time."""

    def __init__(self, source):
        self.is_camera = isinstance(source, int)
        if self.is_camera:
            self.capture = open_camera(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise SourceError(f"video file not found: {path}")
            self.capture = cv2.VideoCapture(str(path))
            if not self.capture.isOpened():
                raise SourceError(f"could not open video file {path}: not a video OpenCV can decode")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        # Cameras often report 0; 30 is what webcams deliver in practice.
        self.fps = fps if fps and np.isfinite(fps) and fps > 0 else 30.0

    def read(self):
        """The next frame (H, W, 3) uint8, or None at the end of a video / a camera failure."""
        ok, frame = self.capture.read()
        return frame if ok else None

    def release(self):
        self.capture.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def open_camera(index):
    """cv2.VideoCapture for camera `index`, or SourceError with what to try instead."""
    # OpenCV logs several backend warnings for a missing camera; the error below says it once.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        capture = cv2.VideoCapture(index)
        opened = capture.isOpened()
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not opened:
        capture.release()
        raise SourceError(
            f"could not open camera {index}. Try another index (--camera 0, --camera 1, ...), "
            "check that no other program is using the camera, or read a video file with --video PATH."
        )
    return capture


class StageTimer:
    """Seconds spent per pipeline stage, summed over the run: `with timer("detect"): ...`."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


@dataclass
class RunStats:
    """What a run did and where its time went."""

    frames: int = 0
    faces: int = 0  # face records, summed over frames
    seconds: float = 0.0  # wall time of the whole loop
    stage_seconds: dict = field(default_factory=dict)

    @property
    def fps(self):
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def breakdown(self):
        """Rows (stage, ms per frame, % of wall time); 'other' is loop overhead outside the stages."""
        frames = max(self.frames, 1)
        rows = [(stage, s) for stage, s in self.stage_seconds.items() if s > 0]
        rows.append(("other", max(0.0, self.seconds - sum(s for _, s in rows))))
        total = max(self.seconds, 1e-12)
        return [(stage, 1000 * s / frames, 100 * s / total) for stage, s in rows]

    def format(self):
        lines = [f"{self.frames} frames, {self.faces} face records, {self.seconds:.2f} s: {self.fps:.1f} frames/s"]
        lines += [f"  {stage:<9}{ms:8.2f} ms/frame {pct:6.1f} %" for stage, ms, pct in self.breakdown()]
        return "\n".join(lines)


def run(source, detector, classifier, tracker, every=1, display=False, save=None, jsonl=None, max_frames=None,
        detect_every=1, mirror=False):
    """Process frames until the source ends, `max_frames` is reached, or the user quits.

    source: a FrameSource (or anything with read(), fps, is_camera).
    every: classify faces on every Nth frame; tracks keep their smoothed labels between.
    detect_every: search the whole frame for faces on every Nth frame; on the frames between,
        faces are looked for only near the tracks the tracker asks for (IoUTracker.to_look_for:
        those already missed once; the others are carried), which is cheaper.
    mirror: flip each frame left-right first, as a camera preview is expected to look.
    display: show a window if the machine has a GUI (q / Esc quit, space pauses).
    save: path of an .mp4 (mp4v) with the annotated frames. jsonl: path of the per-face log.
    Returns RunStats.
    """
    if every < 1 or detect_every < 1:
        raise ValueError(f"run: every and detect_every must be >= 1, received {every} and {detect_every}")
    step = FrameStep(detector, classifier, tracker, every, detect_every, mirror)
    timer = StageTimer()
    stats = RunStats(stage_seconds=timer.seconds)
    outputs = Outputs(source, classifier.labels, display, save, jsonl)
    start = last = time.perf_counter()
    fps = None
    try:
        while max_frames is None or stats.frames < max_frames:
            with timer("read"):
                frame = source.read()
            if frame is None:
                break
            frame, tracks = step(frame, stats.frames, timer, fps)
            with timer("write"):
                outputs.write(frame, stats.frames, tracks)
            stats.frames += 1
            stats.faces += len(tracks)
            if outputs.window is not None:
                with timer("show"):
                    if not outputs.show(frame):
                        break
            now = time.perf_counter()
            fps, last = smoothed_rate(fps, now - last), now
    except KeyboardInterrupt:  # Ctrl+C stops like q, and the files below are still closed properly
        print("interrupted", file=sys.stderr)
    finally:
        stats.seconds = time.perf_counter() - start
        outputs.close()
    return stats


def smoothed_rate(fps, seconds):
    """Frames per second on screen after a frame of `seconds`: a moving average, so the number is readable."""
    rate = 1.0 / max(seconds, 1e-6)
    return rate if fps is None else 0.9 * fps + 0.1 * rate


@dataclass
class FrameStep:
    """The work on one frame, outputs apart: mirror, detect, classify, track, draw."""

    detector: object
    classifier: object
    tracker: object
    every: int = 1          # classify on every Nth frame
    detect_every: int = 1   # search the whole frame on every Nth frame
    mirror: bool = False

    def __call__(self, frame, index, timer, fps=None):
        """(the annotated frame, its shown tracks) for frame number `index`."""
        if self.mirror:
            frame = cv2.flip(frame, 1)
        tracks = track_faces(frame, self.detector, self.classifier, self.tracker, index % self.every == 0, timer,
                             whole_frame=index % self.detect_every == 0)
        with timer("draw"):
            annotate(frame, tracks, self.classifier.labels, fps)
        return frame, tracks


class Outputs:
    """Where annotated frames go, each optional: a window, an .mp4 writer (opened at the first
    frame, which gives its size) and a JSONL log of the faces."""

    def __init__(self, source, labels, display=False, save=None, jsonl=None):
        self.window = open_window(display)
        self.source, self.labels, self.save = source, labels, save
        self.writer = None
        self.log = open(jsonl, "w", encoding="utf-8") if jsonl else None
        self.start = time.perf_counter()

    def write(self, frame, index, tracks):
        """Frame `index` to the video and its faces to the log."""
        if self.save:
            self.writer = self.writer or open_writer(self.save, frame.shape, self.source.fps)
            self.writer.write(frame)
        if self.log:
            # Video time for files, so records line up with the clip; wall time for cameras.
            time_s = time.perf_counter() - self.start if self.source.is_camera else index / self.source.fps
            for record in face_records(index, time_s, tracks, self.labels):
                self.log.write(json.dumps(record) + "\n")

    def show(self, frame):
        """Show the frame in the window; False when the user quits."""
        try:
            return self.window.show(frame)
        except cv2.error:  # e.g. opencv-python-headless: carry on without a window
            print("this OpenCV build has no GUI: running without a window", file=sys.stderr)
            self.window = None
            return True

    def close(self):
        if self.writer is not None:
            self.writer.release()
        if self.log is not None:
            self.log.close()
        if self.window is not None:
            cv2.destroyAllWindows()


def open_window(display):
    """The demo's Window when asked for and the machine has a display, else None (saying why)."""
    if display and gui_available():
        return Window("fer: q quits, space pauses")
    if display:
        print("no display found (DISPLAY is not set): running without a window", file=sys.stderr)
    return None


def track_faces(frame, detector, classifier, tracker, classify_now, timer, whole_frame=True):
    """Detect, classify and track the faces of one BGR frame: the shown Tracks, labelled.

    Tracks the whole-frame pass missed (or all tracks, when not whole_frame) get a closer
    look where they are expected (FaceDetector.detect_near, when the detector's near_step
    is set), unless the tracker carries them (IoUTracker.to_look_for). Detected faces are
    classified when classify_now; a track first shown on another frame is classified at
    once, so every shown track has probabilities; carried tracks hold theirs.
    """
    with timer("detect"):
        gray = to_gray(frame)
        boxes = detector.detect(gray) if whole_frame else []
        if getattr(detector, "near_step", None):
            for track in tracker.to_look_for(boxes):
                found = detector.detect_near(gray, track.predicted_box())
                if found is not None:
                    boxes.append(found)
    with timer("classify"):
        probs = classifier.classify([crop(gray, box) for box in boxes]) if classify_now else None
    with timer("track"):
        tracks = tracker.update(boxes, probs, frame_size=(gray.shape[1], gray.shape[0]))
    unlabeled = [track for track in tracks if track.probs is None]
    if unlabeled:
        with timer("classify"):
            for track, row in zip(unlabeled, classifier.classify([crop(gray, track.box) for track in unlabeled])):
                track.probs = normalize(row)
    return tracks


def face_records(index, time_s, tracks, labels):
    """The JSONL records of one frame: frame, time_s, track_id, box, detected, emotions, top_emotion, score.

    detected is false for a face carried through a detector miss (its box predicted, its
    emotions held from earlier frames).
    """
    return [{"frame": index, "time_s": round(time_s, 4), "track_id": track.track_id, "box": list(track.box),
             "detected": track.detected, **emotion_record(track.probs, labels)} for track in tracks]


def open_writer(path, shape, fps):
    """An mp4v VideoWriter for frames of `shape` (H, W, 3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"could not open {path} for writing an mp4v video")
    return writer


# --- display ---------------------------------------------------------------------------------

def gui_available():
    """False where cv2.imshow cannot work: Linux without an X11 or Wayland display.

    Checked up front because there, OpenCV's Qt backend aborts the process instead of raising.
    """
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class Window:
    """An OpenCV window with the demo's keys: q or Esc quits, space pauses."""

    def __init__(self, title):
        self.title = title

    def show(self, frame):
        """Show a frame; False when the user quits (q, Esc, or closing the window)."""
        cv2.imshow(self.title, frame)
        key = cv2.waitKey(1) & 0xFF
        if key == ord(" "):  # paused: hold this frame until space again, q or Esc
            key = 0xFF
            while key not in (ord(" "), ord("q"), 27) and not self.closed():
                key = cv2.waitKey(50) & 0xFF
        return key not in (ord("q"), 27) and not self.closed()

    def closed(self):
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1


# --- drawing -----------------------------------------------------------------------------------

def label_color(labels, label):
    return EMOTION_COLORS.get(label, PALETTE[labels.index(label) % len(PALETTE)])


def font_scale(image):
    """Text size that stays readable from 320 to 1920 px wide frames (0.5 at 640)."""
    return float(np.clip(image.shape[1] / 1280, 0.35, 1.2))


def put_text(image, text, origin, scale, color, background=(0, 0, 0)):
    """Text with its baseline-left corner at `origin`, on a filled box so it reads on any background.

    Returns that box as (x, y, w, h).
    """
    thickness = max(1, round(scale * 2))
    (w, h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = origin
    cv2.rectangle(image, (x, y - h - baseline), (x + w, y + baseline), background, cv2.FILLED)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return x, y - h - baseline, w + 1, h + 2 * baseline + 1      # cv2.rectangle fills both corners


def draw_face(image, box, label, score, color, track_id=None):
    """Box and 'label score' (and '#id') above it, or inside its top edge at the frame's top.

    Returns the label's box (x, y, w, h), so the probability panel can avoid covering it.
    """
    x, y, w, h = box
    scale = font_scale(image)
    cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), color, max(2, round(scale * 4)))
    text = f"{label} {score:.0%}" if track_id is None else f"#{track_id} {label} {score:.0%}"
    (_, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    text_y = y - baseline - 2 if y - text_h - 2 * baseline - 2 >= 0 else y + text_h + baseline + 2
    return put_text(image, text, (x, text_y), scale, (0, 0, 0), background=color)


def draw_bars(image, probs, labels, avoid=(), margin=8, title=None):
    """One labelled bar per class for a (K,) probability vector, in a panel in a corner.

    The corner is the one whose panel covers least of the `avoid` boxes (the faces and their
    labels): top-left, then top-right, then bottom-right on a tie. `title` (e.g. the face's
    "#id") heads the panel, so it says which face it shows.
    """
    scale = font_scale(image) * 0.9
    row = int(26 * scale) + 4
    name_w = max(cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for label in labels)
    bar_w = int(200 * scale)
    rows = len(labels) + (title is not None)
    panel = (name_w + bar_w + 16, row * rows + 6)
    right, bottom = image.shape[1] - margin - panel[0], image.shape[0] - margin - panel[1]
    corners = [(margin, margin), (right, margin), (right, bottom)]  # bottom-left holds the fps
    x0, y0 = min(corners, key=lambda corner: sum(overlap((*corner, *panel), box) for box in avoid))
    cv2.rectangle(image, (x0, y0), (x0 + panel[0], y0 + panel[1]), (0, 0, 0), cv2.FILLED)
    if title is not None:
        cv2.putText(image, title, (x0 + 4, y0 + row - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
        y0 += row
    for k, (label, p) in enumerate(zip(labels, probs)):
        y = y0 + 4 + row * k
        cv2.putText(image, label, (x0 + 4, y + row - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
        bar_x = x0 + name_w + 10
        bar_end = (bar_x + int(bar_w * p), y + row - 3)
        cv2.rectangle(image, (bar_x, y + 3), bar_end, label_color(labels, label), cv2.FILLED)


def overlap(a, b):
    """Area shared by two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)


def annotate(frame, tracks, labels, fps=None):
    """Draw every shown face (detected or carried, alike), bars for the largest one, and the frame rate (in place)."""
    labelled = [track for track in tracks if track.probs is not None]
    avoid = [track.box for track in tracks]
    for track in labelled:
        top = int(np.argmax(track.probs))
        avoid.append(draw_face(frame, track.box, labels[top], track.probs[top], label_color(labels, labels[top]),
                               track.track_id))   # a label sticks out above its box: the panel must not hide it
    if labelled:
        largest = max(labelled, key=lambda track: track.box[2] * track.box[3])
        draw_bars(frame, largest.probs, labels, avoid=avoid, title=f"#{largest.track_id}")
    if fps is not None:
        put_text(frame, f"{fps:.1f} fps", (8, frame.shape[0] - 10), font_scale(frame), (255, 255, 255))
    return frame
