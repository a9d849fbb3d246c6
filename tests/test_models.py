"""Sequential and functional models: seeds' parameter counts, summary, fit, save/load, optimizers."""
import re

import numpy as np
import pytest

import minicnn
from fer import models as fer_models
from minicnn import (Activation, Add, BatchNormalization, Conv2D, Dense, DepthwiseConv2D, Dropout, Flatten,
                     GlobalAveragePooling2D, Input, MaxPooling2D, Model, SeparableConv2D, Sequential, backend, gradcheck,
                     optimizers)

# (total, trainable, non-trainable) as printed in the seeds and in the issues
SEED_TOTALS = {
    ("cnn4", 7): (4_478_727, 4_474_759, 3_968),
    ("cnn8", 4): (1_328_199, 1_326_023, 2_176),
    ("mini_xception", 7): (58_423, 56_951, 1_472),
    ("seq4", 6): (4_589_318, None, None), ("seq5", 7): (2_345_991, None, None),
    ("seq5", 6): (2_344_966, None, None), ("seq6", 7): (1_914_951, None, None),
    ("seq7", 7): (4_478_727, None, None), ("seq7", 6): (4_478_214, None, None),
    ("seq8", 6): (4_478_214, None, None),
}


def summary_text(model):
    lines = []
    model.summary(print_fn=lines.append)
    return "\n".join(lines)


def printed_totals(text):
    return tuple(int(re.search(rf"^{label} params: ([\d,]+)", text, re.M).group(1).replace(",", ""))
                 for label in ("Total", "Trainable", "Non-trainable"))


@pytest.mark.parametrize("name,classes", sorted(SEED_TOTALS))
def test_architectures_have_the_seeds_parameter_counts(name, classes):
    model = fer_models.build(name, num_classes=classes)
    total, trainable, non_trainable = SEED_TOTALS[(name, classes)]
    assert model.count_params() == total
    printed = printed_totals(summary_text(model))
    assert printed[0] == total
    if trainable is not None:
        assert printed[1:] == (trainable, non_trainable)


def test_every_architecture_builds_its_seeds_own_model_by_default():
    seed_classes = {"cnn8": 4, "seq4": 6, "seq8": 6}          # seed 001: four classes; seed 004: no Disgust
    for name in fer_models.names():
        model = fer_models.build(name)
        assert model.output_shape == (None, seed_classes.get(name, 7)), name
    assert fer_models.build("cnn8").count_params() == 1_328_199
    assert fer_models.build("mini_xception", input_shape=(64, 64, 1)).count_params() == 58_423
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        fer_models.build("nope")


def test_build_sets_the_kernel_l2_factor_only_where_the_architecture_has_one():
    def factors(model):
        return {layer.kernel_regularizer.l2 for layer in model.layers if getattr(layer, "kernel_regularizer", None)}

    assert factors(fer_models.build("mini_xception")) == {0.01}                  # the seed's
    assert factors(fer_models.build("mini_xception", l2_regularization=0.001)) == {0.001}
    assert factors(fer_models.build("mini_xception", l2_regularization=0)) == {0.0}
    with pytest.raises(ValueError, match="cnn4 has no kernel regularizer.*these have one: mini_xception"):
        fer_models.build("cnn4", l2_regularization=0.001)


@pytest.mark.parametrize("seed_file,name,classes", [("000", "cnn4", 7), ("001", "cnn8", 4), ("002", "mini_xception", 7)])
def test_totals_printed_in_the_seed_documents(shared_dir, seed_file, name, classes):
    text = next((shared_dir / "seeds").glob(f"{seed_file}_*.txt")).read_text()
    printed = printed_totals(text)
    model = fer_models.build(name, num_classes=classes)
    assert printed_totals(summary_text(model)) == printed


def test_seed_004_keras_code_runs_with_only_imports_changed(shared_dir):
    """Every model.add(...) block of seed 004, executed on minicnn."""
    text = next((shared_dir / "seeds").glob("004_*.txt")).read_text()
    blocks = [b for b in re.findall(r"```(.*?)```", text, re.S) if "model.add" in b]
    assert len(blocks) == 5
    counts = []
    for block in blocks:
        namespace = dict(vars(minicnn))          # "from minicnn import *": the only change
        code = "\n".join(line.strip() for line in block.splitlines())
        if "Sequential()" not in code:
            code = "model = Sequential()\n" + code
        exec(code, namespace)
        counts.append(namespace["model"].count_params())
    assert counts == [4_589_318, 2_345_991, 1_914_951, 4_478_727, 4_478_214]


