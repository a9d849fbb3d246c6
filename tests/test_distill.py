"""Knowledge distillation (fer/distill.py): the mixed targets, and training runs with teachers."""
import json

import numpy as np
import pytest

import minicnn
from fer import distill
from fer.data import content_hash
from fer.inference import load_fer_model
from fer.runs import read_history
from fer.training import TrainConfig, load_splits, train
from minicnn import io
from tests.fer_synthetic import write_csv
from tests.test_training import run_script


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "fer.csv.gz")


@pytest.fixture(scope="module")
def teacher(data_csv, tmp_path_factory):
    """A trained mini-Xception model file on the synthetic faces (one epoch)."""
    config = TrainConfig.for_model("mini_xception", data_csv, epochs=1, batch_size=16,
                                   out=str(tmp_path_factory.mktemp("teacher")))
    return train(config, verbose=0) / "model.npz"


def test_mixed_targets_put_one_minus_a_on_the_label_and_a_on_the_teachers():
    teacher_p = np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], np.float32)
    y = distill.mixed_targets(np.array([2, 0]), teacher_p, 0.25)
    np.testing.assert_allclose(y, [[0.025, 0.15, 0.825], [0.875, 0.0625, 0.0625]], rtol=1e-6)
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    for weight in (0, 1, -0.5, 1.5):
        with pytest.raises(ValueError, match="distillation weight must be in"):
            distill.mixed_targets(np.array([0]), teacher_p[:1], weight)


def test_teacher_probabilities_average_the_teachers_flipped_views(data_csv, teacher):
    faces = load_splits(TrainConfig.for_model("mini_xception", data_csv)).train[0][:10]
    model, labels, preprocessing = load_fer_model(teacher)
    x = preprocessing.apply(faces)
    by_hand = (model.predict(x) + model.predict(x[:, :, ::-1].copy())) / 2
    one = distill.teacher_probabilities([teacher], faces, labels)
    np.testing.assert_allclose(one, by_hand, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(distill.teacher_probabilities([teacher, teacher], faces, labels), one, rtol=1e-5)
    with pytest.raises(ValueError, match=f"{teacher.name}: a teacher must predict this run's classes"):
        distill.teacher_probabilities([teacher], faces, labels[:6])


def test_a_distilled_run_trains_on_its_saved_targets_and_resumes_without_its_teacher(data_csv, teacher, tmp_path):
    copy = tmp_path / "teacher.npz"
    copy.write_bytes(teacher.read_bytes())
    result = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--epochs", 1, "--batch-size", 16,
                        "--teacher", copy, "--distill", 0.3, "--out", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs").glob("mini_xception-*"))
    meta, arrays = io.read_npz(run / distill.TARGETS_FILE)
    assert meta["teacher_sha256"] == [content_hash(copy)]
    splits = load_splits(TrainConfig.for_model("mini_xception", data_csv))
    expected = distill.teacher_probabilities([copy], splits.train[0], splits.label_names)
    np.testing.assert_allclose(arrays["probabilities"], expected, rtol=1e-4, atol=1e-6)
    args = json.loads((run / "config.json").read_text())["args"]
    assert args["teacher"] == [str(copy)] and args["distill"] == 0.3
    assert minicnn.load_model(run / "model.npz").loss.name == "categorical_crossentropy"

    copy.unlink()                               # the saved targets are the run's: no teacher needed to go on
    resumed = run_script("train.py", "--resume", run, "--epochs", 2, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_history(run / "history.csv")["loss"]) == 2


def test_distillation_arguments_fail_clearly(data_csv, teacher, tmp_path):
    alone = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--distill", 0.5, cwd=tmp_path)
    assert alone.returncode == 2 and "--distill needs --teacher" in alone.stderr
    missing = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--teacher",
                         tmp_path / "gone.npz", "--out", tmp_path / "runs", cwd=tmp_path)
    assert missing.returncode == 1 and "gone.npz: no such teacher model file" in missing.stderr
    assert not (tmp_path / "runs").exists()
    other_classes = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--classes", "fer6",
                               "--teacher", teacher, "--epochs", 1, "--out", tmp_path / "runs", cwd=tmp_path)
    assert other_classes.returncode == 1 and "a teacher must predict this run's classes" in other_classes.stderr
    weight = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--teacher", teacher,
                        "--distill", 1, cwd=tmp_path)
    assert weight.returncode == 2 and "must be in (0, 1)" in weight.stderr
