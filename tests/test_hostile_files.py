"""Small hostile files must not cost gigabytes or stop a batch: model files (minicnn.io), FER2013
CSVs and image folders (fer.data)."""
import gzip
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import minicnn
from fer import data as fer_data
from minicnn.layers import Dense
from minicnn.models import Sequential

ROOT = Path(__file__).resolve().parents[1]
GB = 1 << 30


def small_model_file(path):
    model = Sequential([Dense(2, input_shape=(3,))])
    model.metadata = {"labels": ["a", "b"]}
    model.save(path)
    return path


def add_zero_member(path, name, n_float64):
    """Append a deflated .npy member of n_float64 zeros: gigabytes inflated, kilobytes stored."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (n_float64,)}
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            block = bytes(1 << 24)
            for _ in range(n_float64 * 8 // len(block)):
                f.write(block)


def peak_memory_of(code):
    """Run `code` in a fresh interpreter; its peak resident memory (bytes) minus before the code."""
    script = ("import resource, minicnn, fer.inference\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"{code}\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def test_an_unused_member_is_never_decompressed(tmp_path):
    path = small_model_file(tmp_path / "bomb.npz")
    add_zero_member(path, "padding", GB // 8 // 2)           # 512 MB inflated, about 0.5 MB stored
    assert path.stat().st_size < 4 << 20
    model = minicnn.load_model(path)
    assert model.metadata == {"labels": ["a", "b"]}
    assert peak_memory_of(f"minicnn.load_model({str(path)!r})") < 100 << 20


def test_stored_shapes_are_checked_before_the_architecture_costs_memory(tmp_path):
    path = small_model_file(tmp_path / "m.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["__minicnn__"]))
    meta["config"]["layers"][-1]["config"]["units"] = 300_000_000       # a 3.6 GB kernel asked for
    arrays["__minicnn__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"has shape \(3, 2\) in the file, but the model's .* has shape "
                                         r"\(3, 300000000\)"):
        minicnn.load_model(path)
    code = (f"try:\n    minicnn.load_model({str(path)!r})\n"
            f"except ValueError:\n    pass")
    assert peak_memory_of(code) < 200 << 20


def test_a_gzip_of_zeros_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "zeros.csv.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(b"emotion,pixels,Usage\n0,")
        block = bytes(1 << 24)
        for _ in range(64):                                 # 1 GiB inflated
            f.write(block)
    with pytest.raises(fer_data.DataError, match="zeros.csv.gz line 2: longer than 65,536 characters"):
        fer_data.load_csv(path)
    code = (f"import fer.data\ntry:\n    fer.data.load_csv({str(path)!r})\n"
            f"except fer.data.DataError:\n    pass")
    assert peak_memory_of(code) < 100 << 20


def png_claiming(width, height):
    """A tiny PNG whose header claims width x height pixels (its data is empty)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_an_image_claiming_huge_dimensions_is_refused_and_the_others_still_load(tmp_path):
    folder = tmp_path / "train" / "happy"
    folder.mkdir(parents=True)
    (folder / "a_huge.png").write_bytes(png_claiming(30_000, 30_000))     # 900 MP: OpenCV would try
    cv2.imwrite(str(folder / "b_face.png"), np.full((48, 48), 7, np.uint8))
    assert len(png_claiming(100_000, 100_000)) < 100
    image, problem = fer_data.decode_image(png_claiming(100_000, 100_000))
    assert image is None and "claims 100000x100000 pixels" in problem
    with pytest.raises(fer_data.DataError, match="a_huge.png: claims 30000x30000 pixels"):
        fer_data.load_folders(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 bad images"):
        data = fer_data.load_folders(tmp_path, skip_bad_rows=True)
    assert data.images.shape == (1, 48, 48) and data.skipped == 1


def test_predict_reports_a_huge_image_and_goes_on_with_the_next(tmp_path):
    from fer.preprocess import Preprocessing
    from minicnn.layers import Flatten

    model = Sequential([Flatten(input_shape=(48, 48, 1)), Dense(7, activation="softmax")])
    model.save(tmp_path / "m.npz", metadata={"labels": list(fer_data.EMOTIONS),
                                             "preprocessing": Preprocessing(48, "unit").to_dict()})
    (tmp_path / "huge.png").write_bytes(png_claiming(100_000, 100_000))
    cv2.imwrite(str(tmp_path / "face.png"), np.full((48, 48), 90, np.uint8))
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), "huge.png", "face.png",
                             "--no-detect", "--model", "m.npz"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "huge.png: claims 100000x100000 pixels" in result.stderr
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == ["face.png"]
