"""Time whole FER models: training images/s, inference latency and throughput, peak memory.

    python benchmarks/models.py                          # cnn4, mini_xception, cnn8
    python benchmarks/models.py --models all --repeats 7
    python benchmarks/models.py --torch                  # the same graphs in PyTorch, and ratios
    python benchmarks/models.py --paths compiled         # only minicnn's compiled path (default: both)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/models.py --torch

For each architecture of `fer.models` and each minicnn path (`--paths`: "textbook", the layers
as written, and "compiled", the fused steps of minicnn/compiler/ that the scripts run), taking
turns, it measures, in float32:
  train      images/s of `model.train_on_batch` (Adam, batch 64 by default) after warm-up
             steps, median of `--repeats` timings of `--steps` steps each;
  infer b=1  latency of one image through `model.predict_on_batch`, median; minicnn's in a
             process of its own with the OpenBLAS setting of the webcam (fer/process.py), the
             compiled path frozen as the webcam loads it (minicnn.compiler.freeze), so its
             faces run as an inference plan (minicnn/compiler/plan.py);
  infer b=256  images/s of `model.predict` on 256 images at once;
  peak MiB   ru_maxrss of a fresh subprocess that builds the model and trains a few
             batches (tracemalloc misses arrays numba allocates, getrusage does not); the
             line also gives the RSS after imports, so the model's own share is visible;
  floor      the roofline ceiling of training images/s (benchmarks/floor.py: FLOPs at the
             measured sgemm rate, bytes at the measured copy bandwidth) and each path's share;
  layers     a per-layer forward / backward time table of one training step (medians),
             the time inside matrix products (the floor no other kernel can lower) and
             inside the patch transforms, im2col and col2im and Winograd's four (with the
             products: the floor of the convolutions' design).
With `--torch` each architecture is rebuilt layer for layer in PyTorch (CPU, the same batch
and thread count; `torch` is only needed for this flag) and timed in the same run,
interleaved with minicnn so load from other jobs hits both alike, in both memory layouts:
NCHW (torch's default) and channels-last (NHWC, minicnn's), since neither is faster for
every model (measured: cnn4 trains faster in NCHW, cnn8 in channels-last). The tables show minicnn / torch
ratios against each (> 1: minicnn is faster); the layer table's floors compare with the
faster one.

The first lines say which OpenBLAS environment the run had (OPENBLAS_CORETYPE=Haswell caps
float32 matmul near half of what this CPU's AVX-512 kernels reach) and how many threads
numba, OpenBLAS (threadpoolctl, if installed) and torch used.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from fer import process

# minicnn's process tuning (fer/process.py here, minicnn.perf.enable() first thing in main) sets these
# where the user has not. torch's twin runs with what the user has, as a PyTorch user would: passive
# waits slowed torch's many small parallel ops (mini-Xception: 460 vs 625 images/s), and GNU
# OpenMP's spin count moves torch's times too. A worker reads the user's values from its parent.
TUNED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")
USER_ENV = (json.loads(os.environ["TORCH_TWIN_ENV"]) if "TORCH_TWIN_ENV" in os.environ
            else {name: os.environ.get(name) for name in TUNED})
process.set_environment()      # before NumPy and numba load, which read them then (fer/process.py)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


import numba  # noqa: E402

import minicnn  # noqa: E402
from minicnn.compiler import freeze  # noqa: E402
from minicnn.layers import conv as conv_layers, core as core_layers  # noqa: E402
from minicnn.ops import conv as conv_ops, winograd  # noqa: E402
from fer import models as fer_models  # noqa: E402
from benchmarks import floor as floors  # noqa: E402

DEFAULT_MODELS = ("cnn4", "mini_xception", "cnn8")


# ----------------------------------------------------------------------------------------
# minicnn
# ----------------------------------------------------------------------------------------

PATHS = ("textbook", "compiled")


def build(name, seed=0, path="compiled"):
    """The architecture `name` (its seed's class count, 48x48 grey input), compiled with Adam;
    path "compiled" runs it as the compiler's fused steps (built on the first batch, as
    scripts/train.py trains it), "textbook" as its layers."""
    minicnn.backend.clear_session()
    minicnn.backend.set_seed(seed)
    model = fer_models.BUILDERS[name]()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=path == "compiled")
    return model


def batch(model, n, seed=0):
    """n random images (N, 48, 48, 1) in [0, 1) and one-hot labels, float32."""
    rng = np.random.default_rng(seed)
    shape = tuple(model.input_shape[1:])
    k = model.output_shape[-1]
    x = rng.random((n,) + shape, dtype=np.float32)
    y = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
    return x, y


def timed(fn, repeats):
    """Wall times in seconds of `repeats` calls of fn."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class Minicnn:
    """The three timings of one minicnn model on one path, each a callable run by `measure`."""

    def __init__(self, name, batch_size, path="compiled", frozen=False):
        self.path = path
        self.model = build(name, path=path)
        if frozen:
            freeze(self.model)          # inference alone, as fer.inference loads a model for the webcam
        self.x, self.y = batch(self.model, batch_size)
        self.x1 = self.x[:1]
        self.x256, _ = batch(self.model, 256, seed=1)

    def run(self, what, calls):
        """Mean seconds per call of `what` ("train_step", "infer_one", "infer_256") over `calls` calls."""
        return sum(timed(getattr(self, what), calls)) / calls

    def train_step(self):
        self.model.train_on_batch(self.x, self.y)

    def infer_one(self):
        self.model.predict_on_batch(self.x1)

    def infer_256(self):
        self.model.predict(self.x256, batch_size=256)


