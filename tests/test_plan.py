"""minicnn.compiler.plan: a frozen model's small batches, run by an inference plan, give the
frozen steps' outputs (exactly in float64; in float32 to rounding, where a plan's products run on
packed panels, ops.panels); each op's bound form gives its dispatcher's result (exactly; a bound
product to rounding), call after call; plans are made once per shape and dropped with the steps
they bound, new weights included."""
import copy
import threading

import numpy as np
import pytest

from fer import models as fer_models
from minicnn import Add, BatchNormalization, Conv2D, Dense, Flatten, Input, MaxPooling2D, Model
from minicnn.compiler import freeze
from minicnn.ops import epilogue, winograd
from minicnn.ops.conv import bind_conv2d, conv2d
from minicnn.ops.depthwise import bind_depthwise_conv, depthwise_conv
from minicnn.ops.direct_conv import bind_direct_conv2d, direct_conv2d
from minicnn.ops.gemm import bind_matmul, matmul
from minicnn.ops.separable import bind_separable_conv2d, separable_conv2d
from tests.test_compiler import batch, small_model
from tests.test_freeze import frozen_forward, with_statistics


def frozen(name):
    return freeze(with_statistics(small_model(name)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", fer_models.names())
def test_planned_outputs_are_the_frozen_steps_outputs(name, dtype, floatx):
    floatx(dtype)
    model = frozen(name)
    first, second = batch(model, n=2, seed=1)[0], batch(model, n=2, seed=2)[0]
    model.predict_on_batch(first)                                  # makes the plan
    assert len(model.plans.plans) == 1
    planned = [model.predict_on_batch(x) for x in (second, first)]
    for x, y in zip((second, first), planned):
        expected = frozen_forward(model, x)                # equal but for the order of sums
        tolerance = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance / 10, err_msg=name)


def test_a_plan_is_made_once_per_input_shape_and_its_output_is_the_callers(floatx):
    floatx("float32")
    model = frozen("mini_xception")
    one, two = batch(model, n=1)[0], batch(model, n=2)[0]
    y = model.predict_on_batch(one)
    model.predict_on_batch(two)
    kept = model.predict_on_batch(one)
    expected = kept.copy()
    kept[...] = 0                                                   # the caller's copy, not the plan's array
    np.testing.assert_array_equal(model.predict_on_batch(one), expected)
    np.testing.assert_array_equal(y, expected)
    assert len(model.plans.plans) == 2


def test_predict_runs_the_plan_and_a_big_batch_does_not(floatx, monkeypatch):
    floatx("float32")
    model = frozen("cnn4")
    x = batch(model, n=3)[0]
    expected = frozen_forward(model, x)
    one_by_one = np.concatenate([frozen_forward(model, x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(model.predict(x, batch_size=1), one_by_one, rtol=1e-5, atol=1e-6)   # the plan's panels
    assert len(model.plans.plans) == 1
    monkeypatch.setattr("minicnn.perf.ONE_THREAD_MAX_INPUT", 0)
    np.testing.assert_array_equal(model.predict(x, batch_size=3), expected)
    assert len(model.plans.plans) == 1


def test_new_weights_and_training_drop_the_plans(floatx):
    floatx("float64")
    model = frozen("mini_xception")
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = batch(model, n=2)
    before = model.predict_on_batch(x)
    other = freeze(with_statistics(small_model("mini_xception"), seed=5))
    model.set_weights(other.get_weights())
    after = model.predict_on_batch(x)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, frozen_forward(other, x))
    model.train_on_batch(x, y)
    freeze(model)
    np.testing.assert_array_equal(model.predict_on_batch(x), frozen_forward(model, x))


def test_the_reference_switch_runs_no_plan(floatx, monkeypatch):
    floatx("float64")
    model = frozen("cnn4")
    x = batch(model, n=1)[0]
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    model.predict_on_batch(x)
    model.predict_on_batch(x)
    assert model.plans.plans == {}


def test_a_plan_busy_on_another_thread_leaves_the_call_to_the_steps(floatx):
    floatx("float32")
    model = frozen("mini_xception")
    x = batch(model, n=1)[0]
    expected = model.predict_on_batch(x)
    (plan,) = model.plans.plans.values()
    with plan.lock:                                      # as if another thread were running it: the steps
        np.testing.assert_allclose(model.predict_on_batch(x), expected, rtol=1e-5, atol=1e-6)
    assert not plan.lock.locked()
    results = []
    threads = [threading.Thread(target=lambda: results.append(model.predict_on_batch(x))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:                              # by the plan, or by the steps while it is busy
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


# ---- each op's bound form against its dispatcher, on two inputs in turn --------------------------

def random(shape, seed, dtype="float32"):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_bound_equals(run, op, shape, seeds=(1, 2)):
    for seed in seeds:
        x = random(shape, seed)
        np.testing.assert_array_equal(run(x), op(x))


@pytest.mark.parametrize("shape, kernel_shape, strides, pads", [
    ((1, 12, 12, 3), (3, 3, 3, 8), (1, 1), ((1, 1), (1, 1))),
    ((2, 11, 9, 4), (3, 3, 4, 5), (2, 2), ((0, 1), (0, 1))),
    ((1, 10, 10, 2), (5, 5, 2, 3), (1, 1), ((0, 0), (0, 0)))])
def test_bound_direct_convolution(shape, kernel_shape, strides, pads):
    kernel = random(kernel_shape, 0)
    assert_bound_equals(bind_direct_conv2d(shape, kernel, strides, pads),
                        lambda x: direct_conv2d(x, kernel, strides, pads), shape)


@pytest.mark.parametrize("shape, kernel_shape, strides, pads", [
    ((1, 12, 12, 1), (3, 3, 1, 8), (1, 1), ((1, 1), (1, 1))),         # NumPy's im2col
    ((2, 10, 10, 16), (3, 3, 16, 8), (1, 1), ((1, 1), (1, 1))),       # numba's
    ((1, 11, 11, 8), (1, 1, 8, 16), (2, 2), ((0, 0), (0, 0)))])       # a strided 1x1 window
def test_bound_im2col_convolution(shape, kernel_shape, strides, pads):
    kernel = random(kernel_shape, 0)
    assert_bound_equals(bind_conv2d(shape, kernel, strides, pads),
                        lambda x: conv2d(x, kernel, strides, pads)[0], shape)


@pytest.mark.parametrize("tiling", [winograd.F2, winograd.F4])
def test_bound_winograd_convolution(tiling):
    shape, kernel = (1, 10, 9, 4), random((3, 3, 4, 6), 0)
    u = winograd.kernel_transform(kernel, tiling)
    assert_bound_equals(winograd.bind_conv(shape, u, 1, 1, 10, 9, tiling),
                        lambda x: winograd.conv(x, kernel, 1, 1, 10, 9, tiling=tiling)[0], shape)


@pytest.mark.parametrize("strides, multiplier", [((1, 1), 1), ((2, 2), 1), ((1, 1), 2)])
def test_bound_depthwise_convolution(strides, multiplier):
    shape, kernel, pads = (2, 9, 9, 4), random((3, 3, 4, multiplier), 0), ((1, 1), (1, 1))
    assert_bound_equals(bind_depthwise_conv(shape, kernel, strides, pads),
                        lambda x: depthwise_conv(x, kernel, strides, pads), shape)


def test_bound_separable_convolution():
    shape, kd, kp, pads = (1, 12, 10, 8), random((3, 3, 8, 1), 0), random((1, 1, 8, 16), 3), ((1, 1), (1, 1))
    assert_bound_equals(bind_separable_conv2d(shape, kd, kp, pads),
                        lambda x: separable_conv2d(x, kd, kp, pads), shape)


@pytest.mark.parametrize("pool", [None, ((3, 3), (2, 2), ((1, 1), (1, 1)))])
@pytest.mark.parametrize("with_residual", [False, True])
def test_bound_epilogue(pool, with_residual):
    z_shape = (1, 8, 8, 4)
    spec = epilogue.Epilogue("after", pool, 0.25)
    statistics = [random(4, seed) for seed in (5, 6, 7, 8)]
    statistics[1] = np.abs(statistics[1]) + 0.5                          # inv_std
    residual = random(spec.output_shape(z_shape), 9) if with_residual else None
    run = epilogue.bind_forward(spec, z_shape, np.float32, *statistics)
    assert_bound_equals(lambda z: run(z, residual),
                        lambda z: epilogue.forward(spec, z, *statistics, residual=residual)[0], z_shape)


@pytest.mark.parametrize("m, k, f", [(1, 64, 10), (300, 40, 16), (64, 2048, 512), (36, 4608, 512)])
def test_bound_matmul(m, k, f):
    """On one thread, in row tiles, on OpenBLAS's threads, and as the transposed product."""
    b, out = random((k, f), 0), np.empty((m, f), np.float32)
    product = bind_matmul(m, b)
    for seed in (1, 2):
        a = random((m, k), seed)
        np.testing.assert_allclose(product(a, out), matmul(a, b), rtol=1e-5, atol=1e-5 * np.sqrt(k))



def test_a_model_of_two_inputs_runs_its_plan(floatx):
    floatx("float64")
    left, right = Input((6, 6, 2)), Input((6, 6, 2))
    joined = Add()([BatchNormalization()(Conv2D(3, 3, padding="same")(left)), Conv2D(3, 1)(right)])
    model = freeze(with_statistics(Model([left, right], Dense(4, activation="softmax")(Flatten()(joined)))))
    pairs = [[random((1, 6, 6, 2), seed, "float64") for seed in seeds] for seeds in ((1, 2), (3, 4))]
    model.predict_on_batch(pairs[0])
    for pair in pairs:
        np.testing.assert_array_equal(model.predict_on_batch(pair), frozen_forward(model, pair))
    assert len(model.plans.plans) == 1


def test_a_layers_new_weights_reach_the_next_prediction(floatx):
    """A layer's set_weights, not only the model's, makes the model fold and plan again."""
    floatx("float64")
    model = frozen("cnn8")                    # its BatchNormalizations stay unfolded: the plan binds their statistics
    x = batch(model, n=1)[0]
    before = model.predict_on_batch(x)
    bn = next(layer for layer in model.layers if isinstance(layer, BatchNormalization))
    bn.set_weights([w + 0.5 for w in bn.get_weights()])
    after = model.predict_on_batch(x)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, frozen_forward(freeze(model), x))


def test_a_model_with_plans_can_be_copied(floatx):
    floatx("float32")
    model = frozen("mini_xception")
    x = batch(model, n=1)[0]
    expected = model.predict_on_batch(x)
    twin = copy.deepcopy(model)
    assert twin.plans.plans == {}
    np.testing.assert_array_equal(twin.predict_on_batch(x), expected)


def test_an_epilogue_binds_in_its_products_dtype():
    """A float64 convolution after a float32 input: the plan's epilogue computes in float64, as the steps do."""
    x_in = Input((8, 8, 2), dtype="float32")
    z = BatchNormalization(dtype="float64")(Conv2D(3, 3, padding="same", activation="relu", dtype="float64")(x_in))
    pooled = MaxPooling2D(dtype="float64")(z)
    model = freeze(with_statistics(Model(x_in, Dense(2, dtype="float64")(Flatten(dtype="float64")(pooled)))))
    x = random((1, 8, 8, 2), 1)
    model.predict_on_batch(x)
    np.testing.assert_array_equal(model.predict_on_batch(x), frozen_forward(model, x))
