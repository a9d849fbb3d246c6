"""The live pipeline against ground truth: recall, false faces, id switches, frames/s and time per stage.

    python benchmarks/webcam_pipeline.py                     # 3 clips x 300 frames, weights/mini_xception.npz
    python benchmarks/webcam_pipeline.py --clips 5 --untrained mini_xception --pipelines today,new,every1
    python benchmarks/webcam_pipeline.py --clips 5 --frames 150 --no-model
    python benchmarks/webcam_pipeline.py --video clip.mp4    # speed only: a video without ground truth

It builds 640x480 clips of FER2013 PublicTest faces with known boxes (benchmarks/face_clips.py:
faces of 80-200 px that move, one entering and one leaving, a brightness dip, a bar passing
over a face; the faces of clip k are drawn with seed k, never chosen by a detector), and runs
the pipelines on each, alternating which goes first:

    today: the default Haar cascade at step 1.2 on a 320-px copy every frame; a face is
           reported only on frames where it is detected; one detection shows a face.
    new:   the defaults of scripts/webcam.py: step 1.1 every `--detect-every` frames, the alt2
           cascade at 3 neighbours upright on a 400-px copy taking turns with dlib's HOG detector
           and the cascade turned by -30 and +30 degrees, both on a 320-px copy; a look near each
           track the whole-frame pass missed (or between passes) on a window resized to the
           track, once the track has been carried through one miss (a track seen on the last
           frame is carried); tracks carried through misses and shown from their second detection.

`--pipelines hog400,new` sets the HOG search on the 400-px copy and a near look at every miss (the
default before) beside the new one; `--pipelines tilt400,new` the turned searches on the 400-px copy and
the near look at step 1.05 too (the default before that); `--pipelines new320,hog320,new400-no-hog,new`
sets the pipeline before the HOG search and the 400-px copy beside each change alone and both;
`--pipelines tracker15,new` sets the tracker before longer carries beside the new one;
`--pipelines today,new,step1.2,every1,no-near` adds the cadences the new one was chosen
against (step 1.2 with the tracker, step 1.1 on every frame, no look near the tracks), and
`--pipelines default5,mn3,alt2,alt2-mn3,both-mn3,alt2-tilt,both-tilt,alt2-def5,alt2-def5-tilt`
the detector settings (see `pipelines`). `--seed S` draws clip k's faces with seed S + k.

Per pipeline it prints recall (face-frames reported / face-frames wholly in view), the
recall over the faces it found at least once, and over the frames after a face was first
found (what the tracker keeps: the frames before are the detector's latency), false faces
per frame, id switches, frames/s and milliseconds per stage. The machine's other load moves frames/s: compare the two
columns of one run, not figures of different runs.

The per-stage times are summed over the clips. Without trained weights (a model file that no
longer loads), `--untrained mini_xception` times the same network with fresh weights.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from fer.process import set_environment

set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # so the script runs from a checkout without installing

from benchmarks.face_clips import Clip, Score, load_faces, score  # noqa: E402
from fer import models as fer_models  # noqa: E402
from fer.faces import FaceDetector  # noqa: E402
from fer.inference import EmotionClassifier  # noqa: E402
from fer.live import STAGES, FrameSource, run  # noqa: E402
from fer.preprocess import Preprocessing  # noqa: E402
from fer.tracking import IoUTracker  # noqa: E402
from minicnn import perf  # noqa: E402

ALT2, DEFAULT = "haarcascade_frontalface_alt2.xml", "haarcascade_frontalface_default.xml"
TILTS = (-30, 30)
FER_LABELS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]


class DetectionsOnly(IoUTracker):
    """Today's tracker: boxes matched to the last box (no motion), ids from the first detection,
    and only the faces detected in this frame reported."""

    def __init__(self, smooth=0.6):
        super().__init__(max_missed=5, min_hits=1, smooth=smooth, motion=0.0, merge_parts=False)

    def shown(self):
        return [track for track in self.tracks if track.confirmed and track.detected]


def haar(**settings):
    """A FaceDetector with every detector setting spelt out, so a column keeps its meaning when defaults move.

    Unless given: the default cascade alone, upright, at 5 neighbours, on a 320-px copy (turned
    searches too), near looks at step 1.05, no HOG search (the detector before the sweep).
    """
    return FaceDetector(**{"cascade": DEFAULT, "min_neighbors": 5, "tilts": (), "detect_width": 320, "extra_width": 320,
                           "near_step": 1.05, "hog": False, **settings})


class HogOnUprightCopy(FaceDetector):
    """The detector before the HOG search moved to the narrower copy: HOG on the main search's copy."""

    def copy_width(self, searcher, tilt):
        return self.detect_width if searcher is self.hog else super().copy_width(searcher, tilt)