def test_layer_names_are_numbered_like_keras():
    backend.clear_session()
    model = Sequential([Conv2D(2, 3, input_shape=(8, 8, 1)), BatchNormalization(), Conv2D(2, 3), Flatten(),
                        Dense(3, activation="softmax")])
    assert [l.name for l in model.layers] == ["conv2d_1", "batch_normalization_1", "conv2d_2", "flatten_1", "dense_1"]


def test_functional_summary_has_connected_to_and_keras_columns():
    backend.clear_session()
    x = Input((8, 8, 3))
    a = Conv2D(4, 3, padding="same")(x)
    b = Conv2D(4, 1)(x)
    y = GlobalAveragePooling2D()(Add()([a, b]))
    text = summary_text(Model(x, Activation("softmax")(y)))
    add_line = next(line for line in text.splitlines() if line.startswith("add_1 (Add)"))
    assert add_line.index("(None, 8, 8, 4)") == 32 and add_line.index("0 ") == 53
    assert add_line.rstrip().endswith("conv2d_1[0][0]")
    assert re.search(r"^ {65}conv2d_2\[0\]\[0\]", text, re.M)
    assert "Total params: 128" in text      # (3*3*3*4 + 4) + (1*1*3*4 + 4)


def test_sequential_builds_lazily_without_input_shape():
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(3)])
    with pytest.raises(ValueError, match="not built"):
        model.summary()
    y = model.predict(np.zeros((2, 5, 5, 1), np.float32))
    assert y.shape == (2, 3) and model.count_params() == 2 * 9 + 2 + 18 * 3 + 3


