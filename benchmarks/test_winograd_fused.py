"""Winograd fused block by block (benchmarks/winograd_fused.py, the candidate its benchmark
times): the same z, dx, dK and moments as
the unfused steps of minicnn/ops/winograd.py and as im2col's convolution, with one block or many,
on one thread or several, and the rules that keep threads apart and OpenBLAS on one thread.
Outside tests/ (the candidate is not the library): python -m pytest benchmarks/test_winograd_fused.py"""
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import perf
from minicnn.ops import conv, winograd
from minicnn.ops.padding import conv_geometry

sys.path.insert(0, str(Path(__file__).resolve().parent))
import winograd_fused  # noqa: E402  (the candidate, beside its benchmark)

TILINGS = [winograd.F2, winograd.F4, winograd.F4_5X5]
case = st.fixed_dictionaries({
    "n": st.sampled_from([1, 3]), "h": st.integers(1, 13), "w": st.integers(1, 13), "c": st.integers(1, 11),
    "f": st.integers(1, 11), "padding": st.sampled_from(["same", "valid"]),
    "dtype": st.sampled_from([np.float32, np.float64]), "seed": st.integers(0, 2**32 - 1),
    "small_blocks": st.booleans()})


def geometry(k, r):
    assume(k["padding"] == "same" or (k["h"] >= r and k["w"] >= r))
    pads, ho, wo = conv_geometry(k["h"], k["w"], (r, r), (1, 1), k["padding"])
    return pads[0][0], pads[1][0], ho, wo, pads


def arrays(k, r, ho, wo):
    """x, kernel and dz of the case, in its dtype."""
    rng = np.random.default_rng(k["seed"])
    shapes = [(k["n"], k["h"], k["w"], k["c"]), (r, r, k["c"], k["f"]), (k["n"], ho, wo, k["f"])]
    return [rng.standard_normal(s).astype(k["dtype"]) for s in shapes]


def assert_close(actual, expected, dtype):
    """Equal within 1e-10 (float64) or 1e-4 (float32) of the largest entry."""
    assert actual.dtype == expected.dtype == dtype and actual.shape == expected.shape
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(1.0, float(np.abs(expected).max())))


@pytest.fixture(autouse=True)
def kernels_on_all_threads(monkeypatch):
    # the fused kernels, and numba's threads even on these small shapes (several lanes at once)
    monkeypatch.delenv("MINICNN_REFERENCE", raising=False)
    monkeypatch.setattr(perf, "PARALLEL_MIN_SIZE", 0)


def blocks_of_one_row(monkeypatch, small):
    """With `small`, blocks as small as the rules allow: many blocks, each lane with several."""
    if small:
        monkeypatch.setattr(winograd_fused, "BLOCK_BYTES", 1)


# ---- the same results ---------------------------------------------------------------------------

