"""The compiled fast path (minicnn/compiler/) against the textbook layers: every seed architecture
gives the same outputs, weight gradients and training step both ways, and the model it leaves
(graph, names, files, activations) is the plain one."""
import numpy as np
import pytest

import minicnn
from fer import models as fer_models
from minicnn import (Activation, Add, BatchNormalization, Conv2D, Dense, Flatten, Input, Model, SeparableConv2D,
                     Sequential, backend, optimizers, perf)
from minicnn.compiler import FusedStep, compile_model
from minicnn.compiler.epilogues import EpilogueStage
from minicnn.compiler.stages import ConvStage, DirectSaved, SeparableStage
from minicnn.ops import winograd
from minicnn.ops.direct_conv import direct_pays

SIZES = (16, 24, 32, 40, 48)          # the smallest input each architecture builds for keeps tests fast
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def small_model(name):
    """fer.models' `name` at the smallest input size it builds for, seeded."""
    for size in SIZES:
        backend.clear_session()
        backend.set_seed(0)
        try:
            return fer_models.build(name, input_shape=(size, size, 1))
        except ValueError:
            continue
    raise AssertionError(f"{name} builds for none of the sizes {SIZES}")


def batch(model, n=2, seed=1):
    """A random batch of n inputs for `model` and labels for its classes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + model.input_shape[1:]).astype(model.layers[0].dtype)
    return x, np.arange(n) % model.output_shape[-1]


def gradients(model, x, y, training):
    """(loss, output, {weight: gradient}) of one pass, the model's weights (moving statistics
    too) restored after it and the dropout masks drawn from one seed, so passes compare."""
    state = model.get_weights()
    backend.set_seed(7)
    loss, out = model.compute_gradients(x, y, training=training)
    grads = {w.name: w.grad.copy() for w in model.trainable_weights}
    model.set_weights(state)
    return loss, out.copy(), grads


def assert_close(actual, expected, tolerance, what):
    """Equal within `tolerance` relative to the largest entry of `expected`."""
    scale = max(float(np.abs(expected).max()), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale, err_msg=what)


def fused_steps(model):
    return [step for step, _ in model.steps if isinstance(step, FusedStep)]


def float64_twin(name, model):
    """`name` in float64 with `model`'s weights: the float64 gradients float32 paths are held to."""
    before = backend.floatx()
    backend.set_floatx("float64")
    twin = small_model(name)
    backend.set_floatx(before)
    twin.set_weights(model.get_weights())
    twin.compile("sgd", "sparse_categorical_crossentropy")
    return twin


def assert_agree(compiled, textbook, truth, tolerance, scale, what):
    """compiled == textbook within tolerance * scale; in float32 (truth given: the float64 result) it is
    enough that compiled is no further from truth than twice the textbook's own float32 rounding."""
    allowed = tolerance * scale
    if truth is None:
        np.testing.assert_allclose(compiled, textbook, rtol=tolerance, atol=allowed, err_msg=what)
        return
    error, own = np.abs(compiled - truth).max(), np.abs(textbook - truth).max()
    assert np.abs(compiled - textbook).max() <= allowed or error <= 2 * own, \
        f"{what}: compiled {error:.2e} from the float64 result, textbook {own:.2e}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", fer_models.names())
def test_compiled_outputs_and_gradients_equal_the_textbook_ones(name, dtype, floatx):
    """float64: 1e-10; float32: 1e-4 relative, or (deep BatchNormalization stacks at batch 2, where the
    textbook's own float32 gradients are further than that from float64's) no further from float64."""
    floatx(dtype)
    model = small_model(name)
    model.compile("sgd", "sparse_categorical_crossentropy")
    twin = float64_twin(name, model) if dtype == "float32" else None
    x, y = batch(model)
    tolerance = TOLERANCE[dtype]
    for training in (True, False):
        model.set_steps(model.graph_steps())
        loss, out, grads = gradients(model, x, y, training)
        truth = gradients(twin, x.astype(np.float64), y, training) if twin else (None, None, {})
        assert fused_steps(compile_model(model))
        compiled_loss, compiled_out, compiled_grads = gradients(model, x, y, training)
        assert abs(compiled_loss - loss) <= tolerance * abs(loss), (name, training)
        assert_agree(compiled_out, out, truth[1], tolerance, float(np.abs(out).max()), f"{name} output")
        assert set(compiled_grads) == set(grads) == {w.name for w in model.trainable_weights}
        # relative to the model's largest gradient: a bias before BatchNormalization has gradient 0 in
        # exact arithmetic, and both paths give it rounding noise that no relative test can compare
        scale = max(float(np.abs(grad).max()) for grad in grads.values())
        for weight, grad in grads.items():
            assert_agree(compiled_grads[weight], grad, truth[2].get(weight), tolerance, scale,
                         f"{weight}, training={training}")