# The functions a step spends its time in besides the layers' own loops: (module, name) -> part.
# Products are the floor no other kernel can lower; products + the patch transforms (im2col,
# col2im, Winograd's) are the floor of the convolutions' design, whatever the elementwise passes cost.
TIMED_CALLS = {(conv_ops, "matmul"): "products", (conv_layers, "matmul"): "products",
               (core_layers, "matmul"): "products",
               (winograd, "matmul"): "products", (winograd, "batched_matmul"): "products",
               (conv_ops, "im2col"): "transforms", (conv_ops, "col2im"): "transforms",
               **{(winograd, name): "transforms" for name in
                  ("input_transform", "output_transform", "output_adjoint", "input_adjoint")}}


def layer_table(model, x, y, steps, torch_runner=None):
    """Median forward and backward ms of every layer over `steps` training steps, the median
    step, the median ms per step inside each part of TIMED_CALLS ({"products": ms, ...}) and,
    with a torch runner, the median ms of torch's whole step, timed in turns with minicnn's."""
    running = model.input_layers + [layer for layer, _ in model.steps]    # a fused chain is one step
    records = {layer: ([], []) for layer in running}
    saved = []
    parts_per_step = []          # one {part: seconds} per step; the wrappers add to the last

    def timed_function(fn, part):
        def call(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            parts_per_step[-1][part] += time.perf_counter() - start
            return result
        return call

    def wrap(layer, method, slot):
        original = getattr(layer, method)

        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            result = original(*args, **kwargs)
            records[layer][slot].append(time.perf_counter() - start)
            return result

        saved.append((layer, method))
        setattr(layer, method, timed_call)

    for layer in running:
        wrap(layer, "forward", 0)
        wrap(layer, "backward", 1)
        if hasattr(layer, "backward_from_logits"):
            wrap(layer, "backward_from_logits", 1)
    originals = {key: getattr(*key) for key in TIMED_CALLS}
    for (module, name), part in TIMED_CALLS.items():
        setattr(module, name, timed_function(originals[module, name], part))
    step_times, torch_times = [], []
    try:
        for _ in range(steps):
            parts_per_step.append(dict.fromkeys(TIMED_CALLS.values(), 0.0))
            step_times += timed(lambda: model.train_on_batch(x, y), 1)
            if torch_runner:
                torch_times.append(torch_runner.run("train_step", 1))
    finally:
        for layer, method in saved:
            delattr(layer, method)            # back to the class's method
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
    rows = []
    for layer in running:
        fwd, bwd = records[layer]
        per_step = len(fwd) // steps or 1
        f = 1e3 * float(np.median(fwd)) * per_step if fwd else 0.0
        b = 1e3 * float(np.median(bwd)) * per_step if bwd else 0.0
        kind = type(layer).__name__
        rows.append((layer.name, kind, str(layer.output_shape[1:]), f, b))
    torch_ms = 1e3 * float(np.median(torch_times)) if torch_times else None
    part_ms = {part: 1e3 * float(np.median([step[part] for step in parts_per_step])) for part in parts_per_step[0]}
    return rows, 1e3 * float(np.median(step_times)), part_ms, torch_ms


# ----------------------------------------------------------------------------------------
# PyTorch: the same graph, layer for layer (only with --torch)
# ----------------------------------------------------------------------------------------

def torch_model(model):
    """An nn.Module running `model`'s graph in PyTorch (NCHW tensors, either memory layout).

    Same layers, shapes, "same" padding (torch's own padding argument when the pads are
    symmetric, an F.pad in front when TF's "same" pads more at the bottom/right, -inf for
    max pools), BN epsilon and momentum, dropout rates. A final softmax is left to the loss
    (CrossEntropyLoss on logits), as minicnn fuses it with the loss too.
    """
    import torch
    from torch import nn
    import torch.nn.functional as F

    from minicnn.layers import (Activation, Add, BatchNormalization, Conv2D, Dense, DepthwiseConv2D, Dropout,
                                Flatten, GlobalAveragePooling2D, InputLayer, MaxPooling2D, SeparableConv2D)
    from minicnn.ops.padding import pad_amounts

    def activation(name, is_output):
        if name == "relu":
            return nn.ReLU()
        if name in ("linear", "softmax") and (is_output or name == "linear"):
            return nn.Identity()
        return {"softmax": nn.Softmax(dim=1), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}[name]

    def padded(layer, kernel_size, strides, make, value=0.0):
        """make(padding) -> the torch module; symmetric pads go to torch's own padding argument
        (no copy, as a PyTorch user writes it), asymmetric ones to an F.pad in front."""
        h, w = layer.input_shape[1:3]
        (t, b), (l, r) = (pad_amounts(h, kernel_size[0], strides[0], layer.padding),
                          pad_amounts(w, kernel_size[1], strides[1], layer.padding))
        if t == b and l == r:
            return make((t, l))
        return nn.Sequential(Pad((l, r, t, b), value), make(0))

    class Pad(nn.Module):
        def __init__(self, amounts, value):
            super().__init__()
            self.amounts, self.value = amounts, value

        def forward(self, x):
            return F.pad(x, self.amounts, value=self.value)

    def module(layer, is_output):
        c = layer.input_shape[-1] if not isinstance(layer, Add) else None
        if isinstance(layer, InputLayer) or isinstance(layer, Add):
            return nn.Identity()
        if isinstance(layer, Conv2D):
            return nn.Sequential(padded(layer, layer.kernel_size, layer.strides,
                                        lambda p: nn.Conv2d(c, layer.filters, layer.kernel_size, layer.strides, p,
                                                            bias=layer.use_bias)),
                                 activation(layer.activation.name, is_output))
        if isinstance(layer, SeparableConv2D):
            cm = c * layer.depth_multiplier
            return nn.Sequential(padded(layer, layer.kernel_size, layer.strides,
                                        lambda p: nn.Conv2d(c, cm, layer.kernel_size, layer.strides, p, groups=c,
                                                            bias=False)),
                                 nn.Conv2d(cm, layer.filters, 1, bias=layer.use_bias),
                                 activation(layer.activation.name, is_output))
        if isinstance(layer, DepthwiseConv2D):
            return nn.Sequential(padded(layer, layer.kernel_size, layer.strides,
                                        lambda p: nn.Conv2d(c, c * layer.depth_multiplier, layer.kernel_size,
                                                            layer.strides, p, groups=c, bias=layer.use_bias)),
                                 activation(layer.activation.name, is_output))
        if isinstance(layer, BatchNormalization):
            bn = nn.BatchNorm2d if len(layer.input_shape) == 4 else nn.BatchNorm1d
            return bn(c, eps=layer.epsilon, momentum=1 - layer.momentum)
        if isinstance(layer, Activation):
            return activation(layer.activation.name, is_output)
        if isinstance(layer, MaxPooling2D):
            return padded(layer, layer.pool_size, layer.strides,
                          lambda p: nn.MaxPool2d(layer.pool_size, layer.strides, p), -float("inf"))
        if isinstance(layer, Dropout):
            return nn.Dropout(layer.rate)
        if isinstance(layer, Flatten):
            return nn.Flatten()
        if isinstance(layer, Dense):
            return nn.Sequential(nn.Linear(layer.input_shape[-1], layer.units, bias=layer.use_bias),
                                 activation(layer.activation.name, is_output))
        if isinstance(layer, GlobalAveragePooling2D):
            return nn.AdaptiveAvgPool2d(1)
        raise NotImplementedError(f"--torch: no PyTorch counterpart for {type(layer).__name__}")

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.order = list(model.nodes)
            self.inbound = [[self.order.index(s) for s in model.inbound[layer]] for layer in self.order]
            self.adds = [isinstance(layer, Add) for layer in self.order]
            self.gap = [isinstance(layer, GlobalAveragePooling2D) for layer in self.order]
            self.mods = nn.ModuleList(module(layer, layer is model.output_layer) for layer in self.order)

        def forward(self, x):
            values = []
            for i, mod in enumerate(self.mods):
                args = [values[j] for j in self.inbound[i]] or [x]
                if self.adds[i]:
                    out = args[0]
                    for a in args[1:]:
                        out = out + a
                else:
                    out = mod(args[0])
                    if self.gap[i]:
                        out = out.flatten(1)
                values.append(out)
            return values[-1]

    return Graph()


TORCH_LAYOUTS = ("nchw", "channels_last")


class Torch:
    """The three timings of the PyTorch twin of a minicnn model (run inside `torch_worker`).
    layout "nchw": contiguous NCHW tensors and weights; "channels_last": NHWC memory."""

    def __init__(self, name, batch_size, threads, layout):
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        model = build(name)
        x, y = batch(model, batch_size)
        x256, _ = batch(model, 256, seed=1)
        self.net = torch_model(model)
        if layout == "channels_last":
            self.net = self.net.to(memory_format=torch.channels_last)

        def nchw(a):   # (N, H, W, C) -> NCHW: channels-last is the same bytes, NCHW a copy
            t = torch.from_numpy(a).permute(0, 3, 1, 2)
            return t if layout == "channels_last" else t.contiguous()

        self.x, self.x1, self.x256 = nchw(x), nchw(x[:1]), nchw(x256)
        self.labels = torch.from_numpy(y.argmax(axis=1))
        self.loss = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3, eps=1e-7)

    def train_step(self):
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.net(self.x), self.labels).backward()
        self.opt.step()

    def infer_one(self):
        self.net.eval()
        with self.torch.no_grad():
            self.net(self.x1)

    def infer_256(self):
        self.net.eval()
        with self.torch.no_grad():
            self.net(self.x256)


