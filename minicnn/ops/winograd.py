"""Winograd's F(2x2, 3x3): a 3x3, stride-1 convolution with 2.25x fewer multiplications.

Lavin & Gray (2015), "Fast Algorithms for Convolutional Neural Networks". Cut the output into
2x2 tiles; the 4x4 input patch d under a tile and the 3x3 kernel g give the tile as
    y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, 4x4)
which needs 16 multiplications per channel pair where the direct sum needs 36. Over
channels, the 16 entries xi = (a, b) of the 4x4 become 16 independent matrix products:
    V[xi] = (B^T d B)[xi]      (tiles, C)    input transform   ("im2col" of this method)
    U[xi] = (G g G^T)[xi]      (C, F)        kernel transform  (on the weights: small)
    M[xi] = V[xi] @ U[xi]      (tiles, F)    16 products, each 1/36 of im2col's one
    y     = A^T M A            (N, Ho, Wo, F) output transform
Backward is the same chain read backwards (each transform's adjoint is its transpose):
    dM = A dy A^T  (output_adjoint);  dU[xi] = V[xi]^T @ dM[xi];  dK = G^T dU G
    dV[xi] = dM[xi] @ U[xi]^T;  dx = B dV B^T added back onto the overlapping input patches
    (input_adjoint: tiles overlap by 2 pixels, as im2col's windows do).
Tiles: `tiles_hw` gives th x tw = ceil(Ho/2) x ceil(Wo/2) per image; tile (p, q) reads input
rows 2p - top .. 2p - top + 3 (and columns likewise), zeros outside the image; an odd Ho
or Wo makes the last tile's second row/column fall outside, and it is dropped.
Rows of V and M are tiles in (n, p, q) order: V is (16, N*th*tw, C), M (16, N*th*tw, F).

`conv3x3_naive` is the formula above, one tile and one channel pair at a time. Each
transform has a NumPy reference (one einsum over the 4x4 tile axes) and a numba kernel
(one thread per image, channels innermost, a tile's 16 x C values in a small per-image
array), which tests hold against each other and against im2col's convolution. Conv2D
takes this method where `pays` says so (thresholds in minicnn.perf, chosen with
benchmarks/models.py); MINICNN_REFERENCE=1 keeps every convolution on im2col.
"""
import numpy as np

from .. import backend, perf
from .gemm import batched_matmul, matmul
from .jit import njit, pick, prange

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def tiles_hw(ho, wo):
    """Tiles per image along H and W for an Ho x Wo output."""
    return (ho + 1) // 2, (wo + 1) // 2


# ----------------------------------------------------------------------------------------
# naive loops: the formula, one tile and one channel pair at a time
# ----------------------------------------------------------------------------------------

def conv3x3_naive(x, kernel, top, left, ho, wo):
    """z = conv(x, kernel), no bias, each 2x2 tile as A^T [(G g G^T) * (B^T d B)] A."""
    n_img, c_n, f_n = x.shape[0], x.shape[3], kernel.shape[3]
    th, tw = tiles_hw(ho, wo)
    xp = _padded(x, top, left, th, tw)
    z = np.zeros((n_img, 2 * th, 2 * tw, f_n), dtype=np.result_type(x, kernel))
    for n, p, q, c, f in np.ndindex(n_img, th, tw, c_n, f_n):
        d = xp[n, 2 * p:2 * p + 4, 2 * q:2 * q + 4, c]            # the 4x4 input patch under tile (p, q)
        u = G @ kernel[:, :, c, f] @ G.T                          # 4x4
        z[n, 2 * p:2 * p + 2, 2 * q:2 * q + 2, f] += AT @ (u * (BT @ d @ BT.T)) @ AT.T
    return z[:, :ho, :wo]                                         # an odd Ho or Wo drops the last row/column


# ----------------------------------------------------------------------------------------
# kernel transforms (on the weights: small, NumPy only)
# ----------------------------------------------------------------------------------------

# G g G^T for every (c, f) at once: entry (a, b) is sum_ij G[a, i] g[i, j] G[b, j], so with
# GG = kron(G, G) (16 x 9, row 4a + b, column 3i + j) it is one product over all C*F pairs.
GG = np.kron(G, G)


