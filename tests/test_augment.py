"""fer.augment: seeded, resumable Keras-style augmentation with one affine warp per image."""
import json

import numpy as np
import pytest

from fer.augment import Augmenter

NO_MOTION = {"rotation_range": 0, "width_shift_range": 0, "height_shift_range": 0, "zoom_range": 0}


def batch(dtype=np.uint8, n=16, seed=0):
    """A random batch: uint8 (n, 48, 48) or float32 (n, 48, 48, 1)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)
    return images if dtype == np.uint8 else (images / 255).astype(np.float32)[..., np.newaxis]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_output_has_the_input_dtype_and_shape_and_input_is_kept(dtype):
    images = batch(dtype)
    original = images.copy()
    out = Augmenter(seed=0)(images)
    assert out.dtype == images.dtype and out.shape == images.shape
    np.testing.assert_array_equal(images, original)
    assert not np.array_equal(out, images)


def test_same_seed_same_batches():
    images = batch()
    a, b = Augmenter(seed=7), Augmenter(seed=7)
    for _ in range(3):
        np.testing.assert_array_equal(a(images), b(images))
    assert not np.array_equal(Augmenter(seed=8)(images), Augmenter(seed=7)(images))


def test_saved_state_repeats_the_next_batch():
    images = batch(np.float32)
    augmenter = Augmenter(seed=1)
    augmenter(images)
    state = json.loads(json.dumps(augmenter.get_state()))  # as stored in a checkpoint
    expected = [augmenter(images), augmenter(images)]

    resumed = Augmenter(seed=99)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(resumed(images), want)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("fill_mode", ["nearest", "constant"])
def test_zero_ranges_are_the_identity(dtype, fill_mode):
    images = batch(dtype)
    out = Augmenter(**NO_MOTION, horizontal_flip=False, fill_mode=fill_mode, seed=0)(images)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_flip_only_mirrors_exactly_about_half_the_images(dtype):
    images = batch(dtype, n=400)
    out = Augmenter(**NO_MOTION, horizontal_flip=True, seed=0)(images)
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 150 < sum(flipped) < 250


def test_shifts_move_along_their_own_axis():
    # Horizontal stripes look the same after any sideways shift (edge pixels repeat), and
    # vertical stripes after any up-down shift: so each shift moves along the axis its name says.
    stripes = np.repeat(np.arange(0, 240, 5, dtype=np.uint8)[:, np.newaxis], 48, axis=1)  # row y has value 5y
    rows_constant = np.stack([stripes] * 8)
    columns_constant = np.stack([stripes.T] * 8)
    sideways = Augmenter(**{**NO_MOTION, "width_shift_range": 0.2}, horizontal_flip=False, seed=0)
    up_down = Augmenter(**{**NO_MOTION, "height_shift_range": 0.2}, horizontal_flip=False, seed=0)
    np.testing.assert_array_equal(sideways(rows_constant), rows_constant)
    np.testing.assert_array_equal(up_down(columns_constant), columns_constant)
    assert not np.array_equal(sideways(columns_constant), columns_constant)


def test_settings_round_trip_and_validation():
    augmenter = Augmenter(rotation_range=15, zoom_range=0.2, horizontal_flip=False, fill_mode="constant", seed=3)
    settings = json.loads(json.dumps(augmenter.to_dict()))
    np.testing.assert_array_equal(Augmenter(**settings)(batch()), augmenter(batch()))
    with pytest.raises(ValueError, match="zoom_range must be in"):
        Augmenter(zoom_range=1.5)
    with pytest.raises(ValueError, match="fill_mode must be one of"):
        Augmenter(fill_mode="mirror")
    with pytest.raises(ValueError, match="expected uint8"):
        Augmenter()(np.zeros((2, 48, 48, 3), np.float32))
