"""fer.data: CSV and folder loaders, their error messages, class maps, splits."""
import csv
import gzip
import hashlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fer.data import (
    CLASS_MAPS,
    EMOTIONS,
    DataError,
    FerData,
    apply_class_map,
    content_hash,
    load,
    load_csv,
    load_folders,
    split,
)

HEADER = "emotion,pixels,Usage"


def random_faces(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def pixel_text(face):
    return " ".join(map(str, face.ravel()))


def write_csv(path, lines, header=HEADER):
    """Write header + lines (already joined strings) as .csv or .csv.gz; returns path."""
    text = "\n".join([header, *lines]) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def good_rows(n=6, seed=0):
    """(faces, labels, usages, CSV lines) with every label and all three Usage values."""
    faces = random_faces(n, seed)
    labels = [i % 7 for i in range(n)]
    usages = [("Training", "PublicTest", "PrivateTest")[i % 3] for i in range(n)]
    lines = [f"{label},{pixel_text(face)},{usage}" for face, label, usage in zip(faces, labels, usages)]
    return faces, labels, usages, lines


# ----------------------------------------------------------------------- CSV


@pytest.mark.parametrize("name", ["faces.csv", "faces.csv.gz"])
def test_csv_round_trip(tmp_path, name):
    faces, labels, usages, lines = good_rows(9)
    data = load_csv(write_csv(tmp_path / name, lines))
    assert data.images.dtype == np.uint8 and data.images.shape == (9, 48, 48)
    np.testing.assert_array_equal(data.images, faces)
    assert data.labels.dtype == np.int64 and data.labels.tolist() == labels
    assert data.usage.tolist() == usages
    assert data.skipped == 0 and data.source == str(tmp_path / name) and len(data) == 9


def test_csv_columns_found_by_header_name(tmp_path):
    faces, labels, usages, _ = good_rows(3)
    lines = [f"{usage},{label},{pixel_text(face)}" for face, label, usage in zip(faces, labels, usages)]
    data = load_csv(write_csv(tmp_path / "f.csv", lines, header="Usage,emotion,pixels"))
    np.testing.assert_array_equal(data.images, faces)
    assert data.labels.tolist() == labels and data.usage.tolist() == usages


def test_csv_quoted_fields_and_crlf(tmp_path):
    faces, labels, usages, _ = good_rows(3)
    path = tmp_path / "quoted.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows([label, pixel_text(face), usage] for face, label, usage in zip(faces, labels, usages))
    data = load_csv(path)
    np.testing.assert_array_equal(data.images, faces)


def test_header_only_csv_is_empty_data(tmp_path):
    data = load_csv(write_csv(tmp_path / "empty.csv", []))
    assert data.images.shape == (0, 48, 48) and len(data.labels) == 0


BAD_ROWS = {  # name: (a function of one good row's fields -> bad line, expected message part)
    "2303 pixels": (lambda lab, px, use: f"{lab},{px.rsplit(' ', 1)[0]},{use}", "2303 pixels, expected 2304"),
    "2305 pixels": (lambda lab, px, use: f"{lab},{px} 7,{use}", "2305 pixels, expected 2304"),
    "no pixels": (lambda lab, px, use: f"{lab},,{use}", "0 pixels, expected 2304"),
    "value 256": (lambda lab, px, use: f"{lab},256 {px.split(' ', 1)[1]},{use}", "pixel value 256 outside 0-255"),
    "value -1": (lambda lab, px, use: f"{lab},{px.rsplit(' ', 1)[0]} -1,{use}", "pixel value -1 outside 0-255"),
    "non-integer": (lambda lab, px, use: f"{lab},{px.rsplit(' ', 1)[0]} 1.5,{use}", "pixel '1.5' is not an integer"),
    "label 7": (lambda lab, px, use: f"7,{px},{use}", "label '7', expected an integer 0-6"),
    "label text": (lambda lab, px, use: f"happy,{px},{use}", "label 'happy'"),
    "unknown Usage": (lambda lab, px, use: f"{lab},{px},Validation", "Usage 'Validation', expected one of"),
    "missing field": (lambda lab, px, use: f"{lab},{px}", "2 fields, expected 3"),
    "extra field": (lambda lab, px, use: f"{lab},{px},{use},x", "4 fields, expected 3"),
    "empty line": (lambda lab, px, use: "", "empty line"),
}


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_bad_row_names_file_line_and_problem(tmp_path, kind):
    make_bad, expected = BAD_ROWS[kind]
    faces, labels, usages, lines = good_rows(6)
    lines[3] = make_bad(str(labels[3]), pixel_text(faces[3]), usages[3])  # header is line 1: row 3 is line 5
    path = write_csv(tmp_path / "fer2013.csv", lines)
    with pytest.raises(DataError) as error:
        load_csv(path)
    assert str(error.value).startswith(f"{path} line 5: {expected}")


@pytest.mark.parametrize(
    "header", ["emotion,pixel,Usage", "emotion,pixels", "emotion,pixels,Usage,extra", "Emotion,Pixels,Usage"]
)
def test_bad_header_is_line_1(tmp_path, header):
    _, _, _, lines = good_rows(2)
    path = write_csv(tmp_path / "fer2013.csv", lines, header=header)
    with pytest.raises(DataError, match=r"fer2013\.csv line 1: header"):
        load_csv(path)


def test_empty_file_and_corrupt_gzip(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv line 1: empty file"):
        load_csv(tmp_path / "empty.csv")
    (tmp_path / "broken.csv.gz").write_bytes(gzip.compress(b"emotion,pixels,Usage\n" * 100)[:40])
    with pytest.raises(DataError, match=r"broken\.csv\.gz: cannot be read"):
        load_csv(tmp_path / "broken.csv.gz")


def test_skip_bad_rows_counts_and_warns(tmp_path):
    faces, labels, usages, lines = good_rows(14)
    bad = {2: "label 7", 5: "value 256", 6: "2303 pixels", 11: "empty line"}
    for i, kind in bad.items():
        lines[i] = BAD_ROWS[kind][0](str(labels[i]), pixel_text(faces[i]), usages[i])
    path = write_csv(tmp_path / "fer2013.csv.gz", lines)

    with pytest.raises(DataError, match=r"line 4: label '7'.*\(and 3 more bad rows\)"):
        load_csv(path)
    with pytest.warns(UserWarning, match=r"skipped 4 bad rows \(line 4: .*line 7: .*line 8: .*line 13: empty line\)"):
        data = load_csv(path, skip_bad_rows=True)
    kept = [i for i in range(14) if i not in bad]
    assert data.skipped == 4
    np.testing.assert_array_equal(data.images, faces[kept])
    assert data.labels.tolist() == [labels[i] for i in kept]
    assert data.usage.tolist() == [usages[i] for i in kept]


def test_lines_are_counted_past_rows_the_parser_left_out(tmp_path):
    faces, labels, usages, lines = good_rows(8)
    lines[1] += ",extra"                                     # line 3: pandas leaves it out of the table
    lines[5] = "9," + lines[5].split(",", 1)[1]              # line 7
    path = write_csv(tmp_path / "fer2013.csv", lines)
    with pytest.warns(UserWarning, match=r"skipped 2 bad rows \(line 3: 4 fields, expected 3 .*; line 7: label '9'"):
        data = load_csv(path, skip_bad_rows=True)
    kept = [0, 2, 3, 4, 6, 7]
    np.testing.assert_array_equal(data.images, faces[kept])
    assert data.labels.tolist() == [labels[i] for i in kept]


def test_byte_order_mark_crlf_gzip(tmp_path):
    faces, labels, usages, lines = good_rows(4)
    path = tmp_path / "excel.csv.gz"
    path.write_bytes(gzip.compress(("\ufeff" + "\r\n".join([HEADER, *lines]) + "\r\n").encode("utf-8")))
    data = load_csv(path)
    np.testing.assert_array_equal(data.images, faces)
    assert data.usage.tolist() == usages


def test_an_unclosed_quote_names_the_file(tmp_path):
    _, _, _, lines = good_rows(3)
    lines[1] = '"' + lines[1]
    path = write_csv(tmp_path / "fer2013.csv", lines)
    with pytest.raises(DataError, match=r"fer2013\.csv line 3: a quote opened here is never closed"):
        load_csv(path)


# ------------------------------------------------------------------ image folders


def write_folders(root, counts, seed=0):
    """PNG faces in root/<split>/<emotion folder>/; returns {(split, folder): faces}."""
    written = {}
    for k, ((split_name, folder), n) in enumerate(counts.items()):
        (root / split_name / folder).mkdir(parents=True)
        faces = random_faces(n, seed + k)
        for i, face in enumerate(faces):
            cv2.imwrite(str(root / split_name / folder / f"im{i:03d}.png"), face)
        written[(split_name, folder)] = faces
    return written


def test_folders_round_trip_in_sorted_order(tmp_path):
    counts = {("train", "sad"): 2, ("train", "Happy"): 3, ("test", "ANGRY"): 2, ("test", "neutral"): 1}
    written = write_folders(tmp_path, counts)
    (tmp_path / "train" / "sad" / "notes.txt").write_text("not an image")  # ignored: not .jpg/.png
    with pytest.warns(UserWarning, match=r"ignored 1 file \(1 not \.jpg"):
        data = load_folders(tmp_path)

    # train before test, then label order (Happy 3 before Sad 4), then file name.
    expected = [("train", "Happy"), ("train", "sad"), ("test", "ANGRY"), ("test", "neutral")]
    np.testing.assert_array_equal(data.images, np.concatenate([written[key] for key in expected]))
    assert data.labels.tolist() == [3, 3, 3, 4, 4, 0, 0, 6]
    assert data.usage.tolist() == ["Training"] * 5 + ["PublicTest"] * 3
    assert data.skipped == 0 and data.source == str(tmp_path)
    with pytest.warns(UserWarning, match="ignored 1 file"):
        np.testing.assert_array_equal(load(tmp_path).images, data.images)  # load() dispatches on a directory


def test_folders_jpeg_smoke(tmp_path):
    (tmp_path / "train" / "fear").mkdir(parents=True)
    face = np.full((48, 48), 100, np.uint8)
    cv2.imwrite(str(tmp_path / "train" / "fear" / "a.jpg"), face)
    data = load_folders(tmp_path)
    assert data.images.shape == (1, 48, 48) and data.labels.tolist() == [2]
    assert np.abs(data.images.astype(int) - 100).max() <= 2


def test_bad_images_name_the_path_or_are_skipped(tmp_path):
    write_folders(tmp_path, {("train", "happy"): 3})
    wrong_size = tmp_path / "train" / "happy" / "im001.png"
    cv2.imwrite(str(wrong_size), np.zeros((50, 48), np.uint8))
    not_an_image = tmp_path / "train" / "happy" / "zz.png"
    not_an_image.write_bytes(b"this is not a png")

    with pytest.raises(DataError, match="image is 48x50, expected 48x48") as error:
        load_folders(tmp_path)
    assert str(wrong_size) in str(error.value)
    with pytest.warns(UserWarning, match="skipped 2 bad images"):
        data = load_folders(tmp_path, skip_bad_rows=True)
    assert data.skipped == 2 and len(data) == 2


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="no train/ or test/ folder"):
        load_folders(tmp_path)
    (tmp_path / "train" / "contempt").mkdir(parents=True)
    with pytest.raises(DataError, match="contempt: unknown emotion folder"):
        load_folders(tmp_path)


# ------------------------------------------------------------------- load, content_hash


def test_content_hash_follows_the_bytes(tmp_path):
    path = tmp_path / "fer2013.csv"
    write_csv(path, good_rows(3, seed=1)[3])
    old_hash = content_hash(path)
    assert old_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    load(path)

    faces, _, _, lines = good_rows(3, seed=2)
    write_csv(path, lines)
    assert content_hash(path) != old_hash
    np.testing.assert_array_equal(load(path).images, faces)


def test_bad_rows_are_reported_on_every_load(tmp_path):
    faces, labels, usages, lines = good_rows(4)
    lines[1] = "9," + lines[1].split(",", 1)[1]
    path = write_csv(tmp_path / "fer2013.csv", lines)
    for _ in range(2):
        with pytest.warns(UserWarning, match="skipped 1 bad rows"):
            assert load(path, skip_bad_rows=True).skipped == 1
    with pytest.raises(DataError, match="line 3: label '9'"):
        load(path)


def test_load_says_when_there_is_nothing_at_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no FER2013 CSV file or image folder at"):
        load(tmp_path / "missing.csv")


# ------------------------------------------------------------ class maps and splits


def make_data(labels, usage):
    """In-memory FerData whose face i carries its index i in its first two pixels."""
    n = len(labels)
    images = np.zeros((n, 48, 48), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return FerData(images, np.asarray(labels, np.int64), np.asarray(usage, "<U11"), "memory", 0)


def row_ids(images):
    return images[:, 0, 0].astype(int) + 256 * images[:, 0, 1].astype(int)


def test_class_maps():
    assert CLASS_MAPS["fer7"] == EMOTIONS
    assert CLASS_MAPS["fer6"] == ("Angry", "Fear", "Happy", "Sad", "Surprise", "Neutral")
    assert CLASS_MAPS["fer4"] == ("Happy", "Sad", "Neutral", "Surprise")
    data = make_data(labels=[0, 1, 2, 3, 4, 5, 6, 1, 3], usage=["Training"] * 9)

    images, labels, names = apply_class_map(data, "fer6")
    assert names == CLASS_MAPS["fer6"] and labels.tolist() == [0, 1, 2, 3, 4, 5, 2]
    assert row_ids(images).tolist() == [0, 2, 3, 4, 5, 6, 8]  # both Disgust faces dropped

    images, labels, names = apply_class_map(data, "fer4")
    assert [names[label] for label in labels] == ["Happy", "Sad", "Surprise", "Neutral", "Happy"]
    assert row_ids(images).tolist() == [3, 4, 5, 6, 8]

    with pytest.raises(ValueError, match="unknown class map 'fer5', expected one of fer7, fer6, fer4"):
        apply_class_map(data, "fer5")


def test_split_without_private_test():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 500)
    usage = np.where(np.arange(500) < 400, "Training", "PublicTest")
    data = make_data(labels, usage)
    splits = split(data, val_fraction=0.2, seed=3)

    train, val, test = (row_ids(part[0]) for part in (splits.train, splits.val, splits.test))
    assert test.tolist() == list(range(400, 500))  # test is exactly PublicTest
    assert sorted([*train, *val]) == list(range(400))  # train + val is exactly Training, no overlap
    for label in range(7):  # the same fraction of every class
        n = np.sum(labels[:400] == label)
        assert abs(np.sum(splits.val[1] == label) - 0.2 * n) <= 1
    np.testing.assert_array_equal(splits.val[1], labels[val])  # labels travel with their faces
    assert splits.label_names == EMOTIONS and "stratified 20% of Training (seed 3)" in splits.description
    assert "PublicTest" in splits.description and "final report only" in splits.description

    again = split(data, val_fraction=0.2, seed=3)
    np.testing.assert_array_equal(row_ids(again.val[0]), val)
    assert not np.array_equal(row_ids(split(data, val_fraction=0.2, seed=4).val[0]), val)


def test_split_with_private_test_uses_the_challenge_split():
    usage = ["Training"] * 5 + ["PublicTest"] * 3 + ["PrivateTest"] * 2
    data = make_data([0, 1, 2, 3, 4, 5, 6, 0, 1, 2], usage)
    splits = split(data, val_fraction=0.5)
    assert row_ids(splits.train[0]).tolist() == [0, 1, 2, 3, 4]
    assert row_ids(splits.val[0]).tolist() == [5, 6, 7]
    assert row_ids(splits.test[0]).tolist() == [8, 9]
    assert "PublicTest" in splits.description and "PrivateTest" in splits.description
    assert splits.test_name == "PrivateTest"
    assert split(make_data([0, 1, 2], ["Training", "Training", "PublicTest"])).test_name == "PublicTest"

    fer6 = split(data, class_map="fer6")
    assert row_ids(fer6.train[0]).tolist() == [0, 2, 3, 4] and fer6.train[1].tolist() == [0, 1, 2, 3]
    assert row_ids(fer6.test[0]).tolist() == [9] and len(fer6.label_names) == 6


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=7, max_size=7),
    fraction=st.floats(0, 0.9),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_is_stratified_and_disjoint(counts, fraction, seed):
    labels = np.repeat(np.arange(7), counts)
    data = make_data(labels, ["Training"] * len(labels))
    splits = split(data, val_fraction=fraction, seed=seed)
    train, val = row_ids(splits.train[0]), row_ids(splits.val[0])
    assert sorted([*train, *val]) == list(range(len(labels)))
    for label, n in enumerate(counts):
        assert abs(np.sum(splits.val[1] == label) - fraction * n) <= 1
    assert len(splits.test[1]) == 0


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        split(make_data([0], ["Training"]), val_fraction=1.0)