class WorkerProcess:
    """A runner in its own process, driven over a pipe: [what, calls] in, mean seconds out."""

    def __init__(self, args, env):
        cmd = [sys.executable, os.path.abspath(__file__), *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self.proc.stdout.readline())     # what the worker says of itself

    def run(self, what, calls):
        self.proc.stdin.write(json.dumps([what, calls]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker died; run it alone to see why")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


class TorchProcess(WorkerProcess):
    """A `Torch` runner in its own process.

    torch brings its own OpenMP pool; in the same process as numba's and OpenBLAS's it
    slowed minicnn's steps several times over (three pools spinning on two cores), so
    each framework gets a process and the two take turns, never running at once.
    """

    def __init__(self, name, batch_size, threads, layout):
        self.layout = layout
        super().__init__(["--torch-worker", name, "--batch", str(batch_size), "--threads", str(threads),
                          "--framework", layout], {**os.environ, "TORCH_TWIN_ENV": json.dumps(USER_ENV)})


class OneFaceProcess(WorkerProcess):
    """A minicnn path's batch-1 inference in its own process, with the OpenBLAS setting that
    scripts/webcam.py and predict.py run with (fer/process.py: workers stay awake between one
    face's products), unless the user set one for the whole run."""

    def __init__(self, name, path, threads):
        self.path = path
        env = {**os.environ, "OPENBLAS_THREAD_TIMEOUT": USER_ENV["OPENBLAS_THREAD_TIMEOUT"] or process.ONE_FACE}
        super().__init__(["--one-face-worker", name, "--threads", str(threads), "--framework", path], env)


def serve(runner, info):
    """The worker side of WorkerProcess: say `info`, then answer each [what, calls] with mean seconds."""
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        what, calls = json.loads(line)
        print(json.dumps(sum(timed(getattr(runner, what), calls)) / calls), flush=True)


def one_face_worker(name, path):
    runner = Minicnn(name, 1, path, frozen=path == "compiled")
    serve(runner, f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')}")


def torch_worker(name, batch_size, threads, layout):
    """The subprocess side of TorchProcess: read [what, calls], answer the mean seconds."""
    for variable, value in USER_ENV.items():      # torch's OpenMP reads them when torch is imported
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    import torch

    runner = Torch(name, batch_size, threads, layout)
    said = ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in TUNED[:2])
    serve(runner, f"torch {torch.__version__}: {torch.get_num_threads()} threads, {said}")


# ----------------------------------------------------------------------------------------
# memory: a fresh process per model
# ----------------------------------------------------------------------------------------

def rss_mib():
    """This process's peak resident set so far, in MiB.

    Linux: VmHWM from /proc/self/status. ru_maxrss would do, but Linux carries it over
    exec, so a child of a big parent reports the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024 ** 2)


def memory_child(name, batch_size, framework, threads):
    """Run in the subprocess: build, train 3 batches, print the peak RSS as JSON."""
    base = rss_mib()
    runner = Minicnn(name, batch_size, framework) if framework in PATHS else Torch(name, batch_size, threads, framework)
    for _ in range(3):
        runner.train_step()
    print(json.dumps({"base_mib": base, "peak_mib": rss_mib()}))


def peak_memory(name, batch_size, framework, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, "--framework", framework,
           "--batch", str(batch_size), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------

def _numba_vectors():
    """What numba compiles for: the CPU's name and whether NUMBA_CPU_FEATURES asks for 256-bit vectors."""
    features = numba.config.CPU_FEATURES or ""
    width = "256-bit vectors asked for" if "+prefer-256-bit" in features else "LLVM's own vector width"
    return f"CPU {numba.config.CPU_NAME or 'host'}, {width}"


def thread_report(torch_info, one_face_info=None):
    lines = [" ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in
                      ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT",
                              "NUMBA_NUM_THREADS"))]
    try:
        from threadpoolctl import threadpool_info
        pools = [f"{p['internal_api']} {p.get('version') or ''} ({p.get('architecture') or '?'}): "
                 f"{p['num_threads']} threads" for p in threadpool_info()]
        lines.append("thread pools (threadpoolctl): " + "; ".join(pools))
    except ImportError:
        lines.append("thread pools: threadpoolctl not installed, OpenBLAS thread count unknown")
    lines.append(f"numba {numba.__version__}: {numba.get_num_threads()} threads, threading layer "
                 f"{_numba_layer()}, {_numba_vectors()}; cpus={os.cpu_count()}, "
                 f"load average {os.getloadavg()[0]:.2f}")
    if one_face_info:
        lines.append(f"minicnn's batch-1 inference in a process of its own, as the webcam runs: {one_face_info}")
    if torch_info:
        lines.append(torch_info + f", layouts {' and '.join(TORCH_LAYOUTS)} (each in its own process)")
    return lines


