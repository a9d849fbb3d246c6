"""The epilogue of a chain: what follows its product (ReLU, BatchNormalization, ReLU, MaxPooling2D,
Dropout, the residual Add) in one pass each way, by ops/epilogue.py's kernels.

`epilogue_layers(head, tail)` reads a chain's tail as ops.epilogue.Epilogue's block
    [ReLU] [BatchNormalization] [ReLU] [MaxPooling2D] [Dropout] [+ residual]
with one ReLU at most, before or after the BatchNormalization (the head's own ReLU activation
counts as the first), or says it does not fit; then the chain runs as its layers' stages.
`EpilogueStage` computes what those layers compute: the same batch statistics and moving update
(BatchNormalization.batch_statistics), the same dropout draws from the same generator, and sets
gamma's and beta's gradients.
"""
from typing import NamedTuple, Optional

import numpy as np

from .. import backend
from ..layers.base import Layer
from ..layers.conv import window_geometry
from ..layers.core import Activation, Dropout
from ..layers.merge import Add
from ..layers.normalization import BatchNormalization
from ..layers.pooling import MaxPooling2D
from ..ops import epilogue
from ..ops.elementwise import random_bits

# the block's places in order; a chain's tail must take them in this order, each at most once
PLACES = ("relu_before", "batchnorm", "relu_after", "pool", "dropout", "add")


class EpilogueLayers(NamedTuple):
    """The layers of one epilogue block (None where the block has none)."""
    relu: Optional[str]                  # None, "before" or "after" BatchNormalization
    batchnorm: Optional[Layer]
    pool: Optional[Layer]
    dropout: Optional[Layer]
    add: Optional[Layer]


PLACE_OF_KIND = {BatchNormalization: "batchnorm", MaxPooling2D: "pool", Dropout: "dropout", Add: "add"}


def is_relu(layer):
    return isinstance(layer, Activation) and layer.activation.name == "relu"


def place_of(layer, after_batchnorm):
    """The place in the block (PLACES) that `layer` would take, or None."""
    if is_relu(layer):
        return "relu_after" if after_batchnorm else "relu_before"
    return PLACE_OF_KIND.get(type(layer))


def epilogue_layers(head, tail):
    """EpilogueLayers of `tail` after `head` (whose activation may be a ReLU), or None when the
    tail is not one block in the kernels' order."""
    if head.activation.name not in ("linear", "relu"):
        return None
    found, seen_batchnorm, last = {}, False, -1
    if head.activation.name == "relu":
        found["relu_before"], last = head, 0
    for layer in tail:
        place = place_of(layer, seen_batchnorm)
        if place is None or PLACES.index(place) <= last:
            return None
        found[place], last = layer, PLACES.index(place)
        seen_batchnorm = seen_batchnorm or place == "batchnorm"
    if "relu_before" in found and "relu_after" in found:
        return None                        # the block has one ReLU: a second runs as its layer
    relu = "before" if "relu_before" in found else "after" if "relu_after" in found else None
    if relu == "before" and "batchnorm" not in found:
        relu = "after"                     # no BatchNormalization between: the same block
    return EpilogueLayers(relu, found.get("batchnorm"), found.get("pool"), found.get("dropout"), found.get("add"))


