"""Runs that cannot be corrupted: divergence with a finite loss, data changed under a run, two
processes on one folder, an interrupted test report, OS errors, stale temporary files, and the
one model-file loader. Small synthetic data; subprocesses where a process boundary matters."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import minicnn
from fer import runs, training
from fer.inference import load_fer_model
from fer.runs import (ResumeError, RunFailed, TrainingDiverged, TrainingInterrupted, lock_run, new_run_folder,
                      read_history)
from fer.training import TrainConfig, resume_config, train
from minicnn import io
from tests.fer_synthetic import faces, write_csv

ROOT = Path(__file__).resolve().parents[1]


def run_script(name, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(result):
    """The script failed with exactly one `error: ...` line on stderr and no traceback."""
    lines = result.stderr.strip().splitlines()
    return "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: ")


@pytest.fixture
def data_csv(tmp_path):
    return write_csv(tmp_path / "fer.csv")


def config(data, out, **settings):
    return TrainConfig.for_model("mini_xception", data, **{"epochs": 1, "batch_size": 16, "out": str(out),
                                                            **settings})


class Callback(minicnn.callbacks.Callback):
    """Calls hook(model, epoch, logs) at the end of each epoch (before the checkpoints see it)."""

    def __init__(self, hook):
        self.hook = hook

    def on_epoch_end(self, epoch, logs=None):
        self.hook(self.model, epoch, logs)


class OverflowAt(minicnn.callbacks.Callback):
    """A moving variance overflowing to inf during an epoch, as at --lr 1e6: the loss stays finite
    (training batches normalize with the batch's own statistics)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            bn = next(layer for layer in self.model.layers if type(layer).__name__ == "BatchNormalization")
            bn.moving_variance.value[0] = np.inf


# ---- 2: divergence with a finite loss ----------------------------------------------------------

def test_non_finite_weights_stop_the_run_and_nothing_non_finite_is_written(data_csv, tmp_path):
    with pytest.raises(TrainingDiverged, match="epoch 2: non-finite values in .*moving_variance.*kept") as error:
        train(config(data_csv, tmp_path, epochs=3), extra_callbacks=[OverflowAt(1)], verbose=0)
    run = next(tmp_path.glob("mini_xception-*"))
    meta, arrays = io.read_npz(run / "checkpoints" / "last.npz")
    assert meta["epoch"] == 1 and all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
    assert all(np.isfinite(w).all() for w in minicnn.load_model(run / "model.npz").get_weights())
    assert len(read_history(run / "history.csv")["loss"]) == 1
    assert "last good checkpoint" in str(error.value)


def test_a_huge_learning_rate_with_a_finite_loss_exits_3(data_csv, tmp_path):
    result = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--epochs", 2, "--batch-size", 16,
                        "--lr", "1e6", "--out", tmp_path, cwd=tmp_path)
    assert result.returncode == 3 and "non-finite values in" in result.stderr, result.stdout + result.stderr
    run = next(tmp_path.glob("mini_xception-*"))
    _, arrays = io.read_npz(run / "checkpoints" / "last.npz")
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
    assert not (run / "model.npz").exists() or load_fer_model(run)


def test_resume_and_publish_refuse_non_finite_files(data_csv, tmp_path):
    run = train(config(data_csv, tmp_path), verbose=0)
    for name in ("checkpoints/last.npz", "model.npz"):           # as a run from before the check wrote them
        meta, arrays = io.read_npz(run / name)
        arrays["weight_0001"] = np.full_like(arrays["weight_0001"], np.nan)
        io.write_npz(run / name, arrays, meta)
    with pytest.raises(ResumeError, match="last.npz: holds non-finite values"):
        train(resume_config(run, epochs=2), resume_dir=run, verbose=0)
    with pytest.raises(ValueError, match="model.npz: weights .* hold inf or NaN"):
        load_fer_model(run)
    published = run_script("publish_weights.py", run, "x", "--out", tmp_path / "weights", cwd=tmp_path)
    assert published.returncode == 1 and one_line_error(published) and "inf or NaN" in published.stderr
    assert not (tmp_path / "weights" / "x.npz").exists()