def bars(n, seed, size=12):
    """4 learnable classes: a bright bar that is horizontal, vertical or on either diagonal."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    x = rng.uniform(0, 0.3, (n, size, size, 1)).astype(np.float32)
    idx = np.arange(size)
    for i, (label, pos) in enumerate(zip(labels, rng.integers(2, size - 2, n))):
        if label == 0:
            x[i, pos, :, 0] += 1
        elif label == 1:
            x[i, :, pos, 0] += 1
        elif label == 2:
            x[i, idx, idx, 0] += 1
        else:
            x[i, idx, size - 1 - idx, 0] += 1
    return x, labels


def small_cnn():
    return Sequential([Conv2D(8, 3, padding="same", activation="relu", input_shape=(12, 12, 1)), MaxPooling2D(),
                       Conv2D(8, 3, activation="relu"), Flatten(), Dropout(0.2), Dense(4, activation="softmax")])


def train_bars(seed):
    backend.set_seed(seed)
    model = small_cnn()
    model.compile(optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = bars(600, 0)
    xv, yv = bars(200, 1)
    return model.fit(x, y, batch_size=32, epochs=4, validation_data=(xv, yv), verbose=0)


def test_fit_learns_a_learnable_task_and_is_reproducible():
    first = train_bars(7)
    assert first.history["val_accuracy"][-1] >= 0.95
    assert set(first.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    second = train_bars(7)
    assert first.history == second.history


def test_fit_does_not_reorder_callers_arrays():
    x, y = bars(64, 3)
    x0, y0 = x.copy(), y.copy()
    model = small_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def residual_model(filters=3):
    x = Input((6, 5, 2))
    # no bias before BN (as mini-Xception): training-mode BN cancels it, its gradient is exactly 0
    h = Conv2D(filters, (3, 2), padding="same", use_bias=False)(x)
    h = BatchNormalization()(h)
    h = Activation("tanh")(h)
    shortcut = Conv2D(filters, 1, strides=2, padding="same")(x)
    h = SeparableConv2D(filters, 3, padding="same")(h)
    h = MaxPooling2D(3, strides=2, padding="same")(h)
    h = Add()([h, shortcut])
    h = Flatten()(h)
    return Model(x, Dense(4, activation="softmax", kernel_regularizer=minicnn.l2(0.01))(h))


def test_functional_model_gradchecks_end_to_end_including_the_loss():
    backend.set_floatx("float64")
    try:
        backend.set_seed(0)
        model = residual_model()
        model.compile("sgd", "sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 6, 5, 2))
        results = gradcheck.check_model(model, x, np.array([0, 3, 1]), sample=15)
        assert {w.name for w in model.trainable_weights} <= set(results)
        for r in results.values():
            assert r.error <= 1e-6, repr(r)
    finally:
        backend.set_floatx("float32")


def test_a_training_step_skips_the_input_gradient_and_gets_the_same_weight_gradients(monkeypatch):
    from minicnn.ops import conv as conv_ops, im2col
    backend.set_floatx("float64")
    try:
        backend.set_seed(0)
        model = Sequential([Conv2D(3, 3, padding="same", input_shape=(6, 5, 2)), Activation("relu"),
                            Conv2D(2, 3), Flatten(), Dense(3, activation="softmax")])
        model.compile("sgd", "sparse_categorical_crossentropy")
        x, y = np.random.default_rng(0).standard_normal((4, 6, 5, 2)), np.array([0, 2, 1, 2])
        model.compute_gradients(x, y)
        full = [w.grad.copy() for w in model.trainable_weights]
        assert model.input_grad.shape == x.shape
        folds = []
        col2im = im2col.col2im
        monkeypatch.setattr(conv_ops, "col2im", lambda *a: folds.append(a[1]) or col2im(*a))
        model.compute_gradients(x, y, input_gradient=False)
        assert model.input_grad is None
        assert folds == [(4, 6, 5, 3)]                  # only the second conv folds a dx back, not the first
        for w, g in zip(model.trainable_weights, full):
            np.testing.assert_array_equal(w.grad, g, err_msg=w.name)
        folds.clear()
        model.train_on_batch(x, y)                      # what fit runs: no input gradient either
        assert model.input_grad is None and folds == [(4, 6, 5, 3)]
        saliency = minicnn.input_gradient(model, x)     # asked for again after training steps: computed
        assert saliency.shape == x.shape and np.abs(saliency).sum() > 0
    finally:
        backend.set_floatx("float32")


def test_after_a_training_step_a_first_layers_own_backward_still_returns_dx():
    # the skip belongs to the training step's pass: gradcheck (or a student) calling the layer gets dx
    backend.set_floatx("float64")
    try:
        backend.set_seed(0)
        model = Sequential([Conv2D(3, 3, input_shape=(6, 5, 2)), Flatten(), Dense(2, activation="softmax")])
        model.compile("sgd", "sparse_categorical_crossentropy")
        x = np.random.default_rng(0).standard_normal((4, 6, 5, 2))
        model.train_on_batch(x, np.array([0, 1, 1, 0]))
        conv = model.layers[0]
        dy = np.ones_like(conv.forward(x, training=True))
        assert conv.backward(dy).shape == x.shape
        assert gradcheck.check_layer(conv, x)["x"].error < 1e-7
    finally:
        backend.set_floatx("float32")


def separable_first_model():
    """A mini-Xception-like model whose first layer is separable: a residual block of
    separable convolutions beside a strided 1x1 Conv2D, then global pooling."""
    x = Input((8, 7, 2))
    h = BatchNormalization()(SeparableConv2D(4, 3, padding="same", activation="relu")(x))
    branch = MaxPooling2D(3, strides=2, padding="same")(SeparableConv2D(4, 3, padding="same")(h))
    h = Add()([branch, Conv2D(4, 1, strides=2, padding="same")(h)])
    model = Model(x, Dense(3, activation="softmax")(GlobalAveragePooling2D()(DepthwiseConv2D(3)(h))))
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("build", ["separable", "depthwise"])
def test_a_training_step_skips_the_input_gradient_of_a_separable_or_depthwise_first_layer(monkeypatch, build):
    backend.set_floatx("float64")
    try:
        backend.set_seed(0)
        if build == "separable":
            model = separable_first_model()
        else:
            model = Sequential([DepthwiseConv2D(3, depth_multiplier=2, input_shape=(8, 7, 2)), Activation("relu"),
                                DepthwiseConv2D(3), Flatten(), Dense(3, activation="softmax")])
            model.compile("sgd", "sparse_categorical_crossentropy")
        first = model.first_layers[0]
        assert type(first).__name__ == {"separable": "SeparableConv2D", "depthwise": "DepthwiseConv2D"}[build]
        returned = []
        backward = first.backward
        monkeypatch.setattr(first, "backward", lambda dy: returned.append(backward(dy)) or returned[-1])
        x, y = np.random.default_rng(0).standard_normal((4, 8, 7, 2)), np.array([0, 2, 1, 2])
        model.compute_gradients(x, y)
        full = [w.grad.copy() for w in model.trainable_weights]
        assert returned.pop().shape == x.shape and model.input_grad.shape == x.shape
        model.compute_gradients(x, y, input_gradient=False)
        assert returned.pop() is None and model.input_grad is None
        for w, g in zip(model.trainable_weights, full):
            np.testing.assert_array_equal(w.grad, g, err_msg=w.name)
        model.train_on_batch(x, y)                      # what fit runs: no input gradient either
        assert returned.pop() is None
        assert first.backward(np.ones_like(first.forward(x, training=True))).shape == x.shape   # its own call: dx
        assert gradcheck.check_layer(first, x[:2])["x"].error < 1e-7
    finally:
        backend.set_floatx("float32")

def test_a_model_of_two_inputs_predicts_evaluates_and_fits_on_a_list_of_arrays():
    backend.set_seed(0)
    a, b = Input((3,)), Input((3,))
    model = Model([a, b], Dense(2, activation="softmax")(Add()([Dense(4)(a), Dense(4)(b)])))
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((10, 3)).astype(np.float32), rng.standard_normal((10, 3)).astype(np.float32)
    y = np.arange(10) % 2
    whole = model.forward([xa, xb])
    np.testing.assert_allclose(model.predict([xa, xb], batch_size=1), whole, rtol=1e-6)
    loss, _ = model.evaluate([xa, xb], y, batch_size=4, verbose=0)
    assert abs(loss - model.loss(y, whole)) <= 1e-5
    history = model.fit([xa, xb], y, batch_size=4, epochs=2, verbose=0, validation_split=0.2)
    assert len(history.history["val_loss"]) == 2
    with pytest.raises(ValueError, match=r"the model has 2 inputs \(.*\): pass a list of 2 arrays, received ndarray"):
        model.predict(xa)
    with pytest.raises(ValueError, match="the input arrays must hold one number of samples"):
        model.predict([xa, xb[:5]])
    with pytest.raises(ValueError, match=r"evaluate \(input_\d+\): expected input of shape \(None, 3\)"):
        model.evaluate([xa, xb[:, :2]], y)


def test_fit_checks_the_validation_data_once(monkeypatch):
    from minicnn.models import model as model_module
    checked = []
    check = model_module.check_targets
    monkeypatch.setattr(model_module, "check_targets", lambda *a: checked.append(a[-1]) or check(*a))
    model = Sequential([Dense(2, activation="softmax", input_shape=(3,))])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.zeros((6, 3), np.float32), np.arange(6) % 2
    model.fit(x, y, epochs=3, verbose=0, validation_data=(x, y))
    assert checked.count(f"{model.name}.fit(validation_data)") == 1


def test_fused_softmax_loss_is_finite_for_huge_logits():
    x = Input((2,))
    model = Model(x, Dense(3, activation="softmax", use_bias=False)(x))
    model.compile("sgd", "categorical_crossentropy")
    model.layers[1].kernel.value[...] = [[1000, -1000, 0], [0, 0, 0]]
    loss, _ = model.compute_gradients(np.array([[1.0, 0.0]], np.float32), np.array([[0, 1, 0]], np.float32))
    assert np.isfinite(loss) and abs(loss - 2000) < 1e-2
    assert all(np.isfinite(w.grad).all() for w in model.trainable_weights)


def test_save_load_predict_identical(tmp_path):
    model = residual_model()
    model.metadata = {"labels": ["a", "b", "c", "d"]}
    x = np.random.default_rng(1).standard_normal((4, 6, 5, 2)).astype(np.float32)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.train_on_batch(x, np.array([0, 1, 2, 3]))        # moving statistics away from their init
    model.save(tmp_path / "m.npz")
    loaded = minicnn.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.metadata == {"labels": ["a", "b", "c", "d"]}
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    other = residual_model()
    model.save_weights(tmp_path / "w.npz")
    other.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_load_model_opens_the_archive_once(tmp_path, monkeypatch):
    import zipfile
    model = residual_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.save(tmp_path / "m.npz", include_optimizer=True)
    opened = []
    init = zipfile.ZipFile.__init__
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda self, *a, **k: opened.append(a[0]) or init(self, *a, **k))
    loaded = minicnn.load_model(tmp_path / "m.npz")
    assert len(opened) == 1
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


def test_read_npz_lets_the_callers_own_errors_through(tmp_path):
    from minicnn import io

    class Refused(ValueError):
        pass

    def members(meta):
        raise Refused(f"{tmp_path / 'a.npz'}: the caller's own reason")
    io.write_npz(tmp_path / "a.npz", {"a": np.zeros(2)}, {"format": io.FORMAT})
    with pytest.raises(Refused, match="the caller's own reason$"):
        io.read_npz(tmp_path / "a.npz", members)
    with pytest.raises(Refused):
        io.read_npz(tmp_path / "a.npz", lambda meta: (_ for _ in ()).throw(Refused("no file name first")))


def test_bad_model_files_fail_clearly_and_leave_the_model_unchanged(tmp_path):
    model = residual_model()
    model.predict(np.zeros((1, 6, 5, 2), np.float32))
    before = model.get_weights()
    Sequential([Dense(2, input_shape=(3,))]).save_weights(tmp_path / "small.npz")
    with pytest.raises(ValueError, match="holds 2 weights"):
        model.load_weights(tmp_path / "small.npz")
    wrong = residual_model(filters=5)
    wrong.save_weights(tmp_path / "wide.npz")
    with pytest.raises(ValueError, match=r"has shape .* in the file, but the model's .* has shape"):
        model.load_weights(tmp_path / "wide.npz")
    np.savez(tmp_path / "obj.npz", __minicnn__=np.array('{"format": 1}'), weight_0000=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="object"):
        model.load_weights(tmp_path / "obj.npz")
    data = (tmp_path / "small.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        model.load_weights(tmp_path / "cut.npz")
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop", optimizers.SGD(0.01, momentum=0.9, nesterov=True)])
def test_every_optimizer_moves_every_trainable_weight(optimizer):
    model = residual_model()
    model.compile(optimizer, "sparse_categorical_crossentropy")
    x = np.random.default_rng(2).standard_normal((4, 6, 5, 2)).astype(np.float32)
    model.predict(x)
    before = [w.value.copy() for w in model.trainable_weights]
    model.train_on_batch(x, np.array([0, 1, 2, 3]))
    for w, b in zip(model.trainable_weights, before):
        assert not np.array_equal(w.value, b), w.name


def test_batchnorm_moving_statistics_change_only_in_training():
    model = residual_model()
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(3).standard_normal((4, 6, 5, 2)).astype(np.float32) * 2 + 1
    model.predict(x)
    moving = [w.value.copy() for w in model.non_trainable_weights]
    model.evaluate(x, np.array([0, 1, 2, 3]), verbose=0)
    model.predict(x)
    for w, m in zip(model.non_trainable_weights, moving):
        np.testing.assert_array_equal(w.value, m)
    model.train_on_batch(x, np.array([0, 1, 2, 3]))
    assert all(not np.array_equal(w.value, m) for w, m in zip(model.non_trainable_weights, moving))


def test_callbacks_checkpoint_earlystop_reduce_lr_csv(tmp_path):
    backend.set_seed(0)
    model = small_cnn()
    model.compile(optimizers.SGD(0.0), "sparse_categorical_crossentropy", metrics=["accuracy"])  # lr 0: nothing improves
    model.optimizer.learning_rate = 1e-9
    x, y = bars(64, 0)
    cbs = [minicnn.callbacks.ModelCheckpoint(str(tmp_path / "best.npz"), monitor="val_loss", save_best_only=True),
           minicnn.callbacks.EarlyStopping(monitor="val_loss", patience=2, min_delta=1.0),
           minicnn.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=1.0),
           minicnn.callbacks.CSVLogger(str(tmp_path / "log.csv"))]
    history = model.fit(x, y, epochs=10, validation_data=(x, y), callbacks=cbs, verbose=0)
    assert len(history.history["loss"]) == 3          # epoch 1 sets best, 2 more without improvement
    assert (tmp_path / "best.npz").exists()
    assert history.history["lr"] == [1e-9, 1e-9, 5e-10]      # the rate each epoch trained with
    assert model.optimizer.learning_rate == 2.5e-10           # halved after epochs 2 and 3
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 4


def test_terminate_on_nan_stops_and_names_epoch_and_batch(capsys):
    model = small_cnn()
    model.compile(optimizers.SGD(1e30), "sparse_categorical_crossentropy")
    x, y = bars(128, 0)
    history = model.fit(x * 1e20, y, epochs=3, batch_size=16, callbacks=[minicnn.callbacks.TerminateOnNaN()], verbose=0)
    assert "invalid loss" in capsys.readouterr().out
    assert history.history == {}       # no epoch finished: nothing logged, nothing checkpointed


def test_bad_inputs_name_the_layer():
    layer = Conv2D(4, 3, name="conv2d_x")
    layer.forward(np.zeros((1, 5, 5, 8), np.float32))
    with pytest.raises(ValueError, match=r"conv2d_x: expected 8 input channels \(the last axis\), "
                                         r"received x.shape=\(2, 5, 5, 3\)"):
        layer.forward(np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="conv2d_x: expected a 4-D input"):
        layer.forward(np.zeros((5, 5, 8), np.float32))
    with pytest.raises(ValueError, match="conv2d_x: expected a float array"):
        layer.forward(np.zeros((1, 5, 5, 8), np.int64))
    with pytest.raises(ValueError, match="dense_x: expected a 2-D input"):
        Dense(3, name="dense_x").forward(np.zeros((2, 3, 3), np.float32))


def test_sequential_accepts_an_input_first_as_tf_keras():
    model = Sequential([Input((6, 6, 1)), Conv2D(2, 3), Flatten(), Dense(3)])
    assert model.output_shape == (None, 3) and [type(l).__name__ for l in model.layers] == ["Conv2D", "Flatten", "Dense"]


def test_a_file_that_is_not_an_npz_is_named_as_such(tmp_path):
    (tmp_path / "faces.csv").write_text("emotion,pixels,Usage\n")
    with pytest.raises(ValueError, match=r"faces.csv: not a minicnn model file \(not an .npz archive\)"):
        minicnn.load_model(tmp_path / "faces.csv")


def test_separable_conv_ignores_kernel_regularizer_as_keras_does():
    with pytest.warns(UserWarning, match="kernel_regularizer has no effect on SeparableConv2D"):
        layer = SeparableConv2D(4, 3, kernel_regularizer=minicnn.l2(0.01))
    layer.build((None, 5, 5, 2))
    assert all(w.regularizer is None for w in layer.weights)
    both = SeparableConv2D(4, 3, depthwise_regularizer=minicnn.l2(0.1), pointwise_regularizer=minicnn.l2(0.2))
    both.build((None, 5, 5, 2))
    assert both.depthwise_kernel.regularizer.l2 == 0.1 and both.pointwise_kernel.regularizer.l2 == 0.2


def test_freezing_a_layer_after_construction_stops_its_updates():
    model = Sequential([Dense(4, input_shape=(3,)), Dense(2, activation="softmax")])
    model.layers[0].trainable = False
    model.compile("sgd", "sparse_categorical_crossentropy")
    frozen = model.layers[0].kernel.value.copy()
    model.train_on_batch(np.ones((2, 3), np.float32), np.array([0, 1]))
    np.testing.assert_array_equal(model.layers[0].kernel.value, frozen)
    assert len(model.trainable_weights) == 2 and summary_text(model).count("Non-trainable params: 16") == 1


def test_calling_a_layer_twice_is_refused_with_its_name():
    dense = Dense(3, name="dense_shared")
    x = Input((3,))
    with pytest.raises(ValueError, match="dense_shared: already called"):
        dense(dense(x))


def test_fit_refuses_empty_data():
    model = small_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="fit: received no data"):
        model.fit(np.zeros((0, 12, 12, 1), np.float32), np.zeros(0), verbose=0)


def test_labels_shaped_n_by_1_are_labels_as_in_keras():
    """CIFAR-style y_train of shape (N, 1): accuracy and class weights read them as labels, not one-hot."""
    from minicnn.models.model import _sample_weights, accuracy
    y_pred = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([0, 1, 0])
    for y in (labels, labels[:, None], np.eye(2)[labels]):
        assert accuracy(y, y_pred) == pytest.approx(2 / 3), y.shape
        np.testing.assert_array_equal(_sample_weights(y, None, {0: 1.0, 1: 5.0}), [1, 5, 1])


def test_keras_2_spellings_lr_decay_and_loss_functions_work():
    """Seed-era code writes SGD(lr=0.01, decay=1e-6) and compile(loss=losses.categorical_crossentropy)."""
    from minicnn.layers.base import Weight
    assert optimizers.Adam(lr=0.01).learning_rate == 0.01 and optimizers.RMSprop(lr=0.02).learning_rate == 0.02
    sgd = optimizers.SGD(lr=0.1, decay=0.5)
    w = Weight("w", np.ones(1))
    for _ in range(2):
        w.grad = np.ones(1)
        sgd.apply_gradients([w])
    np.testing.assert_allclose(w.value, [1 - 0.1 - 0.1 / 1.5])         # lr / (1 + decay * t), t = 0, 1
    assert optimizers.get(sgd.get_config()).decay == 0.5
    with pytest.raises(ValueError, match="unknown optimizer class_name 'adamw'"):
        optimizers.get({"class_name": "AdamW"})

    model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    model.compile(optimizers.SGD(lr=0.1), loss=minicnn.losses.categorical_crossentropy)
    assert type(model.loss).__name__ == "CategoricalCrossentropy"
    model.compile("adam", loss=minicnn.losses.sparse_categorical_crossentropy)
    assert type(model.loss).__name__ == "SparseCategoricalCrossentropy"


def test_a_window_that_does_not_fit_is_an_error_naming_the_layer_when_the_graph_is_built():
    with pytest.raises(ValueError, match=r"conv_small: a 5x5 window .* does not fit an input of 3x3; "
                                         r"received input_shape=\(None, 3, 3, 1\)"):
        Conv2D(2, 5, name="conv_small")(Input((3, 3, 1)))
    with pytest.raises(ValueError, match=r"pool_small: a 4x4 window .* does not fit an input of 3x3"):
        Sequential([MaxPooling2D(4, name="pool_small", input_shape=(3, 3, 1))])
    with pytest.raises(ValueError, match="conv_stride: strides must be a positive int"):
        Conv2D(2, 3, strides=0, name="conv_stride")
    same = Conv2D(2, 5, padding="same", name="conv_same")          # "same" fits any input
    assert same(Input((3, 3, 1))).shape == (None, 3, 3, 2)
    unknown = Conv2D(2, 5, name="conv_unknown")(Input((None, None, 1)))   # sizes known only at forward
    assert unknown.shape == (None, None, None, 2)
    layer = Conv2D(2, 5, name="conv_late")
    layer.forward(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"conv_late: a 5x5 window .* does not fit an input of 3x3"):
        layer.forward(np.zeros((1, 3, 3, 1), np.float32))


def test_batchnorm_moving_variance_is_keras_2s_unbiased_estimate():
    bn = BatchNormalization(momentum=0.9, epsilon=1e-3)
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5))
    bn.forward(x.astype(np.float32), training=True)
    m = 4
    np.testing.assert_allclose(bn.moving_mean.value, 0.1 * x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.value, 0.9 + 0.1 * x.var(axis=0) * m / (m - 1 - 1e-3), rtol=1e-5)


def test_functional_layers_come_in_keras_order_as_the_seed_prints_them(shared_dir):
    """Seed 002's summary (Keras): in each residual block the shortcut conv comes after the main
    branch's last BN, then the pool, the shortcut BN and the add. Rows compared by (shape, params)."""
    text = next((shared_dir / "seeds").glob("002_*.txt")).read_text()
    row = re.compile(r"^\S+ \(\w+\)?\s+(\(None[^)]*\))\s+(\d+)", re.M)   # Keras cuts long type names
    printed = row.findall(text)
    ours = row.findall(summary_text(fer_models.build("mini_xception")))
    assert len(printed) == len(ours) > 40
    assert ours == printed