@pytest.mark.parametrize("name", fer_models.names())
def test_one_training_step_gives_the_same_weights_both_ways(name, floatx):
    floatx("float64")
    model = small_model(name)
    x, y = batch(model, n=3)
    state = model.get_weights()
    after = {}
    for jit_compile in (False, True):
        model.set_weights(state)
        # SGD: Adam divides each gradient by its own size, so it would blow a bias's rounding noise (its
        # gradient is 0 in exact arithmetic before a BatchNormalization) up to a full step
        model.compile(optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy", jit_compile=jit_compile)
        backend.set_seed(3)
        model.train_on_batch(x, y)
        assert model.steps_compiled == jit_compile
        after[jit_compile] = model.get_weights()
    scale = max(float(np.abs(w).max()) for w in after[False])
    for plain, compiled, weight in zip(after[False], after[True], model.weights):
        np.testing.assert_allclose(compiled, plain, rtol=1e-10, atol=1e-10 * scale, err_msg=weight.name)


def test_a_compiled_model_saves_the_plain_models_file(tmp_path):
    model = small_model("mini_xception")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "plain.npz")
    compile_model(model).save(tmp_path / "compiled.npz")
    assert fused_steps(model)
    with np.load(tmp_path / "plain.npz") as plain, np.load(tmp_path / "compiled.npz") as compiled:
        assert plain.files == compiled.files
        for name in plain.files:
            np.testing.assert_array_equal(plain[name], compiled[name], err_msg=name)
    loaded = minicnn.load_model(tmp_path / "compiled.npz")
    assert fused_steps(loaded) == [] and [l.name for l in loaded.layers] == [l.name for l in model.layers]


