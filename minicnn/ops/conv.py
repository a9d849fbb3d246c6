"""2-D convolution as Conv2D calls it: z = conv(x, K) forward, (dx, dK) backward, no bias.

    cols = im2col(x)              (N*Ho*Wo, kh*kw*C)   every receptive field as a row
    z    = cols @ K2              (N*Ho*Wo, F)         K2 = K.reshape(kh*kw*C, F)
    dK   = cols.T @ dz            (kh*kw*C, F)
    dx   = col2im(dz @ K2.T)      (N, H, W, C)         col2im: the adjoint of im2col (im2col.py)

`conv2d_naive` is the definition in loops; `conv2d_reference` and `conv2d_backward_reference`
are the four lines above in NumPy, and what MINICNN_REFERENCE=1 runs. By default, `conv2d`
and `conv2d_backward` are the same lines with numba's im2col / col2im where they pay and
small products on one thread (`gemm.matmul`), and no dx when the caller needs none (a layer
that reads the model's input). This is the textbook method, what Conv2D runs; the compiler
(minicnn/compiler/) chooses faster methods per layer (Winograd, direct loops) and hands in
reused buffers for the patch matrices (`cols`, `dcols`).
"""
from typing import NamedTuple

import numpy as np

from .. import backend
from .buffers import copied_into, reuse_or_new
from .gemm import bind_matmul, matmul
from .im2col import bind_im2col, col2im, col2im_reference, im2col, im2col_reference, output_hw


# ----------------------------------------------------------------------------------------
# naive loops: the definition, one window at a time
# ----------------------------------------------------------------------------------------

def conv2d_naive(x, kernel, strides, pads):
    """z[n, ho, wo] = sum_ij x[n, ho*sh - top + i, wo*sw - left + j] @ kernel[i, j], zero padding."""
    n_img, h_in, w_in, _ = x.shape
    kh, kw, _, f_n = kernel.shape
    (sh, sw), (top, left) = strides, (pads[0][0], pads[1][0])
    ho_n, wo_n = output_hw(h_in, w_in, (kh, kw), strides, pads)
    z = np.zeros((n_img, ho_n, wo_n, f_n), dtype=np.result_type(x, kernel))
    for n, ho, wo, i, j in np.ndindex(n_img, ho_n, wo_n, kh, kw):
        h, w = ho * sh - top + i, wo * sw - left + j
        if 0 <= h < h_in and 0 <= w < w_in:                  # outside: zero padding
            z[n, ho, wo] += x[n, h, w] @ kernel[i, j]        # (C,) @ (C, F)
    return z


# ----------------------------------------------------------------------------------------
# NumPy reference: im2col and one product
# ----------------------------------------------------------------------------------------

def conv2d_reference(x, kernel, strides, pads):
    """z = im2col(x) @ K2: (N, H, W, C), (kh, kw, C, F) -> (z (N, Ho, Wo, F), cols)."""
    f = kernel.shape[3]
    cols = im2col_reference(x, kernel.shape[:2], strides, pads)     # (N, Ho, Wo, kh, kw, C)
    n, ho, wo = cols.shape[:3]
    cols = cols.reshape(n * ho * wo, -1)                            # (N*Ho*Wo, kh*kw*C)
    z = cols @ kernel.reshape(-1, f)                                # (N*Ho*Wo, F)
    return z.reshape(n, ho, wo, f), cols


def conv2d_backward_reference(dz, cols, kernel, x_shape, strides, pads, need_input_gradient=True):
    """dK = cols.T @ dz, dx = col2im(dz @ K2.T) -> (dx (N, H, W, C) or None, dK (kh, kw, C, F))."""
    f = kernel.shape[3]
    dz = dz.reshape(-1, f)                                          # (N*Ho*Wo, F)
    dkernel = (cols.T @ dz).reshape(kernel.shape)                   # (kh*kw*C, F) -> (kh, kw, C, F)
    if not need_input_gradient:
        return None, dkernel
    dcols = dz @ kernel.reshape(-1, f).T                            # (N*Ho*Wo, kh*kw*C)
    return col2im_reference(dcols, x_shape, kernel.shape[:2], strides, pads), dkernel