def test_a_weight_file_loads_by_weight_name_whatever_the_order_in_the_file(tmp_path):
    from minicnn import io
    model = fer_models.build("mini_xception")
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    model.save(tmp_path / "model.npz")
    meta, arrays = io.read_npz(tmp_path / "model.npz")
    order = rng.permutation(len(meta["weights"]))          # as a file written under another layer order
    io.write_npz(tmp_path / "shuffled.npz", {f"weight_{i:04d}": arrays[f"weight_{j:04d}"] for i, j in enumerate(order)},
                 {**meta, "weights": [meta["weights"][j] for j in order]})
    loaded = minicnn.load_model(tmp_path / "shuffled.npz")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_configs_in_files_and_dicts_are_errors_naming_them(tmp_path):
    from minicnn import io, regularizers
    with pytest.raises(ValueError, match="unknown regularizer class_name 'L3'"):
        regularizers.get({"class_name": "L3", "l3": 0.1})
    model = Sequential([Conv2D(2, 3, input_shape=(6, 6, 1)), Flatten(), Dense(2)])
    model.save(tmp_path / "model.npz")
    meta, arrays = io.read_npz(tmp_path / "model.npz")
    del meta["config"]["layers"][1]["config"]["filters"]        # as a file from another version might
    io.write_npz(tmp_path / "broken.npz", arrays, meta)
    with pytest.raises(ValueError, match="broken.npz: the stored architecture does not build"):
        minicnn.load_model(tmp_path / "broken.npz")