def kernel_transform(kernel):
    """U = G g G^T for every (c, f): (3, 3, C, F) -> (16, C, F)."""
    c, f = kernel.shape[2:]
    return matmul(GG.astype(kernel.dtype), kernel.reshape(9, c * f)).reshape(16, c, f)


def kernel_transform_adjoint(du):
    """dK = G^T dU G: (16, C, F) -> (3, 3, C, F), the gradient of kernel_transform."""
    c, f = du.shape[1:]
    return matmul(GG.T.astype(du.dtype), du.reshape(16, c * f)).reshape(3, 3, c, f)


# ----------------------------------------------------------------------------------------
# NumPy reference: gather the 16 cells of every tile with strided slices, then einsum
# ----------------------------------------------------------------------------------------

def _padded(x, top, left, th, tw):
    """x with `top`/`left` zero rows/columns before and enough after for th x tw tiles."""
    n, h, w, c = x.shape
    bottom, right = max(2 * th + 2 - h - top, 0), max(2 * tw + 2 - w - left, 0)
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def input_transform_reference(x, top, left, ho, wo):
    """V = B^T d B for every 4x4 input patch d: (N, H, W, C) -> (16, N*th*tw, C)."""
    th, tw = tiles_hw(ho, wo)
    xp = _padded(x, top, left, th, tw)
    # d[i, j] = cell (i, j) of every tile at once: (4, 4, N, th, tw, C)
    d = np.stack([np.stack([xp[:, i:i + 2 * th:2, j:j + 2 * tw:2, :] for j in range(4)]) for i in range(4)])
    bt = BT.astype(x.dtype)
    v = np.einsum("ai,ijntwc,bj->abntwc", bt, d, bt)
    return v.reshape(16, -1, x.shape[3])


def output_transform_reference(m, n, ho, wo):
    """y = A^T M A per tile, cropped: (16, N*th*tw, F) -> (N, Ho, Wo, F)."""
    th, tw = tiles_hw(ho, wo)
    at = AT.astype(m.dtype)
    y = np.einsum("ua,abntwf,vb->ntuwvf", at, m.reshape(4, 4, n, th, tw, -1), at)   # (N, th, 2, tw, 2, F)
    return np.ascontiguousarray(y.reshape(n, 2 * th, 2 * tw, -1)[:, :ho, :wo, :])


def output_adjoint_reference(dy):
    """dM = A dy A^T per 2x2 tile of dy (the output transform's transpose):
    (N, Ho, Wo, F) -> (16, N*th*tw, F)."""
    n, ho, wo, f = dy.shape
    th, tw = tiles_hw(ho, wo)
    dyp = np.pad(dy, ((0, 0), (0, 2 * th - ho), (0, 2 * tw - wo), (0, 0))).reshape(n, th, 2, tw, 2, f)
    at = AT.astype(dy.dtype)
    dm = np.einsum("ua,ntuwvf,vb->abntwf", at, dyp, at)
    return dm.reshape(16, -1, f)


def input_adjoint_reference(dv, x_shape, top, left, ho, wo):
    """dx: B dV B^T per tile, added onto its 4x4 input patch (the input transform's
    transpose): (16, N*th*tw, C) -> (N, H, W, C)."""
    n, h, w, c = x_shape
    th, tw = tiles_hw(ho, wo)
    bt = BT.astype(dv.dtype)
    dd = np.einsum("ai,abntwc,bj->ijntwc", bt, dv.reshape(4, 4, n, th, tw, c), bt)
    dxp = np.zeros((n, top + max(2 * th + 2 - top, h), left + max(2 * tw + 2 - left, w), c), dtype=dv.dtype)
    for i in range(4):                              # the same slices as the input transform, with +=
        for j in range(4):
            dxp[:, i:i + 2 * th:2, j:j + 2 * tw:2, :] += dd[i, j]
    return np.ascontiguousarray(dxp[:, top:top + h, left:left + w, :])