# ------------------------------------------------------------------- the real file

TRAINING_COUNTS = [3995, 436, 4097, 7215, 4830, 3171, 4965]
PUBLIC_TEST_COUNTS = [467, 56, 496, 895, 653, 415, 607]


def test_shared_fer2013_file(shared_file, tmp_path):
    path = shared_file("fer2013/fer2013.csv.gz")
    data = load(path)
    assert data.images.shape == (32298, 48, 48) and data.skipped == 0
    assert np.bincount(data.labels[data.usage == "Training"], minlength=7).tolist() == TRAINING_COUNTS
    assert np.bincount(data.labels[data.usage == "PublicTest"], minlength=7).tolist() == PUBLIC_TEST_COUNTS
    splits = split(data)
    assert len(splits.train[1]) + len(splits.val[1]) == sum(TRAINING_COUNTS)
    assert len(splits.test[1]) == sum(PUBLIC_TEST_COUNTS)


# ---- files an image folder ignores ------------------------------------------------------

def test_image_folders_count_and_name_the_files_they_ignore(tmp_path):
    write_folders(tmp_path, {("train", "happy"): 2, ("val", "happy"): 3})      # val/ is no split here
    (tmp_path / "train" / "happy" / "more").mkdir()
    cv2.imwrite(str(tmp_path / "train" / "happy" / "more" / "x.png"), np.zeros((48, 48), np.uint8))
    (tmp_path / "train" / "happy" / "face.bmp").write_bytes(b"BM")
    with pytest.warns(UserWarning, match=r"ignored 5 files \(3 in val/ \(not train/ or test/\); "
                                         r"1 not \.jpg, \.jpeg or \.png; 1 in subfolders\)"):
        data = load_folders(tmp_path)
    assert len(data) == 2
