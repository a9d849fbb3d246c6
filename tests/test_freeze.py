"""minicnn.compiler.freeze: inference steps with each BatchNormalization folded into the convolution
before it give the textbook layers' outputs and input gradients; training, set_weights and
load_weights leave no stale folded weights behind."""
import numpy as np
import pytest

from fer import models as fer_models
from minicnn import explain, perf
from minicnn.compiler import FusedStep, compile_model, freeze
from minicnn.compiler.epilogues import EpilogueStage
from minicnn.layers.normalization import BatchNormalization
from minicnn.models.network import Network
from tests.test_compiler import TOLERANCE, assert_close, batch, small_model


def with_statistics(model, seed=3):
    """`model` with every BatchNormalization's gamma, beta and moving statistics drawn at random
    (fresh ones are the identity, which any fold gets right)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, BatchNormalization):
            for weight in (layer.gamma, layer.beta, layer.moving_mean):
                weight.value[...] = rng.normal(size=weight.shape)
            layer.moving_variance.value[...] = rng.uniform(0.2, 3.0, size=layer.moving_variance.shape)
    return model


def frozen_forward(model, x):
    """The frozen steps' output, unplanned: Network.forward on the steps as they are (Model.forward
    compiles trainable steps again, since a backward may follow it)."""
    assert model.steps_frozen
    return Network.forward(model, x, training=False)


def textbook_output(model, x):
    model.set_steps(model.graph_steps())
    return model.forward(x, training=False).copy()


def folded_batchnorms(model):
    """The BatchNormalization layers no frozen step runs as a normalization any more."""
    running = {stage.parts.batchnorm for step, _ in model.steps if isinstance(step, FusedStep)
               for stage in step.stages if isinstance(stage, EpilogueStage)}
    return [layer for layer in model.layers if isinstance(layer, BatchNormalization) and layer not in running]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", fer_models.names())
def test_frozen_outputs_equal_the_textbook_ones(name, dtype, floatx):
    floatx(dtype)
    model = with_statistics(small_model(name))
    x, _ = batch(model, n=3)
    expected = textbook_output(model, x)
    freeze(model)
    assert model.steps_frozen
    assert_close(frozen_forward(model, x), expected, TOLERANCE[dtype], name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_bias_and_relu_of_a_big_batch_take_the_one_pass_kernel_with_the_same_result(dtype, floatx, monkeypatch):
    floatx(dtype)
    model = with_statistics(small_model("mini_xception"))
    x, _ = batch(model, n=3)
    expected = textbook_output(model, x)
    freeze(model)
    monkeypatch.setattr(perf, "ELEMENTWISE_NUMBA_MIN_SIZE", 0)       # every z counts as big
    assert_close(frozen_forward(model, x), expected, TOLERANCE[dtype], "one pass")


def test_every_batchnorm_after_a_convolution_or_dense_layer_is_folded():
    """mini-Xception: all 14 (each follows a Conv2D or SeparableConv2D), cnn4 all 6 (4 after
    convolutions, 2 after Dense layers); cnn8 puts its ReLU before BatchNormalization, where no
    fold applies, so it keeps all 10."""
    assert len(folded_batchnorms(freeze(small_model("mini_xception")))) == 14
    assert len(folded_batchnorms(freeze(small_model("cnn4")))) == 6
    cnn8 = freeze(small_model("cnn8"))
    assert folded_batchnorms(cnn8) == []


def test_a_backward_on_a_frozen_model_reaches_every_weight_as_the_textbooks_does(floatx):
    """explain.input_gradient runs an inference forward and a backward: the forward compiles the
    trainable steps again, since no gradient reaches a layer through folded weights."""
    floatx("float64")
    model = with_statistics(small_model("mini_xception"))
    x, _ = batch(model, n=2)
    model.set_steps(model.graph_steps())
    expected = explain.input_gradient(model, x, class_index=1)
    expected_grads = [weight.grad.copy() for weight in model.trainable_weights]
    freeze(model)
    for weight in model.trainable_weights:
        weight.grad = None
    assert_close(explain.input_gradient(model, x, class_index=1), expected, TOLERANCE["float64"], "input gradient")
    assert not model.steps_frozen and model.steps_compiled
    for weight, grad in zip(model.trainable_weights, expected_grads):
        assert_close(weight.grad, grad, TOLERANCE["float64"], weight.name)


def test_training_a_frozen_model_runs_the_plain_compiled_steps(floatx):
    floatx("float64")
    model = with_statistics(small_model("mini_xception"))
    model.compile("sgd", "sparse_categorical_crossentropy")
    twin = with_statistics(small_model("mini_xception"))
    twin.compile("sgd", "sparse_categorical_crossentropy")
    x, y = batch(model, n=3)
    freeze(model)
    compile_model(twin)
    model.train_on_batch(x, y)
    twin.train_on_batch(x, y)
    assert not model.steps_frozen and model.steps_compiled
    for a, b in zip(model.get_weights(), twin.get_weights()):
        assert_close(a, b, TOLERANCE["float64"], "weights after a step")


@pytest.mark.parametrize("setter", ["set_weights", "load_weights"])
def test_new_weights_are_folded_again(setter, tmp_path, floatx):
    floatx("float64")
    model = freeze(small_model("mini_xception"))
    other = with_statistics(small_model("mini_xception"), seed=5)
    for weight in other.trainable_weights:
        weight.value[...] += 0.1
    x, _ = batch(model, n=2)
    expected = textbook_output(other, x)
    if setter == "set_weights":
        model.set_weights(other.get_weights())
    else:
        other.save_weights(tmp_path / "other.weights.npz")
        model.load_weights(tmp_path / "other.weights.npz")
    assert_close(model.predict_on_batch(x), expected, TOLERANCE["float64"], setter)
    assert model.steps_frozen