# ----------------------------------------------------------------------------------------
# numba kernels: one thread per image; a tile's 16 x C values in a small array, C innermost
# ----------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _input_transform_kernel(x, v, top, left, th, tw):
    n_img, h, w, c_n = x.shape
    for n in prange(n_img):
        d = np.empty((4, 4, c_n), dtype=x.dtype)
        for p in range(th):
            for q in range(tw):
                for i in range(4):                  # gather the patch, zeros outside the image
                    r = 2 * p - top + i
                    for j in range(4):
                        s = 2 * q - left + j
                        inside = 0 <= r < h and 0 <= s < w
                        for c in range(c_n):
                            d[i, j, c] = x[n, r, s, c] if inside else 0
                t = (n * th + p) * tw + q
                for j in range(4):                  # B^T d: rows 0 - 2, 1 + 2, 2 - 1, 1 - 3
                    for c in range(c_n):
                        d0, d1, d2, d3 = d[0, j, c], d[1, j, c], d[2, j, c], d[3, j, c]
                        d[0, j, c], d[1, j, c], d[2, j, c], d[3, j, c] = d0 - d2, d1 + d2, d2 - d1, d1 - d3
                for i in range(4):                  # (B^T d) B: the same on columns
                    for c in range(c_n):
                        e0, e1, e2, e3 = d[i, 0, c], d[i, 1, c], d[i, 2, c], d[i, 3, c]
                        v[4 * i, t, c] = e0 - e2
                        v[4 * i + 1, t, c] = e1 + e2
                        v[4 * i + 2, t, c] = e2 - e1
                        v[4 * i + 3, t, c] = e1 - e3


@njit(cache=True, parallel=True)
def _output_transform_kernel(m, y, th, tw):
    n_img, ho, wo, f_n = y.shape
    for n in prange(n_img):
        s = np.empty((2, 4, f_n), dtype=m.dtype)
        for p in range(th):
            for q in range(tw):
                t = (n * th + p) * tw + q
                for b in range(4):                  # A^T m: rows 0 + 1 + 2, 1 - 2 - 3
                    for f in range(f_n):
                        m0, m1, m2, m3 = m[b, t, f], m[4 + b, t, f], m[8 + b, t, f], m[12 + b, t, f]
                        s[0, b, f] = m0 + m1 + m2
                        s[1, b, f] = m1 - m2 - m3
                for u in range(2):                  # (A^T m) A: the same on columns, inside Ho x Wo
                    r = 2 * p + u
                    if r < ho:
                        for f in range(f_n):
                            y[n, r, 2 * q, f] = s[u, 0, f] + s[u, 1, f] + s[u, 2, f]
                        if 2 * q + 1 < wo:
                            for f in range(f_n):
                                y[n, r, 2 * q + 1, f] = s[u, 1, f] - s[u, 2, f] - s[u, 3, f]


@njit(cache=True, parallel=True)
def _output_adjoint_kernel(dy, dm, th, tw):
    n_img, ho, wo, f_n = dy.shape
    for n in prange(n_img):
        g = np.empty((2, 2, f_n), dtype=dy.dtype)
        e = np.empty((4, 2, f_n), dtype=dy.dtype)
        for p in range(th):
            for q in range(tw):
                for u in range(2):                  # the 2x2 tile of dy, zeros past the edge
                    for v in range(2):
                        r, s = 2 * p + u, 2 * q + v
                        inside = r < ho and s < wo
                        for f in range(f_n):
                            g[u, v, f] = dy[n, r, s, f] if inside else 0
                t = (n * th + p) * tw + q
                for v in range(2):                  # A g: the rows of A are (1, 0), (1, 1), (1, -1), (0, -1)
                    for f in range(f_n):
                        g0, g1 = g[0, v, f], g[1, v, f]
                        e[0, v, f], e[1, v, f], e[2, v, f], e[3, v, f] = g0, g0 + g1, g0 - g1, -g1
                for a in range(4):                  # (A g) A^T: the same on columns
                    for f in range(f_n):
                        e0, e1 = e[a, 0, f], e[a, 1, f]
                        dm[4 * a, t, f] = e0
                        dm[4 * a + 1, t, f] = e0 + e1
                        dm[4 * a + 2, t, f] = e0 - e1
                        dm[4 * a + 3, t, f] = -e1


