"""minicnn layers, with Keras' names and arguments."""
from .base import Layer, SymbolicTensor, Weight
from .conv import Conv2D, DepthwiseConv2D, SeparableConv2D
from .core import Activation, Dense, Dropout, Flatten, Input, InputLayer, ReLU, Softmax
from .merge import Add
from .normalization import BatchNormalization
from .pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D

LAYER_CLASSES = {cls.__name__: cls for cls in (
    InputLayer, Conv2D, DepthwiseConv2D, SeparableConv2D, BatchNormalization, MaxPooling2D, AveragePooling2D,
    GlobalAveragePooling2D, Dropout, Dense, Flatten, Activation, ReLU, Softmax, Add)}