class EpilogueStage:
    """The block `parts` (EpilogueLayers) on z, the head's output before its activation."""

    joins_residual = True

    def __init__(self, parts, layers, buffers, bias=None, product=None):
        self.parts, self.layers, self.buffers = parts, list(layers), buffers      # layers: the block's, in order
        self.bias = bias           # without a BatchNormalization: a bias to add first (a frozen step's), or None
        self.product = product     # the stage before, asked for the moments its pass took of z (or None)
        self.identity = {}         # (C, dtype) -> the statistics of no normalization, made once

    @property
    def moments_floor(self):
        """The moments the block's BatchNormalization normalizes by, as a product's pass can take them
        (stages.batch_moments): None without one; 0, those of max(z, 0) after a ReLU; else -inf, z's."""
        if self.parts.batchnorm is None:
            return None
        return 0.0 if self.parts.relu == "before" else -np.inf

    def spec(self, z_shape):
        """ops.epilogue.Epilogue for z of this shape."""
        pool = self.parts.pool
        pooling = None if pool is None else (pool.pool_size, pool.strides,
                                             window_geometry(pool, z_shape, pool.pool_size)[0])
        rate = self.parts.dropout.rate if self.parts.dropout is not None else 0.0
        return epilogue.Epilogue(self.parts.relu, pooling, rate)

    def statistics(self, z, training):
        """(mean, inv_std, gamma, beta) per channel: BatchNormalization's, or the identity without one."""
        bn = self.parts.batchnorm
        if bn is None or not training:
            return self.inference_statistics(z.shape[-1], z.dtype)
        taken = None if self.product is None else self.product.moments          # this forward's, or None
        mean, var = taken if taken is not None else epilogue.moments(z, relu_first=self.parts.relu == "before")
        mean, inv_std = bn.batch_statistics(mean, var, z.size // z.shape[-1])
        return mean, inv_std, bn.gamma.value, bn.beta.value

    def inference_statistics(self, channels, dtype):
        """statistics in inference: BatchNormalization's moving ones, or the identity without one."""
        bn = self.parts.batchnorm
        if bn is None:
            return self.no_normalization(channels, dtype)
        mean, inv_std = bn.statistics(None, training=False)
        return mean, inv_std, bn.gamma.value, bn.beta.value

    def no_normalization(self, channels, dtype):
        """(mean, inv_std, gamma, beta) that normalize nothing: (z - mean) * 1 + 0 = z + bias."""
        key = (channels, np.dtype(dtype))
        if key not in self.identity:
            one, zero = np.ones(channels, dtype), np.zeros(channels, dtype)
            mean = zero if self.bias is None else (-self.bias).astype(dtype)
            self.identity[key] = (mean, one, one, zero)
        return self.identity[key]

    def draws(self, spec, z_shape, training):
        """Dropout's uint32 draws of y's shape, from the generator the layer draws from (None: no dropout)."""
        dropout = self.parts.dropout
        if not training or dropout is None or dropout.rate == 0:
            return None
        return random_bits(dropout.rng or backend.rng(), spec.output_shape(z_shape))

    def forward(self, z, training, residual=None):
        spec = self.spec(z.shape)
        mean, inv_std, gamma, beta = self.statistics(z, training)
        bits = self.draws(spec, z.shape, training)
        buffers = self.buffers if training else None
        out_shape = spec.output_shape(z.shape)
        offsets = buffers("offsets", out_shape, np.uint8) if buffers and spec.pool else None
        keep = buffers("keep", out_shape, np.bool_) if buffers and bits is not None else None
        y, offsets, keep = epilogue.forward(spec, z, mean, inv_std, gamma, beta, bits, residual,
                                            offsets_out=offsets, keep_out=keep)
        batch_statistics = training and self.parts.batchnorm is not None     # what backward differentiates
        self.cache = (spec, z, offsets, keep, mean, inv_std, gamma, beta, batch_statistics)
        return y

    def bind(self, z_shape, dtype):
        """The inference forward for z of z_shape and dtype, bound once (plan.py): run(z, residual=None) -> y."""
        spec = self.spec(z_shape)
        statistics = self.inference_statistics(z_shape[-1], dtype)
        return epilogue.bind_forward(spec, z_shape, dtype, *statistics), spec.output_shape(z_shape), dtype

    def backward(self, dy):
        """dz from dy (the residual's gradient is dy itself: the step sends it back)."""
        spec, z, offsets, keep, mean, inv_std, gamma, beta, batch_statistics = self.cache
        dz, dgamma, dbeta = epilogue.backward(spec, dy, z, offsets, keep, mean, inv_std, gamma, beta,
                                              batch_statistics)
        if self.parts.batchnorm is not None:
            self.parts.batchnorm.gamma.grad, self.parts.batchnorm.beta.grad = dgamma, dbeta
        return dz