@njit(cache=True, parallel=True)
def _input_adjoint_kernel(dv, dx, top, left, th, tw):
    n_img, h, w, c_n = dx.shape
    for n in prange(n_img):
        e = np.empty((4, 4, c_n), dtype=dv.dtype)
        for p in range(th):
            for q in range(tw):
                t = (n * th + p) * tw + q
                # B dV: the rows of B are (1, 0, 0, 0), (0, 1, -1, 1), (-1, 1, 1, 0), (0, 0, 0, -1)
                for b in range(4):
                    for c in range(c_n):
                        v0, v1, v2, v3 = dv[b, t, c], dv[4 + b, t, c], dv[8 + b, t, c], dv[12 + b, t, c]
                        e[0, b, c], e[1, b, c], e[2, b, c], e[3, b, c] = v0, v1 - v2 + v3, v1 + v2 - v0, -v3
                for i in range(4):                  # (B dV) B^T: the same on columns
                    for c in range(c_n):
                        f0, f1, f2, f3 = e[i, 0, c], e[i, 1, c], e[i, 2, c], e[i, 3, c]
                        e[i, 0, c], e[i, 1, c], e[i, 2, c], e[i, 3, c] = f0, f1 - f2 + f3, f1 + f2 - f0, -f3
                for i in range(4):                  # add onto the patch, inside the image only
                    r = 2 * p - top + i
                    for j in range(4):
                        s = 2 * q - left + j
                        if 0 <= r < h and 0 <= s < w:
                            for c in range(c_n):
                                dx[n, r, s, c] += e[i, j, c]


def _buffer(out, shape, dtype):
    """`out` (a buffer from the layer's workspace, of this shape and dtype), or a new array."""
    if out is None:
        return np.empty(shape, dtype)
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"winograd: out must be a {np.dtype(dtype).name} array of shape {shape}, "
                         f"received {out.dtype} {out.shape}")
    return out


def input_transform_numba(x, top, left, ho, wo, out=None):
    """numba version of `input_transform_reference`, written into `out` when given."""
    th, tw = tiles_hw(ho, wo)
    x = np.ascontiguousarray(x)
    v = _buffer(out, (16, x.shape[0] * th * tw, x.shape[3]), x.dtype)
    with perf.kernel_threads(v.size):
        _input_transform_kernel(x, v, top, left, th, tw)
    return v


def output_transform_numba(m, n, ho, wo):
    """numba version of `output_transform_reference`."""
    th, tw = tiles_hw(ho, wo)
    y = np.empty((n, ho, wo, m.shape[2]), dtype=m.dtype)
    with perf.kernel_threads(m.size):
        _output_transform_kernel(np.ascontiguousarray(m), y, th, tw)
    return y


def output_adjoint_numba(dy, out=None):
    """numba version of `output_adjoint_reference`, written into `out` when given."""
    n, ho, wo, f = dy.shape
    th, tw = tiles_hw(ho, wo)
    dm = _buffer(out, (16, n * th * tw, f), dy.dtype)
    with perf.kernel_threads(dm.size):
        _output_adjoint_kernel(np.ascontiguousarray(dy), dm, th, tw)
    return dm


def input_adjoint_numba(dv, x_shape, top, left, ho, wo):
    """numba version of `input_adjoint_reference`."""
    th, tw = tiles_hw(ho, wo)
    dx = np.zeros(x_shape, dtype=dv.dtype)
    with perf.kernel_threads(dv.size):
        _input_adjoint_kernel(np.ascontiguousarray(dv), dx, top, left, th, tw)
    return dx


# ----------------------------------------------------------------------------------------
# dispatch: MINICNN_REFERENCE=1 runs the NumPy reference (Conv2D then uses im2col anyway)
# ----------------------------------------------------------------------------------------

