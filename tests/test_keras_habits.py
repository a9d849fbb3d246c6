"""What Keras users type, and the mistakes they make, on minicnn (issue 19's library items, issue 18's
argument checks): Keras' callback names, load_model's compile state, honest file names, label shapes
checked before any batch, class_weight="balanced", single images and lists, argument checks."""
import re

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential, backend, io, losses, optimizers
from minicnn.callbacks import Callback, ModelCheckpoint

K = 3


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 1)).astype(np.float32), rng.integers(0, K, n)


def small_model(seed=0, optimizer="adam", loss="sparse_categorical_crossentropy"):
    backend.set_seed(seed)
    model = Sequential([Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), MaxPooling2D(), Flatten(),
                        Dense(K, activation="softmax")])
    model.compile(optimizer, loss, metrics=["accuracy"])
    return model


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def assert_same_weights(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ---- 1. Keras' callback methods ----------------------------------------------------------------
class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("train_batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("train_batch_end", batch, sorted(logs)))

    def on_test_begin(self, logs=None):
        self.calls.append(("test_begin",))

    def on_test_batch_end(self, batch, logs=None):
        self.calls.append(("test_batch_end", batch, sorted(logs)))

    def on_test_end(self, logs=None):
        self.calls.append(("test_end", sorted(logs)))

    def on_predict_batch_end(self, batch, logs=None):
        self.calls.append(("predict_batch_end", batch, logs["outputs"].shape))

    def on_predict_end(self, logs=None):
        self.calls.append(("predict_end",))


def test_fit_evaluate_and_predict_call_the_keras_callback_methods():
    x, y = data(40)
    model, recorder = small_model(), Recorder()
    model.fit(x[:30], y[:30], batch_size=16, epochs=1, validation_data=(x[30:], y[30:]), callbacks=[recorder],
              verbose=0)
    assert recorder.calls == [("train_batch_begin", 0), ("train_batch_end", 0, ["accuracy", "loss"]),
                              ("train_batch_begin", 1), ("train_batch_end", 1, ["accuracy", "loss"]),
                              ("test_begin",), ("test_batch_end", 0, ["accuracy", "loss"]),
                              ("test_end", ["accuracy", "loss"])]
    recorder.calls.clear()
    model.evaluate(x, y, batch_size=32, verbose=0, callbacks=[recorder])
    assert [c[0] for c in recorder.calls] == ["test_begin", "test_batch_end", "test_batch_end", "test_end"]
    recorder.calls.clear()
    model.predict(x, batch_size=32, callbacks=[recorder])
    assert recorder.calls == [("predict_batch_end", 0, (32, K)), ("predict_batch_end", 1, (8, K)), ("predict_end",)]


def test_keras_2_on_batch_end_still_runs_after_every_training_batch():
    class Old(Callback):
        batches = 0

        def on_batch_end(self, batch, logs=None):
            self.batches += 1

    x, y = data(40)
    old = Old()
    small_model().fit(x, y, batch_size=16, epochs=2, callbacks=[old], verbose=0)
    assert old.batches == 6


def test_an_unknown_on_method_is_refused_naming_it():
    class Typo(Callback):
        def on_train_batch_ends(self, batch, logs=None):
            pass

    x, y = data(8)
    model = small_model()
    before = weights_of(model)
    with pytest.raises(ValueError, match="Typo: on_train_batch_ends is not a callback method"):
        model.fit(x, y, callbacks=[Typo()], verbose=0)
    assert_same_weights(model.get_weights(), before)
    with pytest.raises(ValueError, match="on_train_batch_ends"):
        model.predict(x, callbacks=[Typo()])


# ---- 2. load_model restores compile() ------------------------------------------------------------
def test_load_model_restores_optimizer_loss_and_metrics(tmp_path):
    x, y = data(32)
    model = small_model(optimizer=optimizers.SGD(0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
                        loss=losses.SparseCategoricalCrossentropy(label_smoothing=0.2))
    model.save(tmp_path / "m.npz")
    loaded = minicnn.load_model(tmp_path / "m.npz")
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert type(loaded.optimizer) is optimizers.SGD and loaded.optimizer.weight_decay == 0.01
    assert type(loaded.loss) is losses.SparseCategoricalCrossentropy and loaded.loss.label_smoothing == 0.2
    assert loaded.metrics == ["accuracy"]
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
    assert minicnn.load_model(tmp_path / "m.npz", compile=False).optimizer is None


def test_a_file_saved_with_its_optimizer_continues_training_exactly(tmp_path):
    x, y = data(32)
    model = small_model(optimizer=optimizers.Adam(0.01, weight_decay=0.05))
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.npz", include_optimizer=True)
    without = tmp_path / "weights_and_compile_only.npz"
    model.save(without)
    loaded = minicnn.load_model(tmp_path / "m.npz")
    assert loaded.optimizer.iterations == model.optimizer.iterations == 4
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert_same_weights(loaded.get_weights(), model.get_weights())
    fresh = minicnn.load_model(without)       # no moments saved: Adam starts afresh, as a new optimizer
    assert fresh.optimizer.iterations == 0 and fresh.optimizer.slots == {}


def test_a_compile_entry_that_does_not_restore_names_the_file(tmp_path):
    model = small_model()
    meta = {**io.weights_meta(model), "config": model.get_config(), "metadata": {},
            "compile": {"optimizer": {"class_name": "Adam", "bogus": 1}, "loss": {"class_name": "Nope"},
                        "metrics": []}}
    io.write_npz(tmp_path / "bad.npz", io.weight_arrays(model), meta)
    with pytest.raises(ValueError, match=r"bad\.npz: the stored compile state does not restore.*compile=False"):
        minicnn.load_model(tmp_path / "bad.npz")
    assert minicnn.load_model(tmp_path / "bad.npz", compile=False).optimizer is None


# ---- 3. a file name never lies about its format ----------------------------------------------------
@pytest.mark.parametrize("name", ["m.h5", "m.keras5", "m"])
def test_save_refuses_names_of_formats_it_does_not_write(tmp_path, name):
    model = small_model()
    with pytest.raises(ValueError, match=r"minicnn writes model files as \.npz"):
        model.save(tmp_path / name)
    with pytest.raises(ValueError, match=r"minicnn writes weight files as \.npz"):
        model.save_weights(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_model_checkpoint_refuses_an_h5_name_before_training():
    with pytest.raises(ValueError, match=r"best\.h5: minicnn writes model files as \.npz.*best\.npz"):
        ModelCheckpoint("best.h5")
    with pytest.raises(ValueError, match="weight files"):
        ModelCheckpoint("w.{epoch:02d}.h5", save_weights_only=True)
    ModelCheckpoint("w.{epoch:02d}-{val_loss:.2f}.npz")


# ---- 4. one-hot or integer labels, checked before the first batch ------------------------------------
def test_one_hot_targets_with_the_sparse_loss_say_so_before_training():
    x, y = data(40)
    model = small_model()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"expects integer labels \(N,\), received one-hot targets of shape "
                                         r"\(40, 3\): use loss='categorical_crossentropy'"):
        model.fit(x, np.eye(K)[y], verbose=0)
    assert_same_weights(model.get_weights(), before)
    with pytest.raises(ValueError, match="fit\\(validation_data\\).*one-hot"):
        model.fit(x, y, validation_data=(x, np.eye(K)[y]), verbose=0)
    assert_same_weights(model.get_weights(), before)


def test_integer_labels_with_the_categorical_loss_say_so():
    x, y = data(40)
    model = small_model(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="received integer labels of shape \\(40,\\): use "
                                         "loss='sparse_categorical_crossentropy'"):
        model.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="evaluate.*integer labels"):
        model.evaluate(x, y, verbose=0)


def test_labels_out_of_range_or_not_integers_are_named():
    x, y = data(40)
    model = small_model()
    with pytest.raises(ValueError, match=r"labels must be in 0..2 \(the model has 3 outputs\), received 0..3"):
        model.fit(x, np.where(y == 1, 3, y), verbose=0)
    with pytest.raises(ValueError, match="non-integer"):
        model.fit(x, y + 0.5, verbose=0)


# ---- 5. class_weight ---------------------------------------------------------------------------------
def test_class_weight_balanced_equals_the_dict_of_n_over_k_times_n_k():
    x, y = data(40, seed=3)
    counts = np.bincount(y, minlength=K)
    explicit = {k: len(y) / (K * counts[k]) for k in range(K)}
    h1 = small_model().fit(x, y, batch_size=8, epochs=2, class_weight="balanced", verbose=0)
    h2 = small_model().fit(x, y, batch_size=8, epochs=2, class_weight=explicit, verbose=0)
    h3 = small_model().fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert len(set(counts)) > 1                      # unequal classes: the weights matter
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-6)
    assert h1.history["loss"] != h3.history["loss"]


def test_class_weight_that_misses_a_class_or_is_not_a_dict_is_named():
    x, y = data(40)
    model = small_model()
    with pytest.raises(ValueError, match=r"class_weight needs a weight for every class 0..2.*missing: \[1, 2\]"):
        model.fit(x, y, class_weight={0: 1.0}, verbose=0)
    with pytest.raises(ValueError, match=r"keys that are not a class of the model \(0..2\): 7"):
        model.fit(x, y, class_weight={0: 1.0, 1: 1.0, 2: 1.0, 7: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="class weights must be numbers, finite and >= 0"):
        model.fit(x, y, class_weight={0: 1.0, 1: "e", 2: 1.0}, verbose=0)
    with pytest.raises(ValueError, match="class_weight must be a dict \\{class: weight\\} or 'balanced'"):
        model.fit(x, y, class_weight="balance", verbose=0)


def test_a_sequence_trains_a_sequential_built_on_its_first_batch_and_balanced_needs_arrays():
    x, y = data(16)

    class Batches(minicnn.Sequence):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return x[8 * i:8 * i + 8], y[8 * i:8 * i + 8]

    model = Sequential([Conv2D(2, 3), Flatten(), Dense(K, activation="softmax")])      # no input_shape
    model.compile("sgd", "sparse_categorical_crossentropy")
    assert len(model.fit(Batches(), epochs=1, verbose=0, class_weight={0: 1, 1: 2, 2: 1}).history["loss"]) == 1
    with pytest.raises(ValueError, match="class_weight='balanced' counts the labels of arrays x, y"):
        model.fit(Batches(), class_weight="balanced", verbose=0)


# ---- 6. one image, and lists -------------------------------------------------------------------------
def test_a_single_image_asks_for_a_batch_axis():
    x, _ = data(4)
    model = small_model()
    with pytest.raises(ValueError, match=r"a batch is expected: add an axis with x\[None\].*x.shape=\(6, 6, 1\)"):
        model.predict(x[0])
    assert model.predict(x[0][None]).shape == (1, K)
    with pytest.raises(ValueError, match=r"expected input of shape \(None, 6, 6, 1\), received x.shape=\(4, 6, 6\)"):
        model.predict(x[..., 0])


def test_lists_are_taken_as_arrays():
    x, y = data(24)
    a, b = small_model(), small_model()
    ha = a.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    hb = b.fit(list(x), list(y), batch_size=8, epochs=1, shuffle=False, validation_data=(list(x), list(y)),
               verbose=0)
    assert ha.history["loss"] == hb.history["loss"]
    np.testing.assert_array_equal(a.predict(list(x)), a.predict(x))
    assert a.evaluate(list(x), list(y), verbose=0) == a.evaluate(x, y, verbose=0)


# ---- issue 18, item 11: arguments checked, the argument named -----------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be a positive int, received 0"),
    ({"batch_size": 2.5}, "batch_size must be a positive int, received 2.5"),
    ({"epochs": -1}, "epochs must be an int >= 0, received -1"),
    ({"validation_split": 1.0}, r"validation_split must be in \[0, 1\)"),
    ({"sample_weight": np.ones(3)}, r"sample_weight must have shape \(40,\)"),
])
def test_fit_names_a_bad_argument(kwargs, message):
    x, y = data(40)
    model = small_model()
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, verbose=0, **kwargs)


