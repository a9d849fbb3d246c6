"""Speed settings in one place: the thresholds the ops choose their version by, and the
process tuning that `enable()` switches on.

`import minicnn` changes nothing in the process. `minicnn.perf.enable()`, which the scripts
and benchmarks call first, makes four process-wide changes for training on a small
machine shared with other jobs:

1. OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=30000 (each unless already set): numba's
   OpenMP threads wait for the next parallel kernel spinning a short while (GNU OpenMP's
   30,000 rounds, well under a millisecond: a step's kernels follow each other closely,
   and waking a sleeping thread costs more than most of mini-Xception's kernels), then
   sleep instead of spinning on; a thread that spins on, on a busy machine, makes every
   parallel kernel wait for a scheduler tick. OpenMP reads both once, when its threads
   start: call enable() before the first numba kernel.
2. glibc's malloc keeps freed big arrays for reuse (mmap threshold 1 GB, no trimming), so
   each step's activations reuse memory instead of page-faulting it afresh; freed memory
   then stays with the process until it exits. MINICNN_MALLOC=default skips this.
3. OpenBLAS's per-call thread count is looked up (in the library NumPy loaded), so that
   `ops.gemm.matmul` runs small products on the calling thread alone; and the OpenBLAS that
   numba's np.dot calls (scipy's) is set to one thread: minicnn calls it only from numba's own
   threads, one product each, where its threads would wait on numba's.
4. Denormal numbers flush to zero (the x86 FTZ and DAZ bits, as TensorFlow runs its ops): a
   channel that stops learning decays into the numbers below float32's smallest normal
   (1.2e-38), and every product with one takes the CPU's slow microcode path, which can make
   a whole training step several times slower (benchmarks/denormals.py). The calling thread is
   set, and the threads it starts later (numba's) inherit it: call enable() first. OpenBLAS's
   threads start with NumPy, before it; NumPy's OpenBLAS hands its workers the caller's setting
   (the test checks a threaded product). MINICNN_DENORMALS=keep skips this.

Two more settings cannot wait for enable(). OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when
NumPy loads it, and its default keeps idle workers spinning for about a tenth of a second after
every product, on the cores numba's kernels need next; numba reads NUMBA_CPU_FEATURES when it
loads, and on AMD's Zen 4 its default 512-bit vectors gain nothing over 256-bit ones. The scripts
and benchmarks set both before they import NumPy (fer/process.py says why and to what); a program
of your own can export them.

The effect of each is measured by benchmarks/models.py and recorded in benchmarks/RESULTS.md.
This module imports only the standard library and numpy (numba when a kernel or one_thread() asks).
"""
import ctypes
import os
import platform
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np

# ---- thresholds: each op's default version, chosen by benchmarks/kernels.py and models.py ----