def test_an_unbuilt_sequential_with_jit_compile_builds_then_compiles_on_its_first_batch():
    model = Sequential([Conv2D(4, 3, padding="same"), BatchNormalization(), Activation("relu"), Flatten(),
                        Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    assert model.steps == [] and not model.steps_compiled
    x, y = np.random.default_rng(0).standard_normal((3, 6, 6, 1)).astype(np.float32), np.array([0, 1, 1])
    model.train_on_batch(x, y)
    assert model.steps_compiled and [s.name for s in fused_steps(model)] == [
        "+".join(layer.name for layer in model.layers[:3])]


def test_jit_compile_auto_compiles_and_a_bad_value_is_an_error():
    model = Sequential([Dense(2, input_shape=(3,)), Activation("relu"), Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile="auto")
    model.predict(np.ones((2, 3), np.float32))
    assert model.steps_compiled
    with pytest.raises(ValueError, match="jit_compile must be True, False or 'auto'"):
        model.compile("sgd", "sparse_categorical_crossentropy", jit_compile="yes")


def test_reference_mode_runs_the_textbook_steps_and_compiles_again_after(monkeypatch):
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)        # the test sets it itself
    model = small_model("cnn8")
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    x, y = batch(model)
    model.predict(x)
    assert model.steps_compiled
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    model.train_on_batch(x, y)
    assert not model.steps_compiled and [layer for layer, _ in model.steps] == [l for l, _ in model.graph_steps()]
    monkeypatch.delenv("MINICNN_REFERENCE")
    model.predict(x)
    assert model.steps_compiled


def test_compiling_a_model_not_built_yet_is_an_error_not_a_silent_no_op():
    model = Sequential([Conv2D(4, 3), BatchNormalization(), Activation("relu")])     # builds on its first batch
    with pytest.raises(ValueError, match=f"{model.name}: compile_model needs a built model"):
        compile_model(model)


def test_chains_keep_the_graph_and_a_shared_output_ends_a_chain(floatx):
    floatx("float64")
    backend.set_seed(0)
    x_in = Input((5, 4, 2))
    conv = Conv2D(3, 3, padding="same")
    bn_fused, relu_fused = BatchNormalization(), Activation("relu")
    h = relu_fused(bn_fused(conv(x_in)))
    shared = BatchNormalization()(Conv2D(3, 1)(h))       # read by a ReLU and by Add: the chain ends there
    h = Add()([Activation("relu")(shared), shared])
    tanh_after_bn = Activation("tanh")(BatchNormalization()(h))   # not a ReLU: not in a chain
    model = Model(x_in, Dense(3, activation="softmax")(Flatten()(tanh_after_bn)))
    model.compile("sgd", "sparse_categorical_crossentropy")
    config, nodes = model.get_config(), list(model.nodes)
    x, y = np.random.default_rng(0).standard_normal((4, 5, 4, 2)), np.array([0, 2, 1, 2])
    loss, out, grads = gradients(model, x, y, training=True)
    assert compile_model(model) is model
    compiled_loss, compiled_out, compiled_grads = gradients(model, x, y, training=True)
    assert abs(compiled_loss - loss) <= 1e-12 * abs(loss)
    for name, grad in grads.items():
        np.testing.assert_allclose(compiled_grads[name], grad, rtol=1e-12, atol=1e-14, err_msg=name)
    steps = fused_steps(model)
    assert steps[0].layers == [conv, bn_fused, relu_fused]
    assert isinstance(steps[0].stages[1], EpilogueStage) and steps[0].stages[1].parts.relu == "after"
    assert all(shared not in step.layers[:-1] for step in steps)
    assert model.get_config() == config and model.nodes == nodes      # the architecture is the plain one
    # get_activations runs each layer on its own: BatchNormalization's own output has negative values
    out = minicnn.get_activations(model, x, [bn_fused.name, relu_fused.name])
    assert (out[bn_fused.name] < 0).any()
    np.testing.assert_array_equal(out[relu_fused.name], np.maximum(out[bn_fused.name], 0))
    assert all("forward" not in vars(layer) for layer in model.nodes)   # no layer patched


def test_textbook_training_runs_the_relu_layer_and_compiled_training_does_not(monkeypatch):
    from minicnn.layers import core
    calls = []
    forward = core.Activation.forward
    monkeypatch.setattr(core.Activation, "forward", lambda self, x, training=False: calls.append(self.name)
                        or forward(self, x, training))
    relu = Activation("relu")
    model = Sequential([Conv2D(4, 3, input_shape=(6, 6, 1)), BatchNormalization(), relu, Flatten(),
                        Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).standard_normal((3, 6, 6, 1)).astype(np.float32), np.array([0, 1, 1])
    model.train_on_batch(x, y)
    assert calls == [relu.name]                     # where a breakpoint in Activation.forward stops
    calls.clear()
    compile_model(model).train_on_batch(x, y)
    assert calls == []


def test_a_relu_on_each_side_of_a_batchnormalization_both_apply_compiled(floatx):
    floatx("float64")
    backend.set_seed(0)
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(6, 6, 2)), BatchNormalization(),
                        Activation("relu"), Flatten(), Dense(3, activation="softmax")])
    bn = model.layers[1]
    bn.set_weights([np.full(4, 2.0), np.full(4, -1.0), np.zeros(4), np.ones(4)])   # beta < 0: the last ReLU cuts
    x, y = batch(model, n=4)
    textbook, compiled = {}, {}
    for jit_compile, result in ((False, textbook), (True, compiled)):
        model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=jit_compile)
        result["loss"], result["out"], result["grads"] = gradients(model, x, y, training=True)
        result["predicted"] = model.predict(x, verbose=0)
    for key in ("loss", "out", "predicted"):
        assert_close(compiled[key], textbook[key], 1e-10, key)
    for name, grad in textbook["grads"].items():
        assert_close(compiled["grads"][name], grad, 1e-10, name)


def test_no_chain_takes_a_layer_that_casts_to_another_dtype():
    x_in = Input((4, 4, 2))
    y = Activation("relu", dtype="float64")(BatchNormalization()(Conv2D(2, 1)(x_in)))
    model = compile_model(Model(x_in, Dense(2, dtype="float64")(Flatten()(y))))
    assert [step.layers for step in fused_steps(model)] == [[model.layers[1], model.layers[2]]]
    assert model.predict(np.ones((2, 4, 4, 2), np.float32)).dtype == np.float64


