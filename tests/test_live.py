"""The live side end to end, headless: detection, the frame loop, the scripts' output and errors.

Synthetic clips use real FER2013 faces (the Haar cascade needs real faces), enlarged to
128 px and moving over a colour gradient, three per frame.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fer.faces import FaceDetector, crop, to_gray
from fer.inference import EmotionClassifier
from fer.live import FrameSource, annotate, draw_bars, draw_face, label_color, run
from fer.preprocess import Preprocessing
from fer.tracking import IoUTracker, Track, iou

REPO_ROOT = Path(__file__).resolve().parents[1]
WEBCAM = REPO_ROOT / "scripts" / "webcam.py"
PREDICT = REPO_ROOT / "scripts" / "predict.py"
LABELS = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
WIDTH, HEIGHT, FACE, N_FRAMES = 640, 480, 128, 12
STARTS = [(30, 40), (60, 300), (480, 60)]  # top-left corner of each face on frame 0
STEPS = [(8, 4), (10, -2), (-4, 8)]  # pixels per frame: paths that never cross


# --- synthetic frames ----------------------------------------------------------------------------

def background():
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([60 + 80 * xx / WIDTH, 90 + 0 * xx, 150 - 60 * yy / HEIGHT], axis=-1).astype(np.uint8)


def paste(frame, face, box):
    x, y, w, h = box
    frame[y:y + h, x:x + w] = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC)[:, :, None]


def face_boxes(t):
    """Where the three faces are on frame t, as (x, y, w, h)."""
    return [(x + dx * t, y + dy * t, FACE, FACE) for (x, y), (dx, dy) in zip(STARTS, STEPS)]


def frame_with(faces, boxes):
    frame = background()
    for face, box in zip(faces, boxes):
        paste(frame, face, box)
    return frame


@pytest.fixture(scope="module")
def fer_faces(shared_file):
    """The first 100 FER2013 faces, (100, 48, 48) uint8, as training reads them."""
    table = pd.read_csv(shared_file("fer2013/fer2013.csv.gz"), nrows=100)
    return np.stack([np.array(p.split(), dtype=np.uint8).reshape(48, 48) for p in table["pixels"]])


@pytest.fixture(scope="module")
def faces(fer_faces):
    """Three faces the cascade finds on their own where the clip starts them."""
    detector, chosen = FaceDetector(), []
    for face in fer_faces:
        box = face_boxes(0)[len(chosen)]
        if len(detector.detect(to_gray(frame_with([face], [box])))) == 1:
            chosen.append(face)
            if len(chosen) == 3:
                return chosen
    pytest.fail("fewer than 3 of the first 100 FER2013 faces are found by the Haar cascade")


@pytest.fixture(scope="module")
def face_video(tmp_path_factory, faces):
    path = tmp_path_factory.mktemp("video") / "faces.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, (WIDTH, HEIGHT))
    for t in range(N_FRAMES):
        writer.write(frame_with(faces, face_boxes(t)))
    writer.release()
    return path


@pytest.fixture(scope="module")
def plain_video(tmp_path_factory):
    """Three frames of background, no face: for the tests that need no shared data."""
    path = tmp_path_factory.mktemp("video") / "plain.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, (WIDTH, HEIGHT))
    for _ in range(3):
        writer.write(background())
    writer.release()
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny minicnn model saved with labels and preprocessing, as training saves them."""
    import minicnn

    model = minicnn.Sequential([minicnn.Conv2D(4, 3, activation="relu", input_shape=(16, 16, 1)),
                                minicnn.MaxPooling2D(2), minicnn.Flatten(), minicnn.Dense(7, activation="softmax")])
    model.metadata = {"labels": LABELS, "preprocessing": Preprocessing(16, "symmetric").to_dict()}
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    model.save(path)
    return path


class SpyModel:
    """Stands in for a network: probabilities from each input's mean, and a record of every input."""

    def __init__(self):
        self.inputs = []

    def predict(self, x, batch_size=32):
        self.inputs.append(x.copy())
        logits = 0.1 * np.outer(x.mean(axis=(1, 2, 3)) + len(self.inputs), np.arange(len(LABELS)))
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_script(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=120)


# --- detection ---------------------------------------------------------------------------------

def test_detector_finds_each_face_in_full_frame_coordinates(faces):
    boxes = face_boxes(5)
    found = FaceDetector().detect(to_gray(frame_with(faces, boxes)))
    assert len(found) == 3
    assert found == sorted(found)
    for box in boxes:  # each placed face overlaps one detection well
        assert max(iou(box, f) for f in found) > 0.5
    for x, y, w, h in found:
        assert all(isinstance(v, int) for v in (x, y, w, h))
        assert 0 <= x < x + w <= WIDTH and 0 <= y < y + h <= HEIGHT


def test_detector_never_upscales_a_small_frame(faces):
    small = frame_with(faces[:1], [(40, 30, FACE, FACE)])[:240, :300]
    found = FaceDetector(detect_width=320).detect(to_gray(small))
    assert len(found) == 1 and iou(found[0], (40, 30, FACE, FACE)) > 0.5


