"""scripts/train.py and scripts/evaluate.py end to end on small synthetic data, and on real faces."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn
from fer.data import DataError
from fer.runs import TrainingInterrupted, read_history
from fer.training import TrainConfig, load_splits, resume_config, train
from minicnn import io
from tests.fer_synthetic import write_csv

ROOT = Path(__file__).resolve().parents[1]


def run_script(name, *args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "fer.csv.gz")


@pytest.fixture(scope="module")
def trained_run(data_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--epochs", 2,
                        "--batch-size", 16, "--out", out, cwd=out)
    assert result.returncode == 0, result.stderr
    return next(out.glob("mini_xception-*")), result.stdout


def test_train_writes_every_file_of_the_run_folder(trained_run):
    run, stdout = trained_run
    for name in ("model.npz", "checkpoints/last.npz", "config.json", "history.csv", "curves.png", "metrics.json",
                 "confusion_matrix.csv", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    assert "Epoch 2/2" in stdout and "val_accuracy" in stdout and "lr:" in stdout
    config = json.loads((run / "config.json").read_text())
    assert config["args"]["model"] == "mini_xception" and len(config["data_sha256"]) == 64
    assert "stratified 10% of Training" in config["split"]
    assert config["environment"]["OPENBLAS_CORETYPE"] == os.environ.get("OPENBLAS_CORETYPE")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["labels"][1] == "Disgust" and sum(map(sum, metrics["confusion"])) == 28
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_accuracy" in history[0]


def test_model_file_carries_labels_and_preprocessing(trained_run):
    model = minicnn.load_model(trained_run[0] / "model.npz")
    assert model.metadata["labels"] == ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    prep = model.metadata["preprocessing"]
    assert prep == {"input_size": 48, "scale": "symmetric", "mean": None, "std": None}


def test_evaluate_json_matches_the_runs_test_metrics(trained_run, data_csv, tmp_path):
    run = trained_run[0]
    result = run_script("evaluate.py", "--model", run / "model.npz", "--data", data_csv, "--json", "--out", tmp_path,
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"accuracy", "macro_f1", "per_class", "confusion"}
    assert report["split"] == "PublicTest"
    assert report["accuracy"] == pytest.approx(json.loads((run / "metrics.json").read_text())["accuracy"])
    assert (tmp_path / "confusion_matrix.png").is_file()
    table = run_script("evaluate.py", "--model", run / "model.npz", "--data", data_csv, cwd=tmp_path)
    assert "macro-F1" in table.stdout and "Disgust" in table.stdout


def by_hand_views(x, mode, d=3):
    """The faces, mirrored; for "shift" each of those also moved d px down, up, right, left (edges repeated)."""
    flips = [x, x[:, :, ::-1]]
    if mode == "flip":
        return flips
    views = []
    for v in flips:
        padded = np.pad(v, ((0, 0), (d, d), (d, d), (0, 0)), mode="edge")
        h, w = v.shape[1:3]
        views += [v, padded[:, :h, d:d + w], padded[:, 2 * d:, d:d + w],          # down, up
                  padded[:, d:d + h, :w], padded[:, d:d + h, 2 * d:]]            # right, left
    return views


def test_evaluate_tta_modes_average_the_views_they_name(trained_run, data_csv, tmp_path):
    from fer import data as fer_data
    from fer.inference import load_fer_model
    model_file = trained_run[0] / "model.npz"
    model, _, preprocessing = load_fer_model(model_file)
    data = fer_data.load(data_csv)
    test = data.usage == "PublicTest"
    x = preprocessing.apply(data.images[test])
    for mode, flag in (("flip", ["--tta"]), ("shift", ["--tta", "shift"])):    # bare --tta: flip
        result = run_script("evaluate.py", "--model", model_file, "--data", data_csv, "--json", *flag, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["tta"] == mode
        views = by_hand_views(x, mode)
        mean = sum(model.predict(np.ascontiguousarray(v)) for v in views) / len(views)
        assert report["accuracy"] == pytest.approx(float(np.mean(mean.argmax(1) == data.labels[test])))
    wrong = run_script("evaluate.py", "--model", model_file, "--data", data_csv, "--tta", "crop", cwd=tmp_path)
    assert wrong.returncode == 2 and "crop" in wrong.stderr


def test_plain_and_flip_together_give_what_evaluate_gives_for_each(trained_run, data_csv):
    import importlib.util
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model_file = trained_run[0] / "model.npz"
    both = script.evaluate_plain_and_flip(model_file, data_csv)
    for tta in (False, True):
        assert both[tta] == script.evaluate(model_file, data_csv, tta=tta)


def test_evaluate_and_train_fail_clearly(trained_run, data_csv, tmp_path):
    run = trained_run[0]
    missing = run_script("evaluate.py", "--model", tmp_path / "none.npz", "--data", data_csv, cwd=tmp_path)
    assert missing.returncode == 1 and "none.npz: no such model file" in missing.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    wrong_format = run_script("evaluate.py", "--model", run / "model.npz", "--data", bad, cwd=tmp_path)
    assert wrong_format.returncode == 1 and "bad.csv" in wrong_format.stderr
    not_a_model = run_script("evaluate.py", "--model", data_csv, "--data", data_csv, cwd=tmp_path)
    assert not_a_model.returncode == 1 and "model file" in not_a_model.stderr
    unknown = run_script("train.py", "--model", "resnet", "--data", data_csv, cwd=tmp_path)
    assert unknown.returncode != 0 and "resnet" in unknown.stderr
    no_data = run_script("train.py", "--model", "cnn4", "--data", tmp_path / "nope.csv", cwd=tmp_path)
    assert no_data.returncode == 1 and "nope.csv" in no_data.stderr


class InterruptAt(minicnn.callbacks.Callback):
    """Raises KeyboardInterrupt (as Ctrl-C does) in the middle of an epoch."""

    def __init__(self, epoch, batch):
        self.epoch, self.batch, self.current = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            raise KeyboardInterrupt


@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["weights", "moving_average"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(data_csv, tmp_path, ema):
    """Also with --ema: the checkpoint holds the averages in the model and the trained weights aside."""
    def config(out):
        return TrainConfig.for_model("mini_xception", data_csv, epochs=3, batch_size=16, seed=5, ema=ema,
                                     out=str(tmp_path / out))

    straight = train(config("a"), verbose=0)
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(config("b"), extra_callbacks=[InterruptAt(epoch=1, batch=2)], verbose=0)
    assert "--resume" in str(interrupted.value)
    resumed = train(config("b"), resume_dir=interrupted.value.run, verbose=0)
    for name in ("checkpoints/last.npz", "model.npz"):
        _, a = io.read_npz(straight / name)
        _, b = io.read_npz(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
    assert read_history(straight / "history.csv").keys() == read_history(resumed / "history.csv").keys()
    for key in read_history(straight / "history.csv"):
        if key != "seconds":
            assert read_history(straight / "history.csv")[key] == read_history(resumed / "history.csv")[key], key


def test_diverging_run_stops_naming_epoch_and_batch_and_keeps_last_good_checkpoint(data_csv, tmp_path):
    result = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--epochs", 3, "--batch-size", 16,
                        "--optimizer", "sgd", "--lr", "1e12", "--out", tmp_path, cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "invalid loss" in result.stderr and "epoch 1, batch" in result.stderr
    run = next(tmp_path.glob("mini_xception-*"))
    meta, arrays = io.read_npz(run / "checkpoints" / "last.npz")
    assert all(np.isfinite(a).all() for k, a in arrays.items() if k.startswith("weight_"))
    resumed = run_script("train.py", "--resume", run, "--lr", "1e-3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr        # a sane rate gets past the NaN
    assert "learning rate 0.001" in resumed.stdout


def test_resume_keeps_the_runs_settings_and_records_what_changed(data_csv, tmp_path, monkeypatch):
    config = TrainConfig.for_model("mini_xception", data_csv, epochs=1, batch_size=16, out=str(tmp_path / "runs"))
    run = train(config, verbose=0)
    fixed = run_script("train.py", "--resume", run, "--batch-size", 8, "--no-augment", cwd=tmp_path)
    assert fixed.returncode == 2 and "cannot change: --batch-size, --augment" in fixed.stderr

    other = write_csv(tmp_path / "other.csv.gz", seed=1)
    with pytest.raises(ValueError, match="other.csv.gz: not the file this run trained on"):
        resume_config(run, data=other)
    monkeypatch.chdir(tmp_path)            # the saved path is absolute here; make it relative and lost
    saved = json.loads((run / "config.json").read_text())
    saved["args"]["data"] = "elsewhere/fer.csv.gz"
    del saved["args"]["label_smoothing"]   # as runs saved before the option existed: its default
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(FileNotFoundError, match="elsewhere/fer.csv.gz.*--data"):
        resume_config(run)
    legacy = resume_config(run, epochs=2, data=data_csv)
    assert legacy.label_smoothing == 0 and legacy.epochs == 2 and legacy.data == str(data_csv)

    resumed = run_script("train.py", "--resume", run, "--epochs", 2, "--data", data_csv, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["args"]["epochs"] == 2 and recorded["args"]["label_smoothing"] == 0
    assert [r["after_epoch"] for r in recorded["resumed"]] == [1]
    assert len(read_history(run / "history.csv")["loss"]) == 2

    done = run_script("train.py", "--resume", run, "--epochs", 2, cwd=tmp_path)
    assert done.returncode == 1 and "has trained 2 epochs already" in done.stderr
    assert len(json.loads((run / "config.json").read_text())["resumed"]) == 1     # nothing recorded
    with pytest.raises(ValueError, match="not the file this run trained on"):
        resume_config(run, data=tmp_path)                     # a folder cannot be the hashed file

    (run / "checkpoints" / "last.npz").unlink()
    lost = run_script("train.py", "--resume", run, "--epochs", 3, cwd=tmp_path)
    assert lost.returncode == 1 and "last.npz: no checkpoint to resume from" in lost.stderr


def test_training_refuses_an_empty_split_before_it_starts(tmp_path):
    no_test_rows = write_csv(tmp_path / "train_only.csv", n_public=0)
    config = TrainConfig.for_model("mini_xception", no_test_rows, epochs=1, out=str(tmp_path / "runs"))
    with pytest.raises(DataError, match="train_only.csv: the test split is empty"):
        train(config, verbose=0)
    assert not (tmp_path / "runs").exists()
    bad = run_script("train.py", "--model", "cnn4", "--data", no_test_rows, "--val-fraction", 1, cwd=tmp_path)
    assert bad.returncode == 2 and "--val-fraction: must be in [0, 1)" in bad.stderr
    final_fit = run_script("train.py", "--model", "cnn4", "--data", no_test_rows, "--val-fraction", 0, cwd=tmp_path)
    assert final_fit.returncode == 1 and "the test split is empty" in final_fit.stderr


def test_split_seed_keeps_the_validation_slice_while_the_seed_changes(data_csv):
    """--split-seed: runs of several seeds validate on one slice (the one a teacher trained beside)."""
    def splits(**seeds):
        return load_splits(TrainConfig.for_model("mini_xception", data_csv, **seeds))

    first, same_slice, redrawn = splits(seed=0), splits(seed=3, split_seed=0), splits(seed=3)
    assert np.array_equal(first.val[0], same_slice.val[0]) and first.description == same_slice.description
    assert not np.array_equal(first.val[0], redrawn.val[0])


def test_a_final_fit_trains_on_all_of_training_and_keeps_its_last_epoch(data_csv, tmp_path):
    """val_fraction 0: every Training face trains, the rate drops at the epochs named, model.npz is
    the last epoch's weights, and an interrupted final fit resumes to the same numbers."""
    def config(out):
        return TrainConfig.for_model("mini_xception", data_csv, epochs=3, batch_size=16, val_fraction=0,
                                     lr_drops=[2, 3], out=str(tmp_path / out))

    straight = train(config("a"), verbose=0)
    history = read_history(straight / "history.csv")
    assert not any(key.startswith("val_") for key in history)
    first = config("a").lr
    assert history["lr"] == pytest.approx([first, first / 2, first / 4])
    assert "train = 84 Training faces; no val faces" in json.loads((straight / "config.json").read_text())["split"]
    _, model = io.read_npz(straight / "model.npz")
    _, last = io.read_npz(straight / "checkpoints" / "last.npz")
    shared = [key for key in model if key.startswith("weight_")]
    assert shared and all(np.array_equal(model[key], last[key]) for key in shared)

    with pytest.raises(TrainingInterrupted) as interrupted:
        train(config("b"), extra_callbacks=[InterruptAt(epoch=1, batch=2)], verbose=0)
    resumed = train(config("b"), resume_dir=interrupted.value.run, verbose=0)
    _, again = io.read_npz(resumed / "model.npz")
    assert all(np.array_equal(model[key], again[key]) for key in shared)
    published = run_script("publish_weights.py", straight, "final", "--out", tmp_path / "published")
    assert published.returncode == 0, published.stderr
    assert "final fit, no validation faces: the last epoch's weights (epoch 3)" in published.stdout
    refused = run_script("train.py", "--model", "cnn4", "--data", data_csv, "--val-fraction", 0, "--patience", 3)
    assert refused.returncode == 2 and "--patience watches val_accuracy" in refused.stderr


