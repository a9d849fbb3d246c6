"""2-D convolution as Conv2D calls it: z = conv(x, K) forward, (dx, dK) backward, no bias.

    cols = im2col(x)              (N*Ho*Wo, kh*kw*C)   every receptive field as a row
    z    = cols @ K2              (N*Ho*Wo, F)         K2 = K.reshape(kh*kw*C, F)
    dK   = cols.T @ dz            (kh*kw*C, F)
    dx   = col2im(dz @ K2.T)      (N, H, W, C)         col2im: the adjoint of im2col (im2col.py)

`conv2d_naive` is the definition in loops; `conv2d_reference` and `conv2d_backward_reference`
are the four lines above in NumPy, and what MINICNN_REFERENCE=1 runs. By default, `conv2d`
and `conv2d_backward` compute the same numbers faster:
  - Winograd's F(2x2, 3x3) for a 3x3, stride-1 convolution between wide layers, given a
    batch (`winograd.pays`): the same z with fewer multiplications;
  - otherwise the same im2col product, with the numba im2col / col2im where they pay and
    small products on one thread (`gemm.matmul`);
  - in training, the large temporaries (the patch matrix, Winograd's V and M) live in the
    layer's Workspace, reused from step to step instead of allocated afresh;
  - no dx at all when the caller needs none (a layer that reads the model's input).
"""
from typing import NamedTuple

import numpy as np

from .. import backend
from . import winograd
from .gemm import matmul
from .im2col import col2im, col2im_reference, im2col, im2col_reference, numba_pays, output_hw


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
# the fast path: Winograd or numba im2col, reused buffers, no dx when none is needed
# ----------------------------------------------------------------------------------------

class Workspace:
    """Arrays a layer keeps from one training step to the next, for temporaries that never
    leave the op (a fresh large array is paid in page faults on every step). An array handed
    out stays in use (by the forward's `saved`) until the next forward asks for it again."""

    def __init__(self):
        self.arrays = {}

    def __call__(self, name, shape, dtype):
        """The array `name` of this shape and dtype: the last one, when it fits."""
        array = self.arrays.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self.arrays[name] = np.empty(shape, dtype)
        return array


class Saved(NamedTuple):
    """What conv2d_backward needs from conv2d."""
    method: str          # "reference", "im2col" or "winograd"
    arrays: tuple        # reference, im2col: (cols,); winograd: (V, U)
    x_shape: tuple
    strides: tuple
    pads: tuple
    workspace: object    # the forward's Workspace, or None


def conv2d(x, kernel, strides, pads, workspace=None):
    """z = conv(x, kernel), no bias: (N, H, W, C), (kh, kw, C, F) -> (z (N, Ho, Wo, F), saved),
    `saved` for conv2d_backward. `workspace`: the layer's Workspace, in training (None: new arrays)."""
    if backend.use_reference():
        z, cols = conv2d_reference(x, kernel, strides, pads)
        return z, Saved("reference", (cols,), x.shape, strides, pads, None)
    (kh, kw, c, f), n = kernel.shape, x.shape[0]
    ho, wo = output_hw(x.shape[1], x.shape[2], (kh, kw), strides, pads)
    if winograd.pays((kh, kw), strides, n, ho, wo, c, f):
        z, v_u = winograd.conv3x3(x, kernel, pads[0][0], pads[1][0], ho, wo, workspace)
        return z, Saved("winograd", v_u, x.shape, strides, pads, workspace)
    in_workspace = workspace is not None and numba_pays((kh, kw), c)   # NumPy's im2col makes its own array
    buffer = workspace("cols", (n * ho * wo, kh * kw * c), x.dtype) if in_workspace else None
    cols = im2col(x, (kh, kw), strides, pads, out=buffer).reshape(n * ho * wo, -1)   # (N*Ho*Wo, kh*kw*C)
    z = matmul(cols, kernel.reshape(-1, f))                                          # (N*Ho*Wo, F)
    return z.reshape(n, ho, wo, f), Saved("im2col", (cols,), x.shape, strides, pads, workspace)


def conv2d_backward(dz, saved, kernel, need_input_gradient=True):
    """dz (N, Ho, Wo, F) -> (dx (N, H, W, C), dK (kh, kw, C, F)); dx is None when
    need_input_gradient is False."""
    if saved.method == "reference":
        return conv2d_backward_reference(dz, saved.arrays[0], kernel, saved.x_shape, saved.strides, saved.pads,
                                         need_input_gradient)
    if saved.method == "winograd":
        return winograd.conv3x3_backward(dz, saved.arrays, saved.x_shape, saved.pads[0][0],
                                         saved.pads[1][0], saved.workspace, need_input_gradient)
    return _im2col_backward(dz, saved, kernel, need_input_gradient)


def _im2col_backward(dz, saved, kernel, need_input_gradient):
    """conv2d_backward_reference's lines with the fast im2col's pieces."""
    (cols,), f = saved.arrays, kernel.shape[3]
    dz = dz.reshape(-1, f)                                          # (N*Ho*Wo, F)
    dkernel = matmul(cols.T, dz).reshape(kernel.shape)              # (kh, kw, C, F)
    if not need_input_gradient:
        return None, dkernel
    kernel_t = kernel.reshape(-1, f).T          # (F, kh*kw*C), a view: OpenBLAS reads it transposed
    workspace = saved.workspace
    buffer = workspace("dcols", (dz.shape[0], kernel_t.shape[1]), dz.dtype) if workspace else None
    dcols = matmul(dz, kernel_t, out=buffer)                        # (N*Ho*Wo, kh*kw*C)
    return col2im(dcols, saved.x_shape, kernel.shape[:2], saved.strides, saved.pads), dkernel
