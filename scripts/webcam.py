"""Live facial expression recognition from a webcam or a video file.

    python scripts/webcam.py                           # camera 0, window if there is a display
    python scripts/webcam.py --video clip.mp4 --no-display --save out.mp4 --jsonl out.jsonl

In the window: q or Esc quits, space pauses. Without a display it runs headless; Ctrl+C
or SIGTERM stops it with the saved video and log closed properly. Each face keeps its id
while it stays in view: a face the detector misses is carried on its motion (logged with
"detected": false), for longer the longer it has been seen, and ends soon once it leaves
the frame (fer/tracking.py). Exit code 1, with one line on stderr, when the
camera, the video or the model cannot be opened; 2 for bad arguments (an output that would
overwrite the input video, a camera index out of range).
"""
import argparse
import signal
import sys
from pathlib import Path

from fer.process import set_environment

set_environment(one_face=True)      # before NumPy and numba load, which read them then (fer/process.py)

from fer.cli import positive_int, same_file  # noqa: E402
from fer.faces import add_detector_arguments, detector_from_args  # noqa: E402
from fer.inference import EmotionClassifier  # noqa: E402
from fer.live import FrameSource, SourceError, run  # noqa: E402
from fer.tracking import IoUTracker  # noqa: E402
from minicnn import perf  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "mini_xception.npz"


MAX_CAMERA = 9999  # OpenCV crashes on a negative index and overflows past 2**31; real indexes are small


def camera_index(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, received {text!r}") from None
    if not 0 <= value <= MAX_CAMERA:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_CAMERA}, received {value}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", type=camera_index, default=0, help="camera index (default: 0)")
    source.add_argument("--video", type=Path, help="read this video file instead of a camera")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="minicnn model file (default: %(default)s)")
    add_detector_arguments(parser, photos=False)
    parser.add_argument("--detect-every", type=positive_int, default=2,
                        help="search the whole frame every Nth frame, between only near known faces once missed (default: 2)")
    parser.add_argument("--mirror", action="store_true", help="flip frames left-right, as a mirror (for cameras)")
    parser.add_argument("--smooth", type=float, default=0.6,
                        help="weight of the past in the per-face moving average of probabilities, 0 = off (default: 0.6)")
    parser.add_argument("--every", type=positive_int, default=1, help="classify faces on every Nth frame (default: 1)")
    parser.add_argument("--no-display", action="store_true", help="never open a window")
    parser.add_argument("--save", type=Path, help="write the annotated video here (.mp4, mp4v)")
    parser.add_argument("--jsonl", type=Path, help="write one JSON record per face per frame here")
    parser.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    parser.add_argument("--no-fast", action="store_true",
                        help="run the textbook layers instead of the compiled steps (minicnn/compiler/: the same "
                             "numbers, faster)")
    args = parser.parse_args(argv)
    refuse_overwrites(parser, args)
    return args


def refuse_overwrites(parser, args):
    """Exit 2 when --save or --jsonl would overwrite the input video, or each other."""
    outputs = [(flag, path) for flag, path in (("--save", args.save), ("--jsonl", args.jsonl)) if path]
    inputs = [("--video", args.video)] if args.video else []
    for k, (flag, path) in enumerate(outputs):
        for other_flag, other in inputs + outputs[:k]:
            if same_file(path, other):
                parser.error(f"{flag} {path} is the same file as {other_flag} {other}: "
                             "that would overwrite it; choose another name")


def stop_on_sigterm():
    """SIGTERM (kill, docker stop) stops the loop like Ctrl+C, so the saved video is finalized."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def fail(message):
    """One line on stderr and exit code 1: these are the user's to fix, a traceback would not help."""
    print(f"webcam.py: error: {message}", file=sys.stderr)
    return 1


def main(argv=None):
    perf.enable()                  # threads, allocator, OpenMP, denormals (minicnn/perf.py)
    args = parse_args(argv)
    # The source first: a camera that will not open is the commonest problem, and the cheapest to find.
    try:
        source = FrameSource(str(args.video) if args.video else args.camera)
    except SourceError as error:
        return fail(error)
    with source:
        try:
            classifier = EmotionClassifier.from_file(args.model, fast=not args.no_fast)
            detector = detector_from_args(args, photos=False)
            tracker = IoUTracker(smooth=args.smooth)
        except (OSError, ValueError, RuntimeError) as error:
            return fail(error)
        stop_on_sigterm()
        try:
            stats = run(source, detector, classifier, tracker, every=args.every, display=not args.no_display,
                        save=args.save, jsonl=args.jsonl, max_frames=args.max_frames,
                        detect_every=args.detect_every, mirror=args.mirror)
        except OSError as error:  # an output file that cannot be written
            return fail(error)
    if stats.frames == 0:     # a camera that opens but delivers nothing (no permission, in use)
        source_name = f"video {args.video}" if args.video else f"camera {args.camera}"
        return fail(f"no frames read from {source_name}: it opened but gave no picture")
    print(stats.format(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