def test_smoke_run_on_2000_real_faces(shared_file, tmp_path):
    csv_path = shared_file("fer2013/fer2013.csv.gz")
    result = run_script("train.py", "--model", "mini_xception", "--data", csv_path, "--limit", 2000, "--epochs", 1,
                        "--out", tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = next(tmp_path.glob("mini_xception-*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert sum(row["support"] for row in metrics["per_class"].values()) > 150   # ~11% of 2000 are PublicTest


def test_publish_weights_writes_a_loadable_file_and_a_card(trained_run, tmp_path):
    run = trained_run[0]
    result = run_script("publish_weights.py", run, "tiny", "--float16", "--out", tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny_confusion.png").is_file()
    published = minicnn.load_model(tmp_path / "tiny.npz")
    original = minicnn.load_model(run / "model.npz")
    assert published.metadata == original.metadata
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"accuracy {metrics['accuracy']:.4f}" in result.stdout or "published float32" in result.stderr
    assert "## `tiny.npz`" in result.stdout and "per-class recall" in result.stdout
    val = read_history(run / "history.csv")["val_accuracy"]
    best = int(np.argmax(val))
    assert f"best validation accuracy {val[best]:.4f} at epoch {best + 1}" in result.stdout
    assert "PublicTest (never used for any choice)" in result.stdout
    float16 = published.layers[1].get_weights()[0].dtype == np.float32 and \
        io.read_npz(tmp_path / "tiny.npz")[1]["weight_0000"].dtype == np.float16
    assert float16 == ("(float16 weights" in result.stdout)
    assert float16 != ("published float32 instead" in result.stderr)


def test_precise_batchnorm_changes_the_statistics_and_not_the_weights(data_csv, tmp_path):
    def weights(run_dir, trainable):
        model = minicnn.load_model(run_dir / "model.npz", compile=False)
        return [w.value for w in (model.trainable_weights if trainable else model.non_trainable_weights)]

    off = train(TrainConfig.for_model("cnn4", data_csv, epochs=1, batch_size=16, seed=3, precise_bn=0,
                                      out=str(tmp_path / "off")), verbose=0)
    on = train(TrainConfig.for_model("cnn4", data_csv, epochs=1, batch_size=16, seed=3,
                                     out=str(tmp_path / "on")), verbose=0)
    for a, b in zip(weights(off, True), weights(on, True)):
        np.testing.assert_array_equal(a, b)                 # the same training: statistics only
    assert any(not np.allclose(a, b) for a, b in zip(weights(off, False), weights(on, False)))
    assert json.loads((on / "config.json").read_text())["args"]["precise_bn"] == 8192
