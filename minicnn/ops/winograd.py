"""Winograd's F(m x m, r x r): a 3x3 (or 5x5), stride-1 convolution with fewer multiplications.

Lavin & Gray (2015), "Fast Algorithms for Convolutional Neural Networks". Cut the output into
m x m tiles; the a x a input patch d under a tile (a = m + 2; m + r - 1 for an r x r kernel)
and the 3x3 kernel g give the tile as
    y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, a x a)
which needs a^2 multiplications per channel pair where the direct sum needs 9 m^2:
F(2x2) 16 for 36 (2.25x fewer), F(4x4) 36 for 144 (4x fewer). Over channels, the a^2 entries
xi = (i, j) of the a x a become a^2 independent matrix products:
    V[xi] = (B^T d B)[xi]      (tiles, C)    input transform   ("im2col" of this method)
    U[xi] = (G g G^T)[xi]      (C, F)        kernel transform  (on the weights: small)
    M[xi] = V[xi] @ U[xi]      (tiles, F)    a^2 products: a^2 / (9 m^2) of im2col's multiplications
    y     = A^T M A            (N, Ho, Wo, F) output transform
Backward is the same chain read backwards (each transform's adjoint is its transpose):
    dM = A dy A^T  (output_adjoint);  dU[xi] = V[xi]^T @ dM[xi];  dK = G^T dU G
    dV[xi] = dM[xi] @ U[xi]^T;  dx = B dV B^T added back onto the overlapping input patches
    (input_adjoint: tiles overlap by r - 1 pixels, as im2col's windows do).
Tiles: `tiles_hw` gives th x tw = ceil(Ho/m) x ceil(Wo/m) per image; tile (p, q) reads input
rows m*p - top .. m*p - top + a - 1 (and columns likewise), zeros outside the image; where m
does not divide Ho or Wo, the last tile's rows/columns past the output are dropped.
Rows of V and M are tiles in (n, p, q) order: V is (a^2, N*th*tw, C), M (a^2, N*th*tw, F).
Every function takes the Tiling (F2, F4 or F4_5X5; F2 by default) and reads m, a and r from
it, so the same kernels run F(4x4, 5x5) for a 5x5 kernel (a = 8: 64 products).

The matrices come from Toom-Cook interpolation at a - 1 points and infinity (`toom_cook`): a
larger tile saves more multiplications but its matrices hold larger numbers, so float32
rounding grows with m; benchmarks/kernels_winograd.py measures both the error and the speed,
and `winograd_tile` picks im2col, F(2x2) or F(4x4) per layer shape from those measurements.

`conv_naive` is the formula above, one tile and one channel pair at a time. Each transform
has a NumPy reference (one einsum over the a x a tile axes) and a numba kernel (one thread per
image; a tile's a x a x C values in a small per-image array, channels innermost, each tiling's
kernels made with its small matrices as constants, `_sandwich`), which tests hold against each other and against
im2col's convolution. MINICNN_REFERENCE=1 runs the references (and the compiler uses im2col).
"""
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from .. import backend, perf
from .buffers import reuse_or_new
from .gemm import batched_matmul, bind_batched_matmul, matmul
from .jit import njit, prange


# ----------------------------------------------------------------------------------------
# the transforms' matrices
# ----------------------------------------------------------------------------------------

class Tiling(NamedTuple):
    """F(m x m, r x r): m x m output tiles of an r x r kernel from a x a input patches, a = m + r - 1."""
    m: int
    r: int
    BT: np.ndarray       # (a, a)  input transform B^T
    G: np.ndarray        # (a, r)  kernel transform
    AT: np.ndarray       # (m, a)  output transform A^T
    GG: np.ndarray       # (a^2, r^2) kron(G, G): G g G^T of every kernel as one product

    @property
    def a(self):
        return self.m + self.r - 1

    def __repr__(self):
        return f"F({self.m}x{self.m}, {self.r}x{self.r})"


def _times_root(poly, root):
    """The coefficients (lowest power first) of poly(x) * (x - root)."""
    return [shifted - root * c for shifted, c in zip([0] + poly, poly + [0])]


