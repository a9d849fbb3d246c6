"""Every layer's backward against central differences (float64, hypothesis-drawn shapes)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import backend, gradcheck
from minicnn.layers import (LAYER_CLASSES, Activation, Add, AveragePooling2D, BatchNormalization, Conv2D, Dense,
                            DepthwiseConv2D, Dropout, Flatten, GlobalAveragePooling2D, MaxPooling2D, ReLU,
                            SeparableConv2D, Softmax)

TOL = 1e-7


@pytest.fixture(autouse=True)
def float64():
    backend.set_floatx("float64")
    backend.set_seed(0)
    yield
    backend.set_floatx("float32")


def assert_gradients(layer, x, training=False):
    """Check dx and every trainable weight; fail if a weight is left unchecked."""
    results = gradcheck.check_layer(layer, x, training=training)
    weight_names = {w.name.split("/")[-1] for w in layer.trainable_weights}
    assert weight_names <= set(results), f"unchecked weights: {weight_names - set(results)}"
    for result in results.values():
        assert result.error <= TOL, repr(result)
    return results


def spaced(rng, shape, gap=0.05):
    return gradcheck.spaced_input(shape, seed=int(rng.integers(2**31)), gap=gap)


conv_case = st.fixed_dictionaries({
    "n": st.integers(1, 3), "h": st.integers(1, 7), "w": st.integers(1, 7), "c": st.integers(1, 3),
    "kh": st.integers(1, 4), "kw": st.integers(1, 4), "sh": st.integers(1, 3), "sw": st.integers(1, 3),
    "padding": st.sampled_from(["valid", "same"]), "seed": st.integers(0, 2**16)})


def fits(case):
    return case["padding"] == "same" or (case["h"] >= case["kh"] and case["w"] >= case["kw"])


@settings(max_examples=25, deadline=None)
@given(conv_case, st.integers(1, 3), st.booleans())
def test_conv2d(case, filters, use_bias):
    assume(fits(case))
    rng = np.random.default_rng(case["seed"])
    layer = Conv2D(filters, (case["kh"], case["kw"]), strides=(case["sh"], case["sw"]),
                   padding=case["padding"], use_bias=use_bias)
    assert_gradients(layer, rng.standard_normal((case["n"], case["h"], case["w"], case["c"])))


@settings(max_examples=20, deadline=None)
@given(conv_case, st.integers(1, 2))
def test_depthwise_conv2d(case, multiplier):
    assume(fits(case))
    rng = np.random.default_rng(case["seed"])
    layer = DepthwiseConv2D((case["kh"], case["kw"]), strides=(case["sh"], case["sw"]),
                            padding=case["padding"], depth_multiplier=multiplier)
    assert_gradients(layer, rng.standard_normal((case["n"], case["h"], case["w"], case["c"])))


@settings(max_examples=20, deadline=None)
@given(conv_case, st.integers(1, 3))
def test_separable_conv2d(case, filters):
    assume(fits(case))
    rng = np.random.default_rng(case["seed"])
    layer = SeparableConv2D(filters, (case["kh"], case["kw"]), strides=(case["sh"], case["sw"]),
                            padding=case["padding"])
    results = assert_gradients(layer, rng.standard_normal((case["n"], case["h"], case["w"], case["c"])))
    assert {"depthwise_kernel", "pointwise_kernel", "bias"} <= set(results)


@settings(max_examples=20, deadline=None)
@given(conv_case, st.sampled_from([MaxPooling2D, AveragePooling2D]))
def test_pooling(case, cls):
    """Includes overlapping windows (stride < pool size) and 'same' padding."""
    assume(fits(case))
    rng = np.random.default_rng(case["seed"])
    layer = cls(pool_size=(case["kh"], case["kw"]), strides=(case["sh"], case["sw"]), padding=case["padding"])
    assert_gradients(layer, spaced(rng, (case["n"], case["h"], case["w"], case["c"])))


def test_overlapping_max_pool_3x3_stride_2_same():
    rng = np.random.default_rng(1)
    assert_gradients(MaxPooling2D((3, 3), strides=(2, 2), padding="same"), spaced(rng, (2, 7, 6, 3)))


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.booleans(), st.integers(0, 999))
def test_batch_normalization_4d(n, h, w, c, training, seed):
    # Two values per channel normalize to about -1 and +1 whatever they are: dx is then ~1e-6
    # of G, below what central differences resolve to 1e-7 (2.4e-7 seen for n=2, h=w=c=1).
    assume(not training or n * h * w >= 3)
    rng = np.random.default_rng(seed)
    layer = BatchNormalization()
    layer.build((None, h, w, c))
    layer.gamma.value[...] = rng.uniform(0.5, 2, c)
    layer.beta.value[...] = rng.standard_normal(c)
    layer.moving_mean.value[...] = rng.standard_normal(c)
    layer.moving_variance.value[...] = rng.uniform(0.5, 2, c)
    before = [w.value.copy() for w in layer.non_trainable_weights]
    assert_gradients(layer, rng.standard_normal((n, h, w, c)) * 3 + 1, training=training)
    for w, value in zip(layer.non_trainable_weights, before):   # the check restores them
        np.testing.assert_array_equal(w.value, value)


@pytest.mark.parametrize("training", [True, False])
def test_batch_normalization_2d(training):
    rng = np.random.default_rng(2)
    layer = BatchNormalization()
    layer.build((None, 5))
    layer.gamma.value[...] = rng.uniform(0.5, 2, 5)
    assert_gradients(layer, rng.standard_normal((6, 5)), training=training)


@pytest.mark.parametrize("training", [True, False])
def test_the_fused_batch_normalization_relu_step(training):
    """The compiler's BatchNormalization + ReLU step: gamma, beta and dx through max(BN(x), 0), its ReLU
    on both sides of 0."""
    from minicnn.compiler import FusedStep
    from minicnn.compiler.stages import BatchNormalizationReLUStage
    rng = np.random.default_rng(3)
    batchnorm = BatchNormalization()
    batchnorm.build((None, 3, 3, 4))
    batchnorm.gamma.value[...] = rng.uniform(0.5, 2, 4)
    batchnorm.moving_variance.value[...] = rng.uniform(0.5, 2, 4)
    step = FusedStep([BatchNormalizationReLUStage(batchnorm, Activation("relu"))])
    x = spaced(rng, (3, 3, 3, 4), gap=0.1)
    y = step.forward(x, training=training)
    assert (y == 0).any() and (y > 0).any()
    assert {name for name in assert_gradients(step, x, training=training)} == {"x", "gamma", "beta"}


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 4), st.booleans(), st.sampled_from([None, "relu", "softmax", "tanh", "sigmoid"]), st.integers(0, 999))
def test_dense(n, n_in, units, use_bias, activation, seed):
    rng = np.random.default_rng(seed)
    layer = Dense(units, activation=activation, use_bias=use_bias)
    x = spaced(rng, (n, n_in), gap=0.3) if activation == "relu" else rng.standard_normal((n, n_in))
    if activation == "relu":   # keep pre-activations away from 0 as well: unit j copies input j % n_in
        layer.build((None, n_in))      # (a unit past n_in with only the small noise sat on the kink)
        copies = np.eye(n_in)[:, np.arange(units) % n_in]
        layer.kernel.value[...] = copies + 0.01 * rng.standard_normal((n_in, units))
    assert_gradients(layer, x)


@pytest.mark.parametrize("name", ["relu", "softmax", "sigmoid", "tanh", "linear"])
def test_activation(name):
    rng = np.random.default_rng(3)
    assert_gradients(Activation(name), spaced(rng, (2, 3, 4, 5), gap=0.04))


def test_relu_and_softmax_layers():
    rng = np.random.default_rng(4)
    assert_gradients(ReLU(), spaced(rng, (3, 4, 2)))
    assert_gradients(Softmax(), rng.standard_normal((3, 6)))


def test_flatten_and_global_average_pooling():
    rng = np.random.default_rng(5)
    assert_gradients(Flatten(), rng.standard_normal((2, 3, 4, 5)))
    assert_gradients(GlobalAveragePooling2D(), rng.standard_normal((2, 3, 5, 4)))


@pytest.mark.parametrize("training", [True, False])
def test_dropout_with_fixed_seed(training):
    rng = np.random.default_rng(6)
    layer = Dropout(0.4, seed=3)
    results = assert_gradients(layer, rng.standard_normal((4, 5, 5, 2)), training=training)
    assert results["x"].analytic.any()


@pytest.mark.parametrize("k", [2, 3])
def test_add(k):
    rng = np.random.default_rng(7)
    results = assert_gradients(Add(), [rng.standard_normal((2, 3, 3, 4)) for _ in range(k)])
    assert set(results) == {f"x{i}" for i in range(k)}


@pytest.mark.parametrize("name", sorted(set(LAYER_CLASSES) - {"InputLayer"}))
def test_every_layer_class_has_a_check(name):
    """Parametrized over LAYER_CLASSES itself: a new layer class without a case fails here."""
    cases = gradcheck.example_cases()
    assert name in cases, f"{name} has no gradient check: add a case to gradcheck.example_cases()"
    make, shape = cases[name]
    x = [gradcheck.spaced_input(s, seed=i) for i, s in enumerate(shape)] if isinstance(shape, list) else gradcheck.spaced_input(shape)
    for training in (True, False):
        assert_gradients(make(), x, training=training)


def test_mini_xception_residual_module_end_to_end():
    """One mini-Xception module as the seed builds it: two separable convs with BN and ReLU, a
    3x3 stride-2 'same' max pool, a 1x1 stride-2 shortcut with BN, joined by Add. Sampled entries."""
    from minicnn import Input, Model
    from minicnn.compiler import FusedStep, compile_model

    x_in = Input((7, 6, 3))
    residual = BatchNormalization()(Conv2D(4, (1, 1), strides=(2, 2), padding="same", use_bias=False)(x_in))
    x = SeparableConv2D(4, (3, 3), padding="same", use_bias=False)(x_in)
    x = Activation("relu")(BatchNormalization()(x))
    x = SeparableConv2D(4, (3, 3), padding="same", use_bias=False)(x)
    x = BatchNormalization()(x)
    x = MaxPooling2D((3, 3), strides=(2, 2), padding="same")(x)
    y = Add()([x, residual])
    model = Model(x_in, Dense(3, activation="softmax")(Flatten()(y)))
    model.compile("sgd", "sparse_categorical_crossentropy")
    compile_model(model)                         # as train.py runs it: the compiled steps
    assert sum(isinstance(step, FusedStep) for step, _ in model.steps) == 3
    x = np.random.default_rng(11).standard_normal((4, 7, 6, 3))
    results = gradcheck.check_model(model, x, np.array([0, 2, 1, 2]), training=True, sample=25)
    assert {w.name for w in model.trainable_weights} <= set(results)
    for result in results.values():
        assert result.error <= 1e-6, repr(result)
