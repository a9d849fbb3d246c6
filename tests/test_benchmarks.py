"""benchmarks/models.py's layer table: it times the parts it claims to, and puts the library back.

The benchmark swaps timing wrappers into minicnn's layer modules; a wrapper left behind
would slow every later step (and every later test), so the restore is checked here.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from minicnn import Conv2D, Dense, Flatten, Sequential
from minicnn.layers import conv as conv_layers, core as core_layers
from minicnn.ops import conv as conv_ops, gemm, im2col, winograd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_model():
    model = Sequential([Conv2D(4, 3, padding="same", input_shape=(8, 8, 2)), Flatten(), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 8, 8, 2)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 5)]
    model.train_on_batch(x, y)          # warm-up, as the benchmark does: numba compiles here
    return model, x, y


class CountingRunner:
    """Stands in for the torch process: counts the steps it is asked for, each 'taking' 10 ms."""

    def __init__(self):
        self.calls = []

    def run(self, what, calls):
        self.calls.append((what, calls))
        return 0.010


def test_layer_table_times_every_layer_and_part():
    bench = load_benchmark()
    model, x, y = small_model()
    rows, step_ms, part_ms, torch_ms = bench.layer_table(model, x, y, steps=3)
    assert [r[0] for r in rows] == [layer.name for layer in model.nodes]
    conv_row = next(row for row in rows if row[1] == "Conv2D")
    assert conv_row[3] > 0 and conv_row[4] > 0                      # forward and backward were timed
    assert set(part_ms) == {"products", "transforms"} and step_ms > 0
    assert part_ms["products"] > 0 and part_ms["transforms"] > 0      # (means; steps of < 1 ms vary too much
                                                                     # to hold them against the median step)
    assert torch_ms is None


def test_layer_table_takes_turns_with_torch_and_restores_the_library():
    bench = load_benchmark()
    model, x, y = small_model()
    runner = CountingRunner()
    *_, torch_ms = bench.layer_table(model, x, y, steps=4, torch_runner=runner)
    assert runner.calls == [("train_step", 1)] * 4
    assert torch_ms == 10.0
    assert conv_layers.matmul is gemm.matmul and core_layers.matmul is gemm.matmul
    assert conv_ops.matmul is gemm.matmul
    assert conv_ops.im2col is im2col.im2col and conv_ops.col2im is im2col.col2im
    assert winograd.batched_matmul is gemm.batched_matmul and winograd.matmul is gemm.matmul
    assert winograd.input_transform.__name__ == "input_transform"       # not the timing wrapper
    assert all("forward" not in vars(layer) and "backward" not in vars(layer) for layer in model.nodes)


def test_floor_counts_the_weighted_layers_products_and_the_bytes_a_fused_step_moves():
    from benchmarks import floor
    from minicnn import DepthwiseConv2D, SeparableConv2D
    model = Sequential([Conv2D(2, 3, padding="same", input_shape=(4, 4, 1)),       # 16 px x 9 x 1 x 2 = 288
                        DepthwiseConv2D(3, padding="same"),                         # 16 px x 9 x 2 = 288
                        SeparableConv2D(3, 3, strides=2, padding="same"),           # 4 px x (9 x 2 + 2 x 3) = 96
                        Flatten(), Dense(5)])                                       # 12 x 5 = 60
    flops, moved = floor.step_counts(model, batch_size=10)
    # the first layer: forward and the weights' gradient only (its input, the model's, needs no gradient)
    assert flops == 10 * 2 * (2 * 288 + 3 * (288 + 96 + 60))
    # passes x input + 2 x output floats per weighted layer: (32 + 64) + (96 + 64) + (96 + 24) + (36 + 10)
    assert moved == 10 * 4 * (96 + 160 + 120 + 46)
    seconds, bound = floor.floor_seconds(model, 10, flop_rate=1e9, bandwidth=1e12)
    assert bound == "compute" and seconds == flops / 1e9


def test_settings_ab_times_each_value_and_refuses_an_unknown_setting():
    import subprocess
    import sys
    script = SCRIPT.parent / "settings_ab.py"
    run = subprocess.run([sys.executable, str(script), "mini_xception", "TALL_PRODUCT_MIN_ROWS", "16384", "1e99",
                          "--rounds", "1", "--steps", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "mini_xception training step" in lines[0]
    assert [line.split("=")[1].split(":")[0].strip() for line in lines[1:]] == ["16384", "1e+99"]
    assert lines[1].endswith("1.00x the first")
    bad = subprocess.run([sys.executable, str(script), "mini_xception", "NO_SUCH_SETTING", "1"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "minicnn.perf has no setting 'NO_SUCH_SETTING'" in bad.stderr
    fixed = subprocess.run([sys.executable, str(script), "mini_xception", "BATCHNORM_BLOCKS", "64", "16"],
                           capture_output=True, text=True, timeout=600)
    assert fixed.returncode == 2 and "BATCHNORM_BLOCKS is read when the kernels compile" in fixed.stderr


def test_every_setting_an_ops_module_copies_when_it_loads_is_one_settings_ab_refuses():
    import re
    from minicnn import perf
    copied = set()
    for path in (SCRIPT.parents[1] / "minicnn" / "ops").glob("*.py"):
        copied |= set(re.findall(r"^\w+ = perf\.([A-Z_0-9]+)", path.read_text(), re.M))
    assert copied and copied == set(perf.READ_AT_IMPORT)


def test_revisions_ab_times_a_module_now_against_a_revision():
    import subprocess
    import sys
    root = SCRIPT.parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: revisions_ab.py reads the older module from git")
    run = subprocess.run([sys.executable, str(SCRIPT.parent / "revisions_ab.py"), "mini_xception", "direct_conv",
                          "--base", "HEAD", "--rounds", "1", "--steps", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "HEAD against now for direct_conv2d_backward_numba, direct_conv2d_numba" in lines[0]
    assert lines[1].strip().startswith("base:") and lines[2].strip().startswith("now:")
    assert lines[3].startswith("  now is ") and lines[3].endswith("x as fast")


def test_trees_ab_times_the_checkout_against_a_revisions_tree_and_refuses_an_unknown_one():
    import os
    import subprocess
    import sys
    root = SCRIPT.parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: trees_ab.py reads the older tree from git")
    env = {**os.environ, "MINICNN_REFERENCE": "1"}          # the mechanics, without compiling two trees' kernels
    command = [sys.executable, str(SCRIPT.parent / "trees_ab.py"), "mini_xception", "--rounds", "1", "--steps", "1"]
    run = subprocess.run(command + ["--base", "HEAD"], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "mini_xception training step" in lines[0] and "HEAD against now" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:3]] == ["base", "now"]
    assert all(float(line.split(":")[1].split("ms")[0]) > 0 for line in lines[1:3])
    assert lines[3].startswith("  now is ") and lines[3].endswith("x as fast")
    bad = subprocess.run(command + ["--base", "no-such-revision"], capture_output=True, text=True, timeout=600,
                         env=env)
    assert bad.returncode != 0 and "cannot read revision 'no-such-revision'" in bad.stderr


def test_environment_ab_times_each_value_in_its_own_process():
    import subprocess
    import sys
    run = subprocess.run([sys.executable, str(SCRIPT.parent / "environment_ab.py"), "OPENBLAS_THREAD_TIMEOUT", "4,unset",
                          "--models", "mini_xception", "--batched", "--rounds", "1", "--turns", "1", "--steps", "1"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()[1:]
    assert [line.split("OPENBLAS_THREAD_TIMEOUT=")[1].split(":")[0].strip() for line in lines] == ["4", "(unset)"]
    for line in lines:
        assert "openblas / shared" in line
        assert all(float(ms) > 0 for ms in line.rsplit(":", 1)[1].split(" / "))


def test_outside_kernels_times_a_step_with_and_without_its_kernels():
    # the step without kernels is the step's own cost around them: less than the whole step
    import re
    import subprocess
    import sys
    script = SCRIPT.parent / "outside_kernels.py"
    run = subprocess.run([sys.executable, str(script), "--models", "mini_xception", "--repeats", "1", "--steps", "1"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    header, line = run.stdout.splitlines()
    assert "compiled training step at batch 64" in header and line.startswith("mini_xception")
    whole, outside = (float(ms) for ms in re.findall(r"([\d.]+) ms", line))
    assert 0 < outside < whole