def _numba_layer():
    try:
        return numba.threading_layer()
    except ValueError:          # no parallel kernel has run yet
        return numba.config.THREADING_LAYER


SETTLE = 0.2     # seconds between two runners' turns: the last one's idle threads stop spinning


def measure(runners, what, repeats, calls):
    """Median seconds per call of runner.<what> for each runner, interleaved repeat by repeat, each
    turn after SETTLE seconds of quiet: a runner in another process leaves its thread pools spinning
    for a while after its turn (OpenBLAS's for OPENBLAS_THREAD_TIMEOUT, an OpenMP pool for its
    spin count), on the cores the next runner needs, which its framework would not meet alone."""
    for r in runners:
        r.run(what, 2)                               # warm-up: numba caches, buffers, torch
    times = [[settled(r, what, calls) for r in runners] for _ in range(repeats)]
    return [float(np.median(t)) for t in zip(*times)]


def settled(runner, what, calls):
    """runner.run(what, calls) after SETTLE seconds of quiet."""
    time.sleep(SETTLE)
    return runner.run(what, calls)


def main():
    minicnn.perf.enable()                    # threads, allocator and OpenMP tuned, as the scripts run
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated names, or 'all' ({', '.join(fer_models.names())})")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timings per number (the median is shown)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timing")
    parser.add_argument("--threads", type=int, default=0, help="numba and torch threads (default: all cores)")
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch twins and show ratios")
    parser.add_argument("--paths", default=",".join(PATHS), type=paths_argument,
                        help="minicnn's paths to time, comma-separated: textbook, compiled (default: both)")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer tables")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
    parser.add_argument("--one-face-worker", help=argparse.SUPPRESS)
    parser.add_argument("--framework", default="compiled", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = args.threads or os.cpu_count()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if args.memory_child:
        return memory_child(args.memory_child, args.batch, args.framework, threads)
    if args.torch_worker:
        return torch_worker(args.torch_worker, args.batch, threads, args.framework)
    if args.one_face_worker:
        return one_face_worker(args.one_face_worker, args.framework)

    names = fer_models.names() if args.models == "all" else args.models.split(",")
    print(f"minicnn model benchmark: batch {args.batch}, float32, Adam, median of {args.repeats} "
          f"timings of {args.steps} steps; python {platform.python_version()}, numpy {np.__version__}")
    frameworks = [("minicnn", path) for path in args.paths] + \
        ([("torch", layout) for layout in TORCH_LAYOUTS] if args.torch else [])
    results, tables, torch_info, one_face_info = {}, {}, None, None
    rates = (floors.sgemm_rate(), floors.copy_bandwidth())
    ceilings = {}
    for name in names:
        minis = [Minicnn(name, args.batch, path) for path in args.paths]
        torches = [TorchProcess(name, args.batch, threads, layout) for layout in TORCH_LAYOUTS] if args.torch else []
        one_faces = [OneFaceProcess(name, path, threads) for path in args.paths]
        runners = minis + torches
        train = measure(runners, "train_step", args.repeats, args.steps)
        one = measure(one_faces + torches, "infer_one", args.repeats, 20)
        many = measure(runners, "infer_256", args.repeats, 1)
        memory = [None] * len(runners) if args.no_memory else \
            [peak_memory(name, args.batch, path, threads) for _, path in frameworks]
        results[name] = [(args.batch / t, 1e3 * o, 256 / m, mem) for t, o, m, mem in zip(train, one, many, memory)]
        ceilings[name] = (*floors.step_counts(minis[0].model, args.batch),
                          *floors.floor_seconds(minis[0].model, args.batch, *rates))
        if not args.no_layers:
            torch_train = dict(zip(torches, train[len(minis):]))           # seconds a step, per layout
            fastest_torch = min(torch_train, key=torch_train.get, default=None)
            for r in minis:
                tables[name, r.path] = (*layer_table(r.model, r.x, r.y, max(args.repeats, 3), fastest_torch),
                                        fastest_torch and fastest_torch.layout)
        for t in torches:
            torch_info = t.info
            t.close()
        for worker in one_faces:
            one_face_info = worker.info
            worker.close()
        print(f"  {name}: done", file=sys.stderr, flush=True)

    for line in thread_report(torch_info, one_face_info):
        print(line)
    print_results(results, frameworks, args.torch)
    print_floors(results, frameworks, ceilings, rates, args.batch)
    for (name, path), table in tables.items():
        print_layer_table(f"{name} ({path})", *table, args.batch)


def print_results(results, frameworks, with_torch):
    """The table of every model, framework and path, and each minicnn path's ratios to each torch layout."""
    header = (f"{'model':<14} {'framework':<9} {'path':<15} {'train img/s':>11} {'epoch s':>8} {'infer b=1 ms':>12} "
              f"{'infer b=256 img/s':>17} {'peak MiB':>9} {'(at start)':>10}")
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        for (framework, path), (train, one, many, mem) in zip(frameworks, rows):
            peak = f"{mem['peak_mib']:9.0f} {mem['base_mib']:10.0f}" if mem else f"{'-':>9} {'-':>10}"
            print(f"{name:<14} {framework:<9} {path:<15} {train:11.1f} {28709 / train:8.0f} {one:12.2f} {many:17.1f} "
                  f"{peak}")
        minis = [(path, row) for (framework, path), row in zip(frameworks, rows) if framework == "minicnn"]
        torches = [(path, row) for (framework, path), row in zip(frameworks, rows) if framework == "torch"]
        for path, (t0, o0, m0, mem0) in minis:
            for layout, (t1, o1, m1, mem1) in torches:
                mem_ratio = f"{mem0['peak_mib'] / mem1['peak_mib']:9.2f}" if mem0 else f"{'-':>9}"
                print(f"{'':<14} {'ratio':<9} {path + ' / ' + layout:<15} {t0 / t1:10.2f}x {'':>8} {o1 / o0:11.2f}x "
                      f"{m0 / m1:16.2f}x {mem_ratio}")
    if with_torch:
        print("ratio = minicnn / torch for throughput, torch / minicnn for latency (> 1: minicnn faster); "
              "memory: minicnn / torch")


def print_floors(results, frameworks, ceilings, rates, batch_size):
    """Each model's roofline ceiling (benchmarks/floor.py) and every path's training images/s as a share of it."""
    flop_rate, bandwidth = rates
    print(f"\nfloor: sgemm {flop_rate / 1e9:.0f} GFLOP/s (1024^3 float32), copy {bandwidth / 1e9:.1f} GB/s "
          f"(256 MiB, read + write); a step's floor is the larger of its FLOPs and its bytes at these rates")
    for name, rows in results.items():
        flops, moved, seconds, bound = ceilings[name]
        shares = ", ".join(f"{path} {100 * train / (batch_size / seconds):.0f}%"
                           for (_, path), (train, *_) in zip(frameworks, rows))
        print(f"{name:<14} {flops / 1e9:6.1f} GFLOP, {moved / 1e6:6.0f} MB a step: {1e3 * seconds:6.1f} ms "
              f"({bound}-bound), {batch_size / seconds:7.0f} images/s at most; reached: {shares}")


def print_layer_table(title, rows, step_ms, part_ms, torch_ms, torch_layout, batch_size):
    """One path's per-step floors and per-layer (per fused step, compiled) times."""
    total = sum(f + b for *_, f, b in rows)
    floor_ms, parts = 0.0, []
    print()
    for part, ms in part_ms.items():
        floor_ms, parts = floor_ms + ms, parts + [part]
        floor = batch_size / (floor_ms / 1e3)
        versus = f" ({torch_ms / floor_ms:.2f}x torch {torch_layout}'s whole step)" if torch_ms else ""
        print(f"{title}: {' + '.join(parts)} {floor_ms:.1f} ms of a {step_ms:.1f} ms step "
              f"({100 * floor_ms / step_ms:.0f}%); alone they would train {floor:.1f} images/s{versus}, "
              f"an epoch in {28709 / floor:.0f} s")
    if torch_ms:
        print(f"{title}: torch's step {torch_ms:.1f} ms ({torch_layout}, its faster layout above), "
              "timed in turns with these minicnn steps")
    print(f"\n{title}: one training step {step_ms:.1f} ms; per layer or fused step (median ms; {total:.1f} ms, "
          f"the rest is loss, regularizers and the optimizer)")
    print(f"{'layer':<40} {'class':<22} {'output':<18} {'forward':>8} {'backward':>8} {'% step':>7}")
    for lname, cls, shape, f, b in rows:
        print(f"{lname:<40} {cls:<22} {shape:<18} {f:8.2f} {b:8.2f} {100 * (f + b) / step_ms:6.1f}%")


def paths_argument(text):
    """--paths: a comma-separated subset of PATHS, in PATHS' order."""
    paths = [p for p in text.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or not paths:
        raise argparse.ArgumentTypeError(f"paths are {', '.join(PATHS)}; received {text!r}")
    return [p for p in PATHS if p in paths]


if __name__ == "__main__":
    main()