# numba kernels: below this many numbers, one thread (waking the second costs more than the work)
PARALLEL_MIN_SIZE = 1 << 17
# inference (Model.forward, training=False) on at most this many input numbers runs the whole pass
# on one numba thread (a webcam face or two): measured faster up to 2-4 faces on 2 cores, its
# bigger kernels included (benchmarks/RESULTS.md, "Batch-1 inference on one thread")
ONE_THREAD_MAX_INPUT = 1 << 13
# BatchNormalization's moments and backward: the NumPy reference below this many numbers,
# where a kernel call gains too little over it
BATCHNORM_NUMBA_MIN_SIZE = 1 << 17
# BatchNormalization's normalize (what inference runs): the kernel from this many numbers in
# at least this many rows, so that one image's activations take it but a dense batch does not
NORMALIZE_MIN_SIZE, NORMALIZE_MIN_ROWS = 1 << 13, 128
# ReLU's backward, dropout and Adam: the NumPy reference below this many numbers, where a
# kernel call costs more than the temporaries it saves
ELEMENTWISE_NUMBA_MIN_SIZE = 1 << 15
# im2col / col2im: numba copies one kernel row (kw*C numbers) at a time; for rows this
# short or shorter, NumPy's kh*kw long strided copies are faster (1x1 windows too)
IM2COL_NUMPY_MAX_ROW = 2
# matrix products: on OpenBLAS's threads from this many FLOP (2*M*K*F), on one below, where
# waiting for the other threads can cost more than the product (ops/gemm.py)
BLAS_PARALLEL_FLOPS = 1e9
# ... or from this many FLOP when both K and F are at least BLAS_WIDE_MIN_SIZE: wide products
# gain from the threads at this size, narrow ones (a few channels) lose
BLAS_WIDE_PARALLEL_FLOPS, BLAS_WIDE_MIN_SIZE = 1e8, 64
# a product on OpenBLAS's threads with at most this many rows (a face's last convolutions) runs as
# its transpose, the kernel's transpose kept contiguous, where it is bound once (ops.gemm.bind_matmul)
TRANSPOSED_PRODUCT_MAX_ROWS = 36
# OpenBLAS runs a product of at most this many multiply-adds (M*K*F) on the calling thread
# (its default, 65536 * GEMM_MULTITHREAD_THRESHOLD 4): numba's kernels keep their per-tile
# products within it, since OpenBLAS's own threads waking inside numba's cost more than they give
OPENBLAS_ONE_THREAD_WORK = 1 << 18
# a product below the sizes above with at least this many rows in its long dimension and this
# many multiply-adds (a 1x1 or pointwise convolution over a batch, its kernel gradient; not one
# image's, which costs less on this thread than waking numba's) runs on numba's threads instead,
# in tiles within OPENBLAS_ONE_THREAD_WORK; where that leaves fewer than TALL_PRODUCT_TILE_MIN_ROWS
# rows a tile, it stays on one thread; at most TALL_PRODUCT_TILE_MAX_ROWS, so that a thin
# product still makes tiles for each thread
TALL_PRODUCT_MIN_ROWS, TALL_PRODUCT_MIN_WORK = 512, 1 << 21
TALL_PRODUCT_TILE_MIN_ROWS, TALL_PRODUCT_TILE_MAX_ROWS = 32, 4096
# a product with a short left side (at most WIDE_PRODUCT_MAX_LEFT numbers: Winograd's kron(G, G)
# and its transpose) and at least WIDE_PRODUCT_MIN_WORK multiply-adds runs on numba's threads in
# blocks of WIDE_PRODUCT_BLOCK columns, as scaled additions of the right side's rows
WIDE_PRODUCT_MAX_LEFT, WIDE_PRODUCT_MIN_WORK, WIDE_PRODUCT_BLOCK = 2048, 1 << 21, 1024
# an inference plan's product with a fixed right side runs on it packed once (ops/panels.py) where
# its left side holds at most this many numbers (read once for every 32 columns: a face's layers,
# not a batch's; benchmarks/kernels_panels.py)
PANEL_PRODUCT_MAX_LEFT = 1 << 20
# Winograd's batches of products in training on the same registers (ops.panels.batched_product) where
# they are narrow: N and the smaller of M and K at most this many (a 32-channel layer's gained, a
# 64-channel layer's forward lost: benchmarks/kernels_panels.py --training)
LANE_PRODUCT_MAX_WIDTH = 32
# ... shared with a pool of threads from this many multiply-adds (waking a thread costs as much as a small product)
PANEL_PRODUCT_SHARED_MIN_WORK = 1 << 22
# a batch of products (ops.gemm.batched_matmul, Winograd's) goes to the threads whole products each,
# OpenBLAS on one thread a call: its kernel gradients sum over thousands of tiles, a dimension OpenBLAS
# never splits, and its own threads, between products, hold the cores numba's kernels need next
# (False: each product on all of OpenBLAS's threads; benchmarks/environment_ab.py times both)
BATCHED_PRODUCTS_SHARED = True
# Winograd's F(2x2, 3x3) for a 3x3 stride-1 Conv2D with C and F at least this many channels
# (narrower layers trained no faster with it)
WINOGRAD_MIN_CHANNELS = 64
# ... and at least this many 2x2 output tiles (N * th * tw): the kernel transform, paid on
# every call, must be shared by enough tiles (a round number between batch 1 and batch 64)
WINOGRAD_MIN_TILES = 256
# work split of the one-pass kernels: BatchNormalization's row blocks (enough for both threads,
# few enough to add up at once) and the elementwise kernels' block of numbers per task
BATCHNORM_BLOCKS = 64
ELEMENTWISE_BLOCK = 1 << 14