def eager(**settings):
    """The tracker before shown tracks were carried one update before a near look: a look at every miss."""
    return IoUTracker(carry_before_look=0, **settings)


def before_tilt400(detect_width=400, **settings):
    """The default detector before the turned searches moved to a 320-px copy (they ran on the upright
    search's copy) and the near look's step from 1.05 to 1.1."""
    return FaceDetector(detect_width=detect_width, extra_width=detect_width, near_step=1.05, **settings)


def pipelines(detect_every):
    """name -> (detector, tracker, detect_every) factories: each run gets fresh state."""
    return {
        "today": lambda: (haar(scale_factor=1.2, near_step=None), DetectionsOnly(), 1),
        "new": lambda: (FaceDetector(), IoUTracker(), detect_every),
        # The new pipeline before the HOG search moved to the 320-px copy and shown tracks were carried
        # one update before a near look.
        "hog400": lambda: (HogOnUprightCopy(), eager(), detect_every),
        # Before that, the turned searches on the 400-px copy and the near look at step 1.05 (before_tilt400).
        "tilt400": lambda: (before_tilt400(), eager(), detect_every),
        # That pipeline before dlib's HOG search joined the turns and the copy grew to 400 px; and
        # each of those two changes alone.
        "new320": lambda: (before_tilt400(detect_width=320, hog=False), eager(), detect_every),
        "hog320": lambda: (before_tilt400(detect_width=320, hog=True), eager(), detect_every),
        "new400-no-hog": lambda: (before_tilt400(detect_width=400, hog=False), eager(), detect_every),
        # The new detector with the tracker before longer carries and merged parts: every track carried
        # for at most 15 missed updates, new boxes inside a shown face's box kept as new faces.
        "tracker15": lambda: (FaceDetector(), eager(max_missed=15, short_missed=15, merge_parts=False),
                              detect_every),
        # The cadence and tracker the new pipeline was chosen against (with the default cascade):
        # the coarse step with tracking, the fine step searched on every frame, no look near the tracks.
        "step1.2": lambda: (haar(scale_factor=1.2), eager(), 1),
        "every1": lambda: (haar(), eager(), 1),
        "no-near": lambda: (haar(near_step=None), eager(), detect_every),
        # The detector sweep, all with the new cadence and tracker. default5: the default cascade at
        # 5 neighbours (the detector before the sweep); mn3: at 3 (the tracker's second detection
        # keeps a one-frame false face off screen); alt2, alt2-mn3: the alt2 cascade instead; both-mn3:
        # the two taking turns; -tilt: also the main cascade on the frame turned by -30 and +30 degrees;
        # alt2-def5: alt2 at 3 neighbours, the default cascade second at 5.
        "default5": lambda: (haar(), eager(), detect_every),
        "mn3": lambda: (haar(min_neighbors=3), eager(), detect_every),
        "alt2": lambda: (haar(cascade=ALT2), eager(), detect_every),
        "alt2-mn3": lambda: (haar(cascade=ALT2, min_neighbors=3), eager(), detect_every),
        "both-mn3": lambda: (haar(min_neighbors=3, second_cascade=ALT2), eager(), detect_every),
        "alt2-tilt": lambda: (haar(cascade=ALT2, min_neighbors=3, tilts=TILTS), eager(), detect_every),
        "both-tilt": lambda: (haar(min_neighbors=3, second_cascade=ALT2, tilts=TILTS), eager(), detect_every),
        "alt2-def5": lambda: (haar(cascade=ALT2, min_neighbors=3, second_cascade=DEFAULT, second_neighbors=5),
                              eager(), detect_every),
        "alt2-def5-tilt": lambda: (haar(cascade=ALT2, min_neighbors=3, second_cascade=DEFAULT, second_neighbors=5,
                                        tilts=TILTS), eager(), detect_every),
    }