def test_activations_by_function_as_keras_takes_them():
    from minicnn import activations
    for fn in (activations.relu, activations.sigmoid, activations.tanh, activations.softmax, activations.linear):
        layer = Dense(3, activation=fn)
        assert layer.get_config()["activation"] == fn.__name__
    z = np.array([[-800.0, 0.0, 800.0]])
    np.testing.assert_array_equal(activations.sigmoid(z), [[0.0, 0.5, 1.0]])    # no overflow warning either way
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Dense(3, activation="swish")


def test_weight_files_written_before_keras_order_load_by_their_own_order(tmp_path):
    """A weights-only file from before layers were listed in Keras' order (no "layer_order"),
    loaded into a model with other layer names: two Dense(4) layers swapped places in the order."""
    from minicnn import io

    def branched():
        x = Input((4,))
        main = Dense(4)(Dense(4)(x))
        return Model(x, Add()([Dense(4)(x), main]))

    model = branched()
    rng = np.random.default_rng(1)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    old_order = io.file_layer_order(model, {})                   # the depth-first order of old files
    assert [l.name for l in old_order] != [l.name for l in model.nodes]
    old_weights = [w for layer in old_order for w in layer._weights]
    io.write_npz(tmp_path / "old.npz", {f"weight_{i:04d}": w.value for i, w in enumerate(old_weights)},
                 {"format": io.FORMAT, "weights": [w.name for w in old_weights]})
    other = branched()                                            # new layer names: dense_4.., not dense_1..
    other.load_weights(tmp_path / "old.npz")
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    model.save_weights(tmp_path / "new.npz")                      # and a file written now, by position
    third = branched()
    third.load_weights(tmp_path / "new.npz")
    np.testing.assert_array_equal(third.predict(x), model.predict(x))


def test_optimizer_state_of_the_wrong_shape_is_an_error_naming_the_weight():
    from minicnn.layers.base import Weight
    w = Weight("dense_9/kernel", np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"state 0/m has shape \(3, 2\), but weight dense_9/kernel has shape \(2, 3\)"):
        optimizers.Adam().set_state([w], {"iterations": 1, "learning_rate": 0.1},
                                    {"0/m": np.zeros((3, 2)), "0/v": np.zeros((3, 2))})
