"""Facial expressions in image files, as JSON Lines on stdout.

Prints one JSON object per image, one per line, in the order given:

    {"image": "a.jpg", "faces": [{"box": [x, y, w, h], "emotions": {"Angry": 0.01, ...},
                                  "top_emotion": "Happy", "score": 0.93}, ...]}

Faces are listed left to right; an image without a face has "faces": []. An image that
cannot be read is reported on stderr, the others are still processed, and the exit code
is 1 at the end.

    python scripts/predict.py photo.jpg group.png --annotate annotated/
    python scripts/predict.py face_crop.png --no-detect

--annotate DIR writes DIR/<stem>_annotated<ext> for each image; it refuses (exit 2) to
overwrite an existing file unless --overwrite is given, and an input image in any case.
Faces are searched at full resolution with the cascade's step 1.1 (a photo gets one look,
unlike a video frame); the detector flags are those of webcam.py and visualize.py.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from fer.process import set_environment

set_environment(one_face=True)      # before NumPy and numba load, which read them then (fer/process.py)

import cv2  # noqa: E402

from fer.cli import same_file  # noqa: E402
from fer.data import decode_image  # noqa: E402
from fer.faces import add_detector_arguments, crop, detector_from_args, to_gray  # noqa: E402
from fer.inference import EmotionClassifier, emotion_record  # noqa: E402
from fer.live import draw_face, label_color  # noqa: E402
from minicnn import perf  # noqa: E402
from minicnn.io import atomic_write  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "mini_xception.npz"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (anything OpenCV reads)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="minicnn model file (default: %(default)s)")
    parser.add_argument("--annotate", type=Path, metavar="DIR",
                        help="write a copy of each image with boxes and labels to DIR as <stem>_annotated<ext>")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --annotate replace existing files (never an input image)")
    parser.add_argument("--no-detect", action="store_true",
                        help="each image is already an aligned face crop: classify the whole image as one face")
    parser.add_argument("--no-fast", action="store_true",
                        help="run the textbook layers instead of the compiled steps (minicnn/compiler/: the same "
                             "numbers, faster)")
    add_detector_arguments(parser, photos=True)
    args = parser.parse_args(argv)
    if args.annotate:
        check_outputs(parser, args)
    return args


def annotated_path(folder, image):
    """Where --annotate writes the copy of `image`: folder/<stem>_annotated<ext>."""
    return Path(folder) / f"{image.stem}_annotated{image.suffix}"


def check_outputs(parser, args):
    """Exit 2 before any work when two outputs collide, or one would replace an input or an existing file."""
    outputs = [annotated_path(args.annotate, image) for image in args.images]
    names = [out.name for out in outputs]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        parser.error(f"--annotate would write several images to {', '.join(clashes)}: annotate them in separate runs")
    for out in outputs:
        if any(same_file(out, image) for image in args.images):
            parser.error(f"--annotate would overwrite the input image {out}: choose another folder")
        if out.exists() and not args.overwrite:
            parser.error(f"--annotate would overwrite {out}: remove it, choose another folder or pass --overwrite")


def read_image(path):
    """(BGR image, None) or (None, what is wrong): each image fails alone, the others go on."""
    try:
        return decode_image(path.read_bytes(), cv2.IMREAD_COLOR)     # refuses huge pixel counts undecoded
    except OSError as error:
        return None, error.strerror or str(error)


def predict_image(image, classifier, detector):
    """Face records for one BGR image; detector None means the whole image is one face."""
    gray = to_gray(image)
    boxes = [(0, 0, gray.shape[1], gray.shape[0])] if detector is None else detector.detect(gray)
    probs = classifier.classify([crop(gray, box) for box in boxes])
    return [{"box": list(box), **emotion_record(p, classifier.labels)} for box, p in zip(boxes, probs)]


def annotated(image, faces, labels, min_width=320):
    """A copy of the image with each face's box, top emotion and score drawn on it.

    Images narrower than min_width (a 48x48 crop) are enlarged by a whole factor first, so
    the label is readable.
    """
    factor = max(1, -(-min_width // image.shape[1]))  # ceil division
    image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    for face in faces:
        label = face["top_emotion"]
        box = [factor * v for v in face["box"]]
        draw_face(image, box, label, face["score"], label_color(labels, label))
    return image


def main(argv=None):
    perf.enable()                  # threads, allocator, OpenMP, denormals (minicnn/perf.py)
    args = parse_args(argv)
    try:
        classifier = EmotionClassifier.from_file(args.model, fast=not args.no_fast)
        detector = None if args.no_detect else detector_from_args(args, photos=True)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"predict.py: error: {error}", file=sys.stderr)
        return 1
    if args.annotate:
        args.annotate.mkdir(parents=True, exist_ok=True)

    failed = 0
    for path in args.images:
        image, problem = read_image(path)
        if image is None:  # missing, not an image, too many pixels, or a format OpenCV cannot decode
            print(f"predict.py: error: cannot read image {path}: {problem}", file=sys.stderr)
            failed += 1
            continue
        faces = predict_image(image, classifier, detector)
        print(json.dumps({"image": str(path), "faces": faces}, allow_nan=False), flush=True)
        if args.annotate:
            out = annotated_path(args.annotate, path)
            try:
                ok, encoded = cv2.imencode(path.suffix or ".png", annotated(image, faces, classifier.labels))
                if not ok:
                    raise OSError(f"cannot encode an image as {path.suffix or '.png'}")
                atomic_write(out, lambda f: f.write(encoded.tobytes()))     # never a half-written file
            except (OSError, cv2.error) as error:
                print(f"predict.py: error: cannot write {out}: {error}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


def main_quiet_on_closed_pipe(argv=None):
    """main(), ending quietly when stdout's reader goes away (`predict.py *.jpg | head`)."""
    try:
        return main(argv)
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit: point stdout at devnull.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main_quiet_on_closed_pipe())