def toom_cook(m, points, r=3):
    """F(m, r)'s B^T, G, A^T from a - 1 finite points and infinity, in exact fractions.

    The 1-D correlation y_i = sum_j d[i + j] g[j] is the transpose of multiplying polynomials
    g(x) d(x): evaluate both at the points (G: g's values; A: d's), multiply, interpolate
    (B^T: row k holds the Lagrange polynomial prod_{l != k} (x - p_l), its 1 / prod (p_k - p_l)
    moved into G; the last row, for infinity, M(x) = prod_l (x - p_l))."""
    points = [Fraction(p) for p in points]
    a = m + r - 1
    if len(points) != a - 1 or len(set(points)) != len(points):
        raise ValueError(f"toom_cook: F({m}, {r}) needs {a - 1} distinct points, received {points}")
    bt, g, at = np.zeros((a, a), object), np.zeros((a, r), object), np.zeros((m, a), object)
    for k, p in enumerate(points):
        lagrange, scale = [Fraction(1)], Fraction(1)
        for q in points[:k] + points[k + 1:]:
            lagrange, scale = _times_root(lagrange, q), scale * (p - q)
        sign = 1 if scale > 0 else -1                                   # keep G's 1/scale positive
        bt[k] = [sign * c for c in lagrange] + [0]
        g[k] = [p ** j / abs(scale) for j in range(r)]
        at[:, k] = [p ** i for i in range(m)]
    everywhere = [Fraction(1)]
    for q in points:
        everywhere = _times_root(everywhere, q)
    bt[a - 1], g[a - 1], at[:, a - 1] = everywhere, [0] * (r - 1) + [1], [0] * (m - 1) + [1]
    g = g.astype(np.float64)
    return Tiling(m, r, bt.astype(np.float64), g, at.astype(np.float64), np.kron(g, g))


# F(2x2, 3x3): Lavin & Gray's points. F(4x4, 3x3): 0, +-1, 1/2, -2 rather than their 0, +-1,
# +-2: the same multiplications with less float32 rounding (benchmarks/kernels_winograd.py).
# F(4x4, 5x5): 64 multiplications for 400 (6.25x fewer), at 0, +-1, +-2, +-1/2.
F2 = toom_cook(2, (0, 1, -1))
F4 = toom_cook(4, (0, 1, -1, Fraction(1, 2), -2))
F4_5X5 = toom_cook(4, (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)), r=5)
TILINGS = {(t.m, t.r): t for t in (F2, F4, F4_5X5)}


def tiling(m, r=3):
    """The Tiling of F(m x m, r x r), one of TILINGS."""
    if (m, r) not in TILINGS:
        raise ValueError(f"winograd: no F({m}x{m}, {r}x{r}); there are {list(TILINGS.values())}")
    return TILINGS[m, r]