def test_to_gray_and_crop():
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # pure red
    assert to_gray(bgr).shape == (4, 6) and to_gray(bgr)[0, 0] == 76
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6)
    assert to_gray(gray) is gray
    np.testing.assert_array_equal(crop(gray, (1, 2, 3, 2)), [[13, 14, 15], [19, 20, 21]])


def test_missing_cascade_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(RuntimeError, match="OpenCV 5 dropped"):
        FaceDetector()


def test_classifier_from_file_names_a_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_model.npz"):
        EmotionClassifier.from_file(tmp_path / "no_model.npz")
    (tmp_path / "notes.npz").write_text("not a model")
    with pytest.raises(ValueError, match="notes.npz"):
        EmotionClassifier.from_file(tmp_path / "notes.npz")


# --- the frame loop ----------------------------------------------------------------------------

def test_headless_run_logs_every_face_with_stable_ids(face_video, model_file, tmp_path):
    classifier = EmotionClassifier.from_file(model_file)
    with FrameSource(str(face_video)) as source:
        stats = run(source, FaceDetector(), classifier, IoUTracker(), save=tmp_path / "out.mp4",
                    jsonl=tmp_path / "out.jsonl")
    records = read_jsonl(tmp_path / "out.jsonl")
    assert stats.frames == N_FRAMES and stats.faces == len(records) == 3 * N_FRAMES

    face_of_track = {}
    for record in records:
        assert set(record) == {"frame", "time_s", "track_id", "box", "emotions", "top_emotion", "score"}
        assert record["time_s"] == pytest.approx(record["frame"] / 15, abs=1e-3)
        # Each id stays with one face as the faces move.
        truth = face_boxes(record["frame"])
        overlaps = [iou(record["box"], box) for box in truth]
        assert max(overlaps) > 0.5
        assert face_of_track.setdefault(record["track_id"], int(np.argmax(overlaps))) == int(np.argmax(overlaps))
        emotions = record["emotions"]
        assert list(emotions) == LABELS
        assert sum(emotions.values()) == pytest.approx(1.0, abs=1e-9)
        assert record["top_emotion"] == max(emotions, key=emotions.get)
        assert record["score"] == emotions[record["top_emotion"]]
    assert sorted(face_of_track) == [0, 1, 2] and sorted(face_of_track.values()) == [0, 1, 2]

    # The saved video plays back: every frame, at the source size.
    video = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    frames = []
    while (frame := video.read()[1]) is not None:
        frames.append(frame)
    video.release()
    assert len(frames) == N_FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)


def test_every_nth_frame_is_classified_and_labels_hold_between(face_video, tmp_path):
    model = SpyModel()
    classifier = EmotionClassifier(model, LABELS, Preprocessing(16))
    with FrameSource(str(face_video)) as source:
        run(source, FaceDetector(), classifier, IoUTracker(smooth=0.0), every=5, jsonl=tmp_path / "out.jsonl")
    assert len(model.inputs) == 3  # frames 0, 5 and 10, one batch of all three faces each
    assert all(len(x) == 3 for x in model.inputs)
    emotions = {(r["frame"], r["track_id"]): r["emotions"] for r in read_jsonl(tmp_path / "out.jsonl")}
    for track in range(3):
        assert emotions[(4, track)] == emotions[(0, track)]
        assert emotions[(5, track)] != emotions[(4, track)]  # the spy answers differently per call


def test_live_loop_feeds_the_model_the_training_tensor(face_video, tmp_path):
    model = SpyModel()
    preprocessing = Preprocessing(48, "symmetric")
    with FrameSource(str(face_video)) as source:
        run(source, FaceDetector(), EmotionClassifier(model, LABELS, preprocessing), IoUTracker(),
            jsonl=tmp_path / "out.jsonl", max_frames=1)
    boxes = [r["box"] for r in read_jsonl(tmp_path / "out.jsonl")]
    with FrameSource(str(face_video)) as source:
        gray = to_gray(source.read())
    expected = preprocessing.apply([crop(gray, box) for box in boxes])
    np.testing.assert_array_equal(model.inputs[0], expected)


def test_webcam_and_evaluation_feed_identical_tensors_for_the_same_face(fer_faces):
    preprocessing = Preprocessing(64, "symmetric")
    classifier = EmotionClassifier(SpyModel(), LABELS, preprocessing)
    # The face sits 1:1 in a colour frame, as a camera would deliver it.
    box = (200, 150, 48, 48)
    frame = background()
    frame[150:198, 200:248] = fer_faces[7][:, :, None]
    webcam = classifier.prepare([crop(to_gray(frame), box)])
    evaluation = preprocessing.apply(fer_faces[7:8])  # evaluation passes uint8 (N, 48, 48)
    assert webcam.dtype == np.float32 and webcam.shape == (1, 64, 64, 1)
    np.testing.assert_array_equal(webcam, evaluation)


# --- drawing -----------------------------------------------------------------------------------