def test_batchnorm_relu_gives_the_same_gradients_where_the_numba_kernels_run(floatx):
    # activations of 8 x 32 x 32 x 16 = 131,072 numbers: BatchNormalization takes its numba kernels
    floatx("float64")
    backend.set_seed(1)
    model = Sequential([Conv2D(16, 3, padding="same", input_shape=(32, 32, 2)), BatchNormalization(),
                        Activation("relu"), Flatten(), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(1).standard_normal((8, 32, 32, 2)), np.arange(8) % 3
    assert 8 * 32 * 32 * 16 >= minicnn.perf.BATCHNORM_NUMBA_MIN_SIZE
    loss, _, grads = gradients(model, x, y, training=True)
    assert len(fused_steps(compile_model(model))) == 1
    compiled_loss, _, compiled_grads = gradients(model, x, y, training=True)
    assert abs(compiled_loss - loss) <= 1e-12 * abs(loss)
    for name, grad in grads.items():
        np.testing.assert_allclose(compiled_grads[name], grad, rtol=1e-9, atol=1e-12, err_msg=name)


def test_each_convolution_gets_its_method_by_shape_and_keeps_its_buffers_from_step_to_step():
    model = Sequential([Conv2D(8, 3, padding="same", input_shape=(16, 16, 2)), Conv2D(64, 5, padding="same"),
                        Conv2D(64, 3, padding="same"), BatchNormalization(), Activation("relu"), Flatten(),
                        Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    x, y = np.random.default_rng(0).standard_normal((4, 16, 16, 2)).astype(np.float32), np.arange(4) % 2
    model.train_on_batch(x, y)
    stages = [step.stages[0] for step in fused_steps(model)]
    assert [type(stage).__name__ for stage in stages] == ["ConvStage"] * 3
    assert stages[0].methods == {(x.shape, True): "direct"}                  # 2 -> 8 channels: the direct loops
    assert stages[1].methods == {((4, 16, 16, 8), True): None}               # a 5x5 window on 8 channels: im2col
    assert stages[2].methods[((4, 16, 16, 64), True)] not in (None, "direct")  # 64 -> 64: a Winograd tiling
    held = [dict(stage.buffers.arrays) for stage in stages]
    assert "cols" in held[1] and "V" in held[2]
    model.train_on_batch(x, y)
    for stage, before in zip(stages, held):
        assert all(stage.buffers.arrays[name] is array for name, array in before.items())
    epilogue = fused_steps(model)[2].stages[1]                                # Winograd's z, as the others'
    assert np.shares_memory(epilogue.cache[1], held[2]["z"])


def test_in_training_the_product_writes_into_the_steps_buffers_when_an_epilogue_follows():
    # z never leaves a step whose epilogue reads it (nor does the depthwise output), so a training step
    # writes them into the step's planned arrays; a product that ends its step (its z is the step's
    # output) and inference make their own
    model = Sequential([SeparableConv2D(8, 3, padding="same", input_shape=(10, 10, 4)), BatchNormalization(),
                        Activation("relu"), Conv2D(6, 3, padding="same"), BatchNormalization(), Activation("relu"),
                        Conv2D(4, 3), Flatten(), Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    x, y = np.random.default_rng(0).standard_normal((4, 10, 10, 4)).astype(np.float32), np.arange(4) % 2
    model.train_on_batch(x, y)
    separable, conv, lone = (step.stages for step in fused_steps(model))
    planned = [dict(stages[0].buffers.arrays) for stages in (separable, conv)]
    assert {"depthwise", "z"} <= set(planned[0]) and "z" in planned[1] and "z" not in lone[0].buffers.arrays
    model.train_on_batch(x, y)
    for stages, held in zip((separable, conv), planned):
        cached_z = stages[1].cache[1]                                  # what the epilogue keeps for its backward
        assert np.shares_memory(cached_z, held["z"]) and stages[0].buffers.arrays["z"] is held["z"]
    model.predict(x)
    assert not np.shares_memory(conv[1].cache[1], planned[1]["z"])     # inference's own arrays


def test_separable_layers_below_the_width_threshold_train_as_the_two_ops_and_both_ways_equal_the_textbook(
        monkeypatch, floatx):
    # perf's threshold runs every separable layer of the seed models as the one pass, which the seed tests
    # above hold to the textbook; a higher one keeps the narrow layers as the two ops, held to it here
    floatx("float64")
    monkeypatch.setattr(perf, "SEPARABLE_TRAINING_MIN_CHANNELS", 16)
    model = small_model("mini_xception")
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = batch(model)
    _, _, grads = gradients(model, x, y, training=True)
    compile_model(model)
    _, _, compiled_grads = gradients(model, x, y, training=True)
    separable = [step.stages[0] for step in fused_steps(model) if isinstance(step.stages[0], SeparableStage)]
    one_pass = [stage for stage in separable if stage.cache[2]]        # cache: (x, pads, fused, y, d)
    assert one_pass and len(one_pass) < len(separable)                 # the narrow ones keep the two ops
    for stage in separable:
        assert (stage in one_pass) == (stage.layer.input_shape[-1] >= 16)
    for stage in one_pass:                                             # its backward reads the kept d
        assert stage.cache[4] is stage.buffers.arrays["depthwise"]
    scale = max(float(np.abs(grad).max()) for grad in grads.values())
    for weight, grad in grads.items():
        np.testing.assert_allclose(compiled_grads[weight], grad, rtol=1e-10, atol=1e-10 * scale, err_msg=weight)


def normalized_blocks(name, monkeypatch):
    """(model, x, blocks, passes): compiled `name` after two training steps, its fused (product,
    epilogue) stages whose epilogue has a BatchNormalization, and the z of each moments pass an
    epilogue took on its own in the second step."""
    from minicnn.ops import epilogue as epilogue_ops
    model = small_model(name)
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    x, y = batch(model, n=4)
    model.train_on_batch(x, y)                                       # builds the steps
    passes, own_pass = [], epilogue_ops.moments
    monkeypatch.setattr(epilogue_ops, "moments",
                        lambda z, relu_first=False: passes.append(z) or own_pass(z, relu_first))
    model.train_on_batch(x, y)
    blocks = [step.stages for step in fused_steps(model)
              if isinstance(step.stages[-1], EpilogueStage) and step.stages[-1].parts.batchnorm is not None]
    return model, x, blocks, passes


def assert_moments_taken(summing, relu_first=False):
    """Each product's moments are those of its epilogue's z (of max(z, 0) with relu_first), in z's dtype."""
    from minicnn.ops import epilogue as epilogue_ops
    for product, epilogue in summing:
        z = epilogue.cache[1]
        for taken, own in zip(product.moments, epilogue_ops.moments_reference(z, relu_first=relu_first)):
            assert taken.dtype == z.dtype
            np.testing.assert_allclose(taken, own, rtol=1e-4, atol=1e-6)


def test_products_that_sum_their_output_hand_a_batchnormalization_its_moments(monkeypatch):
    # the direct convolution and the one-pass separable sum z and z**2 as they write z: the
    # BatchNormalization after them takes those moments instead of a pass of its own over z
    model, x, blocks, passes = normalized_blocks("mini_xception", monkeypatch)
    summing = [(product, epilogue) for product, epilogue in blocks
               if (isinstance(product, SeparableStage) and product.cache[2])
               or (isinstance(product, ConvStage) and isinstance(product.cache[2], DirectSaved))]
    assert len(summing) >= 3 and len(passes) == len(blocks) - len(summing)
    assert_moments_taken(summing)
    model.predict(x, verbose=0)
    assert all(product.moments is None for product, _ in blocks)    # inference takes the moving statistics


@pytest.mark.parametrize("name, relu_first", [("cnn8", True), ("cnn4", False)])
def test_winograd_hands_a_batchnormalization_its_moments(name, relu_first, monkeypatch):
    # Winograd's output pass sums z + b, or max(z + b, 0) where a ReLU comes before the
    # BatchNormalization (cnn8), and the epilogue takes no pass of its own over z for those
    monkeypatch.setattr(winograd, "pays", lambda *args: True)          # Winograd for every 3x3 layer here
    _, _, blocks, passes = normalized_blocks(name, monkeypatch)
    summing = [(product, epilogue) for product, epilogue in blocks
               if isinstance(product, ConvStage) and isinstance(product.cache[2], winograd.Saved)]
    assert len(summing) >= 2 and len(passes) == len(blocks) - len(summing)
    assert_moments_taken(summing, relu_first)


def test_inference_chooses_by_the_forward_alone():
    """A layer's method is chosen per (shape, training): inference takes the direct loops where the
    forward alone pays (ops.direct_conv.direct_pays with training=False), training where both ways do."""
    model = Sequential([Conv2D(32, 3, padding="same", input_shape=(12, 12, 1)), Flatten(), Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    x, y = np.random.default_rng(0).standard_normal((2, 12, 12, 1)).astype(np.float32), np.arange(2)
    model.train_on_batch(x, y)
    model.predict(x, verbose=0)
    stage = fused_steps(model)[0].stages[0]
    kernel = stage.layer.kernel.shape
    assert stage.methods[(x.shape, True)] == ("direct" if direct_pays(x.shape, kernel, (1, 1), True) else None)
    assert stage.methods[(x.shape, False)] == ("direct" if direct_pays(x.shape, kernel, (1, 1), False) else None)


def test_inference_keeps_winograds_kernel_transform_until_the_kernel_changes(floatx):
    # one 24x24 image through a 5x5 layer: F(4x4, 5x5) with U kept between calls, the textbook's numbers
    floatx("float64")
    model = Sequential([Conv2D(32, 5, padding="same", input_shape=(24, 24, 32)), Flatten(),
                        Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    x = np.random.default_rng(0).standard_normal((1, 24, 24, 32))
    model.predict(x, verbose=0)
    stage = fused_steps(model)[0].stages[0]
    assert stage.methods[(x.shape, False)] is winograd.F4_5X5 and stage.kept is not None
    kept_u = stage.kept[2]
    textbook = Sequential([Conv2D(32, 5, padding="same", input_shape=(24, 24, 32)), Flatten(),
                           Dense(2, activation="softmax")])
    textbook.set_weights(model.get_weights())
    assert_close(model.predict(x, verbose=0), textbook.predict(x, verbose=0), TOLERANCE["float64"], "kept U")
    assert stage.kept[2] is kept_u                                     # the same kernel: the same U
    stage.layer.kernel.value[0, 0, 0, 0] += 1.0                        # in place, as training does
    textbook.set_weights(model.get_weights())
    assert_close(model.predict(x, verbose=0), textbook.predict(x, verbose=0), TOLERANCE["float64"], "changed kernel")
    assert stage.kept[2] is not kept_u


# ---- the scripts' switch: compiled by default, --no-fast for the textbook layers ------------------

def load_script(name):
    """scripts/<name>.py as a module, so its functions run in this process."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fer_inference_runs_compiled_by_default_and_textbook_without_fast(tmp_path):
    from fer.inference import EmotionClassifier
    from fer.preprocess import Preprocessing
    labels = ["a", "b", "c"]
    model = Sequential([Conv2D(4, 3, input_shape=(16, 16, 1)), BatchNormalization(), Activation("relu"),
                        Flatten(), Dense(3, activation="softmax")])
    model.metadata = {"labels": labels, "preprocessing": Preprocessing(16, "symmetric").to_dict()}
    model.save(tmp_path / "m.npz")
    faces = [np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)]
    fast, plain = EmotionClassifier.from_file(tmp_path / "m.npz"), EmotionClassifier.from_file(tmp_path / "m.npz",
                                                                                                fast=False)
    np.testing.assert_allclose(fast.classify(faces), plain.classify(faces), rtol=1e-5)
    assert fast.model.steps_compiled and not plain.model.steps_compiled


def test_train_script_records_fast_and_a_resumed_run_keeps_it_unless_no_fast(monkeypatch):
    from fer.training import TrainConfig
    train = load_script("train")
    assert train.config_from_args(train.parse_args(["--model", "cnn4", "--data", "x.csv"])).fast
    assert not train.config_from_args(train.parse_args(["--model", "cnn4", "--data", "x.csv", "--no-fast"])).fast
    for saved_fast, flags, expected in [(True, [], True), (False, [], False), (True, ["--no-fast"], False)]:
        saved = TrainConfig.for_model("cnn4", "x.csv", fast=saved_fast)
        monkeypatch.setattr(train, "resume_config", lambda run, epochs, data, saved=saved: saved)
        assert train.config_from_args(train.parse_args(["--resume", "run"] + flags)).fast == expected


@pytest.mark.parametrize("name", fer_models.names())
def test_every_seed_chain_runs_its_product_then_one_epilogue(name):
    model = compile_model(small_model(name))
    for step in fused_steps(model):
        if len(step.layers) > 1:
            assert [type(stage).__name__ for stage in step.stages][1:] == ["EpilogueStage"], step.name
    if name == "cnn8":          # its blocks put the ReLU before BatchNormalization
        assert {step.stages[-1].parts.relu for step in fused_steps(model) if len(step.layers) > 2} == {"before"}
