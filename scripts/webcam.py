"""Live facial expression recognition from a webcam or a video file.

    python scripts/webcam.py                           # camera 0, window if there is a display
    python scripts/webcam.py --video clip.mp4 --no-display --save out.mp4 --jsonl out.jsonl

In the window: q or Esc quits, space pauses. Without a display it runs headless.
Exit code 1, with one line on stderr, when the camera, the video or the model cannot be opened.
"""
import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # so the script runs from a checkout without installing

from fer.faces import FaceDetector  # noqa: E402
from fer.inference import EmotionClassifier  # noqa: E402
from fer.live import FrameSource, SourceError, run  # noqa: E402
from fer.tracking import IoUTracker  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "weights" / "mini_xception.npz"


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, received {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", type=int, default=0, help="camera index (default: 0)")
    source.add_argument("--video", type=Path, help="read this video file instead of a camera")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="minicnn model file (default: %(default)s)")
    parser.add_argument("--min-face", type=int, default=48, help="smallest face side in pixels (default: 48)")
    parser.add_argument("--scale-factor", type=float, default=1.2, help="Haar cascade scale step (default: 1.2; 1.1 is slower)")
    parser.add_argument("--min-neighbors", type=int, default=5, help="Haar cascade hits per face (default: 5)")
    parser.add_argument("--smooth", type=float, default=0.6,
                        help="weight of the past in the per-face moving average of probabilities, 0 = off (default: 0.6)")
    parser.add_argument("--every", type=positive_int, default=1, help="classify faces on every Nth frame (default: 1)")
    parser.add_argument("--no-display", action="store_true", help="never open a window")
    parser.add_argument("--save", type=Path, help="write the annotated video here (.mp4, mp4v)")
    parser.add_argument("--jsonl", type=Path, help="write one JSON record per face per frame here")
    parser.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    return parser.parse_args(argv)


def fail(message):
    """One line on stderr and exit code 1: these are the user's to fix, a traceback would not help."""
    print(f"webcam.py: error: {message}", file=sys.stderr)
    return 1


def main(argv=None):
    args = parse_args(argv)
    # The source first: a camera that will not open is the commonest problem, and the cheapest to find.
    try:
        source = FrameSource(str(args.video) if args.video else args.camera)
    except SourceError as error:
        return fail(error)
    with source:
        try:
            classifier = EmotionClassifier.from_file(args.model)
            detector = FaceDetector(args.min_face, args.scale_factor, args.min_neighbors)
            tracker = IoUTracker(smooth=args.smooth)
        except (OSError, ValueError, RuntimeError) as error:
            return fail(error)
        try:
            stats = run(source, detector, classifier, tracker, every=args.every, display=not args.no_display,
                        save=args.save, jsonl=args.jsonl, max_frames=args.max_frames)
        except OSError as error:  # an output file that cannot be written
            return fail(error)
    if stats.frames == 0:     # a camera that opens but delivers nothing (no permission, in use)
        source_name = f"video {args.video}" if args.video else f"camera {args.camera}"
        return fail(f"no frames read from {source_name}: it opened but gave no picture")
    print(stats.format(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
