"""FER2013 in, NumPy arrays out: loaders, class maps and splits.

Both sources of the data set, the Kaggle challenge CSV and the Kaggle image folders,
load into the same `FerData` (uint8 faces, labels 0..6 in `EMOTIONS` order, the Usage
of each row), so nothing downstream knows where the faces came from. Bad input is a
`DataError` saying which file, which line (or image) and what is wrong; with
`skip_bad_rows=True` bad rows are left out, counted and reported, never dropped
silently.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

EMOTIONS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
USAGES = ("Training", "PublicTest", "PrivateTest")
IMAGE_SIZE = 48
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
CSV_COLUMNS = ("emotion", "pixels", "Usage")

# Kaggle image folders: root/train/<emotion>/*.jpg is Training, root/test/<emotion>/* PublicTest.
FOLDER_USAGE = {"train": "Training", "test": "PublicTest"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_SHOWN_PROBLEMS = 5  # how many bad rows a skip warning quotes


class DataError(ValueError):
    """A data file or image that is not FER2013: the message names where and what."""


@dataclass
class FerData:
    """Faces loaded from one source.

    images: uint8 (N, 48, 48); labels: int64 (N,), 0..6 in EMOTIONS order;
    usage: str (N,), each one of USAGES; source: the path loaded;
    skipped: bad rows or images left out by skip_bad_rows=True.
    """

    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray
    source: str
    skipped: int = 0

    def __len__(self):
        return len(self.labels)


# ---------------------------------------------------------------------------- CSV


def load_csv(path, skip_bad_rows=False) -> FerData:
    """Read the Kaggle challenge CSV (`.csv` or `.csv.gz`) with header emotion,pixels,Usage.

    Columns are found by header name, in any order. Every row needs a label 0-6,
    2304 space-separated integers 0-255 (a 48x48 face, row-major) and a Usage from
    USAGES. A bad row raises DataError ("fer2013.csv line 17: 2303 pixels, expected
    2304"; the header is line 1, and a row is a line: FER2013 has no quoted line breaks);
    with skip_bad_rows=True it is left out, counted in `skipped` and reported in a warning.
    """
    path = Path(path)
    table, lines, problems = _read_table(path)
    good = _check_fields(table, lines, problems)
    rows = np.flatnonzero(good)
    images, bad_pixels = _parse_pixels(table["pixels"].to_numpy()[rows])
    problems.update({lines[rows[i]]: problem for i, problem in bad_pixels.items()})
    rows = np.delete(rows, list(bad_pixels))
    if problems:
        _report(path, problems, skip_bad_rows)
    return FerData(
        images=images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE),
        labels=table["emotion"].to_numpy()[rows].astype(np.int64),
        usage=table["Usage"].to_numpy()[rows].astype("<U11"),
        source=str(path),
        skipped=len(problems),
    )


def _read_table(path):
    """(table, lines, problems): the CSV as a DataFrame of strings by pandas' C parser, the file
    line of each of its rows, and {line: problem} for the rows pandas left out (too many fields).

    Missing fields read as "" and a blank line as a row of "" (so it can be reported).
    """
    try:
        with _open_capped(path) as stream, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            table = pd.read_csv(stream, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False,
                                on_bad_lines="warn", encoding="utf-8-sig", encoding_errors="replace")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} line 1: empty file, expected the header emotion,pixels,Usage") from None
    except pd.errors.ParserError as error:
        quote = re.search(r"EOF inside string starting at row (\d+)", str(error))  # rows counted from 0
        if quote:
            raise DataError(f"{path} line {int(quote[1]) + 1}: a quote opened here is never closed") from None
        raise DataError(f"{path}: not a CSV pandas can parse ({str(error).strip()})") from None
    except (OSError, EOFError, zlib.error) as error:  # unreadable, or a truncated or corrupt .gz
        raise DataError(f"{path}: cannot be read ({error})") from error
    header = list(table.columns)
    if sorted(header) != sorted(CSV_COLUMNS):
        raise DataError(f"{path} line 1: header {','.join(header)!r}, expected emotion,pixels,Usage (in any order)")
    problems = dict(_skipped_lines(caught))
    lines = np.setdiff1d(np.arange(2, 2 + len(table) + len(problems)), list(problems))
    return table, lines, problems


def _skipped_lines(caught):
    """(line, problem) for each row pandas skipped with a ParserWarning; other warnings go on."""
    for warning in caught:
        found = re.search(r"line (\d+): expected \d+ fields, saw (\d+)", str(warning.message))
        if found and issubclass(warning.category, pd.errors.ParserWarning):
            yield int(found[1]), f"{found[2]} fields, expected 3 (emotion, pixels, Usage)"
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _check_fields(table, lines, problems):
    """True for the rows whose fields are all there, with a label 0-6 and a known Usage;
    each other row goes into problems. An empty last field counts as missing."""
    filled = (table != "").to_numpy()          # (n, 3), in the file's column order
    # a row's fields run to its last non-empty one (pandas reads a missing field as "")
    count = np.where(filled.any(axis=1), filled.shape[1] - filled[:, ::-1].argmax(axis=1), 0)
    emotion, usage = table["emotion"].to_numpy(), table["Usage"].to_numpy()
    complete = count == len(CSV_COLUMNS)
    label_ok = complete & np.isin(emotion, [str(label) for label in range(len(EMOTIONS))])
    usage_ok = label_ok & np.isin(usage, USAGES)
    for i in np.flatnonzero(~complete):
        problems[lines[i]] = ("empty line" if count[i] == 0
                              else f"{count[i]} fields, expected 3 (emotion, pixels, Usage)")
    for i in np.flatnonzero(complete & ~label_ok):
        problems[lines[i]] = f"label {emotion[i]!r}, expected an integer 0-6"
    for i in np.flatnonzero(label_ok & ~usage_ok):
        problems[lines[i]] = f"Usage {usage[i]!r}, expected one of {', '.join(USAGES)}"
    return usage_ok


MAX_LINE = 1 << 16  # bytes: a FER2013 row has about 9,000


def _open_capped(path):
    """The file's bytes (inflated for .gz), refusing any line longer than MAX_LINE as they are read."""
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.BufferedReader(_LineCap(raw, path))


class _LineCap(io.RawIOBase):
    """A byte stream that raises DataError at a line longer than MAX_LINE, so a file without line
    ends (a .gz of zeros inflating to gigabytes) is refused before the parser buffers it."""

    def __init__(self, raw, path):
        self.raw, self.path = raw, path
        self.line, self.run = 1, 0      # the current line's number and its length so far

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self.raw.readinto(buffer)
        ends = np.flatnonzero(np.frombuffer(buffer, np.uint8, n) == ord("\n"))
        lengths = np.append(np.diff(ends, prepend=-1 - self.run) - 1, n - 1 - ends[-1] if len(ends) else self.run + n)
        if lengths.max() > MAX_LINE:
            raise DataError(f"{self.path} line {self.line + int(np.argmax(lengths > MAX_LINE))}: longer than "
                            f"{MAX_LINE:,} characters (a FER2013 row has about 9,000): not a FER2013 CSV")
        self.line, self.run = self.line + len(ends), int(lengths[-1])
        return n

    def close(self):
        self.raw.close()
        super().close()


def _parse_pixels(texts):
    """Pixel strings -> (uint8 (n, 2304) of the good rows, {row: problem} for the others).

    The whole column is parsed in one np.loadtxt call; only when that fails is each row
    parsed alone, to name the bad ones.
    """
    try:
        return _pixel_rows(texts), {}
    except ValueError:
        pass
    images, problems = [], {}
    for i, text in enumerate(texts):
        try:
            images.append(_pixel_rows([text]))
        except ValueError:
            problems[i] = _pixel_problem(text)
    return np.concatenate(images) if images else np.zeros((0, N_PIXELS), np.uint8), problems


def _pixel_rows(texts):
    """Pixel strings -> uint8 (n, 2304), or ValueError unless each is 2304 integers 0-255."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loadtxt warns on empty text; the shape check below rejects it
        block = np.loadtxt(texts, dtype=np.uint8, comments=None, ndmin=2)
    # loadtxt skips blank rows, so a row count off by one is a bad row too.
    if block.shape != (len(texts), N_PIXELS):
        raise ValueError(f"parsed {block.shape}, expected {(len(texts), N_PIXELS)}")
    return block


def _pixel_problem(text):
    """Say why one pixel string is not 2304 integers 0-255 (only called on rows that failed)."""
    tokens = text.split()
    if len(tokens) != N_PIXELS:
        return f"{len(tokens)} pixels, expected {N_PIXELS}"
    for token in tokens:
        if not (token.isascii() and token.lstrip("+-").isdigit()):
            return f"pixel {token!r} is not an integer"
        if not 0 <= int(token) <= 255:
            return f"pixel value {token} outside 0-255"
    return "pixels are not 2304 integers 0-255"


def _report(path, problems, skip_bad_rows):
    """Raise DataError for the first bad line, or warn about all of them when skipping."""
    listed = sorted(problems.items())
    if not skip_bad_rows:
        line, problem = listed[0]
        more = f" (and {len(listed) - 1} more bad rows)" if len(listed) > 1 else ""
        raise DataError(f"{path} line {line}: {problem}{more}")
    shown = "; ".join(f"line {line}: {problem}" for line, problem in listed[:_SHOWN_PROBLEMS])
    etc = "; ..." if len(listed) > _SHOWN_PROBLEMS else ""
    warnings.warn(f"{path}: skipped {len(listed)} bad rows ({shown}{etc})", stacklevel=3)


# ------------------------------------------------------------------- image folders


def load_folders(root, skip_bad_rows=False) -> FerData:
    """Read the Kaggle image folders: root/train/<emotion>/*.jpg|png and root/test/<emotion>/*.

    train is Usage "Training", test "PublicTest". Emotion folder names are matched
    without case (angry, disgust, fear, happy, sad, surprise, neutral). Every image
    must decode as a 48x48 grayscale picture: otherwise DataError naming the image,
    or with skip_bad_rows=True it is left out and counted. Files load in sorted order
    (split, then label, then name), so two loads give identical arrays.
    """
    root = Path(root)
    files = _image_files(root)
    images, labels, usage, problems = [], [], [], {}
    for path, label, split_usage in files:
        image, problem = _read_face(path)
        if problem:
            problems[str(path)] = problem
            continue
        images.append(image)
        labels.append(label)
        usage.append(split_usage)

    if problems and not skip_bad_rows:
        path, problem = next(iter(problems.items()))
        raise DataError(f"{path}: {problem}")
    if problems:
        shown = "; ".join(f"{path}: {problem}" for path, problem in list(problems.items())[:_SHOWN_PROBLEMS])
        warnings.warn(f"{root}: skipped {len(problems)} bad images ({shown})", stacklevel=2)
    return FerData(
        images=np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
        labels=np.array(labels, dtype=np.int64),
        usage=np.array(usage, dtype="<U11"),
        source=str(root),
        skipped=len(problems),
    )


def _image_files(root, warn_ignored=True):
    """[(path, label, usage)] for every image under root, in load order.

    Files the layout has no place for (in split folders other than train/ and test/, in
    subfolders of an emotion folder, not .jpg/.jpeg/.png) are counted and, with
    warn_ignored, named in a warning: never skipped without a word.
    """
    emotion_index = {name.lower(): label for label, name in enumerate(EMOTIONS)}
    split_dirs = {d.name.lower(): d for d in sorted(root.iterdir()) if d.is_dir()} if root.is_dir() else {}
    if not any(name in split_dirs for name in FOLDER_USAGE):
        raise DataError(f"{root}: no train/ or test/ folder (expected root/train/<emotion>/*.jpg)")

    files, ignored = [], {}
    for name, folder in split_dirs.items():
        if name not in FOLDER_USAGE:
            ignored[f"in {folder.name}/ (not train/ or test/)"] = _count_files(folder)
    for split_name, usage in FOLDER_USAGE.items():
        if split_name not in split_dirs:
            continue
        emotion_dirs = [d for d in split_dirs[split_name].iterdir() if d.is_dir()]
        for emotion_dir in emotion_dirs:
            if emotion_dir.name.lower() not in emotion_index:
                expected = ", ".join(name.lower() for name in EMOTIONS)
                raise DataError(f"{emotion_dir}: unknown emotion folder, expected one of {expected}")
        for emotion_dir in sorted(emotion_dirs, key=lambda d: (emotion_index[d.name.lower()], d.name)):
            label = emotion_index[emotion_dir.name.lower()]
            for path in sorted(emotion_dir.iterdir()):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    files.append((path, label, usage))
                else:
                    where = "in subfolders" if path.is_dir() else "not .jpg, .jpeg or .png"
                    ignored[where] = ignored.get(where, 0) + (_count_files(path) if path.is_dir() else 1)
    ignored = {where: n for where, n in ignored.items() if n}
    if ignored and warn_ignored:
        listed = "; ".join(f"{n} {where}" for where, n in ignored.items())
        total = sum(ignored.values())
        warnings.warn(f"{root}: ignored {total} file{'s' * (total > 1)} ({listed})", stacklevel=3)
    return files


def _count_files(folder):
    return sum(1 for path in folder.rglob("*") if path.is_file())


def _read_face(path):
    """(uint8 (48, 48), None) for a good image, else (None, what is wrong)."""
    try:
        # imdecode over the raw bytes instead of cv2.imread: imread cannot open
        # non-ASCII paths on Windows. The decode is the same IMREAD_GRAYSCALE.
        image, problem = decode_image(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE)
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    if problem:
        return None, problem
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        height, width = image.shape
        return None, f"image is {width}x{height}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
    return image, None


MAX_IMAGE_PIXELS = 50_000_000  # a 50-megapixel photo; an image claiming more is refused undecoded


def decode_image(data, flags=cv2.IMREAD_COLOR, max_pixels=MAX_IMAGE_PIXELS):
    """cv2.imdecode of an image file's bytes: (image, None), or (None, what is wrong), never raising.

    A PNG or JPEG whose header claims more than max_pixels is refused before any pixel is
    decoded: a 74-byte PNG can claim 100000x100000 (OpenCV's own limit, 2**30 pixels,
    still holds for other formats).
    """
    data = np.frombuffer(data, np.uint8)
    size = image_size(data[:1 << 16].tobytes())
    if size and size[0] * size[1] > max_pixels:
        return None, f"claims {size[0]}x{size[1]} pixels, more than the {max_pixels:,} read here"
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as error:
        return None, f"cannot be decoded ({str(error).strip().splitlines()[-1]})"
    if image is None:
        return None, "cannot be read as an image"
    return image, None


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn markers


def image_size(head):
    """(width, height) from the first bytes of a PNG (its IHDR) or JPEG (its frame header),
    None for other formats or a header that does not parse."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(head) and head[i] == 0xFF:
        marker = head[i + 1]
        if marker == 0xFF:                  # fill byte before a marker
            i += 1
            continue
        if marker in _JPEG_FRAMES:          # FF Cn, length, precision, height, width
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return width, height
        i += 2 + struct.unpack(">H", head[i + 2:i + 4])[0]
    return None


# ----------------------------------------------------------------------- either


def load(path, skip_bad_rows=False) -> FerData:
    """Load FER2013 from a directory (the Kaggle image folders) or a CSV file."""
    path = Path(path)
    if path.is_dir():
        return load_folders(path, skip_bad_rows)
    if not path.is_file():
        raise FileNotFoundError(f"no FER2013 CSV file or image folder at {path}")
    return load_csv(path, skip_bad_rows)


def content_hash(path) -> str:
    """The sha256, as hex, of a file's bytes, or of an image folder's images: each image's path
    relative to the folder and its bytes, in load order (other files do not count). Read in
    1 MiB pieces."""
    digest = hashlib.sha256()
    path = Path(path)
    if path.is_dir():
        for image, _, _ in _image_files(path, warn_ignored=False):
            digest.update(image.relative_to(path).as_posix().encode("utf-8") + b"\0")
            digest.update(f"{image.stat().st_size}\0".encode())
            _hash_bytes(image, digest)
    else:
        _hash_bytes(path, digest)
    return digest.hexdigest()


def _hash_bytes(path, digest):
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)


# ------------------------------------------------------------ class maps and splits

CLASS_MAPS = {
    "fer7": EMOTIONS,
    "fer6": tuple(name for name in EMOTIONS if name != "Disgust"),  # seed 004 drops Disgust
    "fer4": ("Happy", "Sad", "Neutral", "Surprise"),  # seed 001's four classes, in its order
}


def apply_class_map(data, name):
    """Relabel to the classes of CLASS_MAPS[name] and drop faces of other emotions.

    Returns (images uint8 (n, 48, 48), labels int64 (n,) in 0..K-1, label_names (K,)).
    """
    keep, labels, names = _relabel(data.labels, name)
    return data.images[keep], labels, names


def _relabel(labels, name):
    """(keep bool (N,), new labels int64 (n,), names) for FER2013 labels under a class map."""
    if name not in CLASS_MAPS:
        raise ValueError(f"unknown class map {name!r}, expected one of {', '.join(CLASS_MAPS)}")
    names = CLASS_MAPS[name]
    new_label = np.full(len(EMOTIONS), -1, dtype=np.int64)  # old label -> new label, -1 = dropped
    for new, emotion in enumerate(names):
        new_label[EMOTIONS.index(emotion)] = new
    relabeled = new_label[labels]
    keep = relabeled >= 0
    return keep, relabeled[keep], names


@dataclass
class Splits:
    """Train, validation and test sets, each (images uint8 (n, 48, 48), labels int64 (n,)).

    label_names: the class names, index = label; description: where each set came from;
    test_name: the Usage value of the test rows ("PublicTest" or "PrivateTest").
    """

    train: tuple
    val: tuple
    test: tuple
    label_names: tuple
    description: str
    test_name: str = "PublicTest"


def split(data, class_map="fer7", val_fraction=0.1, seed=0) -> Splits:
    """Split FerData into train / val / test under a class map.

    With PrivateTest rows (the full challenge file): train = Training, val = PublicTest,
    test = PrivateTest, and val_fraction is not used. Without them (the shared copy):
    val = a stratified val_fraction of Training (the same fraction of each class, chosen
    by `seed`), train = the rest of Training, test = PublicTest. No face is in two sets.
    val_fraction 0 leaves val empty: a final fit on all Training, its choices made beforehand.

    The test set is for the final report only: choose epochs, learning rates,
    checkpoints and anything else on val, never on test.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), received {val_fraction}")
    keep, labels, names = _relabel(data.labels, class_map)
    images, usage = data.images[keep], data.usage[keep]
    training = np.flatnonzero(usage == "Training")

    if np.any(data.usage == "PrivateTest"):
        train, val, test = training, np.flatnonzero(usage == "PublicTest"), np.flatnonzero(usage == "PrivateTest")
        val_from = "the PublicTest rows"
        test_from, test_name = "the PrivateTest rows", "PrivateTest"
    else:
        val, train = _stratified_pick(training, labels[training], len(names), val_fraction, seed)
        test = np.flatnonzero(usage == "PublicTest")
        val_from = f"a stratified {val_fraction * 100:g}% of Training (seed {seed})"
        test_from, test_name = "the PublicTest rows (the file has no PrivateTest rows)", "PublicTest"

    val_part = (f"val = {len(val):,} faces, {val_from}, for choosing models" if len(val) else
                "no val faces (val_fraction 0: a final fit on all Training, with choices made before)")
    description = (
        f"{class_map} ({len(names)} classes): train = {len(train):,} Training faces; {val_part}; "
        f"test = {len(test):,} faces, {test_from}, for the final report only."
    )
    return Splits(
        train=(images[train], labels[train]),
        val=(images[val], labels[val]),
        test=(images[test], labels[test]),
        label_names=names,
        description=description,
        test_name=test_name,
    )


def _stratified_pick(indices, labels, n_classes, fraction, seed):
    """Split indices into (picked, rest): round(fraction * count) of each class, seeded."""
    rng = np.random.default_rng(seed)
    picked = np.zeros(len(indices), bool)
    for label in range(n_classes):  # every class draws, present or not, so the stream is fixed
        members = np.flatnonzero(labels == label)
        picked[rng.choice(members, round(fraction * len(members)), replace=False)] = True
    return indices[picked], indices[~picked]