# ----------------------------------------------------------------------------------------
# the dispatcher: numba's im2col where it pays, optional buffers, no dx when none is needed
# ----------------------------------------------------------------------------------------

class Saved(NamedTuple):
    """What conv2d_backward needs from conv2d."""
    method: str          # "reference" or "im2col"
    cols: np.ndarray     # the patch matrix (N*Ho*Wo, kh*kw*C)
    x_shape: tuple
    strides: tuple
    pads: tuple


def conv2d(x, kernel, strides, pads, cols=None, out=None, bias=None):
    """z = conv(x, kernel) (+ bias (F,) when given): (N, H, W, C), (kh, kw, C, F) -> (z (N, Ho,
    Wo, F), saved), `saved` for conv2d_backward. `cols`: a buffer of N*Ho*Wo*kh*kw*C numbers for
    the patch matrix, which the numba im2col writes into (NumPy's makes its own array); `out`:
    one for z."""
    if backend.use_reference():
        z, patches = conv2d_reference(x, kernel, strides, pads)
        z = z if bias is None else z + bias
        return copied_into(z, out, "conv2d: out"), Saved("reference", patches, x.shape, strides, pads)
    (kh, kw, _, f), n = kernel.shape, x.shape[0]
    ho, wo = output_hw(x.shape[1], x.shape[2], (kh, kw), strides, pads)
    z = None if out is None else reuse_or_new(out, (n * ho * wo, f), x.dtype, "conv2d: out")
    patches = im2col(x, (kh, kw), strides, pads, out=cols).reshape(n * ho * wo, -1)   # (N*Ho*Wo, kh*kw*C)
    z = matmul(patches, kernel.reshape(-1, f), out=z, bias=bias)                     # (N*Ho*Wo, F)
    return z.reshape(n, ho, wo, f), Saved("im2col", patches, x.shape, strides, pads)


def bind_conv2d(x_shape, kernel, strides, pads):
    """conv2d's forward for inputs of x_shape (in the kernel's dtype), the patch matrix (where
    numba writes it) and z made once: run(x) -> z (N, Ho, Wo, F), the same array every call
    (compiler/plan.py)."""
    (kh, kw, _, f), n = kernel.shape, x_shape[0]
    ho, wo = output_hw(x_shape[1], x_shape[2], (kh, kw), strides, pads)
    patches = bind_im2col(x_shape, (kh, kw), strides, pads, kernel.dtype)
    product = bind_matmul(n * ho * wo, kernel.reshape(-1, f))
    z = np.empty((n * ho * wo, f), kernel.dtype)

    def run(x):
        product(patches(x).reshape(n * ho * wo, -1), z)
        return z.reshape(n, ho, wo, f)
    return run


def conv2d_backward(dz, saved, kernel, need_input_gradient=True, dcols=None):
    """dz (N, Ho, Wo, F) -> (dx (N, H, W, C), dK (kh, kw, C, F)); dx is None when
    need_input_gradient is False. `dcols`: a buffer (N*Ho*Wo, kh*kw*C) for dz @ K2.T."""
    if saved.method == "reference":
        return conv2d_backward_reference(dz, saved.cols, kernel, saved.x_shape, saved.strides, saved.pads,
                                         need_input_gradient)
    f = kernel.shape[3]
    dz = dz.reshape(-1, f)                                          # (N*Ho*Wo, F)
    dkernel = matmul(saved.cols.T, dz).reshape(kernel.shape)        # (kh, kw, C, F)
    if not need_input_gradient:
        return None, dkernel
    kernel_t = kernel.reshape(-1, f).T          # (F, kh*kw*C), a view: OpenBLAS reads it transposed
    patches_grad = matmul(dz, kernel_t, out=dcols)                  # (N*Ho*Wo, kh*kw*C)
    return col2im(patches_grad, saved.x_shape, kernel.shape[:2], saved.strides, saved.pads), dkernel