@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
@settings(max_examples=30, deadline=None)
@given(k=case)
def test_conv_and_backward_equal_the_unfused_steps_and_im2col(tiling, k):
    top, left, ho, wo, pads = geometry(k, tiling.r)
    x, kernel, dz = arrays(k, tiling.r, ho, wo)
    moments = np.full((2, k["f"]), np.nan)
    budget = winograd_fused.BLOCK_BYTES
    winograd_fused.BLOCK_BYTES = 1 if k["small_blocks"] else budget     # (hypothesis takes no monkeypatch)
    try:
        z, saved = winograd_fused.conv(x, kernel, top, left, ho, wo, tiling, moments=moments)
        dx, dkernel = winograd_fused.conv_backward(dz, saved, x.shape, top, left)
    finally:
        winograd_fused.BLOCK_BYTES = budget
    z_unfused, saved_unfused = winograd.conv(x, kernel, top, left, ho, wo, tiling=tiling)
    dx_unfused, dkernel_unfused = winograd.conv_backward(dz, saved_unfused, x.shape, top, left)
    z_im2col, cols = conv.conv2d_reference(x, kernel, (1, 1), pads)
    dx_im2col, dkernel_im2col = conv.conv2d_backward_reference(dz, cols, kernel, x.shape, (1, 1), pads)
    for actual, unfused, im2col in [(z, z_unfused, z_im2col), (dx, dx_unfused, dx_im2col),
                                    (dkernel, dkernel_unfused, dkernel_im2col)]:
        assert_close(actual, unfused, k["dtype"])
        assert_close(actual, im2col, k["dtype"])
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(moments, [z64.sum(axis=(0, 1, 2)), (z64 * z64).sum(axis=(0, 1, 2))],
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
@pytest.mark.parametrize("small", [False, True], ids=["one block", "small blocks"])
def test_without_the_input_gradient_the_kernel_gradient_is_the_same(tiling, small, monkeypatch):
    blocks_of_one_row(monkeypatch, small)
    rng = np.random.default_rng(1)
    r, p = tiling.r, tiling.r // 2
    x, kernel, dz = (rng.standard_normal(s) for s in [(3, 10, 9, 5), (r, r, 5, 6), (3, 10, 9, 6)])
    z, saved = winograd_fused.conv(x, kernel, p, p, 10, 9, tiling)
    dx, dkernel = winograd_fused.conv_backward(dz, saved, x.shape, p, p)
    no_dx, dkernel_alone = winograd_fused.conv_backward(dz, saved, x.shape, p, p, need_input_gradient=False)
    assert no_dx is None and dx is not None
    np.testing.assert_allclose(dkernel_alone, dkernel, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
def test_many_blocks_on_several_threads_repeat_exactly(tiling, monkeypatch):
    # the same numbers on every call (a race on dx would make them differ; the rule against it is tested below)
    blocks_of_one_row(monkeypatch, True)
    rng = np.random.default_rng(2)
    r, p = tiling.r, tiling.r // 2
    x, kernel, dz = (rng.standard_normal(s).astype(np.float32) for s in [(3, 23, 17, 8), (r, r, 8, 8), (3, 23, 17, 8)])
    _, saved = winograd_fused.conv(x, kernel, p, p, 23, 17, tiling)
    first = winograd_fused.conv_backward(dz, saved, x.shape, p, p)
    for _ in range(5):
        again = winograd_fused.conv_backward(dz, saved, x.shape, p, p)
        for a, b in zip(again, first):
            np.testing.assert_array_equal(a, b)


# ---- buffers, errors, fallbacks ---------------------------------------------------------------

@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
def test_out_buffers_are_written_and_returned(tiling):
    rng = np.random.default_rng(3)
    r, p = tiling.r, tiling.r // 2
    x, kernel, dz = (rng.standard_normal(s).astype(np.float32) for s in [(2, 9, 7, 3), (r, r, 3, 4), (2, 9, 7, 4)])
    z_out, dx_out = np.full(dz.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
    z, saved = winograd_fused.conv(x, kernel, p, p, 9, 7, tiling, out=z_out)
    dx, _ = winograd_fused.conv_backward(dz, saved, x.shape, p, p, out=dx_out)
    assert z is z_out and dx is dx_out and saved.x is x
    z_fresh, fresh = winograd_fused.conv(x, kernel, p, p, 9, 7, tiling)
    np.testing.assert_array_equal(z, z_fresh)
    np.testing.assert_array_equal(dx, winograd_fused.conv_backward(dz, fresh, x.shape, p, p)[0])
    with pytest.raises(ValueError, match=r"out must be a C-contiguous float32 array of shape \(2, 9, 7, 4\)"):
        winograd_fused.conv(x, kernel, p, p, 9, 7, tiling, out=np.empty((2, 9, 7, 4)))


def test_a_kernel_of_another_size_is_refused():
    with pytest.raises(ValueError, match=r"winograd_fused: F\(4x4, 3x3\) takes a 3x3 kernel"):
        winograd_fused.conv(np.zeros((1, 8, 8, 2)), np.zeros((5, 5, 2, 2)), 2, 2, 8, 8, winograd.F4)


@pytest.mark.parametrize("tiling", TILINGS, ids=repr)
def test_minicnn_reference_runs_the_unfused_steps(tiling, monkeypatch):
    monkeypatch.setenv("MINICNN_REFERENCE", "1")
    assert not winograd_fused.fused_runs()
    rng = np.random.default_rng(4)
    r, p = tiling.r, tiling.r // 2
    x, kernel, dz = (rng.standard_normal(s) for s in [(2, 7, 9, 3), (r, r, 3, 2), (2, 7, 9, 2)])
    moments = np.zeros((2, 2))
    z, saved = winograd_fused.conv(x, kernel, p, p, 7, 9, tiling, moments=moments)
    dx, dkernel = winograd_fused.conv_backward(dz, saved, x.shape, p, p)
    pads = ((p, p), (p, p))
    z_expected, cols = conv.conv2d_reference(x, kernel, (1, 1), pads)
    dx_expected, dk_expected = conv.conv2d_backward_reference(dz, cols, kernel, x.shape, (1, 1), pads)
    for actual, expected in [(z, z_expected), (dx, dx_expected), (dkernel, dk_expected)]:
        assert_close(actual, expected, np.float64)
    np.testing.assert_allclose(moments, [z.sum(axis=(0, 1, 2)), (z * z).sum(axis=(0, 1, 2))], rtol=1e-12)


def test_without_openblas_thread_setting_blocks_keep_openblas_on_one_thread(monkeypatch):
    monkeypatch.setattr(winograd_fused, "_openblas_thread_setters", lambda: ())
    # cnn8's last layer: F(2x2) tiles, 3 a tile row, 256 -> 256 channels: a one-row block is at the limit
    assert winograd_fused.block_rows(3, 256, 256, winograd.F2, 8) == 1
    assert 3 * 256 * 256 <= perf.OPENBLAS_ONE_THREAD_WORK
    assert winograd_fused.block_rows(3, 128, 128, winograd.F2, 8) * 3 * 128 * 128 <= perf.OPENBLAS_ONE_THREAD_WORK
    rng = np.random.default_rng(5)
    x, kernel, dz = (rng.standard_normal(s) for s in [(2, 6, 6, 256), (3, 3, 256, 256), (2, 6, 6, 256)])
    z, saved = winograd_fused.conv(x, kernel, 1, 1, 6, 6, winograd.F2)
    dx, dkernel = winograd_fused.conv_backward(dz, saved, x.shape, 1, 1)
    pads = ((1, 1), (1, 1))
    z_expected, cols = conv.conv2d_reference(x, kernel, (1, 1), pads)
    for actual, expected in zip((z, dx, dkernel), (z_expected,) + conv.conv2d_backward_reference(
            dz, cols, kernel, x.shape, (1, 1), pads)):
        assert_close(actual, expected, np.float64)


# ---- the block rules --------------------------------------------------------------------------

@pytest.mark.parametrize("tiling", TILINGS + [winograd.toom_cook(2, (0, 1, -1, 2, -2), r=5)], ids=repr)
@pytest.mark.parametrize("budget", [1, 1 << 15])
def test_blocks_that_run_at_once_add_onto_different_rows_of_dx(tiling, budget, monkeypatch):
    # the backward runs blocks k, k + 2, k + 4, ... at once: block k is tile rows k * rows .. (k + 1) * rows - 1
    # of the batch (row n * th + p: image n's tile row p), and tile row p adds onto input rows m p - top + 0 .. a - 1
    monkeypatch.setattr(winograd_fused, "BLOCK_BYTES", budget)
    n, h, top = 3, 13, tiling.r // 2
    th, tw = winograd.tiles_hw(h, h, tiling.m)
    rows = winograd_fused.block_rows(tw, 8, 8, tiling, 8)

    def input_rows(k):
        return {(row // th, tiling.m * (row % th) - top + i)
                for row in range(k * rows, min(n * th, (k + 1) * rows)) for i in range(tiling.a)}

    blocks = -(-n * th // rows)
    assert budget > 1 or blocks == n * th // rows >= 4 or rows > 1
    for k in range(blocks):
        for other in range(k + 2, blocks, 2):
            assert not input_rows(k) & input_rows(other), (k, other, rows)


def test_a_block_fits_its_budget():
    for tiling, tw, c, f in [(winograd.F4, 12, 32, 32), (winograd.F2, 3, 256, 256), (winograd.F4_5X5, 6, 64, 128)]:
        rows = winograd_fused.block_rows(tw, c, f, tiling, 4)
        assert rows >= 1 and (rows == 1 or tiling.a ** 2 * rows * tw * (c + f) * 4 <= winograd_fused.BLOCK_BYTES)


def test_openblas_runs_on_one_thread_inside_and_is_restored():
    setters = winograd_fused._openblas_thread_setters()
    if not setters:
        pytest.skip("no OpenBLAS whose threads can be set")
    before = [setter(1) for setter in setters]
    for setter, threads in zip(setters, before):
        setter(threads)
    with winograd_fused._one_blas_thread():
        assert [setter(1) for setter in setters] == [1] * len(setters)
    assert [setter(threads) for setter, threads in zip(setters, before)] == before
