"""Output sizes and padding for "valid" and "same", with TensorFlow's rule for "same".

    valid: out = floor((size - k) / s) + 1,  no padding
    same:  out = ceil(size / s),  total pad = max((out - 1) * s + k - size, 0),
           pad_before = total // 2, pad_after = total - pad_before  (the extra pixel goes
           at the bottom/right; padding symmetrically instead shifts every window by one
           pixel and silently costs a Keras-trained model several points of accuracy)
"""
import functools


def conv_output_length(size, kernel, stride, padding):
    """Output length of one spatial axis; `size` may be None (unknown)."""
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    if padding == "valid":
        return (size - kernel) // stride + 1
    raise ValueError(f"padding must be 'valid' or 'same', received {padding!r}")


def pad_amounts(size, kernel, stride, padding):
    """(pad_before, pad_after) for one spatial axis; None when "same" meets an unknown size."""
    if padding == "valid":
        return 0, 0
    if size is None:
        return None
    out = conv_output_length(size, kernel, stride, padding)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_geometry(height, width, kernel_size, strides, padding):
    """Everything a 2-D window op needs: ((top, bottom), (left, right)), Ho, Wo (None where the
    input size is unknown, as when a graph is built); an error if no window fits."""
    return _geometry(height, width, tuple(kernel_size), tuple(strides), padding)


@functools.lru_cache(maxsize=1024)
def _geometry(height, width, kernel_size, strides, padding):
    """conv_geometry, computed once per shape: every layer asks again on every batch."""
    (kh, kw), (sh, sw) = kernel_size, strides
    ho, wo = conv_output_length(height, kh, sh, padding), conv_output_length(width, kw, sw, padding)
    if (ho is not None and ho < 1) or (wo is not None and wo < 1):
        raise ValueError(f"a {kh}x{kw} window with strides {tuple(strides)} and padding {padding!r} "
                         f"does not fit an input of {height}x{width}")
    pads = (pad_amounts(height, kh, sh, padding), pad_amounts(width, kw, sw, padding))
    return pads, ho, wo
