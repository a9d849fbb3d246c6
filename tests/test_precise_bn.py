"""recompute_batchnorm_statistics and PreciseBatchNorm: the moving statistics become the plain
average of the batch statistics of the current weights, with Dropout off, and nothing else changes."""
import numpy as np
import pytest

from minicnn import BatchNormalization, Dense, Dropout, Sequential, backend
from minicnn.callbacks import PreciseBatchNorm, recompute_batchnorm_statistics


def dense_bn_model(dropout=0.0):
    backend.set_seed(1)
    layers = [Dense(5, input_shape=(4,), dtype="float64")]
    layers += [Dropout(dropout, dtype="float64")] if dropout else []
    layers += [BatchNormalization(momentum=0.9, dtype="float64"), Dense(3, activation="softmax", dtype="float64")]
    model = Sequential(layers)
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def expected_statistics(model, x, batch_size):
    """By hand: the first Dense's output per whole batch, its mean and unbiased variance, averaged."""
    dense = model.layers[0]
    w, b = dense.kernel.value, dense.bias.value
    batches = [x[s:s + batch_size] @ w + b for s in range(0, len(x) - batch_size + 1, batch_size)]
    means = [z.mean(axis=0) for z in batches]
    m = batch_size
    variances = [z.var(axis=0) * m / (m - 1 - 1e-3) for z in batches]     # Keras 2's unbiased estimate
    return np.mean(means, axis=0), np.mean(variances, axis=0)


def inputs(n=50, seed=0):
    return np.random.default_rng(seed).normal(2.0, 3.0, size=(n, 4))


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_moving_statistics_become_the_average_of_whole_batches_with_dropout_off(dropout):
    model, x = dense_bn_model(dropout), inputs()
    recompute_batchnorm_statistics(model, x, batch_size=16)       # 3 whole batches, 2 rows left out
    bn = [layer for layer in model.layers if isinstance(layer, BatchNormalization)][0]
    mean, variance = expected_statistics(model, x, 16)
    np.testing.assert_allclose(bn.moving_mean.value, mean, rtol=1e-12)
    np.testing.assert_allclose(bn.moving_variance.value, variance, rtol=1e-12)


def test_weights_rates_momenta_and_the_random_generator_are_left_as_they_were():
    model, x = dense_bn_model(0.5), inputs()
    trainable = [w.value.copy() for w in model.trainable_weights]
    state = backend.rng().bit_generator.state
    recompute_batchnorm_statistics(model, x, batch_size=16)
    assert all(np.array_equal(a, w.value) for a, w in zip(trainable, model.trainable_weights))
    assert backend.rng().bit_generator.state == state
    assert model.layers[1].rate == 0.5 and model.layers[2].momentum == 0.9


def test_fit_validates_with_the_statistics_of_the_epochs_final_weights():
    model, x = dense_bn_model(0.5), inputs(64)
    y = (x[:, 0] > 2).astype(int)
    seen = {}

    class Spy(PreciseBatchNorm):
        def on_test_batch_begin(self, batch, logs=None):
            seen["mean"] = model.layers[2].moving_mean.value.copy()

    model.fit(x, y, batch_size=16, epochs=2, validation_data=(x, y), callbacks=[Spy(x, batch_size=16)], verbose=0)
    mean, _ = expected_statistics(model, x, 16)
    np.testing.assert_allclose(seen["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(model.layers[2].moving_mean.value, mean, rtol=1e-12)


def test_a_sample_smaller_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="at least one batch of 64"):
        PreciseBatchNorm(np.zeros((10, 4)))