class UniformModel:
    """Stands in for the network (--no-model): equal probabilities, no compute."""

    def predict(self, x, batch_size=32):
        return np.full((len(x), len(FER_LABELS)), 1.0 / len(FER_LABELS), dtype=np.float32)


def reports_from(jsonl, frames):
    """Per frame, the (track_id, box) of every face the run logged."""
    reports = [[] for _ in range(frames)]
    with open(jsonl, encoding="utf-8") as log:
        for line in log:
            record = json.loads(line)
            reports[record["frame"]].append((record["track_id"], tuple(record["box"])))
    return reports


def run_one(video, make, classifier, every, out):
    """Run one pipeline on one video; returns (RunStats, reports per frame)."""
    detector, tracker, detect_every = make()
    jsonl = Path(out) / "faces.jsonl"
    with FrameSource(str(video)) as source:
        stats = run(source, detector, classifier, tracker, every=every, jsonl=jsonl, detect_every=detect_every)
    return stats, reports_from(jsonl, stats.frames)


def format_table(scores, stats):
    """One column per pipeline: quality against the truth, then speed and time per stage."""
    names = list(scores)
    rows = [
        ("recall (in view)", lambda n: f"{scores[n].recall:.3f}"),
        ("recall (found faces)", lambda n: f"{scores[n].found_recall:.3f}"),
        ("recall (once found)", lambda n: f"{scores[n].kept_recall:.3f}"),
        ("faces never found", lambda n: f"{scores[n].never_found}"),
        ("frames before found", lambda n: f"{scores[n].before_found}"),
        ("false faces / frame", lambda n: f"{scores[n].false_per_frame:.4f}"),
        ("id switches", lambda n: f"{scores[n].id_switches}"),
        ("frames/s", lambda n: f"{frames_per_second(stats[n]):.1f}"),
    ]
    rows += [(f"{stage} ms/frame", lambda n, s=stage: f"{ms_per_frame(stats[n], s):.2f}") for stage in STAGES
             if any(run.stage_seconds.get(stage, 0) > 0 for n in names for run in stats[n])]
    rows.append(("all ms/frame", lambda n: f"{1000 / max(frames_per_second(stats[n]), 1e-9):.2f}"))
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'':<22}" + "".join(f"{n:>{width}}" for n in names)]
    lines += [f"{label:<22}" + "".join(f"{cell(n):>{width}}" for n in names) for label, cell in rows]
    return "\n".join(lines)


def frames_per_second(runs):
    return sum(r.frames for r in runs) / max(sum(r.seconds for r in runs), 1e-12)


def ms_per_frame(runs, stage):
    return 1000 * sum(r.stage_seconds.get(stage, 0.0) for r in runs) / max(sum(r.frames for r in runs), 1)