def tiles_hw(ho, wo, tile=2):
    """Tiles per image along H and W for an Ho x Wo output in tile x tile tiles."""
    return -(-ho // tile), -(-wo // tile)


# ----------------------------------------------------------------------------------------
# naive loops: the formula, one tile and one channel pair at a time
# ----------------------------------------------------------------------------------------

def conv_naive(x, kernel, top, left, ho, wo, tiling=F2):
    """z = conv(x, kernel), no bias, each m x m tile as A^T [(G g G^T) * (B^T d B)] A."""
    t, (n_img, c_n, f_n) = tiling, (x.shape[0], x.shape[3], kernel.shape[3])
    th, tw = tiles_hw(ho, wo, t.m)
    xp = _padded(x, top, left, th, tw, t)
    z = np.zeros((n_img, t.m * th, t.m * tw, f_n), dtype=np.result_type(x, kernel))
    for n, p, q, c, f in np.ndindex(n_img, th, tw, c_n, f_n):
        d = xp[n, t.m * p:t.m * p + t.a, t.m * q:t.m * q + t.a, c]      # the a x a input patch under tile (p, q)
        u = t.G @ kernel[:, :, c, f] @ t.G.T                          # a x a
        z[n, t.m * p:t.m * (p + 1), t.m * q:t.m * (q + 1), f] += t.AT @ (u * (t.BT @ d @ t.BT.T)) @ t.AT.T
    return z[:, :ho, :wo]                                             # drop rows/columns past the output


# ----------------------------------------------------------------------------------------
# kernel transforms (on the weights: small, NumPy only)
# ----------------------------------------------------------------------------------------

def _gg(t, dtype):
    """kron(G, G) (a^2 x r^2, row a*i + j, column r*k + l) in dtype: G g G^T of all C*F kernels in one product."""
    return t.GG.astype(dtype, copy=False)


def kernel_transform(kernel, tiling=F2):
    """U = G g G^T for every (c, f): (r, r, C, F) -> (a^2, C, F)."""
    t, (c, f) = tiling, kernel.shape[2:]
    return matmul(_gg(t, kernel.dtype), kernel.reshape(t.r * t.r, c * f)).reshape(t.a * t.a, c, f)


def kernel_transform_adjoint(du, tiling=F2):
    """dK = G^T dU G: (a^2, C, F) -> (r, r, C, F), the gradient of kernel_transform."""
    t, (c, f) = tiling, du.shape[1:]
    return matmul(_gg(t, du.dtype).T, du.reshape(t.a * t.a, c * f)).reshape(t.r, t.r, c, f)


# ----------------------------------------------------------------------------------------
# NumPy reference: gather the a x a cells of every tile with strided slices, then einsum
# ----------------------------------------------------------------------------------------

def _padded(x, top, left, th, tw, t):
    """x with `top`/`left` zero rows/columns before and enough after for th x tw tiles."""
    n, h, w, c = x.shape
    bottom, right = max(t.m * th + t.r - 1 - h - top, 0), max(t.m * tw + t.r - 1 - w - left, 0)
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def input_transform_reference(x, top, left, ho, wo, tiling=F2):
    """V = B^T d B for every a x a input patch d: (N, H, W, C) -> (a^2, N*th*tw, C)."""
    t = tiling
    th, tw = tiles_hw(ho, wo, t.m)
    xp = _padded(x, top, left, th, tw, t)
    # d[i, j] = cell (i, j) of every tile at once: (a, a, N, th, tw, C)
    d = np.stack([np.stack([xp[:, i:i + t.m * th:t.m, j:j + t.m * tw:t.m, :] for j in range(t.a)])
                  for i in range(t.a)])
    bt = t.BT.astype(x.dtype)
    v = np.einsum("ai,ijntwc,bj->abntwc", bt, d, bt)
    return v.reshape(t.a * t.a, -1, x.shape[3])


def output_transform_reference(m, n, ho, wo, tiling=F2):
    """y = A^T M A per tile, cropped: (a^2, N*th*tw, F) -> (N, Ho, Wo, F)."""
    t = tiling
    th, tw = tiles_hw(ho, wo, t.m)
    at = t.AT.astype(m.dtype)
    y = np.einsum("ua,abntwf,vb->ntuwvf", at, m.reshape(t.a, t.a, n, th, tw, -1), at)   # (N, th, m, tw, m, F)
    return np.ascontiguousarray(y.reshape(n, t.m * th, t.m * tw, -1)[:, :ho, :wo, :])


def output_adjoint_reference(dy, tiling=F2):
    """dM = A dy A^T per m x m tile of dy (the output transform's transpose):
    (N, Ho, Wo, F) -> (a^2, N*th*tw, F)."""
    t, (n, ho, wo, f) = tiling, dy.shape
    th, tw = tiles_hw(ho, wo, t.m)
    dyp = np.pad(dy, ((0, 0), (0, t.m * th - ho), (0, t.m * tw - wo), (0, 0))).reshape(n, th, t.m, tw, t.m, f)
    at = t.AT.astype(dy.dtype)
    dm = np.einsum("ua,ntuwvf,vb->abntwf", at, dyp, at)
    return dm.reshape(t.a * t.a, -1, f)


def input_adjoint_reference(dv, x_shape, top, left, ho, wo, tiling=F2):
    """dx: B dV B^T per tile, added onto its a x a input patch (the input transform's
    transpose): (a^2, N*th*tw, C) -> (N, H, W, C)."""
    t, (n, h, w, c) = tiling, x_shape
    th, tw = tiles_hw(ho, wo, t.m)
    bt = t.BT.astype(dv.dtype)
    dd = np.einsum("ai,abntwc,bj->ijntwc", bt, dv.reshape(t.a, t.a, n, th, tw, c), bt)
    dxp = np.zeros((n, max(t.m * th + t.r - 1, top + h), max(t.m * tw + t.r - 1, left + w), c), dtype=dv.dtype)
    for i in range(t.a):                            # the same slices as the input transform, with +=
        for j in range(t.a):
            dxp[:, i:i + t.m * th:t.m, j:j + t.m * tw:t.m, :] += dd[i, j]
    return np.ascontiguousarray(dxp[:, top:top + h, left:left + w, :])


# ----------------------------------------------------------------------------------------
# numba kernels: one thread per image; a tile's a x a x C values in a small array, C innermost.
# Each tiling's kernels are made for it: its matrices are constants of the compiled code, so
# numba unrolls the short sums over them and keeps each in a register (as an argument, each
# term was a pass over the tile's C numbers).
# ----------------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _sandwich(mat, src, tmp, dst):
    """dst = mat src mat^T on a tile's first two axes, (k, k, C) -> (n, n, C) for mat (n, k),
    through tmp (n, k, C); dst may be src. Called with a kernel's constant mat, it is compiled into
    that kernel with mat's numbers in the code."""
    n, k = mat.shape
    for i in range(n):                              # tmp = mat src
        for j in range(k):
            for c in range(src.shape[2]):
                acc = mat[i, 0] * src[0, j, c]
                for l in range(1, k):
                    acc += mat[i, l] * src[l, j, c]
                tmp[i, j, c] = acc
    for i in range(n):                              # dst = tmp mat^T
        for j in range(n):
            for c in range(src.shape[2]):
                acc = mat[j, 0] * tmp[i, 0, c]
                for l in range(1, k):
                    acc += mat[j, l] * tmp[i, l, c]
                dst[i, j, c] = acc


class Kernels(NamedTuple):
    """A tiling's four transform kernels in one dtype (see _kernels)."""
    input_transform: object        # (x, v, top, left, th, tw)
    output_transform: object       # (m_planes, bias, y, th, tw, moments, floor)
    output_adjoint: object         # (dy, dm, th, tw, sums)
    input_adjoint: object          # (dv, dx, top, left, th, tw)


_KERNELS = {}        # (id(tiling), dtype) -> (tiling, Kernels): made on first use; the tiling kept so its id stays its own


def _kernels(tiling, dtype):
    """`tiling`'s kernels with its matrices in `dtype`, made once."""
    key = (id(tiling), np.dtype(dtype))
    if key not in _KERNELS:
        bt, at = _matrix(tiling.BT, dtype), _matrix(tiling.AT, dtype)
        _KERNELS[key] = (tiling, Kernels(_input_transform_kernel(bt, tiling.m), _output_transform_kernel(at),
                                         _output_adjoint_kernel(_matrix(at.T, dtype)),
                                         _input_adjoint_kernel(_matrix(bt.T, dtype), tiling.m)))
    return _KERNELS[key][1]


def _input_transform_kernel(b_t, m):
    """V[a*i + j, tile, :] = (B^T d B)[i, j, :] for every tile's a x a patch d (zeros outside x)."""
    a = b_t.shape[0]

    @njit(cache=True, parallel=True)
    def kernel(x, v, top, left, th, tw):
        n_img, h, w, c_n = x.shape
        for n in prange(n_img):
            d = np.empty((a, a, c_n), dtype=x.dtype)
            e = np.empty((a, a, c_n), dtype=x.dtype)
            for p in range(th):
                for q in range(tw):
                    for i in range(a):                  # gather the patch, zeros outside the image
                        r = m * p - top + i
                        for j in range(a):
                            s = m * q - left + j
                            inside = 0 <= r < h and 0 <= s < w
                            for c in range(c_n):
                                d[i, j, c] = x[n, r, s, c] if inside else 0
                    _sandwich(b_t, d, e, d)             # B^T d B
                    t = (n * th + p) * tw + q
                    for i in range(a):
                        for j in range(a):
                            for c in range(c_n):
                                v[a * i + j, t, c] = d[i, j, c]
    return kernel


def _output_transform_kernel(a_t):
    """y = A^T M A + bias on every tile, inside Ho x Wo; per-image float64 moments of max(y, floor)
    when given."""
    m, a = a_t.shape

    @njit(cache=True, parallel=True)
    def kernel(m_planes, bias, y, th, tw, moments, floor):
        n_img, ho, wo, f_n = y.shape
        for n in prange(n_img):
            g = np.empty((a, a, f_n), dtype=m_planes.dtype)
            s = np.empty((m, a, f_n), dtype=m_planes.dtype)
            o = np.empty((m, m, f_n), dtype=m_planes.dtype)
            for p in range(th):
                for q in range(tw):
                    t = (n * th + p) * tw + q
                    for i in range(a):
                        for j in range(a):
                            for f in range(f_n):
                                g[i, j, f] = m_planes[a * i + j, t, f]
                    _sandwich(a_t, g, s, o)             # A^T M A
                    for u in range(m):                  # inside Ho x Wo only, the bias added
                        r = m * p + u
                        for v in range(m):
                            col = m * q + v
                            if r < ho and col < wo:
                                for f in range(f_n):
                                    o[u, v, f] += bias[f]
                                    y[n, r, col, f] = o[u, v, f]
                                if moments.shape[0]:    # per-image float64 sum and sum of squares
                                    for f in range(f_n):
                                        w = floor if o[u, v, f] < floor else o[u, v, f]
                                        moments[n, 0, f] += w
                                        moments[n, 1, f] += np.float64(w) * w
    return kernel


def _output_adjoint_kernel(a_mat):
    """dM = A dy A^T on every m x m tile of dy (zeros past the edge); per-image float64 sums of dy when given."""
    a, m = a_mat.shape

    @njit(cache=True, parallel=True)
    def kernel(dy, dm, th, tw, sums):
        n_img, ho, wo, f_n = dy.shape
        for n in prange(n_img):
            g = np.empty((m, m, f_n), dtype=dy.dtype)
            e = np.empty((a, m, f_n), dtype=dy.dtype)
            o = np.empty((a, a, f_n), dtype=dy.dtype)
            for p in range(th):
                for q in range(tw):
                    for u in range(m):                  # the m x m tile of dy, zeros past the edge
                        for v in range(m):
                            r, s = m * p + u, m * q + v
                            inside = r < ho and s < wo
                            for f in range(f_n):
                                g[u, v, f] = dy[n, r, s, f] if inside else 0
                    if sums.shape[0]:                   # tiles do not overlap: each dy once
                        for u in range(m):
                            for v in range(m):
                                for f in range(f_n):
                                    sums[n, f] += g[u, v, f]
                    _sandwich(a_mat, g, e, o)           # A dy A^T
                    t = (n * th + p) * tw + q
                    for i in range(a):
                        for j in range(a):
                            for f in range(f_n):
                                dm[a * i + j, t, f] = o[i, j, f]
    return kernel


def _input_adjoint_kernel(b_mat, m):
    """dx = the sum over tiles of B dV B^T added onto each tile's patch (inside x), image by image."""
    a = b_mat.shape[0]

    @njit(cache=True, parallel=True)
    def kernel(dv, dx, top, left, th, tw):
        n_img, h, w, c_n = dx.shape
        for n in prange(n_img):
            dx[n] = 0                                   # this image's patches are added on below
            g = np.empty((a, a, c_n), dtype=dv.dtype)
            e = np.empty((a, a, c_n), dtype=dv.dtype)
            for p in range(th):
                for q in range(tw):
                    t = (n * th + p) * tw + q
                    for i in range(a):
                        for j in range(a):
                            for c in range(c_n):
                                g[i, j, c] = dv[a * i + j, t, c]
                    _sandwich(b_mat, g, e, g)           # B dV B^T
                    for i in range(a):                  # add onto the patch, inside the image only
                        r = m * p - top + i
                        for j in range(a):
                            s = m * q - left + j
                            if 0 <= r < h and 0 <= s < w:
                                for c in range(c_n):
                                    dx[n, r, s, c] += g[i, j, c]
    return kernel


def _buffer(out, shape, dtype):
    return reuse_or_new(out, shape, dtype, "winograd: out")


def _matrix(matrix, dtype):
    """A transform's matrix as the kernels read it: contiguous, in the data's dtype."""
    return np.ascontiguousarray(matrix, dtype=dtype)


def input_transform_numba(x, top, left, ho, wo, tiling=F2, out=None):
    """numba version of `input_transform_reference`, written into `out` when given."""
    t = tiling
    th, tw = tiles_hw(ho, wo, t.m)
    x = np.ascontiguousarray(x)
    v = _buffer(out, (t.a * t.a, x.shape[0] * th * tw, x.shape[3]), x.dtype)
    with perf.kernel_threads(v.size):
        _kernels(t, x.dtype).input_transform(x, v, top, left, th, tw)
    return v


def output_transform_numba(m, n, ho, wo, tiling=F2, out=None, moments=None, bias=None, moments_floor=-np.inf):
    """numba version of `output_transform_reference` (plus `bias` (F,) when given), written into
    `out` when given; with `moments`, a float64 (2, F) array, also the per-channel sum and sum of
    squares of max(y, moments_floor) there."""
    t, f = tiling, m.shape[2]
    th, tw = tiles_hw(ho, wo, t.m)
    y = _buffer(out, (n, ho, wo, f), m.dtype)
    partial = np.zeros((n, 2, f) if moments is not None else (0, 2, f))     # a row per image: no races
    bias = np.zeros(f, m.dtype) if bias is None else np.ascontiguousarray(bias, dtype=m.dtype)
    with perf.kernel_threads(m.size):
        _kernels(t, m.dtype).output_transform(np.ascontiguousarray(m), bias, y, th, tw, partial,
                                              m.dtype.type(moments_floor))
    if moments is not None:
        np.sum(partial, axis=0, out=_buffer(moments, (2, f), np.float64))
    return y


def output_adjoint_numba(dy, tiling=F2, out=None, sums=None):
    """numba version of `output_adjoint_reference`, written into `out` when given; with `sums`, a
    float64 (F,) array, also dy's per-channel sum there."""
    t, (n, ho, wo, f) = tiling, dy.shape
    th, tw = tiles_hw(ho, wo, t.m)
    dm = _buffer(out, (t.a * t.a, n * th * tw, f), dy.dtype)
    partial = np.zeros((n, f) if sums is not None else (0, f))          # a row per image: no races
    with perf.kernel_threads(dm.size):
        _kernels(t, dy.dtype).output_adjoint(np.ascontiguousarray(dy), dm, th, tw, partial)
    if sums is not None:
        np.sum(partial, axis=0, out=_buffer(sums, (f,), np.float64))
    return dm


def input_adjoint_numba(dv, x_shape, top, left, ho, wo, tiling=F2, out=None):
    """numba version of `input_adjoint_reference`, written into `out` when given."""
    t = tiling
    th, tw = tiles_hw(ho, wo, t.m)
    dx = _buffer(out, tuple(x_shape), dv.dtype)     # zeroed by the kernel, image by image
    with perf.kernel_threads(dv.size):
        _kernels(t, dv.dtype).input_adjoint(np.ascontiguousarray(dv), dx, top, left, th, tw)
    return dx


# ----------------------------------------------------------------------------------------
# dispatch: MINICNN_REFERENCE=1 runs the NumPy reference (which writes into no buffer)
# ----------------------------------------------------------------------------------------

def input_transform(x, top, left, ho, wo, tiling=F2, out=None):
    """V = B^T d B for every a x a input patch: (N, H, W, C) -> (a^2, N*th*tw, C); `out`: a
    buffer the numba kernel writes into (use the result)."""
    if backend.use_reference():
        return input_transform_reference(x, top, left, ho, wo, tiling)
    return input_transform_numba(x, top, left, ho, wo, tiling, out)


def output_transform(m, n, ho, wo, tiling=F2, out=None, moments=None, bias=None, moments_floor=-np.inf):
    """y = A^T M A per tile (+ bias (F,) when given): (a^2, N*th*tw, F) -> (N, Ho, Wo, F); `out`
    as in input_transform; `moments`: a float64 (2, F) array that receives the per-channel sum and
    sum of squares of max(y, moments_floor) (what a following BatchNormalization needs: 0 when a
    ReLU comes before it); None: not computed."""
    if not backend.use_reference():
        return output_transform_numba(m, n, ho, wo, tiling, out, moments, bias, moments_floor)
    y = output_transform_reference(m, n, ho, wo, tiling)
    if bias is not None:
        y += bias
    if moments is not None:
        y64 = np.maximum(y, y.dtype.type(moments_floor)).reshape(-1, y.shape[3]).astype(np.float64)
        moments[0], moments[1] = y64.sum(axis=0), (y64 * y64).sum(axis=0)
    return y


def output_adjoint(dy, tiling=F2, out=None, sums=None):
    """dM = A dy A^T per tile: (N, Ho, Wo, F) -> (a^2, N*th*tw, F); `out` as in input_transform;
    `sums`: a float64 (F,) array that receives dy's per-channel sum (a bias's gradient); None: not computed."""
    if not backend.use_reference():
        return output_adjoint_numba(dy, tiling, out, sums)
    if sums is not None:
        sums[...] = dy.reshape(-1, dy.shape[-1]).astype(np.float64).sum(axis=0)
    return output_adjoint_reference(dy, tiling)


def input_adjoint(dv, x_shape, top, left, ho, wo, tiling=F2, out=None):
    """dx = B dV B^T added onto each tile's patch: (a^2, N*th*tw, C) -> (N, H, W, C); `out`
    as in input_transform (overwritten, not added to)."""
    if backend.use_reference():
        return input_adjoint_reference(dv, x_shape, top, left, ho, wo, tiling)
    return input_adjoint_numba(dv, x_shape, top, left, ho, wo, tiling, out)


# ----------------------------------------------------------------------------------------
# the convolution, and which tiling pays for a layer's shape
# ----------------------------------------------------------------------------------------

class Saved(NamedTuple):
    """What conv_backward needs from conv."""
    v: np.ndarray        # (a^2, tiles, C) the transformed input
    u: np.ndarray        # (a^2, C, F) the transformed kernel
    tiling: Tiling


def conv(x, kernel, top, left, ho, wo, workspace=None, tiling=F2, out=None, moments=None, u=None, bias=None,
         moments_floor=-np.inf):
    """z = conv(x, kernel) (+ bias (F,) when given, in the output transform's pass) by `tiling`:
    (N, H, W, C), (r, r, C, F) -> (z (N, Ho, Wo, F), saved) for conv_backward. workspace(name, shape,
    dtype): reusable arrays for V and M (minicnn.compiler.buffers.Buffers; None: new ones); `out`:
    z's buffer; `moments`: a float64 (2, F) array for the per-channel sum and sum of squares of
    max(z, moments_floor); `u`: kernel_transform(kernel, tiling), when the caller keeps it."""
    t, n, c, f = tiling, x.shape[0], x.shape[3], kernel.shape[3]
    if kernel.shape[:2] != (t.r, t.r):
        raise ValueError(f"winograd: {t} takes a {t.r}x{t.r} kernel, received kernel.shape={kernel.shape}")
    th, tw = tiles_hw(ho, wo, t.m)
    buffer = workspace or (lambda name, shape, dtype: None)
    v = input_transform(x, top, left, ho, wo, t, out=buffer("V", (t.a * t.a, n * th * tw, c), x.dtype))
    u = kernel_transform(kernel, t) if u is None else u
    m = batched_matmul(v, u, out=buffer("M", (t.a * t.a, n * th * tw, f), x.dtype))   # a^2 products (tiles, C) @ (C, F)
    return output_transform(m, n, ho, wo, t, out, moments, bias, moments_floor), Saved(v, u, t)


def bind_conv(x_shape, u, top, left, ho, wo, tiling):
    """conv's forward for inputs of x_shape with the kernel's transform u = kernel_transform(kernel,
    tiling) kept (its dtype the data's): V, M and z made once; run(x) -> z, the same array every
    call (compiler/plan.py)."""
    t, n, c, f = tiling, x_shape[0], x_shape[3], u.shape[2]
    th, tw = tiles_hw(ho, wo, t.m)
    v, m = (np.empty((t.a * t.a, n * th * tw, k), u.dtype) for k in (c, f))
    z, no_moments, no_bias = np.empty((n, ho, wo, f), u.dtype), np.zeros((0, 2, f)), np.zeros(f, u.dtype)
    kernels, product = _kernels(t, u.dtype), bind_batched_matmul(n * th * tw, u)

    def run(x):
        kernels.input_transform(np.ascontiguousarray(x), v, top, left, th, tw)
        product(v, m)
        kernels.output_transform(m, no_bias, z, th, tw, no_moments, u.dtype.type(-np.inf))
        return z
    return run


def conv_backward(dz, saved, x_shape, top, left, workspace=None, need_input_gradient=True, out=None,
                  bias_sum=None):
    """dz (N, Ho, Wo, F) -> (dx (N, H, W, C), dkernel (r, r, C, F)) for conv; dx is None when
    need_input_gradient is False; `out`: dx's buffer; `bias_sum`: a float64 (F,) array that
    receives dz's per-channel sum (the bias's gradient) in the output adjoint's pass."""
    v, u, t = saved
    dz = dz.astype(v.dtype, copy=False)              # dx and dkernel in the layer's dtype, as z was
    n, ho, wo, f = dz.shape
    th, tw = tiles_hw(ho, wo, t.m)
    buffer = workspace or (lambda name, shape, dtype: None)
    dm = output_adjoint(dz, t, out=buffer("M", (t.a * t.a, n * th * tw, f), dz.dtype), sums=bias_sum)
    dkernel = kernel_transform_adjoint(batched_matmul(v.transpose(0, 2, 1), dm), t)   # dU = V^T dM
    if not need_input_gradient:
        return None, dkernel
    dv = batched_matmul(dm, u.transpose(0, 2, 1), out=buffer("dV", v.shape, v.dtype))   # dV = dM U^T
    return input_adjoint(dv, x_shape, top, left, ho, wo, t, out=out), dkernel


# the names from when F(2x2, 3x3) was the only tiling
conv3x3, conv3x3_backward, conv3x3_naive = conv, conv_backward, conv_naive


def pays(kernel_size, strides, n, ho, wo, channels, filters, kernel_kept=False):
    """Whether F(2x2, 3x3) pays for N images, an Ho x Wo output, C -> F channels:
    3x3, stride 1, wide layers (perf.WINOGRAD_MIN_CHANNELS) and enough tiles to share the
    kernel transform (perf.WINOGRAD_MIN_TILES; perf.WINOGRAD_2X2_KEPT_MIN_TILES where the caller
    keeps the transform between calls). MINICNN_REFERENCE=1: never (the direct im2col
    convolution is the reference)."""
    th, tw = tiles_hw(ho, wo)
    wide = min(channels, filters) >= perf.WINOGRAD_MIN_CHANNELS
    least = perf.WINOGRAD_2X2_KEPT_MIN_TILES if kernel_kept else perf.WINOGRAD_MIN_TILES
    return (tuple(kernel_size) == (3, 3) and tuple(strides) == (1, 1) and wide
            and n * th * tw >= least and not backend.use_reference())


def kept_min_tiles(k, c, f):
    """The tiles from which F(4x4, k x k) pays for a k x k kernel whose transform is kept between calls."""
    if k == 5:
        return perf.WINOGRAD_5X5_KEPT_MIN_TILES
    small = 36 * c * f <= perf.WINOGRAD_KEPT_MAX_NUMBERS
    return perf.WINOGRAD_3X3_KEPT_MIN_TILES if small else perf.WINOGRAD4_MIN_TILES


def winograd_tile(x_shape, kernel_shape, strides=(1, 1), padding="same", kernel_kept=False):
    """The method a convolution of this shape trains fastest with: a Tiling (F4, F4_5X5 or F2)
    or None (im2col). x_shape (N, H, W, C), kernel_shape (kh, kw, C, F), Keras' padding.
    Winograd needs a 3x3 or 5x5 kernel at stride 1; 4x4 tiles pay where they cover the output
    with little waste, on enough channels and tiles (perf.WINOGRAD4_*); else F(2x2, 3x3) where
    `pays` says so. kernel_kept: the caller keeps the kernel transform between calls (inference),
    so a 5x5 kernel's F(4x4, 5x5) pays from fewer tiles (perf.WINOGRAD_5X5_KEPT_MIN_TILES), a
    3x3 kernel's F(4x4, 3x3) too where its transform is small (perf.WINOGRAD_3X3_KEPT_MIN_TILES),
    and F(2x2, 3x3) from perf.WINOGRAD_2X2_KEPT_MIN_TILES.
    MINICNN_REFERENCE=1: None."""
    n, h, w, _ = x_shape
    kh, kw, c, f = kernel_shape
    if kh != kw or (4, kh) not in TILINGS or tuple(strides) != (1, 1) or backend.use_reference():
        return None
    ho, wo = (h, w) if padding == "same" else (h - kh + 1, w - kw + 1)
    if ho < 1 or wo < 1:
        return None
    th, tw = tiles_hw(ho, wo, 4)
    kept = ho * wo / (16 * th * tw)                 # the share of the 4x4 tiles' outputs inside Ho x Wo
    min_tiles = kept_min_tiles(kh, c, f) if kernel_kept else perf.WINOGRAD4_MIN_TILES
    if (min(c, f) >= perf.WINOGRAD4_MIN_CHANNELS and n * th * tw >= min_tiles
            and kept >= perf.WINOGRAD4_MIN_KEPT):
        return TILINGS[4, kh]
    return F2 if kh == 3 and pays((3, 3), (1, 1), n, ho, wo, c, f, kernel_kept) else None