def test_evaluate_and_predict_check_their_arguments():
    x, y = data(8)
    model = small_model()
    with pytest.raises(ValueError, match="evaluate: received no data"):
        model.evaluate(x[:0], y[:0], verbose=0)
    with pytest.raises(ValueError, match="predict: batch_size must be a positive int, received 0"):
        model.predict(x, batch_size=0)
    with pytest.raises(ValueError, match="x and y must have the same length"):
        model.evaluate(x, y[:5], verbose=0)
    assert model.predict(x[:0]).shape == (0, K)            # no images, no predictions: not an error


def test_predict_on_batch_is_predict_of_one_batch():
    x, _ = data(8)
    model = small_model()
    np.testing.assert_array_equal(model.predict_on_batch(x), model.predict(x, batch_size=8))
    with pytest.raises(ValueError, match="predict_on_batch"):
        model.predict_on_batch(x[0])                          # one image, no batch axis


@pytest.mark.parametrize("make,message", [
    (lambda: Dense(0), "units must be a positive int, received 0"),
    (lambda: Conv2D(0, 3), "filters must be a positive int, received 0"),
    (lambda: Conv2D(2.5, 3), "filters must be a positive int, received 2.5"),
    (lambda: minicnn.SeparableConv2D(4, 3, depth_multiplier=0), "depth_multiplier must be a positive int"),
    (lambda: minicnn.DepthwiseConv2D(3, depth_multiplier=-1), "depth_multiplier must be a positive int"),
    (lambda: minicnn.BatchNormalization(epsilon=0), "epsilon > 0"),
    (lambda: minicnn.BatchNormalization(momentum=1.5), r"momentum must be in \[0, 1\]"),
])
def test_layer_constructors_name_a_bad_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- 7. progress bars in notebooks too -----------------------------------------------------------------
def test_fit_draws_its_bar_with_tqdm_auto_in_a_notebook_and_not_in_a_log(monkeypatch):
    import tqdm.auto
    from minicnn.models import model as model_module

    assert model_module.tqdm is tqdm.auto.tqdm          # a widget in Jupyter, text in a terminal
    monkeypatch.setattr(model_module.sys, "stdout", open("/dev/null", "w"))     # a log file: no terminal
    assert not model_module.show_progress_bar(1)

    class NotebookBar(tqdm.auto.tqdm):
        pass

    NotebookBar.__module__ = "tqdm.notebook"            # what tqdm.auto picks in Jupyter
    monkeypatch.setattr(model_module, "tqdm", NotebookBar)
    assert model_module.show_progress_bar(1) and not model_module.show_progress_bar(2)


