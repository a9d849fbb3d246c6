"""The two process settings the scripts make before NumPy and numba load.

1. OpenBLAS's idle-thread spin. After each product OpenBLAS's worker threads spin, waiting for
   the next one, for 2^N CPU cycles before they sleep (N = 28 by default: about a tenth of a
   second). In a training step numba's kernels run between the products on the same cores,
   and on a 2-core machine a spinning worker takes the core one of numba's threads needs, so
   the kernel waits for the scheduler: a process that works in batches sets N = 16 (tens of
   microseconds). One face's inference is the other way round: its few products come close
   together and its kernels run on one thread, and a worker that has gone to sleep takes
   longer to wake than the next product takes to arrive, so a process that classifies one
   face at a time sets N = 24 (a few milliseconds). OPENBLAS_THREAD_TIMEOUT.
2. numba's vector width. LLVM compiles numba's kernels for this CPU, and on AMD's Zen 4 it
   uses 512-bit AVX-512 vectors, which Zen 4 runs as two 256-bit halves: no more numbers a
   cycle, and a loop over a run of 8 or 16 channels leaves more of them to its scalar
   remainder. On a CPU with AVX-512 the scripts ask for 256-bit vectors, as LLVM already
   chooses on Intel's AVX-512 CPUs: NUMBA_CPU_FEATURES, this CPU's features plus
   "+prefer-256-bit" (left alone where the user set it or NUMBA_CPU_NAME).

benchmarks/environment_ab.py and benchmarks/models.py measure both. OpenBLAS reads its setting
when NumPy loads it and numba reads its own when it loads, so minicnn.perf.enable() is too late:
each script calls `set_environment()` before its first import of NumPy. This module imports
only `os` (and numba's code generator, llvmlite, inside the call that asks for the CPU's features).
"""
import os

BATCHES = "16"       # N for training and batch evaluation
ONE_FACE = "24"      # N for the webcam and predict.py: one face at a time


def set_environment(one_face=False):
    """Both settings for this process and its children, each unless the user set it."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", ONE_FACE if one_face else BATCHES)
    features = narrow_vector_features()
    if features and "NUMBA_CPU_NAME" not in os.environ:
        os.environ.setdefault("NUMBA_CPU_FEATURES", features)


def narrow_vector_features():
    """This CPU's features as LLVM spells them, with "+prefer-256-bit", where it has AVX-512;
    "" elsewhere, or without llvmlite."""
    try:
        from llvmlite import binding
    except ImportError:
        return ""
    features = binding.get_host_cpu_features()
    return features.flatten() + ",+prefer-256-bit" if features.get("avx512f") else ""
