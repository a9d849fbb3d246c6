"""minicnn: a convolutional network library written to be read, on NumPy and numba.

Keras' names and behaviour (channels-last (N, H, W, C), `padding="same"`, `summary()`,
`fit`/`evaluate`/`predict`), with every layer's forward and backward on one screen.
"""
from . import activations, backend, callbacks, initializers, losses, optimizers, perf, regularizers
from .explain import get_activations, input_gradient, smoothgrad
from .io import load_model
from .layers import (Activation, Add, AveragePooling2D, BatchNormalization, Conv2D, Dense, DepthwiseConv2D,
                     Dropout, Flatten, GlobalAveragePooling2D, Input, InputLayer, Layer, MaxPooling2D, ReLU,
                     SeparableConv2D, Softmax)
from .models import Model, Sequential
from .regularizers import l1, l2
from .sequence import Sequence

__version__ = "0.1.0"
