"""Callbacks' state through a training checkpoint (fer.runs.RunCheckpoint), as --resume uses it."""
import numpy as np
import pytest

from fer.runs import RunCheckpoint, restore_checkpoint
from minicnn import BatchNormalization, Dense, Sequential, backend
from minicnn.callbacks import EarlyStopping


class NoBatches:
    """Stands in for FaceBatches: RunCheckpoint stores its (here empty) generator state."""

    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def tiny_model(seed):
    backend.set_seed(seed)
    model = Sequential([Dense(8, activation="relu", input_shape=(4,)), BatchNormalization(),
                        Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def early_stopping():
    # The loss falls every epoch, so with mode="max" epoch 1 stays the best: its weights differ
    # from the last epoch's, and restoring them is visible.
    return EarlyStopping("loss", mode="max", patience=3, restore_best_weights=True)


def test_early_stopping_best_weights_survive_a_checkpoint_and_are_restored_after_resume(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    model, stop = tiny_model(0), early_stopping()
    model.fit(x, y, batch_size=32, epochs=3, shuffle=False, callbacks=[stop], verbose=0)
    assert stop.wait == 2 and not model.stop_training
    assert any(not np.array_equal(a, b) for a, b in zip(stop.best_weights, model.get_weights()))
    checkpoint = RunCheckpoint(tmp_path / "last.npz", NoBatches(), [stop])
    checkpoint.set_model(model)
    checkpoint.save(3)

    resumed_model, resumed = tiny_model(1), early_stopping()
    assert restore_checkpoint(tmp_path / "last.npz", resumed_model, NoBatches(), [resumed]) == 3
    assert (resumed.best, resumed.wait) == (stop.best, stop.wait)
    assert len(resumed.best_weights) == len(stop.best_weights)
    for restored, original in zip(resumed.best_weights, stop.best_weights):
        np.testing.assert_array_equal(restored, original)

    # Epoch 4 is the third without improvement: the resumed run stops and restores epoch 1's weights.
    resumed_model.fit(x, y, batch_size=32, epochs=6, initial_epoch=3, shuffle=False, callbacks=[resumed], verbose=0)
    assert resumed.stopped_epoch == 3
    for restored, original in zip(resumed_model.get_weights(), stop.best_weights):
        np.testing.assert_array_equal(restored, original)


def test_early_stopping_state_before_any_improvement_has_no_best_weights():
    config, arrays = EarlyStopping(restore_best_weights=True).get_state()
    restored = EarlyStopping(restore_best_weights=True)
    restored.set_state(config, arrays)
    assert arrays == {} and restored.best_weights is None


def test_each_fit_starts_the_plateau_callbacks_afresh_as_keras_does():
    """Fine-tuning with a second fit reuses the callbacks: their patience counts from zero again."""
    from minicnn.callbacks import ReduceLROnPlateau
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    model, stop = tiny_model(0), early_stopping()
    plateau = ReduceLROnPlateau("loss", mode="max", factor=0.5, patience=5)
    model.fit(x, y, batch_size=32, epochs=3, shuffle=False, callbacks=[stop, plateau], verbose=0)
    assert stop.wait == 2 and plateau.wait == 2
    history = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, callbacks=[stop, plateau], verbose=0)
    assert len(history.history["loss"]) == 2 and not model.stop_training
    assert stop.wait == 1 and plateau.wait == 1          # the new fit's first epoch set a new best


def test_learning_rate_scheduler_sets_each_epochs_rate_from_the_rate_in_force():
    from minicnn.callbacks import LearningRateScheduler
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    model = tiny_model(0)
    first = model.optimizer.learning_rate
    halving = LearningRateScheduler(lambda epoch, lr: lr / 2 if epoch in (1, 3) else lr)
    history = model.fit(x, y, batch_size=32, epochs=4, shuffle=False, callbacks=[halving], verbose=0)
    assert history.history["lr"] == pytest.approx([first, first / 2, first / 2, first / 4])
    with pytest.raises(ValueError, match="gave 0.0 for epoch 1"):
        model.fit(x, y, epochs=1, callbacks=[LearningRateScheduler(lambda epoch, lr: 0.0)], verbose=0)


def test_callbacks_take_positional_arguments_in_keras_order(tmp_path):
    from minicnn.callbacks import ModelCheckpoint, ReduceLROnPlateau
    stop = EarlyStopping("val_loss", 0.01, 5, 1, "min", 0.4, True)
    assert (stop.min_delta, stop.patience, stop.verbose, stop.mode, stop.baseline, stop.restore_best_weights) == \
        (0.01, 5, 1, "min", 0.4, True)
    plateau = ReduceLROnPlateau("val_loss", 0.2, 3, 1, "min", 0.01, 2, 1e-5)
    assert (plateau.factor, plateau.patience, plateau.verbose, plateau.mode, plateau.min_delta, plateau.cooldown,
            plateau.min_lr) == (0.2, 3, 1, "min", 0.01, 2, 1e-5)
    checkpoint = ModelCheckpoint(str(tmp_path / "m.npz"), "val_accuracy", 1, True, False, "max")
    assert (checkpoint.verbose, checkpoint.save_best_only, checkpoint.save_weights_only, checkpoint.mode) == \
        (1, True, False, "max")


def test_early_stopping_baseline_is_the_value_to_beat_from_the_start():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    model = tiny_model(0)
    stop = EarlyStopping("loss", patience=2, baseline=0.0)       # a loss of 0 is never reached
    history = model.fit(x, y, batch_size=32, epochs=10, shuffle=False, callbacks=[stop], verbose=0)
    assert len(history.history["loss"]) == 2 and stop.stopped_epoch == 1 and stop.best == 0.0