_threads = threading.local()          # .single: inside one_thread() on this thread


_NOTHING = nullcontext()


def kernel_threads(size):
    """Run the numba kernels inside on one thread when they touch fewer than PARALLEL_MIN_SIZE
    numbers (batch-1 inference); larger work keeps numba's thread count. numba's setting is
    per calling thread and is restored on exit; inside one_thread() this changes nothing.
    (A plain function: every kernel call enters it, and a generator's context costs more.)"""
    if size >= PARALLEL_MIN_SIZE or getattr(_threads, "single", False):
        return _NOTHING
    return one_thread()


@contextmanager
def one_thread():
    """Run everything inside on one numba thread (this calling thread's setting, restored on exit)."""
    if getattr(_threads, "single", False):
        yield
        return
    import numba

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        _threads.single = True
        yield
    finally:
        _threads.single = False
        numba.set_num_threads(before)


_pool = None    # worker_pool's threads, started on first use


def worker_pool():
    """A pool of Python threads, one a core, for products shared outside numba's threads
    (ops.gemm's batches on NumPy's OpenBLAS, ops.panels' products in a face's pass)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="minicnn-matmul")
    return _pool


def inference_threads(inputs, training, reference):
    """one_thread() for an inference pass on at most ONE_THREAD_MAX_INPUT numbers (inputs: the
    model's input arrays), else a context that changes nothing; nothing either for a `reference`
    pass (MINICNN_REFERENCE=1), which runs no numba kernel and may run without numba."""
    return one_thread() if not training and small_batch(inputs) and not reference else _NOTHING


def small_batch(inputs):
    """Whether the model's input arrays hold at most ONE_THREAD_MAX_INPUT numbers (a face or a few)."""
    return sum(np.size(x) for x in inputs) <= ONE_THREAD_MAX_INPUT


# ---- process tuning: off until enable() ------------------------------------------------------

openblas_set_num_threads_local = None   # found by enable(); ops.gemm keeps small products on one thread with it
numba_blas_one_thread = False            # set by enable(): numba's np.dot runs on the calling thread alone
GOMP_SPINCOUNT = "30000"                 # enable()'s spin before numba's OpenMP threads sleep (see the top;
                                         # benchmarks/environment_ab.py GOMP_SPINCOUNT times values)
_enabled = None                          # what enable() did, once it has run


def enable():
    """Switch on the process tuning described at the top; idempotent. Returns what it did:
    {"omp_wait_policy": value, "gomp_spincount": value, "malloc_keeps_freed_memory": bool,
    "openblas_local_threads": bool, "numba_blas_one_thread": bool, "denormals_flushed": bool,
    "openblas_thread_timeout": the environment's value or None}.
    Call it at the start of a program, before the first numba kernel runs."""
    global _enabled, openblas_set_num_threads_local, numba_blas_one_thread
    if _enabled is not None:
        return dict(_enabled)
    if _numba_threads_started():
        warnings.warn("minicnn.perf.enable(): numba's threads have started, so OMP_WAIT_POLICY and "
                      "GOMP_SPINCOUNT no longer apply; call enable() before the first kernel", stacklevel=2)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    openblas_set_num_threads_local = find_openblas_local_threads()
    numba_blas_one_thread = numba_blas_to_one_thread()
    _enabled = {"omp_wait_policy": os.environ["OMP_WAIT_POLICY"], "gomp_spincount": os.environ["GOMP_SPINCOUNT"],
                "malloc_keeps_freed_memory": keep_freed_memory(),
                "openblas_local_threads": openblas_set_num_threads_local is not None,
                "numba_blas_one_thread": numba_blas_one_thread,
                "denormals_flushed": flush_denormals(),
                "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}   # read, not set: see the top
    return dict(_enabled)


def _numba_threads_started():
    """Whether numba has launched its parallel threads (read only; False without numba)."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))


def keep_freed_memory():
    """Ask glibc's malloc to serve big arrays from memory this process already holds: the
    mmap threshold at 1 GB and no trimming. False where there is no glibc, where glibc
    refuses the threshold, or with MINICNN_MALLOC=default (glibc's own settings kept)."""
    if os.environ.get("MINICNN_MALLOC") == "default":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3                  # from glibc's malloc.h
    # a glibc that refuses a threshold over 32 MB returns 0: then nothing is changed
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, -1))   # -1: never trim


class _Fenv(ctypes.Structure):
    """glibc's fenv_t on x86-64: the x87 environment (28 bytes), then the SSE control register."""
    _fields_ = [("x87", ctypes.c_uint16 * 14), ("mxcsr", ctypes.c_uint32)]


FLUSH_TO_ZERO, DENORMALS_ARE_ZERO = 0x8000, 0x0040     # MXCSR bits: denormal results, denormal inputs


def flush_denormals():
    """Set FTZ and DAZ in the calling thread's SSE control register, through glibc's fegetenv and
    fesetenv; threads it starts later inherit them. False (nothing changed) off x86-64 Linux, where
    the C library refuses, or with MINICNN_DENORMALS=keep."""
    if os.environ.get("MINICNN_DENORMALS") == "keep" or not (
            sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        return False
    try:
        libm = ctypes.CDLL("libm.so.6")
    except OSError:
        return False
    env = _Fenv()
    if libm.fegetenv(ctypes.byref(env)) != 0:
        return False
    env.mxcsr |= FLUSH_TO_ZERO | DENORMALS_ARE_ZERO
    return libm.fesetenv(ctypes.byref(env)) == 0


def find_openblas_local_threads():
    """OpenBLAS's `openblas_set_num_threads_local` (OpenBLAS >= 0.3.27) from the library NumPy
    loaded, found in /proc/self/maps; None elsewhere."""
    np.ones((2, 2)) @ np.ones((2, 2))    # make sure NumPy has loaded its BLAS before we look
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
    except OSError:                  # not Linux: products keep OpenBLAS's own choice
        return None
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


SET_THREADS_NAMES = ("scipy_openblas_set_num_threads", "openblas_set_num_threads", "scipy_openblas_set_num_threads64_")
SGEMM_NAMES = ("scipy_cblas_sgemm64_", "cblas_sgemm", "cblas_sgemm64_", "scipy_cblas_sgemm")


def numba_blas_to_one_thread():
    """Set the OpenBLAS that numba's np.dot calls (the one scipy's cython_blas links) to one
    thread; True when done. False without scipy or numba, off Linux, when that library has no
    OpenBLAS thread setting, or when it is NumPy's own (as in a conda environment): one thread
    there would hold NumPy's large products too."""
    try:
        from numba.extending import get_cython_function_address
        cython_blas = _mapped_file(get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))
    except (ImportError, ValueError):
        return False
    set_threads = _symbol(cython_blas, SET_THREADS_NAMES)     # found in the libraries cython_blas links
    if set_threads is None or _file_of(set_threads) == _numpy_blas_file():
        return False
    set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
    set_threads(1)
    return True


def _numpy_blas_file():
    """The file of the BLAS NumPy calls (found through its sgemm), or None."""
    from numpy._core import _multiarray_umath

    sgemm = _symbol(_multiarray_umath.__file__, SGEMM_NAMES)
    return None if sgemm is None else _file_of(sgemm)


def _symbol(path, names):
    """The first of `names` that the library at `path` (or one it links) defines, as a ctypes
    function; None if none does or the library will not load."""
    try:
        library = ctypes.CDLL(path)
    except (OSError, TypeError):
        return None
    for name in names:
        if hasattr(library, name):
            return getattr(library, name)
    return None


def _file_of(function):
    """The file a ctypes function's code is mapped from."""
    return _mapped_file(ctypes.cast(function, ctypes.c_void_p).value)


def _mapped_file(address):
    """The file mapped at `address` in this process (/proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                if low <= address < high and len(fields) > 5:
                    return fields[5]
    except OSError:
        pass
    return None

# ---- direct convolution (ops/direct_conv.py), chosen by benchmarks/kernels_direct_conv.py ----

# a Conv2D in training takes the direct kernels when its window (wider than 1x1) holds at most
# this many numbers (kh*kw*C) and it has at most this many filters: the product is too thin there,
# and its patch matrix costs a whole step more than the kernels alone show (timed in whole steps)
DIRECT_CONV_MAX_DEPTH, DIRECT_CONV_MAX_FILTERS = 72, 8
# ... and for inference (the forward alone), a window of at most this many numbers and at most
# this many multiply-adds per output pixel (kh*kw*C*F): more, the product's rate wins over the
# patch matrix it saves
DIRECT_CONV_INFERENCE_MAX_DEPTH, DIRECT_CONV_INFERENCE_MAX_WORK = 72, 576
# their task blocks: enough for both threads, few enough that the per-block kernel gradients add up at once
DIRECT_CONV_BLOCKS = 16
# their tile: about this many output columns (rows * (Wo + (kw-1)//sw)) per loop, long enough
# for the vector units, short enough that a tile's copies stay in cache
DIRECT_CONV_TILE = 512
# a layer with eight channels in and out at stride 1 (float32) runs pixel by pixel instead, a pixel's
# eight filters in one vector register (ops/pixel_conv.py), a separable layer's 3x3 depthwise half
# on a multiple of eight channels likewise (ops/separable_lanes.py), and an inference plan's few-row
# products on panels (ops/panels.py); False: the channel-major and row kernels and OpenBLAS
# everywhere (benchmarks/kernels_direct_conv.py, kernels_separable.py and kernels_panels.py time both)
LANE_KERNELS = True
# the settings above that ops modules copy when they load, constants to the kernels they compile:
# changing one later changes nothing (benchmarks/settings_ab.py refuses them)
READ_AT_IMPORT = ("BATCHNORM_BLOCKS", "ELEMENTWISE_BLOCK", "DIRECT_CONV_BLOCKS")


# the fused epilogue (BatchNormalization, ReLU, max pool, dropout, Add: ops/epilogue.py): with a pool
# its kernels always; without one from this many numbers, below which the textbook ops' composition is as quick
# (benchmarks/kernels_epilogue.py --threshold times both on one image's blocks, where inference meets it)
EPILOGUE_NUMBA_MIN_SIZE = 1 << 13


# Winograd's 4x4 tiles, F(4x4, 3x3) and F(4x4, 5x5) (ops.winograd.winograd_tile, measured by
# benchmarks/kernels_winograd.py): with C and F at least this wide (the narrowest seed layers
# measured, 32 -> 32, gained; one input channel leaves nothing to share a transform),
WINOGRAD4_MIN_CHANNELS = 32
# ... at least this many tiles (N * th * tw): the kernel transform, paid on every call, must be
# shared (a batch of 16 at 12x12 gained; one image was not measured and stays on im2col/F(2x2)),
WINOGRAD4_MIN_TILES = 128
# ... or, for a 5x5 kernel whose transform the compiled model keeps between inference calls, at
# least this many (one 24x24 image of cnn4's 5x5 layer: 36 tiles, where it beat im2col at batch 1),
WINOGRAD_5X5_KEPT_MIN_TILES = 36
# ... or this many for a kept 3x3 transform of at most WINOGRAD_KEPT_MAX_NUMBERS numbers (36*C*F):
# one face's 12x12 and 24x24 layers then multiply 4x less, and a transform that size stays in the
# cache between faces (cnn4's 128 -> 512 at 12x12, 2.4M numbers read for every face, lost)
WINOGRAD_3X3_KEPT_MIN_TILES, WINOGRAD_KEPT_MAX_NUMBERS = 9, 1 << 20
# ... and at least this share of the tiles' outputs inside the image: a 6x6 output takes four
# 4x4 tiles, 8x8 outputs for 36, no fewer multiplications than F(2x2) with larger transforms
WINOGRAD4_MIN_KEPT = 0.75
# F(2x2, 3x3) with its kernel transform kept between inference calls (its products on ops.panels'
# packed transform): from this many tiles (one face's 12x12 and 6x6 layers in cnn4; settings_ab.py --face)
WINOGRAD_2X2_KEPT_MIN_TILES = 9
# the fused SeparableConv2D (ops/separable.py, chosen by benchmarks/kernels_separable.py): from
# this many input channels, where its tiles' products are wide enough to beat one product over
# the batch; for inference, and for training (the forward keeping d for the backward)
SEPARABLE_MIN_CHANNELS, SEPARABLE_TRAINING_MIN_CHANNELS = 8, 8