# ---- 3: the data of a resumed run --------------------------------------------------------------

def test_resume_checks_the_data_hash_without_data_given(data_csv, tmp_path):
    run = train(config(data_csv, tmp_path), verbose=0)
    write_csv(data_csv, seed=1)                                   # changed in place
    with pytest.raises(ValueError, match="fer.csv: changed since this run started"):
        resume_config(run, epochs=2)


def write_folders(root):
    images, labels = faces(84, seed=0)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("train" if i < 70 else "test") / ("angry", "disgust", "fear", "happy", "sad",
                                                            "surprise", "neutral")[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


def test_image_folder_runs_are_hashed_and_checked(tmp_path):
    folder = write_folders(tmp_path / "faces")
    run = train(config(folder, tmp_path / "runs"), verbose=0)
    saved = json.loads((run / "config.json").read_text())
    assert len(saved["data_sha256"]) == 64
    assert resume_config(run, epochs=2).data == str(folder)
    image = next((folder / "train" / "happy").iterdir())
    cv2.imwrite(str(image), np.zeros((48, 48), np.uint8))
    with pytest.raises(ValueError, match="faces: changed since this run started"):
        resume_config(run, epochs=2)


# ---- 4: one process per run folder -------------------------------------------------------------

def test_a_locked_run_refuses_a_second_process(data_csv, tmp_path):
    run = train(config(data_csv, tmp_path), verbose=0)
    lock = lock_run(run)                    # this process trains it, as far as anyone can tell
    try:
        second = run_script("train.py", "--resume", run, "--epochs", 2, cwd=tmp_path)
    finally:
        lock.close()
    assert second.returncode == 1 and one_line_error(second)
    assert f"run in use by PID {os.getpid()}" in second.stderr
    assert len(read_history(run / "history.csv")["loss"]) == 1


def test_two_resumes_at_once_one_trains_the_other_is_refused(data_csv, tmp_path):
    run = train(config(data_csv, tmp_path), verbose=0)
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--resume", str(run), "--epochs", "3"]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    results = sorted((p.wait(timeout=600), p.stderr.read()) for p in processes)
    assert [code for code, _ in results] == [0, 1], results
    assert "run in use by PID" in results[1][1]
    assert read_history(run / "history.csv")["loss"] and len(read_history(run / "history.csv")["loss"]) == 3
    assert [r["after_epoch"] for r in json.loads((run / "config.json").read_text())["resumed"]] == [1]


def test_new_run_folders_started_in_one_second_get_distinct_names(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.time, "strftime", lambda pattern: "20261205-120000")
    names = [new_run_folder(tmp_path, "cnn4").name for _ in range(3)]     # the name of a run started at noon
    assert names == ["cnn4-20261205-120000", "cnn4-20261205-120000-2", "cnn4-20261205-120000-3"]


# ---- 5: an interrupted test report -------------------------------------------------------------

def test_resume_writes_the_report_an_interruption_left_unwritten(data_csv, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(training, "report_test", interrupted)
        with pytest.raises(TrainingInterrupted, match="during its test report.*--resume") as error:
            train(config(data_csv, tmp_path, epochs=2), verbose=0)
    run = error.value.run
    assert not (run / "metrics.json").exists() and (run / "curves.png").exists()
    unpublished = run_script("publish_weights.py", run, "x", "--out", tmp_path / "w", cwd=tmp_path)
    assert unpublished.returncode == 1 and f"--resume {run}" in unpublished.stderr
    assert train(resume_config(run), resume_dir=run, verbose=0) == run
    assert json.loads((run / "metrics.json").read_text())["split"] == "test"
    assert len(read_history(run / "history.csv")["loss"]) == 2                  # no epoch trained again
    with pytest.raises(ResumeError, match="has trained 2 epochs already"):
        train(resume_config(run), resume_dir=run, verbose=0)


# ---- 6: OS errors ------------------------------------------------------------------------------

def test_a_full_disk_ends_in_one_line_with_the_resume_command(data_csv, tmp_path, monkeypatch, capsys):
    write_npz = io.write_npz

    def full_after_first_epoch(path, arrays, meta):
        if str(path).endswith("last.npz") and meta["epoch"] >= 2:
            raise OSError(28, "No space left on device", str(path))
        write_npz(path, arrays, meta)
    monkeypatch.setattr(io, "write_npz", full_after_first_epoch)
    code = load_script("train").main(["--model", "mini_xception", "--data", str(data_csv), "--epochs", "3",
                                      "--batch-size", "16", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    run = next(tmp_path.glob("mini_xception-*"))
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: No space left on device: ") and f"--resume {run}" in err[0]


def test_bad_run_folders_and_out_paths_fail_in_one_line(data_csv, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    out_is_file = run_script("train.py", "--model", "mini_xception", "--data", data_csv, "--out", a_file, cwd=tmp_path)
    assert out_is_file.returncode == 1 and one_line_error(out_is_file) and "a_file" in out_is_file.stderr

    run = train(config(data_csv, tmp_path / "runs"), verbose=0)
    checkpoint = run / "checkpoints" / "last.npz"
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    truncated = run_script("train.py", "--resume", run, "--epochs", 2, cwd=tmp_path)
    assert truncated.returncode == 1 and one_line_error(truncated) and "last.npz" in truncated.stderr
    checkpoint.write_bytes(whole)

    saved = (run / "config.json").read_text()
    (run / "config.json").write_text(json.dumps({"seed": 0}))
    no_args = run_script("train.py", "--resume", run, "--epochs", 2, cwd=tmp_path)
    assert no_args.returncode == 1 and one_line_error(no_args) and 'config.json: no "args"' in no_args.stderr
    (run / "config.json").write_text(saved[:40])
    corrupt = run_script("train.py", "--resume", run, "--epochs", 2, cwd=tmp_path)
    assert corrupt.returncode == 1 and one_line_error(corrupt) and "config.json: corrupt" in corrupt.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_folder_fails_before_the_first_epoch(data_csv, tmp_path):
    run = train(config(data_csv, tmp_path), verbose=0)
    (run / "checkpoints").chmod(0o555)
    try:
        result = run_script("train.py", "--resume", run, "--epochs", 2, cwd=tmp_path)
    finally:
        (run / "checkpoints").chmod(0o755)
    assert result.returncode == 1 and one_line_error(result) and "Epoch 2/2" not in result.stdout


def test_probe_writable_fails_on_a_folder_that_is_a_file(tmp_path):
    (tmp_path / "checkpoints").write_text("")
    with pytest.raises(OSError):
        runs.probe_writable(tmp_path, tmp_path / "checkpoints")


# ---- 7: the one loader -------------------------------------------------------------------------

def test_the_loader_checks_metadata_against_the_network(data_csv, tmp_path):
    run = train(config(data_csv, tmp_path), verbose=0)
    model, labels, preprocessing = load_fer_model(run)                     # a run folder: its model.npz
    assert labels == list(model.metadata["labels"]) and preprocessing.input_size == 48
    for change, message in (({"labels": ["a", "b"]}, "2 labels .* for a model with 7 outputs"),
                            ({"preprocessing": {"input_size": 64, "scale": "unit"}},
                             r"64x64 grayscale faces .* but the model takes inputs \(48, 48, 1\)")):
        model.save(tmp_path / "bad.npz", metadata={**model.metadata, **change})
        with pytest.raises(ValueError, match=message):
            load_fer_model(tmp_path / "bad.npz")
    evaluated = run_script("evaluate.py", "--model", run, "--data", data_csv, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]
    no_model = run_script("evaluate.py", "--model", tmp_path, "--data", data_csv, cwd=tmp_path)
    assert no_model.returncode == 1 and one_line_error(no_model) and "without model.npz" in no_model.stderr


# ---- 11 and issue 19: stale files, arguments, early stopping, progress -------------------------

def test_stale_temporary_files_of_a_killed_write_are_removed(data_csv, tmp_path):
    run = train(config(data_csv, tmp_path), verbose=0)
    stale = [run / "checkpoints" / "last.npz.k1ll3d.tmp", run / "model.npz.abc123.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    train(resume_config(run, epochs=2), resume_dir=run, verbose=0)
    assert not any(path.exists() for path in stale)


def test_a_checkpoint_write_killed_midway_leaves_a_resumable_run(data_csv, tmp_path):
    """SIGKILL while last.npz is written: the old checkpoint is whole, the temp file goes at resume."""
    code = ("import os, signal, sys\n"
            "from minicnn import files\n"
            "from fer.training import TrainConfig, train\n"
            "def killed(f):\n"
            "    f.write(b'partial')\n"
            "    f.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "write = files.atomic_write\n"
            "files.atomic_write = lambda path, w: write(path, killed if str(path).endswith('last.npz') and "
            "os.path.exists(path) else w)\n"
            f"train(TrainConfig.for_model('mini_xception', {str(data_csv)!r}, epochs=2, batch_size=16, "
            f"out={str(tmp_path)!r}), verbose=0)\n")
    killed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=600)
    assert killed.returncode == -9
    run = next(tmp_path.glob("mini_xception-*"))
    assert list((run / "checkpoints").glob("last.npz.*.tmp"))
    resumed = run_script("train.py", "--resume", run, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not list((run / "checkpoints").glob("*.tmp")) and "removed" in resumed.stdout
    assert io.read_npz(run / "checkpoints" / "last.npz")[0]["epoch"] == 2


@pytest.mark.parametrize("option, value, message", [("--seed", "-1", "--seed: must be an integer >= 0"),
                                                    ("--lr", "nan", "--lr must be a positive number"),
                                                    ("--lr", "inf", "--lr must be a positive number")])
def test_bad_numbers_are_argument_errors(data_csv, tmp_path, option, value, message):
    result = run_script("train.py", "--model", "mini_xception", "--data", data_csv, option, value, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_patience_stops_early_and_the_run_counts_as_done(data_csv, tmp_path, capsys):
    def flat_validation(model, epoch, logs):
        logs["val_accuracy"] = 0.5                 # never better after the first epoch
    run = train(config(data_csv, tmp_path, epochs=6, patience=2), extra_callbacks=[Callback(flat_validation)])
    out = capsys.readouterr().out
    assert len(read_history(run / "history.csv")["loss"]) == 3
    assert "early stopping" in out and "stopped after epoch 3" in out
    assert "left for 5 more epochs at most" in out and "left for 3 more epochs" in out
    assert io.read_npz(run / "checkpoints" / "last.npz")[0]["stopped_early"] is True
    assert (run / "metrics.json").exists()
    with pytest.raises(ResumeError, match="stopped early after epoch 3"):
        train(resume_config(run), resume_dir=run, verbose=0)


class InterruptAtStart(minicnn.callbacks.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_history_and_curves_are_written_after_every_epoch(data_csv, tmp_path):
    with pytest.raises(TrainingInterrupted):
        train(config(data_csv, tmp_path, epochs=3), extra_callbacks=[InterruptAtStart(1)], verbose=0)
    run = next(tmp_path.glob("mini_xception-*"))
    assert len(read_history(run / "history.csv")["loss"]) == 1 and (run / "curves.png").stat().st_size > 0


def test_a_one_epoch_curve_has_markers_and_integer_ticks(tmp_path, monkeypatch):
    from fer import evaluation
    figures = []
    monkeypatch.setattr(evaluation, "_save_figure", lambda fig, path: figures.append(fig))
    evaluation.plot_curves(tmp_path / "curves.png", {"loss": [1.2], "val_loss": [1.3], "accuracy": [0.4],
                                                     "val_accuracy": [0.35]})
    for ax in figures[0].axes:
        assert all(line.get_marker() not in (None, "None", "") for line in ax.get_lines())
        assert all(float(tick).is_integer() for tick in ax.get_xticks())


def test_an_os_error_carries_the_resume_command_only_with_a_checkpoint(tmp_path):
    error = OSError(28, "No space left on device", "x")
    assert "--resume" not in str(RunFailed(error, tmp_path, tmp_path / "last.npz"))
    (tmp_path / "last.npz").write_bytes(b"")
    assert f"--resume {tmp_path}" in str(RunFailed(error, tmp_path, tmp_path / "last.npz"))