def input_transform(x, top, left, ho, wo, out=None):
    """V = B^T d B for every 4x4 input patch: (N, H, W, C) -> (16, N*th*tw, C); `out`: a
    buffer the numba kernel writes into (use the result)."""
    if backend.use_reference():
        return input_transform_reference(x, top, left, ho, wo)
    return input_transform_numba(x, top, left, ho, wo, out)


def output_transform(m, n, ho, wo):
    """y = A^T M A per tile: (16, N*th*tw, F) -> (N, Ho, Wo, F)."""
    return pick(output_transform_reference, output_transform_numba)(m, n, ho, wo)


def output_adjoint(dy, out=None):
    """dM = A dy A^T per tile: (N, Ho, Wo, F) -> (16, N*th*tw, F); `out` as in input_transform."""
    if backend.use_reference():
        return output_adjoint_reference(dy)
    return output_adjoint_numba(dy, out)


def input_adjoint(dv, x_shape, top, left, ho, wo):
    """dx = B dV B^T added onto each tile's patch: (16, N*th*tw, C) -> (N, H, W, C)."""
    return pick(input_adjoint_reference, input_adjoint_numba)(dv, x_shape, top, left, ho, wo)


# ----------------------------------------------------------------------------------------
# the convolution: what Conv2D runs for a 3x3, stride-1 kernel between wide layers
# ----------------------------------------------------------------------------------------

def pays(kernel_size, strides, n, ho, wo, channels, filters):
    """Whether Conv2D should use this method for N images, an Ho x Wo output, C -> F channels:
    3x3, stride 1, wide layers (perf.WINOGRAD_MIN_CHANNELS) and enough tiles to share the
    kernel transform (perf.WINOGRAD_MIN_TILES). MINICNN_REFERENCE=1: never (the direct im2col
    convolution is the reference)."""
    th, tw = tiles_hw(ho, wo)
    wide = min(channels, filters) >= perf.WINOGRAD_MIN_CHANNELS
    return (tuple(kernel_size) == (3, 3) and tuple(strides) == (1, 1) and wide
            and n * th * tw >= perf.WINOGRAD_MIN_TILES and not backend.use_reference())


def conv3x3(x, kernel, top, left, ho, wo, workspace=None):
    """z = conv(x, kernel), no bias: (N, H, W, C), (3, 3, C, F) -> (z (N, Ho, Wo, F), saved),
    saved = (V, U) for conv3x3_backward. workspace(name, shape, dtype): a layer's reusable
    arrays for V and M (ops.conv.Workspace; None: new ones)."""
    n, c, f = x.shape[0], x.shape[3], kernel.shape[3]
    th, tw = tiles_hw(ho, wo)
    buffer = workspace or (lambda name, shape, dtype: None)
    v = input_transform(x, top, left, ho, wo, out=buffer("V", (16, n * th * tw, c), x.dtype))
    u = kernel_transform(kernel)
    m = batched_matmul(v, u, out=buffer("M", (16, n * th * tw, f), x.dtype))   # 16 products (tiles, C) @ (C, F)
    return output_transform(m, n, ho, wo), (v, u)


def conv3x3_backward(dz, saved, x_shape, top, left, workspace=None, need_input_gradient=True):
    """dz (N, Ho, Wo, F) -> (dx (N, H, W, C), dkernel (3, 3, C, F)) for conv3x3; dx is None
    when need_input_gradient is False."""
    v, u = saved
    dz = dz.astype(v.dtype, copy=False)              # dx and dkernel in the layer's dtype, as z was
    n, ho, wo, f = dz.shape
    th, tw = tiles_hw(ho, wo)
    buffer = workspace or (lambda name, shape, dtype: None)
    dm = output_adjoint(dz, out=buffer("M", (16, n * th * tw, f), dz.dtype))
    dkernel = kernel_transform_adjoint(batched_matmul(v.transpose(0, 2, 1), dm))   # dU = V^T dM
    if not need_input_gradient:
        return None, dkernel
    dv = batched_matmul(dm, u.transpose(0, 2, 1), out=buffer("dV", v.shape, v.dtype))   # dV = dM U^T
    return input_adjoint(dv, x_shape, top, left, ho, wo), dkernel
