"""Frames per second of the live pipeline, headless, with the time per stage.

    python benchmarks/webcam_pipeline.py                       # 300 frames, 3 faces, weights/mini_xception.npz
    python benchmarks/webcam_pipeline.py --video clip.mp4 --model weights/mini_xception.npz
    python benchmarks/webcam_pipeline.py --no-model            # everything but the network

Without --video it makes a 640x480 clip: FER2013 faces (from the shared folder, env
FER_SHARED_DIR, default `shared` next to the repo) enlarged to 128 px, drifting over a
gradient. The target is >= 30 frames/s with mini_xception on a 2-core machine.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # so the script runs from a checkout without installing

from fer.faces import FaceDetector, to_gray  # noqa: E402
from fer.inference import EmotionClassifier  # noqa: E402
from fer.live import FrameSource, run  # noqa: E402
from fer.preprocess import Preprocessing  # noqa: E402
from fer.tracking import IoUTracker  # noqa: E402

FER_LABELS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
WIDTH, HEIGHT, FACE = 640, 480, 128
ANCHORS = [(60, 60), (260, 280), (460, 80)]  # top-left corners the faces drift around


def shared_dir():
    return Path(os.environ.get("FER_SHARED_DIR", REPO_ROOT.parent / "shared"))


def load_faces(csv_path, rows=200):
    """The first `rows` FER2013 faces as (48, 48) uint8 arrays."""
    table = pd.read_csv(csv_path, nrows=rows)
    return [np.array(pixels.split(), dtype=np.uint8).reshape(48, 48) for pixels in table["pixels"]]


def background():
    """A BGR colour gradient (HEIGHT, WIDTH, 3): smooth, so the cascade finds nothing in it."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([60 + 80 * xx / WIDTH, 90 + 0 * xx, 150 - 60 * yy / HEIGHT], axis=-1).astype(np.uint8)


def paste(frame, face, x, y, size=FACE):
    """Put a gray face, enlarged to size x size, into a BGR frame at (x, y), in place."""
    frame[y:y + size, x:x + size] = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)[:, :, None]


def detectable(faces, count, detector):
    """The first `count` faces the detector finds, alone, where the clip puts them."""
    chosen = []
    for face in faces:
        frame = background()
        paste(frame, face, *ANCHORS[len(chosen)])
        if len(detector.detect(to_gray(frame))) == 1:
            chosen.append(face)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"only {len(chosen)} of the faces given are found by the detector")


def make_video(path, faces, frames, fps=30):
    """A WIDTH x HEIGHT mp4v clip with each face circling its anchor (one turn per 3 s)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    for t in range(frames):
        frame = background()
        angle = 2 * np.pi * t / (3 * fps)
        for k, face in enumerate(faces):
            x, y = ANCHORS[k]
            paste(frame, face, int(x + 40 * np.sin(angle + k)), int(y + 30 * np.cos(angle + k)))
        writer.write(frame)
    writer.release()


class UniformModel:
    """Stands in for the network (--no-model): equal probabilities, no compute."""

    def predict(self, x, batch_size=32):
        return np.full((len(x), len(FER_LABELS)), 1.0 / len(FER_LABELS), dtype=np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, help="use this video instead of making one")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "weights" / "mini_xception.npz")
    parser.add_argument("--no-model", action="store_true", help="time everything but the network")
    parser.add_argument("--frames", type=int, default=300, help="frames to make and run (default: 300)")
    parser.add_argument("--faces", type=int, default=3, choices=[1, 2, 3], help="faces in the made clip")
    parser.add_argument("--every", type=int, default=1, help="classify every Nth frame (default: 1)")
    parser.add_argument("--scale-factor", type=float, default=1.2, help="Haar cascade scale step (default: 1.2; 1.1 is slower)")
    parser.add_argument("--min-face", type=int, default=48, help="smallest face side in pixels (default: 48)")
    parser.add_argument("--save", type=Path, help="also write the annotated video (times the write stage)")
    parser.add_argument("--jsonl", type=Path, help="also write the per-face log")
    args = parser.parse_args()

    if args.no_model:
        # Real preprocessing (mini_xception's 64 x 64, -1..1): only the network is left out.
        classifier = EmotionClassifier(UniformModel(), FER_LABELS, Preprocessing(64, "symmetric"))
    else:
        classifier = EmotionClassifier.from_file(args.model)
    detector = FaceDetector(min_face=args.min_face, scale_factor=args.scale_factor)

    with tempfile.TemporaryDirectory() as tmp:
        video = args.video
        if video is None:
            video = Path(tmp) / "faces.mp4"
            faces = detectable(load_faces(shared_dir() / "fer2013" / "fer2013.csv.gz"), args.faces, detector)
            make_video(video, faces, args.frames)
        # Warm up first (numba compiles on the first call), so the run times steady state only.
        classifier.classify([np.zeros((48, 48), np.uint8)] * args.faces)
        with FrameSource(str(video)) as source:
            stats = run(source, detector, classifier, IoUTracker(), every=args.every, save=args.save,
                        jsonl=args.jsonl, max_frames=args.frames)

    model = "no model (uniform stand-in)" if args.no_model else args.model
    print(f"webcam pipeline, {WIDTH}x{HEIGHT}, model: {model}, classify every {args.every} frame(s), "
          f"scale factor {args.scale_factor}")
    print(stats.format())


if __name__ == "__main__":
    main()