def make_classifier(args):
    """The classifier the flags ask for: a model file, an untrained architecture, or a stand-in."""
    if args.no_model:
        # Real preprocessing (mini_xception's 48 x 48, -1..1): only the network is left out.
        return EmotionClassifier(UniformModel(), FER_LABELS, Preprocessing(48, "symmetric"))
    if args.untrained:
        size, scale = fer_models.DEFAULTS[args.untrained]["input_size"], fer_models.DEFAULTS[args.untrained]["scale"]
        return EmotionClassifier(fer_models.build(args.untrained, len(FER_LABELS), (size, size, 1)), FER_LABELS,
                                 Preprocessing(size, scale))
    try:
        return EmotionClassifier.from_file(args.model)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error} (--untrained mini_xception times the same network with fresh weights)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="FER2013 csv(.gz) (default: FER_SHARED_DIR or ../shared, "
                                                  "fer2013/fer2013.csv.gz)")
    parser.add_argument("--video", type=Path, help="time the pipelines on this video instead (no ground truth)")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "weights" / "mini_xception.npz")
    parser.add_argument("--no-model", action="store_true", help="time everything but the network")
    parser.add_argument("--untrained", metavar="ARCH",
                        help="instead of --model, a fer.models architecture with fresh weights (the same cost)")
    parser.add_argument("--clips", type=int, default=3, help="clips, each with its own faces (default: 3)")
    parser.add_argument("--seed", type=int, default=0,
                        help="clip k draws its faces and scene with seed SEED + k (default: 0)")
    parser.add_argument("--frames", type=int, default=300, help="frames per clip (default: 300)")
    parser.add_argument("--face-scale", type=float, default=1.0,
                        help="multiply every face's side (80-200 px at the default 1; 0.6: 48-120 px)")
    parser.add_argument("--every", type=int, default=1, help="classify every Nth frame (default: 1)")
    parser.add_argument("--detect-every", type=int, default=2,
                        help="the new pipeline's whole-frame detection cadence (default: 2)")
    parser.add_argument("--pipelines", default="today,new",
                        help="columns, comma-separated, from the names in `pipelines` (default: today,new)")
    return parser.parse_args()


def main():
    perf.enable()                  # as the scripts run minicnn (minicnn/perf.py)
    args = parse_args()
    shared = Path(os.environ.get("FER_SHARED_DIR", REPO_ROOT.parent / "shared"))
    data = args.data or shared / "fer2013" / "fer2013.csv.gz"
    classifier = make_classifier(args)
    classifier.classify([np.zeros((48, 48), np.uint8)] * 3)  # warm up: numba compiles on the first call

    known = pipelines(args.detect_every)
    unknown = [name for name in args.pipelines.split(",") if name not in known]
    if unknown:
        sys.exit(f"error: unknown pipeline(s) {', '.join(unknown)}; known: {', '.join(known)}")
    makers = {name: known[name] for name in args.pipelines.split(",")}
    scores = {name: Score() for name in makers}
    stats = {name: [] for name in makers}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(1 if args.video else args.clips):
            video, truths = args.video, None
            if video is None:
                video = Path(tmp) / f"clip{k}.mp4"
                seed = args.seed + k
                truths = Clip.standard(load_faces(data, 3, seed=seed), args.frames, seed=seed,
                                       face_scale=args.face_scale).write(video)
            order = list(makers) if k % 2 == 0 else list(makers)[::-1]  # none always runs on a cold cache
            for name in order:
                run_stats, reports = run_one(video, makers[name], classifier, args.every, tmp)
                stats[name].append(run_stats)
                if truths is not None:
                    scores[name].add(score(truths, reports))

    model = "no model (uniform stand-in)" if args.no_model else args.model
    if args.untrained:
        model = f"{args.untrained}, untrained (fresh weights)"
    source = args.video or (f"{args.clips} clips x {args.frames} frames, 640x480, 3 PublicTest faces each "
                            f"(seeds {args.seed}.., sides x {args.face_scale})")
    print(f"webcam pipeline: {source}; model: {model}; classify every {args.every} frame(s); "
          f"new pipeline detects the whole frame every {args.detect_every} frame(s)")
    print(format_table(scores, stats))


if __name__ == "__main__":
    main()