# ---- 8. fer.evaluation leaves matplotlib's backend alone ------------------------------------------------
def test_importing_fer_evaluation_keeps_the_backend_and_still_writes_pngs(tmp_path):
    import subprocess
    import sys
    code = ("import matplotlib; matplotlib.use('svg'); import fer.evaluation as e; "
            "e.plot_curves(r'{0}/c.png', {{'loss': [1.0, 0.5], 'val_loss': [1.1, 0.7]}}); "
            "e.plot_confusion(r'{0}/m.png', e.report([0, 1, 1], [0, 1, 0], ['a', 'b'])); "
            "print(matplotlib.get_backend())").format(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"
    for name in ("c.png", "m.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- 9. MINICNN_REFERENCE=1 runs without numba -----------------------------------------------------------
NO_NUMBA = "import sys; sys.modules['numba'] = None\n"       # makes `import numba` raise ImportError
TRAIN_A_LITTLE = """
import re

import numpy as np
from minicnn import *
m = Sequential([Conv2D(4, 3, padding="same", input_shape=(8, 8, 1)), BatchNormalization(), Activation("relu"),
                SeparableConv2D(4, 3, padding="same"), MaxPooling2D(), Dropout(0.3), Flatten(),
                Dense(3, activation="softmax")])
m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
history = m.fit(x, np.arange(16) % 3, epochs=2, verbose=0)
one = m.predict(x[:1])                                   # a small batch, as a webcam's face
print("numba" if sys.modules.get("numba") else "no numba", np.isfinite(history.history["loss"]).all() and
      np.isfinite(one).all())
"""


def run_python(code, **env):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_minicnn_trains_without_numba_on_its_references():
    result = run_python(NO_NUMBA + TRAIN_A_LITTLE, MINICNN_REFERENCE="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["no", "numba", "True"]


def test_without_numba_and_without_the_reference_switch_the_error_says_what_to_do():
    result = run_python(NO_NUMBA + "import minicnn", MINICNN_REFERENCE="0")
    assert result.returncode != 0
    assert "ImportError: minicnn's kernels need numba (pip install numba); with MINICNN_REFERENCE=1" in result.stderr


# ---- 14. python -m minicnn.gradcheck can fail, and says so ----------------------------------------------
def run_gradcheck(*argv):
    import contextlib
    import io as text_io
    from minicnn import gradcheck
    out = text_io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            status = gradcheck.main(list(argv))
    finally:
        backend.set_floatx("float32")
    return status, out.getvalue()


def test_gradcheck_passes_correct_layers_with_a_pass_column_and_the_same_figures_each_run():
    status, out = run_gradcheck("--layer", "Dense", "--layer", "BatchNormalization", "--seed", "3")
    assert status == 0
    rows = [line.split() for line in out.splitlines()[1:] if line.strip() and not line.startswith("all")]
    assert [(r[0], r[1], r[3]) for r in rows] == [("Dense", "training", "PASS"), ("Dense", "inference", "PASS"),
                                                  ("BatchNormalization", "training", "PASS"),
                                                  ("BatchNormalization", "inference", "PASS")]
    assert "all 4 checks passed" in out
    assert run_gradcheck("--layer", "Dense", "--layer", "BatchNormalization", "--seed", "3") == (status, out)


def test_gradcheck_fails_a_broken_bias_gradient_and_shows_the_worst_entry(monkeypatch):
    from minicnn.layers import core
    backward = core.Dense.backward_from_logits

    def broken(self, dz):
        dx = backward(self, dz)
        self.bias.grad = self.bias.grad * 1.5                  # a bug a student might write
        return dx

    monkeypatch.setattr(core.Dense, "backward_from_logits", broken)
    status, out = run_gradcheck("--layer", "Dense")
    assert status == 1
    assert "Dense                   training      2.00e-01  FAIL    bias" in out
    assert "2 of 2 checks FAILED" in out
    assert re.search(r"Dense \(training\) bias: relative error 2.00e-01 \(worst entry \d+: analytic \S+, "
                     r"numeric \S+\)", out)


def test_gradcheck_help_and_bad_layer_names_run_no_check(capsys):
    from minicnn import gradcheck
    with pytest.raises(SystemExit) as exit_help:
        gradcheck.main(["--help"])
    assert exit_help.value.code == 0 and "PASS" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_bad:
        gradcheck.main(["--layer", "Dense2"])
    assert exit_bad.value.code == 2 and "invalid choice: 'Dense2'" in capsys.readouterr().err


def test_python_m_minicnn_gradcheck_exits_non_zero_on_failure():
    code = ("import sys; from minicnn.layers import core\n"
            "f = core.Dense.backward_from_logits\n"
            "def broken(self, dz):\n"
            "    dx = f(self, dz); self.bias.grad = self.bias.grad * 1.5; return dx\n"
            "core.Dense.backward_from_logits = broken\n"
            "import runpy; sys.argv = ['gradcheck', '--layer', 'Dense']\n"
            "runpy.run_module('minicnn.gradcheck', run_name='__main__')")   # as python -m runs it
    result = run_python(code)
    assert result.returncode == 1 and "FAIL" in result.stdout


# ---- moving averages of the weights (Keras 3's use_ema, SwapEMAWeights) -------------------------
class StepRecorder(Callback):
    """The weights and the optimizer's averages after every training step."""

    def __init__(self):
        self.weights, self.averages = [], []

    def on_train_batch_end(self, batch, logs=None):
        trainable = self.model.trainable_weights
        self.weights.append([w.value.copy() for w in trainable])
        self.averages.append([self.model.optimizer.averages[w].copy() for w in trainable])


def test_use_ema_keeps_the_moving_average_and_fit_ends_on_it():
    x, y = data(32)
    model = small_model(optimizer=optimizers.Adam(0.05, use_ema=True, ema_momentum=0.6))
    steps = StepRecorder()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[steps])
    expected = steps.weights[0]                               # the first step's average: its weights
    for weights in steps.weights[1:]:
        expected = [0.6 * e + 0.4 * w for e, w in zip(expected, weights)]
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(model.get_weights()[0], steps.weights[-1][0])    # not the last step's weights


def test_ema_overwrite_frequency_puts_the_averages_into_the_weights_every_n_steps():
    x, y = data(32)
    model = small_model(optimizer=optimizers.Adam(0.05, use_ema=True, ema_momentum=0.6, ema_overwrite_frequency=2))
    steps = StepRecorder()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[steps])
    same = [all(np.array_equal(w, a) for w, a in zip(ws, avs)) for ws, avs in zip(steps.weights, steps.averages)]
    assert same == [True, True, False, True]      # step 1: the average is the weights; then every second step


def test_swap_ema_weights_validates_and_checkpoints_the_averages(tmp_path):
    from minicnn.callbacks import SwapEMAWeights
    x, y = data(32)
    x_val, y_val = data(16, seed=1)

    def fit(*callbacks):
        model = small_model(optimizer=optimizers.Adam(0.05, use_ema=True, ema_momentum=0.6))
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_data=(x_val, y_val),
                            callbacks=list(callbacks))
        return model, history.history["val_loss"][-1]

    plain, plain_val = fit()
    swapped, swapped_val = fit(SwapEMAWeights(swap_on_epoch=True), ModelCheckpoint(str(tmp_path / "m.npz")))
    after_fit = swapped.evaluate(x_val, y_val, verbose=0)[0]         # fit ended on the averages
    assert swapped_val == pytest.approx(after_fit) and plain_val != pytest.approx(after_fit)
    assert_same_weights(minicnn.load_model(tmp_path / "m.npz").get_weights(), swapped.get_weights())
    assert_same_weights(plain.get_weights(), swapped.get_weights())  # swapping changed no training step
    with pytest.raises(ValueError, match="use_ema=True"):
        small_model().fit(x, y, epochs=1, verbose=0, validation_data=(x_val, y_val), callbacks=[SwapEMAWeights()])