def test_probability_panel_covers_neither_a_face_nor_its_label():
    # A face just below the top-left panel: its box is clear of the panel, the label above it is not.
    plain = np.full((HEIGHT, WIDTH, 3), 100, np.uint8)
    probs = np.array([0.05, 0.05, 0.05, 0.6, 0.1, 0.1, 0.05])
    track = Track(track_id=0, box=(40, 130, 100, 100), probs=probs)
    faces_only = plain.copy()
    draw_face(faces_only, track.box, "Happy", probs[3], label_color(LABELS, "Happy"), track.track_id)
    drawn = (faces_only != plain).any(axis=2)
    old_choice = plain.copy()
    draw_bars(old_choice, probs, LABELS, avoid=[track.box])        # avoiding the face boxes alone
    assert ((old_choice != plain).any(axis=2) & drawn).any()       # covers part of the label

    annotated = annotate(plain.copy(), [track], LABELS)
    assert (annotated != faces_only).any()                         # the panel is drawn...
    np.testing.assert_array_equal(annotated[drawn], faces_only[drawn])   # ...over none of the face's pixels


# --- scripts/webcam.py ---------------------------------------------------------------------------

def test_webcam_script_runs_headless_on_a_video(face_video, model_file, tmp_path):
    result = run_script(WEBCAM, "--video", face_video, "--model", model_file, "--no-display", "--max-frames", 5,
                        "--save", tmp_path / "out.mp4", "--jsonl", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    assert "frames/s" in result.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 3 * 5
    assert int(cv2.VideoCapture(str(tmp_path / "out.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_webcam_script_missing_camera(model_file):
    result = run_script(WEBCAM, "--camera", 99, "--model", model_file, "--no-display")
    assert result.returncode == 1
    assert "camera 99" in result.stderr and "--video PATH" in result.stderr and "--camera" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_webcam_script_fails_when_the_source_gives_no_frames(model_file, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("webcam_script", WEBCAM)
    webcam = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(webcam)

    class SilentCamera:                       # opens, then every read fails, as a busy camera does
        fps = 30.0

        def __init__(self, source):
            pass

        def read(self):
            return None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(webcam, "FrameSource", SilentCamera)
    assert webcam.main(["--camera", "0", "--model", str(model_file), "--no-display"]) == 1
    assert "no frames read from camera 0" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["video", "model"])
def test_webcam_script_missing_file(missing, plain_video, model_file, tmp_path):
    paths = {"video": plain_video, "model": model_file, missing: tmp_path / f"no_such_{missing}"}
    result = run_script(WEBCAM, "--video", paths["video"], "--model", paths["model"], "--no-display")
    assert result.returncode == 1
    assert f"no_such_{missing}" in result.stderr and "Traceback" not in result.stderr


# --- scripts/predict.py --------------------------------------------------------------------------

def test_predict_script_json_lines_annotate_and_unreadable_image(faces, model_file, tmp_path):
    cv2.imwrite(str(tmp_path / "group.png"), frame_with(faces, face_boxes(0)))
    cv2.imwrite(str(tmp_path / "blank.png"), background())
    (tmp_path / "broken.png").write_text("not an image")
    annotated = tmp_path / "annotated"
    result = run_script(PREDICT, tmp_path / "group.png", tmp_path / "broken.png", tmp_path / "blank.png",
                        "--model", model_file, "--annotate", annotated)

    assert result.returncode == 1  # one image failed; the others were still processed
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    group, blank = [json.loads(line) for line in result.stdout.splitlines()]
    assert group["image"].endswith("group.png") and blank["image"].endswith("blank.png")
    assert blank["faces"] == []
    assert len(group["faces"]) == 3
    for face, box in zip(group["faces"], sorted(face_boxes(0))):
        assert set(face) == {"box", "emotions", "top_emotion", "score"}
        assert iou(face["box"], box) > 0.5
        assert sum(face["emotions"].values()) == pytest.approx(1.0, abs=1e-9)
        assert face["score"] == face["emotions"][face["top_emotion"]]
    assert sorted(p.name for p in annotated.iterdir()) == ["blank.png", "group.png"]
    assert cv2.imread(str(annotated / "group.png")).shape == (HEIGHT, WIDTH, 3)


def test_predict_script_refuses_to_annotate_two_images_of_one_name(faces, model_file, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "face.png"), background())
    result = run_script(PREDICT, tmp_path / "a" / "face.png", tmp_path / "b" / "face.png", "--model", model_file,
                        "--annotate", tmp_path / "out")
    assert result.returncode == 2 and "several images are named face.png" in result.stderr
    assert not (tmp_path / "out").exists() and result.stdout == ""


def test_predict_script_no_detect_classifies_the_whole_crop(fer_faces, model_file, tmp_path):
    cv2.imwrite(str(tmp_path / "crop.png"), fer_faces[0])
    result = run_script(PREDICT, tmp_path / "crop.png", "--model", model_file, "--no-detect")
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    (face,) = record["faces"]
    assert face["box"] == [0, 0, 48, 48]
    assert sum(face["emotions"].values()) == pytest.approx(1.0, abs=1e-9)
